"""Build small, real TFLite models without TensorFlow, plus their numpy reference.

Tests, demos and benchmarks need genuine ``.tflite`` files (the interpreter
must load and run them), but pulling TensorFlow or downloading a model would
make every machine that runs them heavy and networked. A chain of
FULLY_CONNECTED operators is enough to exercise sealing, health checks and
inference, and its output is easy to compute independently with numpy, so the
tests can check the interpreter rather than trust it.

The flatbuffer is written directly with the ``flatbuffers`` Builder following
the TFLite schema v3 (tensorflow/compiler/mlir/lite/schema/schema.fbs). This
module deliberately does not import any TFLite runtime: a release manager's
machine can build models without one. Output is a pure function of the
arguments, so the same seed always gives the same bytes.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import flatbuffers
import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

__all__ = [
    "Activation",
    "FILE_IDENTIFIER",
    "dense_model",
    "mlp_model",
    "padded_layer",
    "padded_model",
    "random_layers",
    "reference_dense",
    "reference_mlp",
]

Activation = Literal["none", "relu"]
FloatArray = npt.NDArray[np.float32]
Layer = tuple[FloatArray, FloatArray]

FILE_IDENTIFIER = b"TFL3"
SCHEMA_VERSION = 3

# Enum values from schema.fbs.
_TENSOR_TYPE_FLOAT32 = 0  # enum TensorType
_BUILTIN_FULLY_CONNECTED = 9  # enum BuiltinOperator
_OPTIONS_FULLY_CONNECTED = 8  # union BuiltinOptions: FullyConnectedOptions
_ACTIVATION_CODES: dict[str, int] = {"none": 0, "relu": 1}  # enum ActivationFunctionType

# Number of fields (vtable slots) of each table in schema v3 as of LiteRT 2.3,
# and the slot index of each field we write; readers ignore absent fields.
_MODEL_FIELDS, _M_VERSION, _M_OPCODES, _M_SUBGRAPHS, _M_DESCRIPTION, _M_BUFFERS = 10, 0, 1, 2, 3, 4
_SUBGRAPH_FIELDS, _SG_TENSORS, _SG_INPUTS, _SG_OUTPUTS, _SG_OPERATORS, _SG_NAME = 6, 0, 1, 2, 3, 4
_TENSOR_FIELDS, _T_SHAPE, _T_TYPE, _T_BUFFER, _T_NAME = 11, 0, 1, 2, 3
_OPERATOR_FIELDS, _OP_OPCODE, _OP_INPUTS, _OP_OUTPUTS, _OP_OPT_TYPE, _OP_OPTIONS = 14, 0, 1, 2, 3, 4
_OPCODE_FIELDS, _OC_DEPRECATED, _OC_VERSION, _OC_BUILTIN = 4, 0, 2, 3
_BUFFER_FIELDS, _B_DATA = 3, 0
_FC_OPTIONS_FIELDS, _FC_ACTIVATION = 6, 0

# Constant buffers are aligned like the TFLite converter aligns them, so that
# kernels may read weights in place.
_BUFFER_ALIGNMENT = 16
# Bytes a one-layer model needs besides its weights and bias (measured: ~560).
_PADDED_OVERHEAD = 576
_PADDED_MIN_SIZE = 4096
_PADDED_MAX_IN_FEATURES = 1024


@dataclass(frozen=True)
class _Tensor:
    name: str
    shape: tuple[int, ...]
    buffer: int


@dataclass(frozen=True)
class _FullyConnected:
    inputs: tuple[int, int, int]
    output: int
    activation: Activation


def dense_model(
    weights: FloatArray,
    bias: FloatArray,
    *,
    activation: Activation = "relu",
    batch: int = 1,
) -> bytes:
    """One FULLY_CONNECTED layer: ``y = act(x @ weights.T + bias)``.

    ``weights`` has shape ``(out, in)`` (TFLite's layout), ``bias`` ``(out,)``;
    the model's input is float32 ``(batch, in)`` and its output ``(batch, out)``.
    """
    return mlp_model(
        [(weights, bias)], activation=activation, output_activation=activation, batch=batch
    )


def mlp_model(
    layers: Sequence[Layer],
    *,
    activation: Activation = "relu",
    output_activation: Activation = "none",
    batch: int = 1,
    description: str = "edgeseal modelgen",
) -> bytes:
    """Several FULLY_CONNECTED layers chained, as one subgraph.

    Hidden layers use ``activation``, the last one ``output_activation``.
    """
    _check_layers(layers)
    _check_activation(activation)
    _check_activation(output_activation)
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")

    # Buffer 0 is the schema's mandatory empty sentinel; tensors without
    # constant data (input, activations, output) point at it.
    buffers: list[FloatArray | None] = [None]
    tensors = [_Tensor("input", (batch, layers[0][0].shape[1]), 0)]
    operators: list[_FullyConnected] = []
    current = 0
    for i, (weights, bias) in enumerate(layers):
        last = i == len(layers) - 1
        buffers.extend([weights, bias])
        w_index, b_index = len(tensors), len(tensors) + 1
        tensors.append(_Tensor(f"dense_{i}/weights", weights.shape, len(buffers) - 2))
        tensors.append(_Tensor(f"dense_{i}/bias", bias.shape, len(buffers) - 1))
        out_name = "output" if last else f"dense_{i}/output"
        tensors.append(_Tensor(out_name, (batch, weights.shape[0]), 0))
        act = output_activation if last else activation
        operators.append(_FullyConnected((current, w_index, b_index), len(tensors) - 1, act))
        current = len(tensors) - 1

    model = _serialize(tensors, buffers, operators, output=current, description=description)
    logger.debug("built a %d-layer model of %d bytes", len(layers), len(model))
    return model


def random_layers(sizes: Sequence[int], *, seed: int) -> list[Layer]:
    """Seeded float32 layers for ``sizes = [in, hidden..., out]``.

    Weights are scaled by ``1/sqrt(in)`` so activations stay of order one and
    float32 comparisons with the reference remain meaningful.
    """
    if len(sizes) < 2 or any(s < 1 for s in sizes):
        raise ValueError(f"need at least two positive sizes, got {list(sizes)}")
    rng = np.random.default_rng(seed)
    layers: list[Layer] = []
    for n_in, n_out in itertools.pairwise(sizes):
        weights = rng.standard_normal((n_out, n_in), dtype=np.float32)
        weights *= np.float32(1.0 / math.sqrt(n_in))
        bias = rng.standard_normal(n_out, dtype=np.float32) * np.float32(0.1)
        layers.append((weights, bias))
    return layers


def padded_layer(target_size_bytes: int, *, seed: int) -> Layer:
    """The one layer :func:`padded_model` uses, so callers can compute its reference."""
    if target_size_bytes < _PADDED_MIN_SIZE:
        raise ValueError(f"target size must be at least {_PADDED_MIN_SIZE} bytes")
    params = (target_size_bytes - _PADDED_OVERHEAD) // 4
    n_in = max(1, min(_PADDED_MAX_IN_FEATURES, math.isqrt(params)))
    # The bias (one float per output) counts towards the size too.
    n_out = max(1, params // (n_in + 1))
    (layer,) = random_layers([n_in, n_out], seed=seed)
    return layer


def padded_model(target_size_bytes: int, *, seed: int = 0) -> bytes:
    """A valid one-layer model of about ``target_size_bytes`` (within 1 % from 64 KiB).

    For benchmarks of sealing, transfer and loading at 1, 10, 100 MB: the size
    comes from a real weight matrix, so the model still loads and runs. Its
    activation is ``"none"``; the reference is
    ``reference_dense(x, *padded_layer(size, seed=seed), activation="none")``.
    """
    weights, bias = padded_layer(target_size_bytes, seed=seed)
    return dense_model(weights, bias, activation="none")


def reference_dense(
    x: npt.NDArray[np.floating], weights: FloatArray, bias: FloatArray, *, activation: Activation
) -> FloatArray:
    """What FULLY_CONNECTED computes, in float64 then rounded to float32."""
    _check_activation(activation)
    y = np.asarray(x, dtype=np.float64) @ weights.astype(np.float64).T + bias.astype(np.float64)
    if activation == "relu":
        y = np.maximum(y, 0.0)
    return y.astype(np.float32)


def reference_mlp(
    x: npt.NDArray[np.floating],
    layers: Sequence[Layer],
    *,
    activation: Activation = "relu",
    output_activation: Activation = "none",
) -> FloatArray:
    """The numpy forward pass of :func:`mlp_model` with the same arguments."""
    y: FloatArray = np.asarray(x, dtype=np.float32)
    for i, (weights, bias) in enumerate(layers):
        act = output_activation if i == len(layers) - 1 else activation
        y = reference_dense(y, weights, bias, activation=act)
    return y


def _check_activation(activation: str) -> None:
    if activation not in _ACTIVATION_CODES:
        raise ValueError(
            f"activation must be one of {sorted(_ACTIVATION_CODES)}, got {activation!r}"
        )


def _check_layers(layers: Sequence[Layer]) -> None:
    if not layers:
        raise ValueError("a model needs at least one layer")
    previous_out: int | None = None
    for i, (weights, bias) in enumerate(layers):
        if weights.dtype != np.float32 or bias.dtype != np.float32:
            raise ValueError(f"layer {i}: weights and bias must be float32")
        if weights.ndim != 2 or bias.shape != (weights.shape[0],):
            raise ValueError(
                f"layer {i}: weights must be (out, in) and bias (out,), "
                f"got {weights.shape} and {bias.shape}"
            )
        if previous_out is not None and weights.shape[1] != previous_out:
            raise ValueError(
                f"layer {i} takes {weights.shape[1]} inputs but layer {i - 1} gives {previous_out}"
            )
        previous_out = weights.shape[0]


def _serialize(
    tensors: Sequence[_Tensor],
    buffers: Sequence[FloatArray | None],
    operators: Sequence[_FullyConnected],
    *,
    output: int,
    description: str,
) -> bytes:
    """Write the Model table; flatbuffers are built back to front, children first."""
    data_size = sum(b.nbytes for b in buffers if b is not None)
    # Size the builder up front: growing it doubles and copies the whole buffer.
    b = flatbuffers.Builder(data_size + _BUFFER_ALIGNMENT * len(buffers) + 4096)

    buffer_offsets = []
    for array in buffers:
        data = None if array is None else _byte_vector(b, array)
        b.StartObject(_BUFFER_FIELDS)
        if data is not None:
            b.PrependUOffsetTRelativeSlot(_B_DATA, data, 0)
        buffer_offsets.append(b.EndObject())

    tensor_offsets = []
    for tensor in tensors:
        name = b.CreateString(tensor.name)
        shape = _int32_vector(b, tensor.shape)
        b.StartObject(_TENSOR_FIELDS)
        b.PrependUOffsetTRelativeSlot(_T_SHAPE, shape, 0)
        b.PrependInt8Slot(_T_TYPE, _TENSOR_TYPE_FLOAT32, 0)
        b.PrependUint32Slot(_T_BUFFER, tensor.buffer, 0)
        b.PrependUOffsetTRelativeSlot(_T_NAME, name, 0)
        tensor_offsets.append(b.EndObject())

    operator_offsets = []
    for op in operators:
        b.StartObject(_FC_OPTIONS_FIELDS)
        b.PrependInt8Slot(_FC_ACTIVATION, _ACTIVATION_CODES[op.activation], 0)
        options = b.EndObject()
        inputs = _int32_vector(b, op.inputs)
        outputs = _int32_vector(b, (op.output,))
        b.StartObject(_OPERATOR_FIELDS)
        b.PrependUint32Slot(_OP_OPCODE, 0, 0)  # the one opcode: FULLY_CONNECTED
        b.PrependUOffsetTRelativeSlot(_OP_INPUTS, inputs, 0)
        b.PrependUOffsetTRelativeSlot(_OP_OUTPUTS, outputs, 0)
        b.PrependUint8Slot(_OP_OPT_TYPE, _OPTIONS_FULLY_CONNECTED, 0)
        b.PrependUOffsetTRelativeSlot(_OP_OPTIONS, options, 0)
        operator_offsets.append(b.EndObject())

    sg_name = b.CreateString("main")
    sg_tensors = _offset_vector(b, tensor_offsets)
    sg_inputs = _int32_vector(b, (0,))
    sg_outputs = _int32_vector(b, (output,))
    sg_operators = _offset_vector(b, operator_offsets)
    b.StartObject(_SUBGRAPH_FIELDS)
    b.PrependUOffsetTRelativeSlot(_SG_TENSORS, sg_tensors, 0)
    b.PrependUOffsetTRelativeSlot(_SG_INPUTS, sg_inputs, 0)
    b.PrependUOffsetTRelativeSlot(_SG_OUTPUTS, sg_outputs, 0)
    b.PrependUOffsetTRelativeSlot(_SG_OPERATORS, sg_operators, 0)
    b.PrependUOffsetTRelativeSlot(_SG_NAME, sg_name, 0)
    subgraph = b.EndObject()

    # builtin_code (int32) superseded deprecated_builtin_code (int8) in schema
    # 3a; writers fill both so that old and new readers agree.
    b.StartObject(_OPCODE_FIELDS)
    b.PrependInt8Slot(_OC_DEPRECATED, min(_BUILTIN_FULLY_CONNECTED, 127), 0)
    b.PrependInt32Slot(_OC_VERSION, 1, 0)
    b.PrependInt32Slot(_OC_BUILTIN, _BUILTIN_FULLY_CONNECTED, 0)
    opcode = b.EndObject()

    desc = b.CreateString(description)
    opcodes = _offset_vector(b, [opcode])
    subgraphs = _offset_vector(b, [subgraph])
    model_buffers = _offset_vector(b, buffer_offsets)
    b.StartObject(_MODEL_FIELDS)
    b.PrependUint32Slot(_M_VERSION, SCHEMA_VERSION, 0)
    b.PrependUOffsetTRelativeSlot(_M_OPCODES, opcodes, 0)
    b.PrependUOffsetTRelativeSlot(_M_SUBGRAPHS, subgraphs, 0)
    b.PrependUOffsetTRelativeSlot(_M_DESCRIPTION, desc, 0)
    b.PrependUOffsetTRelativeSlot(_M_BUFFERS, model_buffers, 0)
    root = b.EndObject()
    b.Finish(root, file_identifier=FILE_IDENTIFIER)
    # One copy out of the builder (Output() would slice, then copy again).
    return bytes(memoryview(b.Bytes)[b.Head() :])


def _byte_vector(b: flatbuffers.Builder, array: FloatArray) -> int:
    """A [ubyte] vector holding ``array`` little-endian, its data 16-byte aligned."""
    data = np.ascontiguousarray(array, dtype="<f4")
    n = data.nbytes
    b.StartVector(1, n, _BUFFER_ALIGNMENT)
    b.head -= n
    b.Bytes[b.head : b.head + n] = data.data.cast("B")
    return int(b.EndVector())


def _int32_vector(b: flatbuffers.Builder, values: Sequence[int]) -> int:
    b.StartVector(4, len(values), 4)
    for value in reversed(values):
        b.PrependInt32(value)
    return int(b.EndVector())


def _offset_vector(b: flatbuffers.Builder, offsets: Sequence[int]) -> int:
    b.StartVector(4, len(offsets), 4)
    for offset in reversed(offsets):
        b.PrependUOffsetTRelative(offset)
    return int(b.EndVector())
