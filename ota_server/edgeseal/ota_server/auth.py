"""API tokens and roles.

A token is ``est1.<id>.<secret>``: ``id`` is a public 16-hex-digit handle that
finds the row, ``secret`` is 32 random bytes (base64url). Only SHA-256 of the
secret is stored; a check hashes the presented secret and compares with
:func:`hmac.compare_digest`, so timing reveals neither the secret nor whether
the id exists (an unknown id is compared against a dummy hash). The token is
shown once, at creation, and never logged.

Roles (least to most privileged for fleet management):

* ``viewer`` - reads releases, devices, families, the audit log;
* ``operator`` - also adds devices;
* ``release-manager`` of one family - creates, uploads, signs and yanks that
  family's releases (and reads like a viewer);
* ``admin`` - creates tokens and does what an operator does. Separation of
  duties: an admin is *not* a release manager of any family.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from edgeseal.ota_server.db import TokenRow, isotime
from edgeseal.ota_server.service_errors import BadRequestError, ForbiddenError, UnauthorizedError
from edgeseal.sdk.hazmat.format import NAME_RULE, is_valid_name

ADMIN = "admin"
RELEASE_MANAGER = "release-manager"
OPERATOR = "operator"
VIEWER = "viewer"
ROLES = (ADMIN, RELEASE_MANAGER, OPERATOR, VIEWER)

TOKEN_PREFIX = "est1"  # noqa: S105 - a format tag, not a secret
SECRET_BYTES = 32
MAX_TOKEN_LENGTH = 128
_TOKEN_RE = re.compile(r"^est1\.([0-9a-f]{16})\.([A-Za-z0-9_-]{43})$")
_NAME_RE = re.compile(r"^[^\x00-\x1f\x7f]{1,128}$")
_DUMMY_HASH = hashlib.sha256(b"edgeseal: no such token").hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's name, role and (for release managers) family."""

    name: str
    role: str
    family: str | None
    token_id: str

    def as_json(self) -> dict[str, str | None]:
        return {"name": self.name, "role": self.role, "family": self.family}


#: The actor of a request that presented no valid token (for the audit log).
ANONYMOUS = "anonymous"


def _secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def create_token(
    session: Session, *, name: str, role: str, family: str | None, now: datetime
) -> tuple[str, Principal]:
    """Store a new token's hash; return the token (shown once) and its principal."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise BadRequestError("token name must be 1-128 characters without control characters")
    if role not in ROLES:
        raise BadRequestError(f"role must be one of {', '.join(ROLES)}", field="role")
    if role == RELEASE_MANAGER:
        if not is_valid_name(family):
            raise BadRequestError(
                f"a release-manager token needs a model family ({NAME_RULE})", field="family"
            )
    elif family is not None:
        raise BadRequestError("only release-manager tokens have a family", field="family")
    token_id = secrets.token_hex(8)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(SECRET_BYTES)).rstrip(b"=").decode()
    session.add(
        TokenRow(
            id=token_id,
            name=name,
            role=role,
            family=family,
            secret_sha256=_secret_hash(secret),
            created=isotime(now),
        )
    )
    return f"{TOKEN_PREFIX}.{token_id}.{secret}", Principal(name, role, family, token_id)


def authenticate(session: Session, authorization: str | None) -> Principal:
    """The principal of an ``Authorization: Bearer <token>`` header; else UnauthorizedError."""
    if not authorization:
        raise UnauthorizedError("this call needs an API token (Authorization: Bearer <token>)")
    scheme, _, token = authorization.partition(" ")
    match = _TOKEN_RE.match(token.strip()) if len(token) <= MAX_TOKEN_LENGTH else None
    if scheme.lower() != "bearer" or match is None:
        raise UnauthorizedError("the API token is malformed")
    token_id, secret = match.groups()
    row = session.get(TokenRow, token_id)
    expected = row.secret_sha256 if row is not None else _DUMMY_HASH
    if not hmac.compare_digest(_secret_hash(secret), expected) or row is None:
        raise UnauthorizedError("the API token is not valid")
    return Principal(row.name, row.role, row.family, row.id)


def require_viewer(principal: Principal) -> None:
    """Any valid token may read."""
    if principal.role not in ROLES:  # pragma: no cover - rows are validated on creation
        raise ForbiddenError(f"unknown role {principal.role!r}")


def require_operator(principal: Principal) -> None:
    if principal.role not in (OPERATOR, ADMIN):
        raise ForbiddenError(f"this call needs the operator or admin role, not {principal.role}")


def require_admin(principal: Principal) -> None:
    if principal.role != ADMIN:
        raise ForbiddenError(f"this call needs the admin role, not {principal.role}")


def require_release_manager(principal: Principal, family: str) -> None:
    if principal.role != RELEASE_MANAGER or principal.family != family:
        raise ForbiddenError(f"this call needs a release-manager token of family {family!r}")
