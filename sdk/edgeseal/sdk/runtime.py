"""Adapter over whichever TFLite interpreter is installed.

The decrypted model exists only in memory, so the adapter takes ``bytes`` and
hands them to the interpreter as ``model_content`` (never a path): the
interpreter keeps a reference to that very object, so the adapter makes no
copy of it and never holds one of its own.

Three runtimes expose the same ``Interpreter`` API: ``ai-edge-litert``
(preferred: works with numpy 2, more ops), ``tflite-runtime`` (older boards;
needs ``numpy<2``) and full TensorFlow. They are imported only when a model is
loaded, so importing this module stays cheap and needs neither numpy nor a
runtime. Every failure of the underlying interpreter becomes a
:class:`RuntimeAdapterError` naming the runtime, and inputs are checked
against the model before the interpreter sees them.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgeseal.sdk.errors import EdgesealError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

logger = logging.getLogger(__name__)

__all__ = [
    "MAX_MODEL_SIZE",
    "RUNTIMES",
    "InferenceError",
    "InputMismatchError",
    "InvalidModelError",
    "RuntimeAdapterError",
    "RuntimeUnavailableError",
    "TFLiteModel",
    "TensorDetails",
    "load_model",
]

# A TFLite flatbuffer addresses itself with 32-bit offsets: 2 GiB is the hard
# limit of the format (larger models need external buffers, unsupported here).
MAX_MODEL_SIZE = 2**31 - 1
_FILE_IDENTIFIER = b"TFL3"  # schema.fbs: file_identifier "TFL3", at bytes 4..8
_HEADER_SIZE = 8  # root table offset + file identifier


@dataclass(frozen=True)
class _Runtime:
    distribution: str
    module: str
    attribute: str  # dotted path of the Interpreter class inside ``module``


# In order of preference.
_RUNTIMES = (
    _Runtime("ai-edge-litert", "ai_edge_litert.interpreter", "Interpreter"),
    _Runtime("tflite-runtime", "tflite_runtime.interpreter", "Interpreter"),
    _Runtime("tensorflow", "tensorflow", "lite.Interpreter"),
)
RUNTIMES = tuple(r.distribution for r in _RUNTIMES)
_INSTALL_HINT = "pip install 'edgeseal[agent]'"


class RuntimeAdapterError(EdgesealError):
    """Root of every error of the TFLite adapter."""

    def __init__(self, message: str, *, runtime: str | None = None) -> None:
        super().__init__(message)
        self.runtime = runtime

    def diagnostics(self) -> str:
        """A human explanation, naming the runtime when one was involved."""
        if self.runtime is None:
            return self.message
        return f"{self.message} (runtime: {self.runtime})"


class RuntimeUnavailableError(RuntimeAdapterError):
    """No TFLite runtime can be imported on this machine."""


class InvalidModelError(RuntimeAdapterError):
    """The bytes are not a TFLite model the runtime can load (the model's fault)."""


class InputMismatchError(RuntimeAdapterError):
    """The inputs given to :meth:`TFLiteModel.run` do not match the model (the caller's fault)."""


class InferenceError(RuntimeAdapterError):
    """The interpreter failed while running a valid model on valid inputs."""


@dataclass(frozen=True)
class TensorDetails:
    """What an input or output tensor of the model looks like."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any]

    def describe(self) -> str:
        """``name: float32[1, 4]``, for error messages and logs."""
        return f"{self.name!r}: {self.dtype}[{', '.join(map(str, self.shape))}]"


class TFLiteModel:
    """A loaded model: validated inputs in, outputs out.

    One interpreter runs one invocation at a time, so :meth:`run` is
    serialized by a lock; load several models for parallel inference.
    """

    def __init__(self, interpreter: Any, runtime_name: str) -> None:
        """Wrap an interpreter whose tensors are already allocated; use :func:`load_model`."""
        self._interpreter = interpreter
        self._runtime_name = runtime_name
        self._lock = threading.Lock()
        inputs = interpreter.get_input_details()
        outputs = interpreter.get_output_details()
        self._input_indices = tuple(int(d["index"]) for d in inputs)
        self._output_indices = tuple(int(d["index"]) for d in outputs)
        self._inputs = tuple(_details(d) for d in inputs)
        self._outputs = tuple(_details(d) for d in outputs)

    @property
    def runtime_name(self) -> str:
        """The runtime and its version, e.g. ``ai-edge-litert 2.3.0``."""
        return self._runtime_name

    @property
    def input_details(self) -> tuple[TensorDetails, ...]:
        return self._inputs

    @property
    def output_details(self) -> tuple[TensorDetails, ...]:
        return self._outputs

    def run(self, inputs: Sequence[npt.NDArray[Any]]) -> list[npt.NDArray[Any]]:
        """Run one inference; inputs in the order of :attr:`input_details`.

        Raises :class:`InputMismatchError` before invoking when the number,
        dtype or shape of the inputs differs from the model's (no implicit
        casts: a float64 array is refused, not silently rounded).
        """
        self._check_inputs(inputs)
        with self._lock:
            try:
                for index, array in zip(self._input_indices, inputs, strict=True):
                    self._interpreter.set_tensor(index, array)
                self._interpreter.invoke()
                # get_tensor returns a copy, safe to hand out after the lock.
                return [self._interpreter.get_tensor(i) for i in self._output_indices]
            except (ValueError, RuntimeError) as exc:
                raise InferenceError(
                    f"inference failed: {exc}", runtime=self._runtime_name
                ) from exc

    def random_inputs(self, rng: np.random.Generator) -> list[npt.NDArray[Any]]:
        """Inputs of the right dtype and shape drawn from ``rng`` (for smoke tests)."""
        import numpy as np

        arrays: list[npt.NDArray[Any]] = []
        for details in self._inputs:
            dtype = details.dtype
            if dtype == np.bool_:
                arrays.append(rng.integers(0, 2, details.shape).astype(np.bool_))
            elif np.issubdtype(dtype, np.integer):
                info = np.iinfo(dtype)
                arrays.append(
                    rng.integers(info.min, info.max, details.shape, dtype=dtype, endpoint=True)
                )
            elif np.issubdtype(dtype, np.floating):
                arrays.append(rng.standard_normal(details.shape).astype(dtype))
            else:
                raise InputMismatchError(
                    f"cannot draw random values for input {details.describe()}",
                    runtime=self._runtime_name,
                )
        return arrays

    def _check_inputs(self, inputs: Sequence[npt.NDArray[Any]]) -> None:
        import numpy as np

        if len(inputs) != len(self._inputs):
            raise InputMismatchError(
                f"the model takes {len(self._inputs)} input(s), got {len(inputs)}",
                runtime=self._runtime_name,
            )
        problems = []
        for position, (array, expected) in enumerate(zip(inputs, self._inputs, strict=True)):
            if not isinstance(array, np.ndarray):
                problems.append(
                    f"input {position} {expected.describe()}: expected a numpy array, "
                    f"got {type(array).__name__}"
                )
            elif array.dtype != expected.dtype or array.shape != expected.shape:
                got = f"{array.dtype}[{', '.join(map(str, array.shape))}]"
                problems.append(f"input {position} {expected.describe()}: got {got}")
        if problems:
            raise InputMismatchError("; ".join(problems), runtime=self._runtime_name)


def load_model(
    model: bytes,
    *,
    num_threads: int | None = None,
    runtime: str | None = None,
    max_size: int = MAX_MODEL_SIZE,
) -> TFLiteModel:
    """Load a TFLite model from memory and allocate its tensors.

    ``model`` must be ``bytes``: the interpreter keeps a reference to the
    object instead of copying it, which an immutable object makes safe.
    ``runtime`` forces one of :data:`RUNTIMES`; by default the first
    importable one is used. The size and the ``TFL3`` identifier are checked
    before the interpreter parses anything.
    """
    if not isinstance(model, bytes):
        raise TypeError(f"model must be bytes, not {type(model).__name__}")
    if num_threads is not None and num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    _check_header(model, max_size)
    interpreter_class, runtime_name = _import_runtime(runtime)
    try:
        interpreter = interpreter_class(model_content=model, num_threads=num_threads)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise InvalidModelError(
            f"the runtime refused the model: {exc}", runtime=runtime_name
        ) from exc
    loaded = TFLiteModel(interpreter, runtime_name)
    logger.debug(
        "loaded a %d-byte model with %s: %d input(s), %d output(s)",
        len(model),
        runtime_name,
        len(loaded.input_details),
        len(loaded.output_details),
    )
    return loaded


def _check_header(model: bytes, max_size: int) -> None:
    if len(model) > max_size:
        raise InvalidModelError(f"the model is {len(model)} bytes, over the {max_size}-byte limit")
    if len(model) < _HEADER_SIZE:
        raise InvalidModelError(f"{len(model)} bytes is too short to be a TFLite model")
    if model[4:_HEADER_SIZE] != _FILE_IDENTIFIER:
        raise InvalidModelError(
            f"not a TFLite model: file identifier {model[4:_HEADER_SIZE]!r}, "
            f"expected {_FILE_IDENTIFIER!r}"
        )


def _import_runtime(name: str | None) -> tuple[Any, str]:
    """The Interpreter class of the chosen (or first importable) runtime, and its name."""
    candidates = _RUNTIMES if name is None else [r for r in _RUNTIMES if r.distribution == name]
    if not candidates:
        raise ValueError(f"unknown runtime {name!r}; choose one of {', '.join(RUNTIMES)}")
    failures = []
    for candidate in candidates:
        try:
            module = importlib.import_module(candidate.module)
            interpreter_class: Any = module
            for part in candidate.attribute.split("."):
                interpreter_class = getattr(interpreter_class, part)
        except (ImportError, AttributeError) as exc:
            # tflite-runtime built against numpy 1 fails here under numpy 2.
            logger.debug("TFLite runtime %s unusable: %s", candidate.distribution, exc)
            failures.append(f"{candidate.distribution}: {exc}")
            continue
        return interpreter_class, f"{candidate.distribution} {_version(candidate, module)}"
    raise RuntimeUnavailableError(
        f"no TFLite runtime: {_INSTALL_HINT} (tried {'; '.join(failures)})"
    )


def _version(candidate: _Runtime, module: Any) -> str:
    package = importlib.import_module(candidate.module.split(".", 1)[0])
    version = getattr(module, "__version__", None) or getattr(package, "__version__", None)
    if version is not None:  # cheaper than importlib.metadata, which a daemon then carries
        return str(version)
    from importlib import metadata

    try:
        return metadata.version(candidate.distribution)
    except metadata.PackageNotFoundError:
        # e.g. tensorflow-cpu or a vendor build under another distribution name
        return "unknown version"


def _details(raw: dict[str, Any]) -> TensorDetails:
    import numpy as np

    return TensorDetails(
        name=str(raw["name"]),
        shape=tuple(int(s) for s in raw["shape"]),
        dtype=np.dtype(raw["dtype"]),
    )
