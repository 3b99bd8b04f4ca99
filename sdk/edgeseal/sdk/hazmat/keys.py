"""The per-release content key, wrapped so that it cannot leak by accident.

A content key is 32 random bytes (AES-256-GCM or ChaCha20-Poly1305). Release
tooling must hand it to :func:`edgeseal.sdk.envelope.seal_envelope` once per
device, so it has to exist as an object; this wrapper makes the easy mistakes
hard: it never appears in ``repr``/``str``/logs, refuses to be pickled, and
compares in constant time. Getting the raw bytes takes an explicit, greppable
call to :meth:`ContentKey.secret_bytes`.
"""

from __future__ import annotations

import hmac
import secrets
from typing import NoReturn

from edgeseal.sdk.errors import SealError

CONTENT_KEY_SIZE = 32


class ContentKey:
    """A 256-bit symmetric key that never reprs, prints or pickles its value."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        key = bytes(key)
        if len(key) != CONTENT_KEY_SIZE:
            raise SealError(
                f"a content key is {CONTENT_KEY_SIZE} bytes, not {len(key)}", field="content_key"
            )
        self._key = key

    @classmethod
    def generate(cls) -> ContentKey:
        """A fresh key from the operating system's CSPRNG."""
        return cls(secrets.token_bytes(CONTENT_KEY_SIZE))

    def secret_bytes(self) -> bytes:
        """The raw key. Every call site is a place where the key can escape: keep them few."""
        return self._key

    def __repr__(self) -> str:
        return "ContentKey(<redacted>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ContentKey):
            return NotImplemented
        return hmac.compare_digest(self._key, other._key)

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> NoReturn:
        raise TypeError("ContentKey refuses to be pickled; seal it in an envelope instead")
