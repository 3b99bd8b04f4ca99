"""The inference socket's framing: round trips, every bound, and a fuzzed decoder."""

from __future__ import annotations

import contextlib
import json
import struct
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeseal.sdk.inference_wire import (
    DTYPES,
    MAX_HEADER_BYTES,
    MAX_RANK,
    WireError,
    decode_frame,
    encode_frame,
    parse_header,
    parse_prefix,
)

LIMIT = 1 << 20


def frame(header: object, body: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack(">I", len(raw)) + raw + body


def test_round_trip_every_dtype() -> None:
    rng = np.random.default_rng(0)
    arrays = [
        (rng.standard_normal((2, 3)) * 100).astype(name) if name != "bool" else rng.random(5) > 0.5
        for name in DTYPES
    ]
    arrays.append(np.zeros((0, 4), np.float32))  # empty
    arrays.append(np.array(3.5, np.float32))  # rank 0
    decoded = decode_frame(encode_frame({"op": "run"}, arrays), max_body_bytes=LIMIT)
    assert decoded.fields == {"op": "run"}
    assert len(decoded.tensors) == len(arrays)
    for got, sent in zip(decoded.tensors, arrays, strict=True):
        assert got.dtype == sent.dtype
        assert got.shape == sent.shape
        np.testing.assert_array_equal(got, sent)


def test_non_contiguous_and_big_endian_inputs_are_sent_by_value() -> None:
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    strided = base[:, ::2]
    big = base.astype(">i4")
    decoded = decode_frame(encode_frame({}, [strided, big]), max_body_bytes=LIMIT)
    np.testing.assert_array_equal(decoded.tensors[0], strided)
    np.testing.assert_array_equal(decoded.tensors[1], base.astype(np.int32))
    assert decoded.tensors[1].dtype == np.dtype(np.int32)


def test_body_is_little_endian_c_order() -> None:
    data = encode_frame({}, [np.array([[1, 2], [3, 4]], dtype=np.int16)])
    assert data.endswith(b"\x01\x00\x02\x00\x03\x00\x04\x00")


@pytest.mark.parametrize("dtype", ["float64", "complex64", "uint16", "object", "<U3"])
def test_encoder_refuses_dtypes_outside_the_list(dtype: str) -> None:
    with pytest.raises(WireError, match="is not one of"):
        encode_frame({}, [np.zeros(2, dtype=dtype)])


def test_prefix_bounds() -> None:
    assert parse_prefix(struct.pack(">I", MAX_HEADER_BYTES)) == MAX_HEADER_BYTES
    with pytest.raises(WireError, match="over the limit") as info:
        parse_prefix(struct.pack(">I", MAX_HEADER_BYTES + 1))
    assert info.value.code == "too-large"
    with pytest.raises(WireError, match="empty frame header"):
        parse_prefix(b"\0\0\0\0")


def test_body_over_the_callers_limit_is_refused_from_the_header() -> None:
    header = {
        "op": "run",
        "tensors": [{"dtype": "float32", "shape": [1024, 1024], "nbytes": 4 << 20}],
    }
    with pytest.raises(WireError, match="request too large") as info:
        parse_header(json.dumps(header).encode(), max_body_bytes=LIMIT)
    assert info.value.code == "too-large"


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ("x", "'tensors' must be a list"),
        ([1], "must be an object"),
        ([{"dtype": "float32", "shape": [1]}], "exactly the keys"),
        ([{"dtype": "float64", "shape": [1], "nbytes": 8}], "is not one of"),
        ([{"dtype": "float32", "shape": [2], "nbytes": 4}], "takes 8 bytes"),
        ([{"dtype": "float32", "shape": [-1], "nbytes": 4}], "dimension -1"),
        ([{"dtype": "float32", "shape": [1.0], "nbytes": 4}], "dimension 1.0"),
        ([{"dtype": "float32", "shape": [True], "nbytes": 4}], "dimension True"),
        ([{"dtype": "float32", "shape": [1] * (MAX_RANK + 1), "nbytes": 4}], "rank"),
        ([{"dtype": "float32", "shape": [2**31], "nbytes": 2**33}], "dimension"),
        ([{"dtype": "float32", "shape": [1], "nbytes": "4"}], "nbytes must be an integer"),
        # empty, but numpy cannot index it: found by hypothesis
        (
            [{"dtype": "float32", "shape": [0, 91, 91, 50409, 50713, 108923], "nbytes": 0}],
            "more than",
        ),
    ],
)
def test_malformed_tensor_descriptions(tensors: object, message: str) -> None:
    with pytest.raises(WireError, match=message):
        decode_frame(frame({"op": "run", "tensors": tensors}, b"\0" * 4), max_body_bytes=LIMIT)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\xff\xfe", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"op": NaN}', "not valid JSON"),
        (b'{"op": "run", "op": "info"}', "duplicate key"),
        (b"[" * 60000, "not valid JSON"),
        (b'{"n": ' + b"9" * 5000 + b"}", "not valid JSON"),
    ],
)
def test_malformed_headers(raw: bytes, message: str) -> None:
    with pytest.raises(WireError, match=message):
        decode_frame(struct.pack(">I", len(raw)) + raw, max_body_bytes=LIMIT)


def test_truncated_and_overlong_frames() -> None:
    good = encode_frame({"op": "run"}, [np.ones(4, np.float32)])
    with pytest.raises(WireError, match="truncated"):
        decode_frame(good[:-1], max_body_bytes=LIMIT)
    with pytest.raises(WireError, match="after the end"):
        decode_frame(good + b"\0", max_body_bytes=LIMIT)


def test_bool_values_other_than_0_and_1_are_refused() -> None:
    header = {"tensors": [{"dtype": "bool", "shape": [2], "nbytes": 2}]}
    assert decode_frame(frame(header, b"\x00\x01"), max_body_bytes=LIMIT).tensors[0].tolist() == [
        False,
        True,
    ]
    with pytest.raises(WireError, match="bool values"):
        decode_frame(frame(header, b"\x00\x02"), max_body_bytes=LIMIT)


# -- fuzzing ----------------------------------------------------------------------------------

SMALL_LIMIT = 4096
GOOD = encode_frame(
    {"op": "run", "v": 1},
    [np.arange(6, dtype=np.float32).reshape(2, 3), np.array([True, False]), np.int8([1, -2])],
)


def _decode_bounded(data: bytes) -> None:
    """Decode; anything but WireError fails the test, and so does allocating over the limit."""
    tracemalloc.start()
    try:
        with contextlib.suppress(WireError):
            decode_frame(data, max_body_bytes=SMALL_LIMIT)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The frame itself, the parsed header, plus at most the body limit.
    assert peak < 4 * len(data) + SMALL_LIMIT + 256 * 1024


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_fuzz_random_bytes(data: bytes) -> None:
    _decode_bounded(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.integers(0, len(GOOD) - 1), st.integers(0, 255)), min_size=1, max_size=8),
    st.integers(0, len(GOOD)),
)
def test_fuzz_mutated_valid_frame(flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(GOOD)
    for position, value in flips:
        data[position] = value
    _decode_bounded(bytes(data[:cut]) if cut else bytes(data))


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "dtype": st.sampled_from([*DTYPES, "float64", "", "x"]),
                "shape": st.lists(st.integers(-2, 2**32), max_size=10) | JSON_VALUES,
                "nbytes": st.integers(-1, 2**40) | JSON_VALUES,
            }
        ),
        max_size=4,
    ),
    st.binary(max_size=256),
)
def test_fuzz_structured_headers(tensors: list[dict[str, object]], body: bytes) -> None:
    raw = json.dumps({"op": "run", "tensors": tensors}).encode()
    _decode_bounded(struct.pack(">I", len(raw)) + raw + body)
