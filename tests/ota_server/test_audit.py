"""The hash-chained audit log: append, verify, and detection of each kind of tampering."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edgeseal.ota_server.audit import ACCEPTED, GENESIS_HASH, AuditLog, entry_hash, verify_chain
from edgeseal.ota_server.db import Database
from edgeseal.ota_server.service_errors import AuditChainError

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def logged(tmp_path: Path) -> Iterator[tuple[Database, AuditLog, Path]]:
    path = tmp_path / "server.db"
    db = Database.open(path)
    db.create_all()
    log = AuditLog(tmp_path / "audit-head.json")
    for i in range(5):
        with db.session() as session:
            log.append(
                session,
                actor=f"user{i}",
                action="device.add",
                target=f"devices/d{i}",
                outcome=ACCEPTED,
                details={"n": i, "text": "ünïcode"},
                now=T0 + timedelta(seconds=i),
            )
    yield db, log, path
    db.close()


def verify(db: Database, log: AuditLog) -> int:
    with db.session() as session:
        return log.verify(session)


def tamper(path: Path, *statements: str) -> None:
    with sqlite3.connect(path) as conn:
        for sql in statements:
            conn.execute(sql)


def test_intact_chain_verifies(logged: tuple[Database, AuditLog, Path]) -> None:
    db, log, _ = logged
    assert verify(db, log) == 5
    with db.session() as session:
        entries = log.entries(session)
    assert entries[0].prev_hash == GENESIS_HASH
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5]
    assert entries[2].details == {"n": 2, "text": "ünïcode"}
    assert entries[1].hash == entry_hash(
        seq=2,
        time="2026-01-01T00:00:01Z",
        actor="user1",
        action="device.add",
        target="devices/d1",
        outcome="accepted",
        details={"n": 1, "text": "ünïcode"},
        prev_hash=entries[0].hash,
    )


def test_edited_entry(logged: tuple[Database, AuditLog, Path]) -> None:
    db, log, path = logged
    tamper(path, "UPDATE audit SET outcome = 'refused' WHERE seq = 3")
    with pytest.raises(AuditChainError, match="seq 3 was edited") as info:
        verify(db, log)
    assert info.value.seq == 3


def test_edited_entry_with_recomputed_hash(logged: tuple[Database, AuditLog, Path]) -> None:
    db, log, path = logged
    with db.session() as session:
        row = log.entries(session)[2]
    forged = entry_hash(
        seq=3, time=row.time, actor="mallory", action=row.action, target=row.target,
        outcome=row.outcome, details=row.details, prev_hash=row.prev_hash,
    )  # fmt: skip
    tamper(path, f"UPDATE audit SET actor = 'mallory', hash = '{forged}' WHERE seq = 3")
    with pytest.raises(AuditChainError, match="seq 4 does not link") as info:
        verify(db, log)
    assert info.value.seq == 4


def test_removed_entry(logged: tuple[Database, AuditLog, Path]) -> None:
    db, log, path = logged
    tamper(path, "DELETE FROM audit WHERE seq = 2")
    with pytest.raises(AuditChainError, match="seq 2 is missing") as info:
        verify(db, log)
    assert info.value.seq == 2


def test_removed_last_entries_caught_by_the_head_anchor(
    logged: tuple[Database, AuditLog, Path],
) -> None:
    db, log, path = logged
    tamper(path, "DELETE FROM audit WHERE seq >= 4")
    with pytest.raises(AuditChainError, match="last entries were removed"):
        verify(db, log)
    # without the anchor the truncated chain is self-consistent: that is why it exists
    with db.session() as session:
        assert AuditLog(None).verify(session) == 3


def test_reordered_entries(logged: tuple[Database, AuditLog, Path]) -> None:
    db, log, path = logged
    cols = "time, actor, action, target, outcome, details, prev_hash, hash"
    tamper(
        path,
        f"CREATE TABLE t AS SELECT seq, {cols} FROM audit WHERE seq IN (2, 3)",
        "UPDATE audit SET seq = -2 WHERE seq = 2",
        "UPDATE audit SET seq = 2 WHERE seq = 3",
        "UPDATE audit SET seq = 3 WHERE seq = -2",
    )
    with pytest.raises(AuditChainError) as info:
        verify(db, log)
    assert info.value.seq == 2


def test_appended_without_chain(logged: tuple[Database, AuditLog, Path]) -> None:
    db, log, path = logged
    fake = entry_hash(
        seq=6, time="2026-01-02T00:00:00Z", actor="mallory", action="token.create",
        target="tokens", outcome="accepted", details={}, prev_hash=GENESIS_HASH,
    )  # fmt: skip
    tamper(
        path,
        "INSERT INTO audit VALUES (6, '2026-01-02T00:00:00Z', 'mallory', 'token.create', "
        f"'tokens', 'accepted', '{{}}', '{GENESIS_HASH}', '{fake}')",
    )
    with pytest.raises(AuditChainError, match="seq 6 does not link") as info:
        verify(db, log)
    assert info.value.seq == 6


def test_verify_chain_is_pure_and_checks_order() -> None:
    assert verify_chain([]) == 0
    with pytest.raises(AuditChainError, match="ends at seq 0"):
        verify_chain([], head=(1, "00"))
