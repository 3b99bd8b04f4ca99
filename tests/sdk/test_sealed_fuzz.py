"""Property tests of the sealed-model reader on untrusted bytes.

Whatever the input, the reader raises only FormatError or IntegrityError, and
a mutated file never yields plaintext.
"""

from __future__ import annotations

import contextlib
import io
import json
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeseal.sdk.errors import FormatError, IntegrityError
from edgeseal.sdk.hazmat.container import open_stream, seal_stream
from edgeseal.sdk.hazmat.format import MIN_CHUNK_SIZE, PREAMBLE_SIZE, decode_header
from edgeseal.sdk.sealed import ContentKey, inspect_sealed_model

KEY = ContentKey(bytes(range(32)))
DATA = bytes(range(256)) * 20  # 5120 bytes: two chunks of 4 KiB
_out = io.BytesIO()
seal_stream(
    io.BytesIO(DATA),
    _out,
    key=KEY,
    cipher="chacha20-poly1305",
    family="fuzz",
    version=1,
    hardware=["rpi4"],
    chunk_size=MIN_CHUNK_SIZE,
    digest_alg="blake3",
)
SEALED = _out.getvalue()
HEADER_END = len(inspect_sealed_model(io.BytesIO(SEALED)).encoded)

FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _refused(data: bytes) -> None:
    try:
        open_stream(io.BytesIO(data), key=KEY)
    except (FormatError, IntegrityError):
        return
    raise AssertionError("a mutated sealed model opened")


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes(data: bytes) -> None:
    with contextlib.suppress(FormatError):
        inspect_sealed_model(io.BytesIO(data))
    _refused(data)


@FUZZ
@given(
    version=st.integers(0, 3),
    aead=st.integers(0, 4),
    length=st.integers(0, 2**32 - 1),
    rest=st.binary(max_size=1024),
)
def test_random_preamble_fields(version: int, aead: int, length: int, rest: bytes) -> None:
    data = struct.pack(">8sHHI", b"ESEALMDL", version, aead, length) + rest
    with contextlib.suppress(FormatError):
        inspect_sealed_model(io.BytesIO(data))
    _refused(data)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from([*sorted(json.loads(SEALED[PREAMBLE_SIZE:HEADER_END])), "x"]),
        _json_values,
        max_size=9,
    )
)
def test_random_json_headers(body: dict[str, object]) -> None:
    text = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    try:
        header = decode_header(struct.pack(">8sHHI", b"ESEALMDL", 1, 2, len(text)) + text)
    except FormatError:
        return
    assert header.family == body["family"]  # accepted only if fully valid


@st.composite
def _mutations(draw: st.DrawFn) -> bytes:
    data = bytearray(SEALED)
    kind = draw(st.sampled_from(["flip", "overwrite", "insert", "delete", "truncate", "append"]))
    pos = draw(st.integers(0, len(data) - 1))
    # Half of the mutations aim at the header, where the parser does most of its work.
    if draw(st.booleans()):
        pos = draw(st.integers(0, HEADER_END - 1))
    if kind == "flip":
        data[pos] ^= 1 << draw(st.integers(0, 7))
    elif kind == "overwrite":
        patch = draw(st.binary(min_size=1, max_size=16))
        data[pos : pos + len(patch)] = patch
    elif kind == "insert":
        data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
    elif kind == "delete":
        del data[pos : pos + draw(st.integers(1, 64))]
    elif kind == "truncate":
        del data[pos:]
    else:
        data += draw(st.binary(min_size=1, max_size=64))
    return bytes(data)


@FUZZ
@given(_mutations())
def test_mutated_file_never_opens(mutated: bytes) -> None:
    if mutated == SEALED:
        assert open_stream(io.BytesIO(mutated), key=KEY)[1] == DATA
        return
    _refused(mutated)
