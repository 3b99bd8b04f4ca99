"""Health-check specification of a release: golden tensors, tolerance, latency budget.

A device runs the new model on the golden inputs before switching to it and
compares its outputs with the golden outputs. The spec travels inside the
signed TUF target metadata, which every device of the family downloads, so it
is bounded hard: at most :data:`MAX_TENSORS` tensors a side, a closed list of
dtypes, rank at most :data:`MAX_RANK`, and :data:`MAX_GOLDEN_BYTES` of tensor
data in all. Sizes are checked before any base64 is decoded.

Tensor data is the C-order, little-endian raw bytes of the array, base64
encoded (RFC 4648 section 4, with padding). numpy is imported only by
:meth:`GoldenTensor.from_numpy` / :meth:`GoldenTensor.to_numpy`, so parsing
needs no numpy.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgeseal.sdk.errors import FormatError

if TYPE_CHECKING:
    import numpy.typing as npt

__all__ = [
    "DTYPE_SIZES",
    "MAX_GOLDEN_BYTES",
    "MAX_LATENCY_BUDGET_MS",
    "MAX_RANK",
    "MAX_TENSORS",
    "MAX_TOLERANCE",
    "GoldenTensor",
    "HealthCheck",
]

#: Closed list of tensor dtypes (numpy names) and their sizes in bytes.
DTYPE_SIZES: dict[str, int] = {
    "float32": 4,
    "float16": 2,
    "int8": 1,
    "uint8": 1,
    "int16": 2,
    "int32": 4,
    "int64": 8,
    "bool": 1,
}
MAX_TENSORS = 16
MAX_RANK = 8
MAX_DIM = 2**24
#: All golden tensors of one release together, decoded.
MAX_GOLDEN_BYTES = 1024 * 1024
MAX_TOLERANCE = 1e6
MAX_LATENCY_BUDGET_MS = 3_600_000
_MAX_B64 = 4 * math.ceil(MAX_GOLDEN_BYTES / 3)
# Canonical JSON (OLPC, which TUF signs) has no floats: the tolerance travels as a
# decimal string, e.g. "0.0001" or "1e-05".
_DECIMAL_RE = re.compile(r"[0-9]{1,16}(?:\.[0-9]{1,16})?(?:[eE][-+]?[0-9]{1,3})?", re.ASCII)


def _fail(message: str, field: str) -> FormatError:
    return FormatError(message, field=field)


def _object(value: object, keys: frozenset[str], where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise _fail(f"{where} must be a JSON object", where)
    if value.keys() != keys:
        raise _fail(f"{where} must have exactly the fields {', '.join(sorted(keys))}", where)
    return value


@dataclass(frozen=True)
class GoldenTensor:
    """One golden input or output tensor."""

    dtype: str
    shape: tuple[int, ...]
    data: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.dtype, str) or self.dtype not in DTYPE_SIZES:
            raise _fail(
                f"tensor dtype {str(self.dtype)[:40]!r} is not one of {', '.join(DTYPE_SIZES)}",
                "dtype",
            )
        if not isinstance(self.shape, tuple) or len(self.shape) > MAX_RANK:
            raise _fail(f"tensor shape must be a list of at most {MAX_RANK} sizes", "shape")
        for dim in self.shape:
            if type(dim) is not int or not 1 <= dim <= MAX_DIM:
                raise _fail(f"tensor dimensions must be integers from 1 to {MAX_DIM}", "shape")
        if not isinstance(self.data, bytes) or len(self.data) != self.expected_size:
            raise _fail(
                f"tensor data must be {self.expected_size} bytes for {self.dtype} "
                f"{list(self.shape)}",
                "data_b64",
            )

    @property
    def expected_size(self) -> int:
        return math.prod(self.shape) * DTYPE_SIZES[self.dtype]

    @classmethod
    def from_json(cls, value: object) -> GoldenTensor:
        obj = _object(value, frozenset({"dtype", "shape", "data_b64"}), "tensor")
        shape, data = obj["shape"], obj["data_b64"]
        if not isinstance(shape, list) or len(shape) > MAX_RANK:
            raise _fail(f"tensor shape must be a list of at most {MAX_RANK} sizes", "shape")
        if not isinstance(data, str) or len(data) > _MAX_B64:
            raise _fail(
                f"tensor data_b64 must be a string of at most {_MAX_B64} characters", "data_b64"
            )
        try:
            raw = base64.b64decode(data.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError, ValueError):
            raise _fail("tensor data_b64 is not valid base64", "data_b64") from None
        if base64.b64encode(raw).decode("ascii") != data:  # one encoding only
            raise _fail("tensor data_b64 is not canonical base64", "data_b64")
        return cls(dtype=obj["dtype"], shape=tuple(shape), data=raw)

    def to_json(self) -> dict[str, Any]:
        return {
            "dtype": self.dtype,
            "shape": list(self.shape),
            "data_b64": base64.b64encode(self.data).decode("ascii"),
        }

    @classmethod
    def from_numpy(cls, array: npt.NDArray[Any]) -> GoldenTensor:
        import numpy as np

        name = np.dtype(array.dtype).name
        if name not in DTYPE_SIZES:
            raise _fail(f"tensor dtype {name!r} is not one of {', '.join(DTYPE_SIZES)}", "dtype")
        little = np.ascontiguousarray(array, dtype=np.dtype(name).newbyteorder("<"))
        return cls(dtype=name, shape=tuple(int(d) for d in little.shape), data=little.tobytes())

    def to_numpy(self) -> npt.NDArray[Any]:
        import numpy as np

        dtype = np.dtype(self.dtype).newbyteorder("<")
        return np.frombuffer(self.data, dtype=dtype).reshape(self.shape).astype(self.dtype)


@dataclass(frozen=True)
class HealthCheck:
    """Golden inputs and outputs, the tolerance and the latency budget of one release.

    ``tolerance`` is the largest absolute difference allowed between any
    element of an output and its golden value; ``latency_budget_ms`` bounds one
    inference on the device. In JSON the tolerance is a decimal *string*
    (``"0.0001"``): TUF signs canonical JSON, which cannot encode floats.
    """

    inputs: tuple[GoldenTensor, ...]
    outputs: tuple[GoldenTensor, ...]
    tolerance: float
    latency_budget_ms: int

    _KEYS = frozenset({"inputs", "outputs", "tolerance", "latency_budget_ms"})

    def __post_init__(self) -> None:
        for side in ("inputs", "outputs"):
            tensors = getattr(self, side)
            if not isinstance(tensors, tuple) or not 1 <= len(tensors) <= MAX_TENSORS:
                raise _fail(f"health check needs 1 to {MAX_TENSORS} {side}", side)
            if not all(isinstance(t, GoldenTensor) for t in tensors):
                raise _fail(f"health check {side} must be golden tensors", side)
        total = sum(len(t.data) for t in (*self.inputs, *self.outputs))
        if total > MAX_GOLDEN_BYTES:
            raise _fail(
                f"golden tensors hold {total} bytes; the maximum is {MAX_GOLDEN_BYTES}",
                "health_check",
            )
        tolerance = self.tolerance
        if (
            type(tolerance) not in (int, float)
            or not math.isfinite(tolerance)
            or not 0 <= tolerance <= MAX_TOLERANCE
        ):
            raise _fail(f"tolerance must be a number from 0 to {MAX_TOLERANCE:g}", "tolerance")
        budget = self.latency_budget_ms
        if type(budget) is not int or not 1 <= budget <= MAX_LATENCY_BUDGET_MS:
            raise _fail(
                f"latency_budget_ms must be an integer from 1 to {MAX_LATENCY_BUDGET_MS}",
                "latency_budget_ms",
            )

    @classmethod
    def from_json(cls, value: object) -> HealthCheck:
        obj = _object(value, cls._KEYS, "health_check")
        sides = []
        for side in ("inputs", "outputs"):
            items = obj[side]
            if not isinstance(items, list) or not 1 <= len(items) <= MAX_TENSORS:
                raise _fail(f"health check needs 1 to {MAX_TENSORS} {side}", side)
            # Bound the sum of the encoded sizes before decoding any of them.
            encoded = sum(
                len(t["data_b64"])
                if isinstance(t, dict) and isinstance(t.get("data_b64"), str)
                else 0
                for t in items
            )
            if encoded > _MAX_B64:
                raise _fail(f"golden {side} exceed {MAX_GOLDEN_BYTES} bytes", "health_check")
            sides.append(tuple(GoldenTensor.from_json(t) for t in items))
        tolerance = obj["tolerance"]
        if not isinstance(tolerance, str) or _DECIMAL_RE.fullmatch(tolerance) is None:
            raise _fail(
                'tolerance must be a decimal number in a string, e.g. "0.0001"', "tolerance"
            )
        return cls(
            inputs=sides[0],
            outputs=sides[1],
            tolerance=float(tolerance),
            latency_budget_ms=obj["latency_budget_ms"],
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
            "tolerance": repr(float(self.tolerance)),
            "latency_budget_ms": self.latency_budget_ms,
        }
