"""STREAM chunked AEAD for the sealed-model payload (no I/O).

This is the nonce-based STREAM construction of Hoang, Reyhanitabar, Rogaway
and Vizar ("Online Authenticated-Encryption and its Nonce-Reuse
Misuse-Resistance", CRYPTO 2015): chunk ``i`` is sealed with

    nonce = nonce_prefix (7 bytes) || i as u32 big-endian || last flag (1 byte)
    aad   = SHA-256 of the authenticated header

so a chunk only opens at its own position (no reordering or duplication), the
final chunk only opens as final (no truncation at a chunk boundary, no
extension after it), and every chunk only opens under its own header (no
relabelling). The random prefix keeps nonces unique if a key were ever reused.

A content key also gets a *key commitment* in the header, an HMAC of a fixed
label: AES-GCM and ChaCha20-Poly1305 are not key-committing, and the check
turns "a different key" into an early, cheap refusal.

:class:`StreamOpener` releases a chunk's plaintext as soon as that chunk
authenticates. Until the final chunk has opened, the plaintext is an
authentic *prefix* of the model, not the model: callers must not act on it
before :attr:`StreamOpener.finished` is true. :meth:`StreamOpener.open_chunk_into`
decrypts into the caller's memory; the AEAD writes plaintext there *before* it
checks the tag, so on failure it wipes that memory before raising.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from typing import TypeAlias

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from edgeseal.sdk.errors import IntegrityError
from edgeseal.sdk.hazmat.format import NONCE_PREFIX_SIZE, TAG_SIZE
from edgeseal.sdk.hazmat.keys import ContentKey

logger = logging.getLogger(__name__)

#: What the AEADs read from and write into without a copy.
Buffer: TypeAlias = bytes | bytearray | memoryview

MAX_CHUNKS = 2**32
_COMMITMENT_LABEL = b"edgeseal sealed model v1 key commitment"

_AEADS: dict[str, Callable[[bytes], AESGCM | ChaCha20Poly1305]] = {
    "aes-256-gcm": AESGCM,
    "chacha20-poly1305": ChaCha20Poly1305,
}


def chunk_nonce(nonce_prefix: bytes, index: int, *, last: bool) -> bytes:
    """The 96-bit nonce of chunk ``index``."""
    if len(nonce_prefix) != NONCE_PREFIX_SIZE:
        raise ValueError(f"nonce prefix must be {NONCE_PREFIX_SIZE} bytes")
    if not 0 <= index < MAX_CHUNKS:
        raise ValueError("chunk index out of range")
    return nonce_prefix + index.to_bytes(4, "big") + (b"\x01" if last else b"\x00")


def key_commitment(key: ContentKey, nonce_prefix: bytes) -> bytes:
    """HMAC-SHA256(key, label || nonce_prefix): commits the header to one key."""
    return hmac.digest(key.secret_bytes(), _COMMITMENT_LABEL + nonce_prefix, "sha256")


class _Stream:
    def __init__(self, key: ContentKey, cipher: str, nonce_prefix: bytes, aad: bytes) -> None:
        if cipher not in _AEADS:
            raise ValueError(f"unknown cipher {cipher!r}")
        if len(nonce_prefix) != NONCE_PREFIX_SIZE:
            raise ValueError(f"nonce prefix must be {NONCE_PREFIX_SIZE} bytes")
        self._aead = _AEADS[cipher](key.secret_bytes())
        self._prefix = bytes(nonce_prefix)
        self._aad = bytes(aad)
        self._index = 0
        self._finished = False

    @property
    def finished(self) -> bool:
        """True once the final chunk has been processed."""
        return self._finished

    def _next_nonce(self, last: bool) -> bytes:
        if self._finished:
            raise ValueError("the stream already ended with its final chunk")
        nonce = chunk_nonce(self._prefix, self._index, last=last)
        self._index += 1
        self._finished = last
        return nonce


class StreamSealer(_Stream):
    """Seals chunks in order; pass ``last=True`` exactly once, for the final chunk."""

    def seal_chunk(self, plaintext: Buffer, *, last: bool) -> bytes:
        return self._aead.encrypt(self._next_nonce(last), plaintext, self._aad)


class StreamOpener(_Stream):
    """Opens chunks in order; raises :class:`IntegrityError` on the first one that fails."""

    def open_chunk(self, ciphertext: Buffer, *, last: bool) -> bytes:
        index = self._index
        if len(ciphertext) < TAG_SIZE:
            logger.debug("chunk %d is shorter than a tag (%d bytes)", index, len(ciphertext))
            raise IntegrityError
        try:
            return self._aead.decrypt(self._next_nonce(last), ciphertext, self._aad)
        except InvalidTag:
            logger.debug("chunk %d (last=%s) failed authentication", index, last)
            raise IntegrityError from None

    def open_chunk_into(
        self, ciphertext: Buffer, out: memoryview | bytearray, *, last: bool
    ) -> None:
        """Decrypt into ``out``, which must be exactly ``len(ciphertext) - TAG_SIZE`` bytes.

        Saves the allocation (and page faults) of a fresh plaintext object per
        chunk. cryptography's ``decrypt_into`` leaves the *unauthenticated*
        plaintext in ``out`` when the tag does not match, so this zeroes
        ``out`` before raising :class:`IntegrityError`: the caller never holds
        plaintext of a chunk that failed.
        """
        index = self._index
        if len(ciphertext) < TAG_SIZE:
            logger.debug("chunk %d is shorter than a tag (%d bytes)", index, len(ciphertext))
            raise IntegrityError
        if len(out) != len(ciphertext) - TAG_SIZE:
            raise ValueError(f"output must be {len(ciphertext) - TAG_SIZE} bytes, not {len(out)}")
        try:
            self._aead.decrypt_into(self._next_nonce(last), ciphertext, self._aad, out)
        except InvalidTag:
            out[:] = bytes(len(out))
            logger.debug("chunk %d (last=%s) failed authentication", index, last)
            raise IntegrityError from None
