"""The device audit log: hash chain, verification that names the broken line, torn tails."""

from __future__ import annotations

import datetime as dt
import itertools
import json
from pathlib import Path

import pytest

from edgeseal.device_agent.audit import GENESIS, AuditLogError, DeviceAuditLog

NOW = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)


def _log(tmp_path: Path, n: int = 4) -> DeviceAuditLog:
    log = DeviceAuditLog(tmp_path / "audit.log", now=lambda: NOW)
    for i in range(n):
        log.append("install.step", txn="t1", step=f"s{i}", message="x" * 5000)
    return log


def test_chain_and_verify(tmp_path: Path) -> None:
    log = _log(tmp_path)
    entries = list(log.entries())
    assert [e.seq for e in entries] == [0, 1, 2, 3]
    assert entries[0].prev == GENESIS
    assert all(b.prev == a.hash for a, b in itertools.pairwise(entries))
    assert entries[1].fields["step"] == "s1" and entries[1].txn == "t1"
    assert len(entries[0].fields["message"]) < 2100  # long texts are cut
    assert log.verify() == 4
    # A new process appending continues the chain.
    again = DeviceAuditLog(tmp_path / "audit.log", now=lambda: NOW)
    assert again.append("boot.fallback", frm="b", to="a").seq == 4
    assert again.verify() == 5


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


@pytest.mark.parametrize("attack", ["modify", "delete", "reorder", "rehash"])
def test_tampering_is_detected_at_its_line(tmp_path: Path, attack: str) -> None:
    log = _log(tmp_path)
    lines = _lines(log.path)
    if attack == "modify":
        lines[1] = lines[1].replace(b'"s1"', b'"s9"')
    elif attack == "delete":
        del lines[1]
    elif attack == "reorder":
        lines[1], lines[2] = lines[2], lines[1]
    else:  # rewrite a line and recompute its own hash: the next line's prev breaks
        import hashlib

        doc = json.loads(lines[1])
        doc["fields"]["step"] = "s9"
        del doc["hash"]
        body = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        doc["hash"] = hashlib.sha256(body).hexdigest()
        lines[1] = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    log.path.write_bytes(b"".join(lines))
    with pytest.raises(AuditLogError) as info:
        log.verify()
    expected_line = 3 if attack == "rehash" else 2
    assert info.value.line == expected_line, info.value.diagnostics()


def test_torn_tail_is_cut_and_recorded(tmp_path: Path) -> None:
    log = _log(tmp_path, 2)
    with log.path.open("ab") as handle:
        handle.write(b'{"v":1,"seq":2,"at"')  # power cut in the middle of an append
    with pytest.raises(AuditLogError, match="torn"):
        log.verify()
    log.append("recover.completed", slot="a")
    entries = list(log.entries())
    assert [e.event for e in entries[-2:]] == ["audit.torn-tail", "recover.completed"]
    assert entries[-2].fields["bytes"] == len(b'{"v":1,"seq":2,"at"')
    assert log.verify() == 4


def test_torn_only_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_bytes(b'{"v":1')
    log = DeviceAuditLog(path, now=lambda: NOW)
    log.append("install.started")
    assert [e.event for e in log.entries()] == ["audit.torn-tail", "install.started"]
