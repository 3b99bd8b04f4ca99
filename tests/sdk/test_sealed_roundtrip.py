"""Sealed model recipes: round trips, headers, arguments."""

from __future__ import annotations

import hashlib
import io
import os

import pytest
from blake3 import blake3

from edgeseal.sdk.errors import SealError
from edgeseal.sdk.hazmat.container import open_stream, seal_stream
from edgeseal.sdk.hazmat.format import MIN_CHUNK_SIZE, PREAMBLE_SIZE, TAG_SIZE
from edgeseal.sdk.sealed import (
    DEFAULT_CHUNK_SIZE,
    ContentKey,
    OpenedModel,
    inspect_sealed_model,
    open_sealed_model,
    seal_model,
)

CHUNK = MIN_CHUNK_SIZE


def _seal_small(
    data: bytes, key: ContentKey, cipher: str = "aes-256-gcm", digest_alg: str = "blake3"
) -> bytes:
    out = io.BytesIO()
    seal_stream(
        io.BytesIO(data),
        out,
        key=key,
        cipher=cipher,
        family="detector",
        version=7,
        hardware=["rpi4"],
        chunk_size=CHUNK,
        digest_alg=digest_alg,
    )
    return out.getvalue()


class OneByteReader(io.RawIOBase):
    """A non-seekable source that returns at most 1000 bytes a read, like a pipe."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        n = min(len(buffer), 1000, len(self._data) - self._pos)
        buffer[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


def _reference_digest(alg: str, data: bytes) -> bytes:
    return blake3(data).digest() if alg == "blake3" else hashlib.sha256(data).digest()


@pytest.mark.parametrize("digest_alg", ["blake3", "sha256"])
@pytest.mark.parametrize("cipher", ["aes-256-gcm", "chacha20-poly1305"])
@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 17])
def test_round_trip_at_chunk_boundaries(cipher: str, digest_alg: str, size: int) -> None:
    key = ContentKey.generate()
    data = os.urandom(size)
    sealed = _seal_small(data, key, cipher, digest_alg)
    header, plaintext = open_stream(io.BytesIO(sealed), key=key)
    assert plaintext == data
    assert header.authenticated
    assert header.cipher == cipher
    assert header.plaintext_size == size
    assert header.digest_alg == digest_alg
    assert header.plaintext_digest == _reference_digest(digest_alg, data)
    assert header.chunk_count == max(1, -(-size // CHUNK))
    assert (
        len(sealed)
        == header.sealed_size
        == len(header.encoded) + size + TAG_SIZE * (header.chunk_count)
    )


def test_recipe_round_trip_and_inspect() -> None:
    data = os.urandom(DEFAULT_CHUNK_SIZE + 5)
    out = io.BytesIO()
    info = seal_model(
        io.BytesIO(data), out, family="yolo.v8-n", version=42, hardware=["rpi4", "jetson-orin"]
    )
    assert info.header.authenticated
    assert info.header.hardware == ("jetson-orin", "rpi4")
    assert info.header.chunk_size == DEFAULT_CHUNK_SIZE
    assert info.header.digest_alg == "blake3"
    assert info.header.plaintext_digest == blake3(data).digest()

    out.seek(0)
    inspected = inspect_sealed_model(out)
    assert not inspected.authenticated
    assert inspected == info.header
    assert out.tell() == len(inspected.encoded)

    out.seek(0)
    opened = open_sealed_model(out, content_key=info.content_key)
    assert isinstance(opened, OpenedModel)
    assert opened.plaintext == data
    assert opened.header.authenticated
    assert (opened.header.family, opened.header.version) == ("yolo.v8-n", 42)
    assert data.hex()[:32] not in repr(opened)
    assert "bytes>" in repr(opened)


def test_each_seal_uses_a_fresh_key_and_nonce_prefix() -> None:
    first, second = io.BytesIO(), io.BytesIO()
    a = seal_model(io.BytesIO(b"same"), first, family="f", version=1, hardware=["h"])
    b = seal_model(io.BytesIO(b"same"), second, family="f", version=1, hardware=["h"])
    assert a.content_key != b.content_key
    assert a.header.nonce_prefix != b.header.nonce_prefix
    assert first.getvalue() != second.getvalue()


def test_open_from_a_non_seekable_stream_with_short_reads() -> None:
    key = ContentKey.generate()
    data = os.urandom(5 * CHUNK + 3)
    sealed = _seal_small(data, key)
    reader = io.BufferedReader(OneByteReader(sealed), buffer_size=512)
    assert open_sealed_model(reader, content_key=key).plaintext == data


def test_seal_reads_from_the_current_position() -> None:
    src = io.BytesIO(b"HEADERJUNK" + b"model bytes")
    src.seek(10)
    out = io.BytesIO()
    info = seal_model(src, out, family="f", version=0, hardware=["h"])
    out.seek(0)
    assert open_sealed_model(out, content_key=info.content_key).plaintext == b"model bytes"


def test_sealed_file_starts_with_magic_version_and_cipher() -> None:
    out = io.BytesIO()
    seal_model(
        io.BytesIO(b"x"), out, family="f", version=1, hardware=["h"], cipher="chacha20-poly1305"
    )
    raw = out.getvalue()
    assert raw[:8] == b"ESEALMDL"
    assert raw[8:12] == b"\x00\x01\x00\x03"
    assert raw[PREAMBLE_SIZE : PREAMBLE_SIZE + 1] == b"{"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"family": "Detector"}, "family"),
        ({"family": ""}, "family"),
        ({"family": "-x"}, "family"),
        ({"family": "a" * 65}, "family"),
        ({"family": "x\n"}, "family"),
        ({"version": -1}, "version"),
        ({"version": 2**63}, "version"),
        ({"version": True}, "version"),
        ({"hardware": []}, "hardware"),
        ({"hardware": "rpi4"}, "hardware"),
        ({"hardware": ["RPi4"]}, "hardware"),
        ({"hardware": [f"h{i}" for i in range(33)]}, "hardware"),
        ({"cipher": "aes-128-gcm"}, "cipher"),
    ],
)
def test_seal_refuses_bad_arguments(kwargs: dict[str, object], field: str) -> None:
    args: dict[str, object] = {"family": "f", "version": 1, "hardware": ["h"]}
    args.update(kwargs)
    with pytest.raises(SealError) as caught:
        seal_model(io.BytesIO(b"m"), io.BytesIO(), **args)  # type: ignore[arg-type]
    assert caught.value.field == field
    assert field in caught.value.diagnostics()


def test_recipe_opens_a_sha256_model_sealed_with_hazmat() -> None:
    key = ContentKey.generate()
    data = os.urandom(5 * CHUNK + 1)  # enough chunks for the threaded hasher
    opened = open_sealed_model(
        io.BytesIO(_seal_small(data, key, digest_alg="sha256")), content_key=key
    )
    assert opened.plaintext == data
    assert opened.header.digest_alg == "sha256"
    assert opened.header.plaintext_digest == hashlib.sha256(data).digest()


@pytest.mark.parametrize("digest_alg", ["md5", "sha3-256", "BLAKE3", ""])
def test_hazmat_seal_refuses_an_unknown_digest_algorithm(digest_alg: str) -> None:
    with pytest.raises(SealError) as caught:
        _seal_small(b"model", ContentKey.generate(), digest_alg=digest_alg)
    assert caught.value.field == "digest_alg"
    assert repr(digest_alg) in caught.value.message


def test_seal_refuses_non_seekable_source() -> None:
    src = io.BufferedReader(OneByteReader(b"abc"))
    src.seekable = lambda: False  # type: ignore[method-assign]
    with pytest.raises(SealError, match="seekable"):
        seal_model(src, io.BytesIO(), family="f", version=1, hardware=["h"])


def test_seal_notices_a_model_that_changes_between_passes() -> None:
    class Growing(io.BytesIO):
        def seek(self, pos: int, whence: int = 0) -> int:
            result = super().seek(pos, whence)
            if pos == 0 and whence == 0:
                self.getbuffer()[0] ^= 0xFF
            return result

    with pytest.raises(SealError, match="changed while it was being sealed"):
        seal_model(Growing(b"abcdef"), io.BytesIO(), family="f", version=1, hardware=["h"])


def test_content_key_rejects_wrong_length() -> None:
    with pytest.raises(SealError, match="32 bytes"):
        ContentKey(b"short")
