"""One exception root for everything :mod:`edgeseal.sdk` refuses.

The split follows who is at fault, so a caller can react without parsing text:

* :class:`FormatError` - the bytes are not a well-formed artifact this version
  reads (bad magic, unknown version or algorithm, a field out of bounds, a
  truncated or over-long file). These checks run before any key is used, so
  their messages can name the field and say what was expected.
* :class:`IntegrityError` - authenticated decryption failed. It carries one
  fixed, opaque message whatever the cause (flipped bit, reordered chunk, wrong
  key, relabelled header): telling an attacker *which* check failed helps them
  and helps nobody else. Details go to debug logs only (never key material).
* :class:`EnvelopeError` - an HPKE key envelope is malformed, for another
  suite, or does not open for this device and this sealed model.
* :class:`AttestationError` - attestation evidence (a TPM quote, an attestation
  key, a credential, a trust bundle) does not check out. The message says
  exactly which check failed: unlike a sealed model, this evidence is public and
  the person reading the verdict needs to know what to look at.
* :class:`SealError` - the caller asked to seal something that cannot be
  sealed as asked (invalid family name, model too large, source not seekable).

``diagnostics()`` is what a CLI prints.
"""

from __future__ import annotations


class EdgesealError(Exception):
    """Root of every error raised by :mod:`edgeseal.sdk`."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def diagnostics(self) -> str:
        """A human explanation, naming the offending field when there is one."""
        if self.field is None:
            return self.message
        return f"{self.message} (field: {self.field})"


class FormatError(EdgesealError):
    """The input is malformed, over a bound, or of a version/algorithm this reader refuses."""


class IntegrityError(EdgesealError):
    """Authenticated decryption failed. Deliberately opaque: one message for every cause."""

    MESSAGE = "sealed model failed authentication"

    def __init__(self) -> None:
        super().__init__(self.MESSAGE)

    def diagnostics(self) -> str:
        return (
            f"{self.message}: it was modified, truncated, relabelled, or the content key "
            "does not belong to it. Do not use this file; fetch it again."
        )


class EnvelopeError(EdgesealError):
    """A key envelope is malformed, of an unsupported suite, or does not open."""


class AttestationError(EdgesealError):
    """Attestation evidence (quote, attestation key, trust bundle) does not check out."""


class SealError(EdgesealError, ValueError):
    """The arguments given to a sealing call cannot produce a valid sealed model."""
