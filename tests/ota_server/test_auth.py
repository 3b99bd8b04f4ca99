"""API tokens: creation, storage as a hash, constant-time check, roles."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edgeseal.ota_server.auth import (
    authenticate,
    create_token,
    require_admin,
    require_operator,
    require_release_manager,
    require_viewer,
)
from edgeseal.ota_server.db import Database, TokenRow
from edgeseal.ota_server.service_errors import (
    BadRequestError,
    ForbiddenError,
    UnauthorizedError,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database.open(tmp_path / "server.db")
    database.create_all()
    yield database
    database.close()


def make(db: Database, role: str, family: str | None = None) -> str:
    with db.session() as session:
        token, _ = create_token(session, name=f"{role}-x", role=role, family=family, now=NOW)
    return token


def test_token_is_stored_only_as_a_hash(db: Database) -> None:
    token = make(db, "viewer")
    prefix, token_id, secret = token.split(".")
    assert prefix == "est1" and len(secret) == 43
    with db.session() as session:
        row = session.get(TokenRow, token_id)
        assert row is not None
        assert row.secret_sha256 == hashlib.sha256(secret.encode()).hexdigest()
        assert secret not in (row.name, row.role, row.secret_sha256)
        principal = authenticate(session, f"Bearer {token}")
    assert (principal.name, principal.role, principal.family) == ("viewer-x", "viewer", None)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Basic abc",
        "Bearer",
        "Bearer est1.zz.abc",
        "Bearer est1.0123456789abcdef." + "A" * 43,  # unknown id
        "Bearer " + "x" * 5000,
    ],
)
def test_invalid_headers(db: Database, header: str | None) -> None:
    with db.session() as session, pytest.raises(UnauthorizedError):
        authenticate(session, header)


def test_wrong_secret_for_a_real_id(db: Database) -> None:
    token = make(db, "admin")
    prefix, token_id, secret = token.split(".")
    wrong = "B" if secret[0] != "B" else "C"
    with db.session() as session, pytest.raises(UnauthorizedError):
        authenticate(session, f"Bearer {prefix}.{token_id}.{wrong}{secret[1:]}")


def test_role_rules(db: Database) -> None:
    tokens = {
        role: make(db, role, fam)
        for role, fam in [
            ("admin", None),
            ("operator", None),
            ("viewer", None),
            ("release-manager", "detector"),
        ]
    }
    with db.session() as session:
        principals = {role: authenticate(session, f"Bearer {t}") for role, t in tokens.items()}
    for p in principals.values():
        require_viewer(p)
    require_operator(principals["operator"])
    require_operator(principals["admin"])
    require_admin(principals["admin"])
    require_release_manager(principals["release-manager"], "detector")
    for role in ("viewer", "release-manager"):
        with pytest.raises(ForbiddenError):
            require_operator(principals[role])
    for role in ("viewer", "operator", "release-manager"):
        with pytest.raises(ForbiddenError):
            require_admin(principals[role])
    for role in ("viewer", "operator", "admin"):
        with pytest.raises(ForbiddenError):
            require_release_manager(principals[role], "detector")
    with pytest.raises(ForbiddenError):
        require_release_manager(principals["release-manager"], "other")


@pytest.mark.parametrize(
    ("name", "role", "family"),
    [
        ("x", "root", None),
        ("x", "release-manager", None),
        ("x", "release-manager", "../x"),
        ("x", "viewer", "detector"),
        ("", "viewer", None),
        ("a\nb", "viewer", None),
    ],
)
def test_bad_token_requests(db: Database, name: str, role: str, family: str | None) -> None:
    with db.session() as session, pytest.raises(BadRequestError):
        create_token(session, name=name, role=role, family=family, now=NOW)
