"""Attacks on sealed models, named after the attack. Each must be refused.

FormatError (specific message) where the damage is visible without a key;
IntegrityError (one opaque message) where only authentication can tell.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import struct
import tracemalloc
from collections.abc import Callable

import pytest
from blake3 import blake3

from edgeseal.sdk.errors import FormatError, IntegrityError
from edgeseal.sdk.hazmat.container import _THREADED_HASH_MIN_CHUNKS, open_stream, seal_stream
from edgeseal.sdk.hazmat.format import (
    MAX_HEADER_SIZE,
    MAX_PLAINTEXT_SIZE,
    MIN_CHUNK_SIZE,
    PREAMBLE_SIZE,
    TAG_SIZE,
    SealedModelHeader,
    decode_header,
    encode_header,
)
from edgeseal.sdk.hazmat.stream import StreamSealer, key_commitment
from edgeseal.sdk.sealed import ContentKey, inspect_sealed_model, open_sealed_model

CHUNK = MIN_CHUNK_SIZE
DATA = bytes(range(256)) * (2 * CHUNK // 256) + b"tail" * 25  # 3 chunks, last one short
KEY = ContentKey(bytes(range(32)))
OPAQUE = "^sealed model failed authentication$"


class NonSeekable(io.RawIOBase):
    def __init__(self, data: bytes) -> None:
        self._buf = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        chunk = self._buf.read(min(len(buffer), 777))
        buffer[: len(chunk)] = chunk
        return len(chunk)


def _seal(data: bytes = DATA, *, key: ContentKey = KEY, family: str = "detector") -> bytes:
    out = io.BytesIO()
    seal_stream(
        io.BytesIO(data),
        out,
        key=key,
        cipher="aes-256-gcm",
        family=family,
        version=7,
        hardware=["jetson-orin", "rpi4"],
        chunk_size=CHUNK,
        digest_alg="blake3",
    )
    return out.getvalue()


SEALED = _seal()
HEADER = inspect_sealed_model(io.BytesIO(SEALED))
PAYLOAD = SEALED[len(HEADER.encoded) :]


def _chunks(header: SealedModelHeader = HEADER, payload: bytes = PAYLOAD) -> list[bytes]:
    out, pos = [], 0
    for i in range(header.chunk_count):
        n = header.chunk_plaintext_size(i) + TAG_SIZE
        out.append(payload[pos : pos + n])
        pos += n
    return out


def _open(data: bytes, *, seekable: bool = True, key: ContentKey = KEY) -> bytes:
    src = io.BytesIO(data) if seekable else io.BufferedReader(NonSeekable(data))
    return open_stream(src, key=key)[1]


def _rebuild(body_edit: Callable[[dict], None], *, aead_id: int | None = None) -> bytes:
    """Re-encode the header canonically after ``body_edit``; keep the original payload."""
    body = json.loads(HEADER.encoded[PREAMBLE_SIZE:])
    body_edit(body)
    text = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    magic, version, aead, _ = struct.unpack(">8sHHI", HEADER.encoded[:PREAMBLE_SIZE])
    preamble = struct.pack(
        ">8sHHI", magic, version, aead if aead_id is None else aead_id, len(text)
    )
    return preamble + text + PAYLOAD


def _raw_header(text: bytes, *, version: int = 1, aead_id: int = 2) -> bytes:
    return struct.pack(">8sHHI", b"ESEALMDL", version, aead_id, len(text)) + text


def test_fixture_has_three_chunks_with_a_short_last_one() -> None:
    assert HEADER.chunk_count == 3
    assert 0 < HEADER.chunk_plaintext_size(2) < CHUNK
    assert _open(SEALED) == DATA


# --- relabelling: every header field, changed to another valid value ---------------------


@pytest.mark.parametrize(
    ("field", "edit"),
    [
        ("family", lambda b: b.update(family="classifier")),
        ("version", lambda b: b.update(version=8)),
        ("version-rollback", lambda b: b.update(version=6)),
        ("hardware-added", lambda b: b.update(hardware=["jetson-orin", "rpi4", "rpi5"])),
        ("hardware-removed", lambda b: b.update(hardware=["rpi4"])),
        ("chunk_size", lambda b: b.update(chunk_size=CHUNK + 1)),
        ("plaintext_digest", lambda b: b.update(plaintext_digest="00" * 32)),
        ("digest_alg", lambda b: b.update(digest_alg="sha256")),
        (
            "digest_alg-downgrade",
            lambda b: b.update(
                digest_alg="sha256", plaintext_digest=hashlib.sha256(DATA).hexdigest()
            ),
        ),
        ("nonce_prefix", lambda b: b.update(nonce_prefix="00" * 7)),
        ("key_commitment", lambda b: b.update(key_commitment="00" * 32)),
    ],
)
def test_relabelled_header_field_fails_authentication(field: str, edit: Callable) -> None:
    forged = _rebuild(edit)
    assert inspect_sealed_model(io.BytesIO(forged)) != HEADER  # parses fine, differs
    for seekable in (True, False):
        with pytest.raises(IntegrityError, match=OPAQUE):
            _open(forged, seekable=seekable)


def test_relabelled_cipher_id_fails_authentication() -> None:
    with pytest.raises(IntegrityError, match=OPAQUE):
        _open(_rebuild(lambda b: None, aead_id=0x0003))


@pytest.mark.parametrize(
    "edit",
    [
        lambda b: b.update(plaintext_size=b["plaintext_size"] + 1),
        lambda b: b.update(plaintext_size=b["plaintext_size"] - 1),
        lambda b: b.update(chunk_size=2 * CHUNK),
    ],
)
def test_size_fields_inconsistent_with_the_file_are_refused(edit: Callable) -> None:
    forged = _rebuild(edit)
    with pytest.raises(FormatError, match="header declares"):
        _open(forged)
    with pytest.raises((FormatError, IntegrityError)):
        _open(forged, seekable=False)


def test_header_from_another_file_with_the_same_key() -> None:
    other = _seal(family="classifier")
    other_header = inspect_sealed_model(io.BytesIO(other))
    with pytest.raises(IntegrityError, match=OPAQUE):
        _open(other_header.encoded + PAYLOAD)
    with pytest.raises(IntegrityError, match=OPAQUE):
        _open(HEADER.encoded + other[len(other_header.encoded) :])


def test_header_from_another_file_with_another_key() -> None:
    other_key = ContentKey(bytes(range(1, 33)))
    other = _seal(key=other_key)
    other_header = inspect_sealed_model(io.BytesIO(other))
    with pytest.raises(IntegrityError, match=OPAQUE):
        _open(other_header.encoded + PAYLOAD, key=other_key)


def test_wrong_key() -> None:
    with pytest.raises(IntegrityError, match=OPAQUE):
        _open(SEALED, key=ContentKey.generate())


# --- the payload: bit flips, truncation, extension, reordering, duplication ---------------


def test_bit_flip_in_every_chunk_body_and_tag() -> None:
    start = len(HEADER.encoded)
    for i, chunk in enumerate(_chunks()):
        for where in (
            0,
            len(chunk) // 2,
            len(chunk) - TAG_SIZE - 1,
            len(chunk) - TAG_SIZE,
            len(chunk) - 1,
        ):
            tampered = bytearray(SEALED)
            tampered[start + where] ^= 0x80
            with pytest.raises(IntegrityError, match=OPAQUE):
                _open(bytes(tampered))
        start += len(chunk)
        assert i < HEADER.chunk_count


@pytest.mark.parametrize("seekable", [True, False])
@pytest.mark.parametrize("copies", [1, 3], ids=["inline-hash", "threaded-hash"])
@pytest.mark.parametrize("where", ["body", "tag"])
def test_tag_failure_in_the_last_chunk_after_the_others_decrypted(
    seekable: bool, copies: int, where: str
) -> None:
    """Every earlier chunk was decrypted into the output buffer: still nothing comes back."""
    data = DATA * copies
    sealed = bytearray(_seal(data))
    header = inspect_sealed_model(io.BytesIO(bytes(sealed)))
    assert (header.chunk_count >= _THREADED_HASH_MIN_CHUNKS) == (copies > 1)
    last_size = header.chunk_plaintext_size(header.chunk_count - 1) + TAG_SIZE
    sealed[-1 if where == "tag" else -last_size] ^= 0x01
    result: list[bytes] = []
    with pytest.raises(IntegrityError, match=OPAQUE):
        result.append(_open(bytes(sealed), seekable=seekable))
    assert result == []
    with pytest.raises(IntegrityError, match=OPAQUE):
        open_sealed_model(io.BytesIO(bytes(sealed)), content_key=KEY)


def test_huge_declared_size_on_a_stream_is_refused_before_it_is_reserved() -> None:
    """A stream cannot prove its length: its header must authenticate before the output exists."""
    forged = _rebuild(lambda b: b.update(plaintext_size=MAX_PLAINTEXT_SIZE))
    tracemalloc.start()
    try:
        with pytest.raises(IntegrityError, match=OPAQUE):
            _open(forged, seekable=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * CHUNK + len(forged)  # a chunk or two, never the declared 4 GiB


def _cut_points() -> list[int]:
    points = set(range(0, PREAMBLE_SIZE + 2)) | {len(HEADER.encoded) - 1, len(HEADER.encoded)}
    pos = len(HEADER.encoded)
    for chunk in _chunks():
        points |= {pos + 1, pos + len(chunk) // 2, pos + len(chunk) - 1, pos + len(chunk)}
        pos += len(chunk)
    points.discard(len(SEALED))
    return sorted(points)


@pytest.mark.parametrize("seekable", [True, False])
def test_truncation_at_every_chunk_boundary_and_mid_chunk(seekable: bool) -> None:
    for cut in _cut_points():
        with pytest.raises(FormatError, match=r"truncated|does not start"):
            _open(SEALED[:cut], seekable=seekable)


@pytest.mark.parametrize("seekable", [True, False])
@pytest.mark.parametrize(
    "extra",
    [b"\x00", b"x" * TAG_SIZE, _chunks()[-1], _chunks()[0]],
    ids=["1", "tag", "last", "first"],
)
def test_extension_after_the_final_chunk(seekable: bool, extra: bytes) -> None:
    with pytest.raises(FormatError, match="after its final chunk"):
        _open(SEALED + extra, seekable=seekable)


def test_reordered_chunks() -> None:
    c = _chunks()
    with pytest.raises(IntegrityError, match=OPAQUE):
        _open(HEADER.encoded + c[1] + c[0] + c[2])


def test_duplicated_chunk_in_place_of_another() -> None:
    c = _chunks()
    with pytest.raises(IntegrityError, match=OPAQUE):
        _open(HEADER.encoded + c[0] + c[0] + c[2])


def test_dropped_final_chunk_with_header_patched_to_match() -> None:
    c = _chunks()
    forged = _rebuild(lambda b: b.update(plaintext_size=2 * CHUNK))
    header = decode_header(forged[: forged.index(b"}") + 1])
    with pytest.raises(IntegrityError, match=OPAQUE):
        _open(header.encoded + c[0] + c[1])


# --- the plaintext digest: a sealer that wrote the wrong one ------------------------------


def _seal_with_digest(digest_alg: str, plaintext_digest: bytes, data: bytes = DATA) -> bytes:
    """A well-authenticated file whose header carries the given digest, right or wrong.

    Built from the hazmat blocks because ``seal_stream`` always writes the true digest:
    this is a buggy or malicious sealer that holds the content key.
    """
    prefix = bytes(7)
    header = encode_header(
        cipher="aes-256-gcm",
        family="detector",
        version=7,
        hardware=["rpi4"],
        chunk_size=CHUNK,
        plaintext_size=len(data),
        digest_alg=digest_alg,
        plaintext_digest=plaintext_digest,
        nonce_prefix=prefix,
        key_commitment=key_commitment(KEY, prefix),
    )
    sealer = StreamSealer(KEY, header.cipher, prefix, header.digest)
    chunks = [
        sealer.seal_chunk(data[i * CHUNK : (i + 1) * CHUNK], last=i == header.chunk_count - 1)
        for i in range(header.chunk_count)
    ]
    return header.encoded + b"".join(chunks)


@pytest.mark.parametrize("digest_alg", ["blake3", "sha256"])
def test_hand_built_file_with_the_true_digest_opens(digest_alg: str) -> None:
    """Control for the next test: the hand-built sealer is otherwise correct."""
    true = blake3(DATA).digest() if digest_alg == "blake3" else hashlib.sha256(DATA).digest()
    assert _open(_seal_with_digest(digest_alg, true)) == DATA


@pytest.mark.parametrize(
    ("digest_alg", "plaintext_digest"),
    [
        ("blake3", bytes(32)),
        ("sha256", bytes(32)),
        ("blake3", hashlib.sha256(DATA).digest()),  # labelled blake3, holds the SHA-256
        ("sha256", blake3(DATA).digest()),  # labelled sha256, holds the BLAKE3
        ("blake3", blake3(DATA[:-1]).digest()),  # the digest of another plaintext
    ],
)
def test_authenticated_file_whose_digest_does_not_match_is_refused(
    digest_alg: str, plaintext_digest: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    # DATA is 3 chunks (hashed inline); DATA * 2 is 5 (hashed on the worker thread).
    for data in (DATA, DATA * 2):
        forged = _seal_with_digest(digest_alg, plaintext_digest, data)
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="edgeseal"):
            for seekable in (True, False):
                with pytest.raises(IntegrityError, match=OPAQUE):
                    _open(forged, seekable=seekable)
            with pytest.raises(IntegrityError, match=OPAQUE):
                open_sealed_model(io.BytesIO(forged), content_key=KEY)
        assert "plaintext digest mismatch" in caplog.text


# --- framing the reader refuses by name --------------------------------------------------


def test_unknown_format_version_is_named() -> None:
    forged = SEALED[:8] + struct.pack(">H", 7) + SEALED[10:]
    with pytest.raises(FormatError) as caught:
        _open(forged)
    assert caught.value.message == (
        "unsupported sealed model format version 7; this edgeseal reads version 1"
    )
    assert caught.value.field == "format_version"


def test_unknown_algorithm_id_is_named() -> None:
    forged = SEALED[:10] + struct.pack(">H", 0x0001) + SEALED[12:]
    with pytest.raises(FormatError, match="unsupported sealed model cipher id 0x0001"):
        _open(forged)


@pytest.mark.parametrize("alg", ["md5", "sha3-256", "blake2b", "BLAKE3", "sha-256", ""])
def test_unknown_digest_algorithm_is_named(alg: str) -> None:
    forged = _rebuild(lambda b: b.update(digest_alg=alg))
    expected = f"unsupported plaintext digest algorithm {alg!r}; this edgeseal reads blake3, sha256"
    with pytest.raises(FormatError) as caught:
        inspect_sealed_model(io.BytesIO(forged))
    assert (caught.value.message, caught.value.field) == (expected, "digest_alg")
    for seekable in (True, False):
        with pytest.raises(FormatError) as caught:
            _open(forged, seekable=seekable)
        assert (caught.value.message, caught.value.field) == (expected, "digest_alg")


def test_oversized_header_length_is_refused_unread() -> None:
    forged = SEALED[:12] + struct.pack(">I", MAX_HEADER_SIZE + 1) + SEALED[16:]
    with pytest.raises(FormatError, match="exceeds the maximum of 65536 bytes"):
        _open(forged)
    with pytest.raises(FormatError, match="header length is 0"):
        _open(SEALED[:12] + struct.pack(">I", 0) + SEALED[16:])


def test_bad_magic() -> None:
    with pytest.raises(FormatError, match="not a sealed model"):
        _open(b"PK\x03\x04" + SEALED[4:])


_VALID = json.loads(HEADER.encoded[PREAMBLE_SIZE:])


def _body(**changes: object) -> bytes:
    body = dict(_VALID, **changes)
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (_body(family="Detector"), "family"),
        (_body(family=7), "family"),
        (_body(version=-1), "version"),
        (_body(version=2**63), "version"),
        (_body(version=True), "version"),
        (_body(version="7"), "version"),
        (_body(hardware=[]), "hardware"),
        (_body(hardware="rpi4"), "hardware"),
        (_body(hardware=["rpi4", "jetson-orin"]), "hardware"),
        (_body(hardware=["rpi4", "rpi4"]), "hardware"),
        (_body(hardware=["RPI4"]), "hardware"),
        (_body(chunk_size=CHUNK - 1), "chunk_size"),
        (_body(chunk_size=16 * 1024 * 1024 + 1), "chunk_size"),
        (_body(plaintext_size=4 * 1024**3 + 1), "plaintext_size"),
        (_body(plaintext_size=-1), "plaintext_size"),
        (_body(plaintext_digest="AB" * 32), "plaintext_digest"),
        (_body(plaintext_digest="ab" * 31), "plaintext_digest"),
        (_body(digest_alg="sha256", plaintext_digest="ab" * 33), "plaintext_digest"),
        (_body(digest_alg=None), "digest_alg"),
        (_body(digest_alg=["blake3"]), "digest_alg"),
        (_body(nonce_prefix="00" * 8), "nonce_prefix"),
        (_body(key_commitment=None), "key_commitment"),
        (_body(extra=1), "extra"),
        (
            json.dumps(
                {k: v for k, v in _VALID.items() if k != "family"},
                sort_keys=True,
                separators=(",", ":"),
            ).encode(),
            "family",
        ),
        (_body()[:-1] + b',"version":7}', "version"),
        (_body().replace(b'"version":7', b'"version":7.0'), None),
        (_body().replace(b",", b", "), "header"),
        (json.dumps(dict(reversed(_VALID.items())), separators=(",", ":")).encode(), "header"),
        (b"[]", "header"),
        (b"{", "header"),
        (b"[" * 5000 + b"]" * 5000, "header"),
        (b'{"a":' + b"9" * 5000 + b"}", "header"),
        ('{"family":"d\u00e9tector"}'.encode(), "header"),
    ],
)
def test_malformed_header_is_refused_naming_the_field(text: bytes, field: str | None) -> None:
    with pytest.raises(FormatError) as caught:
        decode_header(_raw_header(text))
    if field is not None:
        assert caught.value.field == field
        assert field in caught.value.diagnostics()
    with pytest.raises(FormatError):
        _open(_raw_header(text) + PAYLOAD)


def test_integrity_failures_log_no_secrets(caplog: pytest.LogCaptureFixture) -> None:
    tampered = bytearray(SEALED)
    tampered[-1] ^= 1
    with caplog.at_level(logging.DEBUG, logger="edgeseal"), pytest.raises(IntegrityError):
        _open(bytes(tampered))
    assert caplog.records, "the failure should leave a debug trace"
    text = caplog.text
    assert KEY.secret_bytes().hex() not in text
    assert DATA[:16].hex() not in text
    assert IntegrityError().diagnostics().startswith("sealed model failed authentication")
