"""Sealed models: the safe recipes.

* :func:`seal_model` encrypts a model for a release under a fresh random
  content key and returns that key (wrapped: it never prints itself) so the
  release tooling can seal it to each device with
  :func:`edgeseal.sdk.envelope.seal_envelope`.
* :func:`open_sealed_model` authenticates and decrypts a sealed model into
  memory. It has no output-file parameter on purpose: the plaintext model
  exists only as ``bytes`` handed to the interpreter and never touches a disk.
* :func:`inspect_sealed_model` reads the header without a key. Nothing it
  returns is authenticated (``header.authenticated`` is False).

The only choice is the cipher: ``"aes-256-gcm"`` (default) or
``"chacha20-poly1305"`` for CPUs without AES instructions, such as the
Raspberry Pi 4's Cortex-A72. The plaintext digest is always BLAKE3 here; a
caller who needs SHA-256 seals with :func:`edgeseal.sdk.hazmat.container.seal_stream`,
and :func:`open_sealed_model` verifies whichever algorithm the header names.
Format details: :mod:`edgeseal.sdk.hazmat.format`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

from edgeseal.sdk.errors import SealError
from edgeseal.sdk.hazmat.container import open_stream, read_header, seal_stream
from edgeseal.sdk.hazmat.digest import DEFAULT_DIGEST_ALG
from edgeseal.sdk.hazmat.format import (
    CIPHER_IDS,
    MAX_HARDWARE_CLASSES,
    MAX_MODEL_VERSION,
    NAME_RULE,
    SealedModelHeader,
    is_valid_name,
)
from edgeseal.sdk.hazmat.keys import ContentKey

__all__ = [
    "CIPHERS",
    "DEFAULT_CHUNK_SIZE",
    "ContentKey",
    "OpenedModel",
    "SealedModelHeader",
    "SealedModelInfo",
    "inspect_sealed_model",
    "open_sealed_model",
    "seal_model",
]

#: 1 MiB: large enough that per-chunk overhead is noise, small enough to bound memory.
DEFAULT_CHUNK_SIZE = 1024 * 1024
CIPHERS = tuple(CIPHER_IDS)


@dataclass(frozen=True)
class SealedModelInfo:
    """Result of :func:`seal_model`: the header written and the release's content key."""

    header: SealedModelHeader
    content_key: ContentKey


@dataclass(frozen=True)
class OpenedModel:
    """An authenticated, decrypted model. ``repr`` shows its size, never its bytes."""

    header: SealedModelHeader
    plaintext: bytes = field(repr=False)

    def __repr__(self) -> str:
        h = self.header
        return (
            f"OpenedModel(family={h.family!r}, version={h.version}, "
            f"plaintext=<{len(self.plaintext)} bytes>)"
        )


def seal_model(
    src: BinaryIO,
    dst: BinaryIO,
    *,
    family: str,
    version: int,
    hardware: Sequence[str],
    cipher: str = "aes-256-gcm",
) -> SealedModelInfo:
    """Seal the model read from seekable ``src`` into ``dst`` under a fresh content key.

    ``family`` and each hardware class: 1-64 of ``a-z 0-9 . _ -``, starting
    with a letter or digit. ``version`` is a non-negative integer; devices
    refuse to go below the highest version they have run. Memory use is
    bounded by the chunk size. If this raises, discard ``dst``.
    """
    _check_arguments(family, version, hardware, cipher)
    key = ContentKey.generate()
    header = seal_stream(
        src,
        dst,
        key=key,
        cipher=cipher,
        family=family,
        version=version,
        hardware=hardware,
        chunk_size=DEFAULT_CHUNK_SIZE,
        digest_alg=DEFAULT_DIGEST_ALG,
    )
    return SealedModelInfo(header=header, content_key=key)


def open_sealed_model(src: BinaryIO, *, content_key: ContentKey) -> OpenedModel:
    """Authenticate and decrypt a sealed model into memory; check its plaintext digest.

    Raises :class:`~edgeseal.sdk.errors.FormatError` for malformed, truncated
    or over-long files and :class:`~edgeseal.sdk.errors.IntegrityError` (one
    opaque message) for anything that fails authentication, including a
    wrong key. No plaintext is returned unless the whole file authenticated.
    Check ``header.family``/``hardware``/``version`` against what you expect.
    """
    header, plaintext = open_stream(src, key=content_key)
    return OpenedModel(header=header, plaintext=plaintext)


def inspect_sealed_model(src: BinaryIO) -> SealedModelHeader:
    """Parse and validate a sealed model's header without a key. NOT authenticated."""
    return read_header(src)


def _check_arguments(family: str, version: int, hardware: Sequence[str], cipher: str) -> None:
    if cipher not in CIPHER_IDS:
        raise SealError(
            f"unknown cipher {cipher!r}; choose one of {', '.join(CIPHER_IDS)}", field="cipher"
        )
    if not is_valid_name(family):
        raise SealError(f"model family {family!r} is invalid: use {NAME_RULE}", field="family")
    if type(version) is not int or not 0 <= version <= MAX_MODEL_VERSION:
        raise SealError(
            f"model version must be an integer from 0 to {MAX_MODEL_VERSION}, not {version!r}",
            field="version",
        )
    if isinstance(hardware, str | bytes):
        raise SealError(
            "hardware must be a list of hardware classes, not one string", field="hardware"
        )
    classes = list(hardware)
    if not 1 <= len(set(classes)) <= MAX_HARDWARE_CLASSES:
        raise SealError(
            f"give 1 to {MAX_HARDWARE_CLASSES} hardware classes, not {len(classes)}",
            field="hardware",
        )
    for item in classes:
        if not is_valid_name(item):
            raise SealError(
                f"hardware class {item!r} is invalid: use {NAME_RULE}", field="hardware"
            )
