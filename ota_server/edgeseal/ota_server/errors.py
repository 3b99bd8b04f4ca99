"""One exception root for everything :mod:`edgeseal.ota_server` refuses.

The split follows who is at fault, like python-tuf's ``RepositoryError`` vs
``DownloadError``:

* :class:`KeyFileError` - a key file cannot be read: wrong passphrase, not a
  P-256 key, corrupt PEM. The message names the file, never the passphrase.
* :class:`RepositoryError` - the TUF repository refused an operation. Its
  subclasses say why (bad name or path, wrong version, too few signatures, an
  unknown family, ...). A refused operation has changed nothing on disk.

``diagnostics()`` (inherited from :class:`edgeseal.sdk.errors.EdgesealError`)
is what a CLI prints and what the web app puts in its error body.
"""

from __future__ import annotations

from edgeseal.sdk.errors import EdgesealError


class OTAServerError(EdgesealError):
    """Root of every error raised by :mod:`edgeseal.ota_server`."""


class KeyFileError(OTAServerError):
    """A key file is unreadable, encrypted with another passphrase, or of the wrong type."""


class RepositoryError(OTAServerError):
    """The TUF repository refused an operation; nothing on disk was changed."""


class RepositoryStateError(RepositoryError):
    """The repository on disk is missing, already exists, or is inconsistent."""


class InvalidNameError(RepositoryError):
    """A family name or a target path breaks the naming rules."""


class UnknownFamilyError(RepositoryError):
    """The family has no delegation (or no published metadata yet)."""


class UnknownTargetError(RepositoryError):
    """A target to remove is not listed, or a listed target file is missing on disk."""


class ProposalError(RepositoryError):
    """Signed metadata is not an acceptable next version (version, expiry, structure)."""


class KeyConfigError(RepositoryError):
    """Keys, threshold or signers given for a role do not fit together."""


class SignatureError(RepositoryError):
    """A signature does not verify with a key of the role it claims to sign for."""


class ThresholdError(SignatureError):
    """Fewer valid signatures than the role's threshold."""

    def __init__(self, role: str, *, threshold: int, keys: int, valid: int) -> None:
        super().__init__(
            f"{role}: {threshold} of {keys} required signatures, {valid} valid", field=role
        )
        self.role = role
        self.threshold = threshold
        self.keys = keys
        self.valid = valid

    def diagnostics(self) -> str:
        missing = self.threshold - self.valid
        return (
            f"{self.message}; {missing} more signature(s) from the keys currently "
            f"delegated to '{self.role}' are needed"
        )
