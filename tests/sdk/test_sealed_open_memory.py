"""Opening decrypts into one preallocated output and hands it out without a copy.

These pin the memory properties of :func:`~edgeseal.sdk.hazmat.container.open_stream`
(one output, one reused chunk buffer, no final copy) and the two building
blocks it relies on: :meth:`StreamOpener.open_chunk_into` wipes a chunk that
fails, and :class:`PipelinedHasher` digests the same on a thread as inline.
"""

from __future__ import annotations

import hashlib
import io
import os
import tracemalloc

import pytest
from blake3 import blake3

from edgeseal.sdk.errors import IntegrityError
from edgeseal.sdk.hazmat.container import open_stream, seal_stream
from edgeseal.sdk.hazmat.digest import PipelinedHasher
from edgeseal.sdk.hazmat.format import TAG_SIZE
from edgeseal.sdk.hazmat.stream import StreamOpener, StreamSealer
from edgeseal.sdk.sealed import ContentKey

KEY = ContentKey(bytes(range(32)))
CHUNK = 64 * 1024


class Stream(io.RawIOBase):
    """A non-seekable source, like a pipe."""

    def __init__(self, data: bytes) -> None:
        self._buf = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        return self._buf.readinto(buffer)


def _seal(data: bytes, cipher: str = "aes-256-gcm") -> bytes:
    out = io.BytesIO()
    seal_stream(
        io.BytesIO(data),
        out,
        key=KEY,
        cipher=cipher,
        family="detector",
        version=1,
        hardware=["rpi4"],
        chunk_size=CHUNK,
        digest_alg="blake3",
    )
    return out.getvalue()


@pytest.mark.parametrize("seekable", [True, False])
@pytest.mark.parametrize("chunks", [3, 32], ids=["inline-hash", "threaded-hash"])
def test_open_holds_one_output_and_one_chunk_never_a_copy(seekable: bool, chunks: int) -> None:
    data = os.urandom(chunks * CHUNK - 5)
    sealed = _seal(data)
    src = io.BytesIO(sealed) if seekable else io.BufferedReader(Stream(sealed))
    tracemalloc.start()
    try:
        _, plaintext = open_stream(src, key=KEY)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert plaintext == data
    # output + sealed-chunk buffer (+ the first chunk, on a stream) + small change;
    # a copy of the output (growing BytesIO, getvalue() of a live export) adds len(data).
    assert peak < len(data) + 3 * CHUNK + 64 * 1024


@pytest.mark.parametrize("cipher", ["aes-256-gcm", "chacha20-poly1305"])
def test_open_chunk_into_wipes_a_chunk_that_fails(cipher: str) -> None:
    """The AEAD writes plaintext before it checks the tag; none of it may stay."""
    plaintext = b"secret model weights " * 100
    aad = bytes(32)
    sealed = bytearray(StreamSealer(KEY, cipher, bytes(7), aad).seal_chunk(plaintext, last=True))
    sealed[-1] ^= 0x01
    out = bytearray(b"\xaa" * len(plaintext))
    with pytest.raises(IntegrityError):
        StreamOpener(KEY, cipher, bytes(7), aad).open_chunk_into(sealed, out, last=True)
    assert out == bytes(len(plaintext))


def test_open_chunk_into_refuses_an_output_of_the_wrong_size() -> None:
    sealed = StreamSealer(KEY, "aes-256-gcm", bytes(7), b"").seal_chunk(b"abc", last=True)
    opener = StreamOpener(KEY, "aes-256-gcm", bytes(7), b"")
    with pytest.raises(ValueError, match="output must be 3 bytes"):
        opener.open_chunk_into(sealed, bytearray(len(sealed) - TAG_SIZE + 1), last=True)
    assert not opener.finished  # the refused call used no nonce
    out = bytearray(3)
    opener.open_chunk_into(sealed, out, last=True)
    assert out == b"abc"


@pytest.mark.parametrize("alg", ["blake3", "sha256"])
@pytest.mark.parametrize("threaded", [True, False])
def test_pipelined_hasher_matches_the_one_shot_digest(alg: str, threaded: bool) -> None:
    data = os.urandom(10 * CHUNK + 3)
    view = memoryview(data)
    with PipelinedHasher(alg, threaded=threaded, max_pending=2) as hasher:
        for offset in range(0, len(data), CHUNK):
            hasher.update(view[offset : offset + CHUNK])
        digest = hasher.digest()
    expected = blake3(data).digest() if alg == "blake3" else hashlib.sha256(data).digest()
    assert digest == expected


def test_pipelined_hasher_reports_a_worker_failure() -> None:
    with PipelinedHasher("sha256", threaded=True) as hasher:
        hasher.update(b"fine")
        hasher.update("not bytes")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            hasher.digest()
