"""Sealed model format v1 (``*.esm``): preamble and authenticated header codec.

Layout (integers big-endian)::

    offset  size  field
    0       8     magic b"ESEALMDL"
    8       2     format version (1)
    10      2     AEAD id, from the HPKE AEAD registry (RFC 9180 section 7.3):
                  0x0002 AES-256-GCM, 0x0003 ChaCha20-Poly1305
    12      4     header length H, 1..MAX_HEADER_SIZE
    16      H     header: one canonical JSON object (below)
    16+H    ...   payload: STREAM chunks, each ciphertext || 16-byte tag
                  (see :mod:`edgeseal.sdk.hazmat.stream`)

Bytes ``[0, 16+H)`` are the *authenticated header*: their SHA-256 is the
associated data of every chunk, so changing any of them (a relabelled family,
another hardware class, a different version) makes every chunk fail
authentication. The same digest binds key envelopes to this file.

The header is JSON because people read it (``edgeseal inspect``), but only one
encoding of a given header is accepted: keys sorted, no whitespace, ASCII,
integers only, the exact key set below, hardware classes sorted and unique.
A decoder that accepted several encodings would let one authenticated header
look different to different tools.

The plaintext digest names its algorithm (``digest_alg``, a closed set:
``blake3`` by default, ``sha256`` for callers who must use a FIPS-approved
hash); a reader refuses an algorithm it does not know, by name.

Nothing here does I/O or uses a key: decoding takes bytes and raises
:class:`~edgeseal.sdk.errors.FormatError` naming the field.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from edgeseal.sdk import strict_json
from edgeseal.sdk.errors import FormatError

MAGIC = b"ESEALMDL"
FORMAT_VERSION = 1
PREAMBLE = struct.Struct(">8sHHI")
PREAMBLE_SIZE = PREAMBLE.size  # 16

MAX_HEADER_SIZE = 64 * 1024
MIN_CHUNK_SIZE = 4 * 1024
MAX_CHUNK_SIZE = 16 * 1024 * 1024
MAX_PLAINTEXT_SIZE = 4 * 1024**3
MAX_MODEL_VERSION = 2**63 - 1
MAX_HARDWARE_CLASSES = 32
TAG_SIZE = 16
NONCE_PREFIX_SIZE = 7
KEY_COMMITMENT_SIZE = 32

#: Closed set of payload ciphers: public name -> HPKE AEAD id (RFC 9180 section 7.3).
CIPHER_IDS: dict[str, int] = {"aes-256-gcm": 0x0002, "chacha20-poly1305": 0x0003}
CIPHER_NAMES: dict[int, str] = {v: k for k, v in CIPHER_IDS.items()}

#: Closed set of plaintext digest algorithms: header name -> digest size in bytes.
DIGEST_SIZES: dict[str, int] = {"blake3": 32, "sha256": 32}

_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}", re.ASCII)
_HEADER_KEYS = frozenset(
    {
        "chunk_size",
        "digest_alg",
        "family",
        "hardware",
        "key_commitment",
        "nonce_prefix",
        "plaintext_digest",
        "plaintext_size",
        "version",
    }
)
NAME_RULE = "1-64 characters of a-z, 0-9, '.', '_', '-', starting with a letter or digit"


def is_valid_name(name: object) -> bool:
    """True for a valid model family or hardware class name (see ``NAME_RULE``)."""
    return isinstance(name, str) and _NAME_RE.fullmatch(name) is not None


def chunk_count(plaintext_size: int, chunk_size: int) -> int:
    """Chunks in the payload: at least one (an empty model is one empty final chunk)."""
    return max(1, -(-plaintext_size // chunk_size))


@dataclass(frozen=True)
class SealedModelHeader:
    """What a sealed model's header says.

    ``authenticated`` is False when the header was only parsed (for example by
    :func:`edgeseal.sdk.sealed.inspect_sealed_model`): the values are
    well-formed but *nobody has checked them against the content key*, so they
    must not drive trust decisions. It is True only on headers returned by a
    successful seal or open.
    """

    format_version: int
    cipher: str
    family: str
    version: int
    hardware: tuple[str, ...]
    chunk_size: int
    plaintext_size: int
    digest_alg: str
    plaintext_digest: bytes
    nonce_prefix: bytes
    key_commitment: bytes
    encoded: bytes = field(repr=False)
    authenticated: bool = field(default=False, compare=False)

    @property
    def aead_id(self) -> int:
        return CIPHER_IDS[self.cipher]

    @property
    def digest(self) -> bytes:
        """SHA-256 of the authenticated header: the chunks' AAD and the envelopes' binding."""
        return hashlib.sha256(self.encoded).digest()

    @property
    def chunk_count(self) -> int:
        return chunk_count(self.plaintext_size, self.chunk_size)

    @property
    def payload_size(self) -> int:
        return self.plaintext_size + TAG_SIZE * self.chunk_count

    @property
    def sealed_size(self) -> int:
        """Exact size of the whole ``.esm`` file this header describes."""
        return len(self.encoded) + self.payload_size

    def chunk_plaintext_size(self, index: int) -> int:
        """Plaintext bytes in chunk ``index`` (only the final chunk may be short)."""
        if index < self.chunk_count - 1:
            return self.chunk_size
        return self.plaintext_size - self.chunk_size * (self.chunk_count - 1)


def encode_header(
    *,
    cipher: str,
    family: str,
    version: int,
    hardware: Sequence[str],
    chunk_size: int,
    plaintext_size: int,
    digest_alg: str,
    plaintext_digest: bytes,
    nonce_prefix: bytes,
    key_commitment: bytes,
) -> SealedModelHeader:
    """Build the canonical authenticated header. Raises FormatError on any invalid value."""
    if cipher not in CIPHER_IDS:
        raise FormatError(
            f"unknown cipher {cipher!r}; choose one of {', '.join(CIPHER_IDS)}", field="cipher"
        )
    hw: Any = hardware
    if not isinstance(hardware, str) and all(isinstance(h, str) for h in hardware):
        hw = sorted(set(hardware))
    body = {
        "chunk_size": chunk_size,
        "digest_alg": digest_alg,
        "family": family,
        "hardware": hw,
        "key_commitment": bytes(key_commitment).hex(),
        "nonce_prefix": bytes(nonce_prefix).hex(),
        "plaintext_digest": bytes(plaintext_digest).hex(),
        "plaintext_size": plaintext_size,
        "version": version,
    }
    _validate_body(body)
    text = _canonical_json(body)
    if len(text) > MAX_HEADER_SIZE:
        raise FormatError(
            f"sealed model header would be {len(text)} bytes; the maximum is {MAX_HEADER_SIZE}",
            field="header",
        )
    preamble = PREAMBLE.pack(MAGIC, FORMAT_VERSION, CIPHER_IDS[cipher], len(text))
    return decode_header(preamble + text)


def parse_preamble(preamble: bytes) -> tuple[int, int]:
    """Check the fixed 16-byte preamble; return ``(aead_id, header_length)``."""
    if len(preamble) < len(MAGIC) and MAGIC.startswith(preamble):
        raise FormatError(
            f"sealed model is truncated: {len(preamble)} of {PREAMBLE_SIZE} preamble bytes",
            field="preamble",
        )
    if preamble[: len(MAGIC)] != MAGIC:
        raise FormatError(
            f"not a sealed model: the file does not start with {MAGIC!r}", field="magic"
        )
    if len(preamble) < PREAMBLE_SIZE:
        raise FormatError(
            f"sealed model is truncated: {len(preamble)} of {PREAMBLE_SIZE} preamble bytes",
            field="preamble",
        )
    _magic, version, aead_id, header_length = PREAMBLE.unpack(preamble[:PREAMBLE_SIZE])
    if version != FORMAT_VERSION:
        raise FormatError(
            f"unsupported sealed model format version {version}; "
            f"this edgeseal reads version {FORMAT_VERSION}",
            field="format_version",
        )
    if aead_id not in CIPHER_NAMES:
        known = ", ".join(f"0x{i:04x} ({n})" for i, n in CIPHER_NAMES.items())
        raise FormatError(
            f"unsupported sealed model cipher id 0x{aead_id:04x}; this edgeseal reads {known}",
            field="aead_id",
        )
    if header_length == 0:
        raise FormatError("sealed model header length is 0", field="header_length")
    if header_length > MAX_HEADER_SIZE:
        raise FormatError(
            f"sealed model header length {header_length} exceeds the maximum of "
            f"{MAX_HEADER_SIZE} bytes",
            field="header_length",
        )
    return aead_id, header_length


def decode_header(authenticated_header: bytes) -> SealedModelHeader:
    """Parse and strictly validate preamble + header bytes (exactly, nothing after)."""
    data = bytes(authenticated_header)
    aead_id, header_length = parse_preamble(data[:PREAMBLE_SIZE])
    text = data[PREAMBLE_SIZE:]
    if len(text) != header_length:
        raise FormatError(
            f"sealed model header is {len(text)} bytes but the preamble declares {header_length}",
            field="header_length",
        )
    body = _parse_json(text)
    _validate_body(body)
    if _canonical_json(body) != text:
        raise FormatError(
            "sealed model header is not canonically encoded "
            "(sorted keys, no whitespace, ASCII, sorted unique hardware classes)",
            field="header",
        )
    return SealedModelHeader(
        format_version=FORMAT_VERSION,
        cipher=CIPHER_NAMES[aead_id],
        family=body["family"],
        version=body["version"],
        hardware=tuple(body["hardware"]),
        chunk_size=body["chunk_size"],
        plaintext_size=body["plaintext_size"],
        digest_alg=body["digest_alg"],
        plaintext_digest=bytes.fromhex(body["plaintext_digest"]),
        nonce_prefix=bytes.fromhex(body["nonce_prefix"]),
        key_commitment=bytes.fromhex(body["key_commitment"]),
        encoded=data,
    )


def _canonical_json(body: dict[str, Any]) -> bytes:
    return json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def _parse_json(text: bytes) -> dict[str, Any]:
    try:
        decoded = text.decode("ascii")
    except UnicodeDecodeError:
        raise FormatError("sealed model header is not ASCII", field="header") from None
    try:
        body = strict_json.loads(decoded)
    except strict_json.StrictJSONError as exc:
        if exc.rule == "duplicate-key":
            raise FormatError(
                f"sealed model header repeats the key {exc.token!r}", field=exc.token
            ) from None
        if exc.rule in ("float", "constant"):
            raise FormatError(
                f"sealed model header contains a non-integer number {str(exc.token)[:20]!r}"
            ) from None
        # syntax, nesting, or an over-long integer literal
        raise FormatError(
            f"sealed model header is not valid JSON: {str(exc)[:120]}", field="header"
        ) from None
    if not isinstance(body, dict):
        raise FormatError("sealed model header is not a JSON object", field="header")
    return body


def _check_int(body: dict[str, Any], key: str, low: int, high: int) -> None:
    value = body[key]
    if type(value) is not int:
        raise FormatError(f"header field {key} must be an integer", field=key)
    if not low <= value <= high:
        raise FormatError(
            f"header field {key} is {value}; it must be between {low} and {high}", field=key
        )


def _check_hex(body: dict[str, Any], key: str, size: int) -> None:
    value = body[key]
    if (
        not isinstance(value, str)
        or len(value) != 2 * size
        or any(c not in "0123456789abcdef" for c in value)
    ):
        raise FormatError(
            f"header field {key} must be {size} bytes as {2 * size} lowercase hex digits",
            field=key,
        )


def _validate_body(body: dict[str, Any]) -> None:
    keys = set(body)
    if keys != _HEADER_KEYS:
        missing = sorted(_HEADER_KEYS - keys)
        unknown = sorted(keys - _HEADER_KEYS)
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing)}")
        if unknown:
            parts.append(f"unknown {', '.join(repr(k)[:40] for k in unknown[:5])}")
        raise FormatError(
            f"sealed model header fields are wrong: {'; '.join(parts)}",
            field=(missing or unknown)[0][:40],
        )
    if not is_valid_name(body["family"]):
        raise FormatError(
            f"header field family {str(body['family'])[:80]!r} is invalid: use {NAME_RULE}",
            field="family",
        )
    _check_int(body, "version", 0, MAX_MODEL_VERSION)
    hardware = body["hardware"]
    if not isinstance(hardware, list) or not 1 <= len(hardware) <= MAX_HARDWARE_CLASSES:
        raise FormatError(
            f"header field hardware must be a list of 1 to {MAX_HARDWARE_CLASSES} hardware classes",
            field="hardware",
        )
    for item in hardware:
        if not is_valid_name(item):
            raise FormatError(
                f"hardware class {str(item)[:80]!r} is invalid: use {NAME_RULE}", field="hardware"
            )
    if hardware != sorted(set(hardware)):
        raise FormatError("header field hardware must be sorted and unique", field="hardware")
    _check_int(body, "chunk_size", MIN_CHUNK_SIZE, MAX_CHUNK_SIZE)
    _check_int(body, "plaintext_size", 0, MAX_PLAINTEXT_SIZE)
    digest_alg = body["digest_alg"]
    if not isinstance(digest_alg, str):
        raise FormatError("header field digest_alg must be a string", field="digest_alg")
    if digest_alg not in DIGEST_SIZES:
        raise FormatError(
            f"unsupported plaintext digest algorithm {digest_alg[:40]!r}; "
            f"this edgeseal reads {', '.join(DIGEST_SIZES)}",
            field="digest_alg",
        )
    _check_hex(body, "plaintext_digest", DIGEST_SIZES[digest_alg])
    _check_hex(body, "nonce_prefix", NONCE_PREFIX_SIZE)
    _check_hex(body, "key_commitment", KEY_COMMITMENT_SIZE)
