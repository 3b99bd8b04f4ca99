"""Framing of the agent's local inference socket, shared by server and client.

One frame, in both directions::

    4 bytes   big-endian length N of the header (1 <= N <= 64 KiB)
    N bytes   UTF-8 JSON object: {"op": ..., "tensors": [{"dtype","shape","nbytes"}, ...], ...}
    body      the raw bytes of each tensor in order, C order, little-endian

The peer on the other side of the socket is not trusted (any local process in
the socket's group can connect), so every length is bounded *before* anything
is read or allocated: the header length by :data:`MAX_HEADER_BYTES`, each
tensor by its declared shape (rank and dimensions bounded, ``nbytes`` must
equal ``prod(shape) * itemsize``) and the whole body by a limit the caller
gives. A reader therefore learns the exact body size from the header alone and
can refuse an oversized request without reading a byte of its body.

Decoding is split in steps (:func:`parse_prefix`, :func:`parse_header`,
:func:`decode_tensors`) so that a socket server can answer between them;
:func:`decode_frame` chains them over an in-memory buffer. Every refusal is a
:class:`WireError` whose ``code`` tells whether the frame was malformed
(``"bad-frame"``) or over a bound (``"too-large"``).

Only plain numeric dtypes cross the wire (no objects, no strings), so decoding
never runs code and never makes an array larger than the bytes received.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeseal.sdk import strict_json
from edgeseal.sdk.errors import EdgesealError

__all__ = [
    "DTYPES",
    "MAX_DIM",
    "MAX_HEADER_BYTES",
    "MAX_RANK",
    "MAX_TENSORS",
    "PREFIX_SIZE",
    "Frame",
    "FrameHeader",
    "TensorSpec",
    "WireError",
    "decode_frame",
    "decode_tensors",
    "encode_frame",
    "encode_frame_parts",
    "parse_header",
    "parse_prefix",
    "read_frame",
]

PREFIX_SIZE = 4
MAX_HEADER_BYTES = 64 * 1024
MAX_TENSORS = 64
#: Elements one tensor may describe (the non-zero dimensions' product).
MAX_ELEMENTS = 2**31 - 1
MAX_RANK = 8
MAX_DIM = 2**31 - 1  # TFLite shapes are int32
# The closed list of dtypes on the wire; names are numpy's.
DTYPES = ("float32", "float16", "int8", "uint8", "int16", "int32", "int64", "bool")
_WIRE_DTYPES: dict[str, np.dtype[Any]] = {
    name: np.dtype(name).newbyteorder("<") if np.dtype(name).itemsize > 1 else np.dtype(name)
    for name in DTYPES
}
_TENSOR_KEYS = frozenset({"dtype", "shape", "nbytes"})
_PREFIX = struct.Struct(">I")

BAD_FRAME = "bad-frame"
TOO_LARGE = "too-large"


class WireError(EdgesealError):
    """A frame is malformed or over a bound; ``code`` is ``"bad-frame"`` or ``"too-large"``."""

    def __init__(self, message: str, *, code: str = BAD_FRAME, field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.code = code


@dataclass(frozen=True)
class TensorSpec:
    """One tensor as the header describes it (validated)."""

    dtype: str
    shape: tuple[int, ...]
    nbytes: int

    def to_json(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "shape": list(self.shape), "nbytes": self.nbytes}


@dataclass(frozen=True)
class FrameHeader:
    """A validated header: the JSON fields besides ``tensors``, and the tensors' layout."""

    fields: Mapping[str, Any]
    tensors: tuple[TensorSpec, ...]

    @property
    def body_nbytes(self) -> int:
        """How many body bytes follow the header."""
        return sum(t.nbytes for t in self.tensors)


@dataclass(frozen=True)
class Frame:
    """A decoded frame: header fields and the tensors of its body."""

    fields: Mapping[str, Any]
    tensors: list[npt.NDArray[Any]]


# -- encoding ---------------------------------------------------------------------------------


def encode_frame_parts(
    fields: Mapping[str, Any], tensors: Sequence[npt.NDArray[Any]] = ()
) -> list[bytes | memoryview]:
    """The frame as a list of buffers (prefix+header, then one per tensor), without joining.

    Raises :class:`WireError` for a dtype outside :data:`DTYPES`, a shape over
    the bounds, or a header over :data:`MAX_HEADER_BYTES`; ``fields`` must not
    contain ``"tensors"``.
    """
    if "tensors" in fields:
        raise ValueError("'tensors' is written by the encoder, not given as a field")
    if len(tensors) > MAX_TENSORS:
        raise WireError(f"{len(tensors)} tensors, over the limit of {MAX_TENSORS}", code=TOO_LARGE)
    specs = []
    bodies: list[bytes | memoryview] = []
    for position, array in enumerate(tensors):
        if not isinstance(array, np.ndarray):
            raise WireError(
                f"tensor {position}: expected a numpy array, got {type(array).__name__}"
            )
        name = array.dtype.name
        if name not in _WIRE_DTYPES or array.dtype.kind not in "fiub":
            raise WireError(
                f"tensor {position}: dtype {array.dtype} is not one of {', '.join(DTYPES)}",
                field=f"tensors[{position}].dtype",
            )
        shape = _check_shape(list(array.shape), position)
        wire = np.ascontiguousarray(array, dtype=_WIRE_DTYPES[name])
        specs.append(TensorSpec(name, shape, wire.nbytes).to_json())
        bodies.append(wire.reshape(-1).view(np.uint8).data)
    header = json.dumps({**fields, "tensors": specs}, separators=(",", ":"), allow_nan=False)
    raw = header.encode("utf-8")
    if len(raw) > MAX_HEADER_BYTES:
        raise WireError(
            f"header of {len(raw)} bytes, over the limit of {MAX_HEADER_BYTES}", code=TOO_LARGE
        )
    return [_PREFIX.pack(len(raw)) + raw, *bodies]


def encode_frame(fields: Mapping[str, Any], tensors: Sequence[npt.NDArray[Any]] = ()) -> bytes:
    """The whole frame as one ``bytes`` (see :func:`encode_frame_parts`)."""
    return b"".join(encode_frame_parts(fields, tensors))


# -- decoding ---------------------------------------------------------------------------------


def parse_prefix(prefix: bytes) -> int:
    """The header length announced by the 4-byte prefix, checked against its bound."""
    if len(prefix) != PREFIX_SIZE:
        raise WireError(f"frame prefix is {len(prefix)} bytes, expected {PREFIX_SIZE}")
    (length,) = _PREFIX.unpack(prefix)
    if length == 0:
        raise WireError("empty frame header")
    if length > MAX_HEADER_BYTES:
        raise WireError(
            f"header of {length} bytes announced, over the limit of {MAX_HEADER_BYTES}",
            code=TOO_LARGE,
        )
    return int(length)


def parse_header(raw: bytes, *, max_body_bytes: int) -> FrameHeader:
    """Validate the JSON header and the tensors it announces; nothing of the body is read.

    A body larger than ``max_body_bytes`` is refused here with code ``"too-large"``.
    """
    if len(raw) > MAX_HEADER_BYTES:
        raise WireError(
            f"header of {len(raw)} bytes, over the limit of {MAX_HEADER_BYTES}", code=TOO_LARGE
        )
    try:
        obj = strict_json.loads(raw, allow_floats=True)
    except strict_json.StrictJSONError as exc:
        raise WireError(f"header is not valid JSON: {_json_refusal(exc)}") from None
    if not isinstance(obj, dict):
        raise WireError(f"header must be a JSON object, not {type(obj).__name__}")
    raw_tensors = obj.pop("tensors", [])
    if not isinstance(raw_tensors, list):
        raise WireError("'tensors' must be a list", field="tensors")
    if len(raw_tensors) > MAX_TENSORS:
        raise WireError(
            f"{len(raw_tensors)} tensors, over the limit of {MAX_TENSORS}",
            code=TOO_LARGE,
            field="tensors",
        )
    specs = tuple(_parse_tensor(item, i) for i, item in enumerate(raw_tensors))
    total = sum(s.nbytes for s in specs)
    if total > max_body_bytes:
        raise WireError(
            f"request too large: body of {total} bytes, over the limit of {max_body_bytes}",
            code=TOO_LARGE,
        )
    return FrameHeader(fields=obj, tensors=specs)


def decode_tensors(header: FrameHeader, body: bytes | bytearray) -> list[npt.NDArray[Any]]:
    """The tensors of ``body`` as arrays in native byte order.

    The arrays view ``body`` when its layout allows (pass a ``bytearray`` to
    get writable arrays without a copy).
    """
    if len(body) != header.body_nbytes:
        raise WireError(f"body is {len(body)} bytes, the header announced {header.body_nbytes}")
    arrays: list[npt.NDArray[Any]] = []
    offset = 0
    for position, spec in enumerate(header.tensors):
        chunk = memoryview(body)[offset : offset + spec.nbytes]
        offset += spec.nbytes
        wire_dtype = _WIRE_DTYPES[spec.dtype]
        if spec.dtype == "bool":
            raw = np.frombuffer(chunk, dtype=np.uint8)
            if raw.size and int(raw.max()) > 1:
                raise WireError(
                    f"tensor {position}: bool values must be 0 or 1",
                    field=f"tensors[{position}]",
                )
        array = np.frombuffer(chunk, dtype=wire_dtype).reshape(spec.shape)
        native = wire_dtype.newbyteorder("=")
        if array.dtype != native:  # big-endian host
            array = array.astype(native)
        arrays.append(array)
    return arrays


def read_frame(read_exact: Callable[[int], bytes | bytearray], *, max_body_bytes: int) -> Frame:
    """Read one frame through ``read_exact(n)`` (which returns exactly n bytes or raises).

    The body is read only after the header passed :func:`parse_header`, so at
    most ``max_body_bytes`` are ever requested for it.
    """
    length = parse_prefix(bytes(read_exact(PREFIX_SIZE)))
    header = parse_header(bytes(read_exact(length)), max_body_bytes=max_body_bytes)
    body = read_exact(header.body_nbytes) if header.body_nbytes else bytearray()
    if not isinstance(body, bytearray):
        body = bytearray(body)
    return Frame(fields=header.fields, tensors=decode_tensors(header, body))


def decode_frame(data: bytes, *, max_body_bytes: int) -> Frame:
    """Decode exactly one frame held in memory; trailing bytes are refused."""
    view = memoryview(data)
    position = 0

    def read_exact(n: int) -> bytes:
        nonlocal position
        if len(view) - position < n:
            raise WireError(f"truncated frame: {n} bytes needed, {len(view) - position} left")
        chunk = bytes(view[position : position + n])
        position += n
        return chunk

    frame = read_frame(read_exact, max_body_bytes=max_body_bytes)
    if position != len(view):
        raise WireError(f"{len(view) - position} bytes after the end of the frame")
    return frame


# -- helpers ----------------------------------------------------------------------------------


def _parse_tensor(item: object, position: int) -> TensorSpec:
    field = f"tensors[{position}]"
    if not isinstance(item, dict):
        raise WireError(f"{field} must be an object", field=field)
    if set(item) != _TENSOR_KEYS:
        raise WireError(
            f"{field} must have exactly the keys dtype, shape, nbytes; got {sorted(item)}",
            field=field,
        )
    dtype = item["dtype"]
    if not isinstance(dtype, str) or dtype not in _WIRE_DTYPES:
        raise WireError(
            f"{field}.dtype {_short(dtype)} is not one of {', '.join(DTYPES)}",
            field=f"{field}.dtype",
        )
    if not isinstance(item["shape"], list):
        raise WireError(f"{field}.shape must be a list", field=f"{field}.shape")
    shape = _check_shape(item["shape"], position)
    nbytes = item["nbytes"]
    if not _is_int(nbytes):
        raise WireError(f"{field}.nbytes must be an integer", field=f"{field}.nbytes")
    expected = math.prod(shape) * _WIRE_DTYPES[dtype].itemsize
    if nbytes != expected:
        raise WireError(
            f"{field}.nbytes is {nbytes}, but {dtype}{list(shape)} takes {expected} bytes",
            field=f"{field}.nbytes",
        )
    return TensorSpec(dtype, shape, expected)


def _check_shape(dims: list[Any], position: int) -> tuple[int, ...]:
    field = f"tensors[{position}].shape"
    if len(dims) > MAX_RANK:
        raise WireError(f"{field} has rank {len(dims)}, over the limit of {MAX_RANK}", field=field)
    for dim in dims:
        if not _is_int(dim) or not 0 <= dim <= MAX_DIM:
            raise WireError(
                f"{field}: dimension {_short(dim)} is not an integer in 0..{MAX_DIM}",
                field=field,
            )
    shape = tuple(int(d) for d in dims)
    # numpy refuses a shape whose non-zero dimensions multiply past its index range, even
    # when another dimension is 0 and the tensor is empty: bound that product too.
    if math.prod(d for d in shape if d) > MAX_ELEMENTS:
        raise WireError(f"{field} {list(shape)} has more than {MAX_ELEMENTS} elements", field=field)
    return shape


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _json_refusal(exc: strict_json.StrictJSONError) -> str:
    if exc.rule == "duplicate-key":
        return f"duplicate key {str(exc.token)[:40]!r}"
    if exc.rule == "constant":
        return f"{exc.token} is not JSON"
    return _short(exc)


def _short(value: object) -> str:
    text = repr(value) if not isinstance(value, BaseException) else str(value)
    return text if len(text) <= 80 else text[:77] + "..."
