"""What the server's services refuse, each error carrying its HTTP status and a stable code.

Split by who is at fault, like the rest of edgeseal: the caller sent bad input
(:class:`BadRequestError`), has no valid token (:class:`UnauthorizedError`) or not the
role (:class:`ForbiddenError`), asked for something missing (:class:`NotFoundError`) or
in the wrong state (:class:`ConflictError`), or sent too much (:class:`TooLargeError`).
The API turns each into ``{"error": {"code", "message"}}`` with ``status``;
the CLI prints ``diagnostics()``. Messages never contain a secret.
"""

from __future__ import annotations

from edgeseal.ota_server.errors import (
    OTAServerError,
    ProposalError,
    RepositoryStateError,
    SignatureError,
    UnknownFamilyError,
    UnknownTargetError,
)
from edgeseal.sdk.errors import EdgesealError


class ServiceError(OTAServerError):
    """A request the server refuses. ``status`` and ``code`` are what the API answers."""

    status = 400
    code = "bad-request"


class BadRequestError(ServiceError):
    status = 400
    code = "bad-request"


class UnauthorizedError(ServiceError):
    status = 401
    code = "unauthorized"


class ForbiddenError(ServiceError):
    status = 403
    code = "forbidden"


class NotFoundError(ServiceError):
    status = 404
    code = "not-found"


class ConflictError(ServiceError):
    status = 409
    code = "conflict"


class TooLargeError(ServiceError):
    status = 413
    code = "too-large"


class ConfigError(OTAServerError):
    """The data directory or its ``server.toml`` cannot be used."""


class AuditChainError(OTAServerError):
    """The audit log does not verify: an entry was edited, removed, reordered or forged.

    ``seq`` names the first entry found bad (the one a person should look at).
    """

    def __init__(self, message: str, *, seq: int) -> None:
        super().__init__(message, field=f"seq {seq}")
        self.seq = seq


def http_status(exc: BaseException) -> tuple[int, str]:
    """The API status and code of any refusal (500 for what is not an edgeseal error)."""
    if isinstance(exc, ServiceError):
        return exc.status, exc.code
    if isinstance(exc, UnknownFamilyError | UnknownTargetError):
        return 404, "not-found"
    if isinstance(exc, ProposalError | RepositoryStateError):
        return 409, "conflict"
    if isinstance(exc, SignatureError):
        return 400, "bad-signature"
    if isinstance(exc, EdgesealError):
        return 400, "refused"
    return 500, "internal"
