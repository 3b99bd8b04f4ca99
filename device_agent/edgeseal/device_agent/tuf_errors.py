"""Errors of the agent's TUF client, split by who is at fault.

python-tuf raises ``RepositoryError`` (the repository or an attacker served
metadata that does not verify), ``DownloadError`` (the network failed) and
``OSError`` (the local disk failed). The agent reacts differently to each: a
verification failure is an attack or a broken release and is reported, a
download failure is retried at the next poll, a storage failure is a device
fault. :func:`normalise` maps every python-tuf, urllib3 and OS error to one of
the classes below so that no foreign exception leaves the TUF client.
"""

from __future__ import annotations

from tuf.api import exceptions as tuf_exc

from edgeseal.device_agent.errors import AgentError


class TUFClientError(AgentError):
    """Root of every error raised by the agent's TUF client."""

    def __init__(
        self,
        message: str,
        *,
        target: str | None = None,
        url: str | None = None,
        cause: str | None = None,
    ) -> None:
        super().__init__(message, field=None)
        self.target = target
        self.url = url
        self.cause = cause

    def diagnostics(self) -> str:
        parts = [self.message]
        if self.target is not None:
            parts.append(f"target: {self.target}")
        if self.url is not None:
            parts.append(f"url: {self.url}")
        if self.cause is not None:
            parts.append(f"cause: {self.cause}")
        return "; ".join(parts)


class TUFRepositoryError(TUFClientError):
    """Metadata failed TUF verification (signature, version, expiry, length, hash).

    The repository, a mirror or an attacker is at fault; the trusted local
    metadata is unchanged. Retrying against the same server does not help.
    """


class TargetNotFoundError(TUFClientError):
    """No trusted targets metadata lists this target path."""


class UnknownFamilyError(TUFClientError):
    """The top-level targets role does not delegate to this model family."""


class TargetVerificationError(TUFClientError):
    """A downloaded target does not match the trusted length or hashes.

    Also raised for a server that sends more bytes than the trusted length
    (endless-data attack) and for a target whose trusted length is over the
    configured bound. The partial file has been deleted.
    """


class TUFDownloadError(TUFClientError):
    """The network failed (connection, HTTP status) after all retries."""


class TUFTimeoutError(TUFDownloadError):
    """A connect or read timeout expired (slow-retrieval protection) after all retries."""


class TUFStorageError(TUFClientError):
    """Reading or writing local metadata or downloads failed (disk full, permissions)."""


def normalise(err: BaseException, *, target: str | None = None) -> TUFClientError:
    """Map a python-tuf / OS error to the :class:`TUFClientError` that says who is at fault."""
    if isinstance(err, TUFClientError):
        return err
    cause = f"{type(err).__name__}: {err}"
    if isinstance(err, tuf_exc.SlowRetrievalError):
        return TUFTimeoutError("the repository did not answer in time", target=target, cause=cause)
    if isinstance(err, tuf_exc.DownloadLengthMismatchError):
        # More bytes than the bound: an endless-data attack or a broken server.
        return TUFRepositoryError(
            "the repository sent more metadata than allowed", target=target, cause=cause
        )
    if isinstance(err, tuf_exc.DownloadHTTPError):
        return TUFDownloadError(
            f"the repository answered HTTP {err.status_code}", target=target, cause=cause
        )
    if isinstance(err, tuf_exc.DownloadError):
        return TUFDownloadError(
            "downloading from the repository failed", target=target, cause=cause
        )
    if isinstance(err, tuf_exc.RepositoryError):
        return TUFRepositoryError(
            "repository metadata failed TUF verification", target=target, cause=cause
        )
    if isinstance(err, OSError):
        return TUFStorageError("local TUF storage failed", target=target, cause=cause)
    return TUFClientError("unexpected TUF client failure", target=target, cause=cause)
