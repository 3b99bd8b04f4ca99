"""One exception root for everything the hardware layer refuses or fails at.

Every error carries a human ``message`` and, when the TPM answered, its
response code ``rc``. ``diagnostics()`` is what a CLI prints.
"""

from __future__ import annotations


class HardwareError(Exception):
    """Root of every error raised by :mod:`edgeseal.hardware`."""

    def __init__(self, message: str, *, rc: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.rc = rc

    def diagnostics(self) -> str:
        """A human explanation, with the TPM response code when there is one."""
        if self.rc is None:
            return self.message
        return f"{self.message} (TPM response code 0x{self.rc:03x})"


class TPMUnavailableError(HardwareError):
    """The TPM (or its emulator) cannot be reached or started."""


class TPMCommandError(HardwareError):
    """The TPM refused or failed a command for a reason not covered below."""


class PolicyCheckError(HardwareError):
    """A policy session did not satisfy an object's policy (e.g. PCRs changed)."""


class KeyNotFoundError(HardwareError):
    """An expected key, persistent handle or NV index does not exist."""


class NVCounterError(HardwareError):
    """A monotonic NV counter could not be defined, incremented or read."""


class EmulatorError(HardwareError):
    """The emulated device (swtpm, its CA, its boot manifest) is misconfigured."""


class PolicyFormatError(HardwareError):
    """A signed PCR policy (or a sealed blob) is malformed, oversized or of an unknown version."""


class KeyExistsError(HardwareError):
    """A key already exists where a new one was to be created (pass replace=True to rotate)."""


class AttestationUnsupportedError(HardwareError):
    """The backend cannot attest (no TPM), or the TPM's EK is of a kind not supported yet."""


class CredentialError(HardwareError):
    """The TPM refused a credential (MakeCredential blob) in TPM2_ActivateCredential.

    The credential was made for another EK or another AK, or was corrupted on the way.
    """
