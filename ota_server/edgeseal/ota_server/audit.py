"""The hash-chained audit log of every state-changing call, accepted or refused.

Each entry's ``hash`` is SHA-256 over the canonical JSON (sorted keys, no
spaces, UTF-8) of ``{seq, time, actor, action, target, outcome, details,
prev_hash}``; ``prev_hash`` is the previous entry's ``hash`` (64 zeros for
seq 1). :func:`verify_chain` recomputes the chain and names the first entry
that is edited (its hash no longer matches its fields), missing (a gap in the
sequence), out of order or forged (its ``prev_hash`` does not link to the
entry before it).

A chain alone cannot tell that its *last* entries were cut off. The server
therefore also writes the newest ``(seq, hash)`` to ``DIR/audit-head.json``
after each commit; verification checks that the anchored entry is still there
with the same hash. An anchor that lags behind (two writers racing) is
harmless; one that points past the end or at a changed entry is reported.

Entries are appended inside the transaction of the change they record, so a
change and its entry commit together. Verification is pure: it takes rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import event, select
from sqlalchemy.orm import Session

from edgeseal.ota_server.db import AuditRow, isotime
from edgeseal.ota_server.service_errors import AuditChainError
from edgeseal.sdk.files import atomic_write

logger = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64
ACCEPTED = "accepted"
REFUSED = "refused"
MAX_HEAD_FILE = 4096


def canonical_json(value: Any) -> bytes:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    time: str
    actor: str
    action: str
    target: str
    outcome: str
    details: Mapping[str, Any]
    prev_hash: str
    hash: str

    def as_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "time": self.time,
            "actor": self.actor,
            "action": self.action,
            "target": self.target,
            "outcome": self.outcome,
            "details": dict(self.details),
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }

    @classmethod
    def from_row(cls, row: AuditRow) -> AuditEntry:
        try:
            details = json.loads(row.details)
        except ValueError:
            details = {"unparseable": row.details}
        return cls(
            row.seq,
            row.time,
            row.actor,
            row.action,
            row.target,
            row.outcome,
            details,
            row.prev_hash,
            row.hash,
        )


def entry_hash(
    *,
    seq: int,
    time: str,
    actor: str,
    action: str,
    target: str,
    outcome: str,
    details: Mapping[str, Any],
    prev_hash: str,
) -> str:
    body = {
        "seq": seq,
        "time": time,
        "actor": actor,
        "action": action,
        "target": target,
        "outcome": outcome,
        "details": dict(details),
        "prev_hash": prev_hash,
    }
    return hashlib.sha256(canonical_json(body)).hexdigest()


class AuditLog:
    """Appends entries to the database; anchors the newest one in ``head_file``."""

    def __init__(self, head_file: Path | None = None) -> None:
        self.head_file = head_file

    def append(
        self,
        session: Session,
        *,
        actor: str,
        action: str,
        target: str,
        outcome: str,
        details: Mapping[str, Any] | None = None,
        now: datetime,
    ) -> AuditEntry:
        """Add the next entry inside ``session``'s transaction (committed with it)."""
        last = session.scalars(select(AuditRow).order_by(AuditRow.seq.desc()).limit(1)).first()
        seq = 1 if last is None else last.seq + 1
        prev = GENESIS_HASH if last is None else last.hash
        time = isotime(now)
        clean = json.loads(canonical_json(dict(details or {})))
        digest = entry_hash(
            seq=seq,
            time=time,
            actor=actor[:128],
            action=action,
            target=target[:256],
            outcome=outcome,
            details=clean,
            prev_hash=prev,
        )
        session.add(
            AuditRow(
                seq=seq,
                time=time,
                actor=actor[:128],
                action=action,
                target=target[:256],
                outcome=outcome,
                details=canonical_json(clean).decode("utf-8"),
                prev_hash=prev,
                hash=digest,
            )
        )
        session.flush()
        if self.head_file is not None:
            head_file = self.head_file
            event.listen(
                session, "after_commit", lambda _s: _write_head(head_file, seq, digest), once=True
            )
        logger.info("audit %d: %s %s %s by %s", seq, action, target, outcome, actor)
        return AuditEntry(
            seq, time, actor[:128], action, target[:256], outcome, clean, prev, digest
        )

    @staticmethod
    def entries(session: Session, *, after: int = 0, limit: int = 1000) -> list[AuditEntry]:
        rows = session.scalars(
            select(AuditRow).where(AuditRow.seq > after).order_by(AuditRow.seq).limit(limit)
        )
        return [AuditEntry.from_row(row) for row in rows]

    def verify(self, session: Session) -> int:
        """Verify the whole chain and the head anchor; return the number of entries."""
        rows = session.scalars(select(AuditRow).order_by(AuditRow.seq))
        return verify_chain(
            (AuditEntry.from_row(row) for row in rows), head=read_head(self.head_file)
        )


def verify_chain(entries: Iterable[AuditEntry], *, head: tuple[int, str] | None = None) -> int:
    """Raise :class:`AuditChainError` naming the first bad entry; return how many verified.

    ``entries`` must come in storage order (ascending ``seq``).
    """
    expected_seq = 1
    prev_hash = GENESIS_HASH
    hashes: dict[int, str] = {}
    for entry in entries:
        if entry.seq < expected_seq:
            raise AuditChainError(
                f"audit entry seq {entry.seq} is out of order (expected seq {expected_seq})",
                seq=entry.seq,
            )
        if entry.seq > expected_seq:
            raise AuditChainError(
                f"audit entry seq {expected_seq} is missing: it was removed "
                f"(the log jumps to seq {entry.seq})",
                seq=expected_seq,
            )
        if entry.prev_hash != prev_hash:
            raise AuditChainError(
                f"audit entry seq {entry.seq} does not link to the entry before it: "
                "entries were reordered or removed, or it was inserted without the chain",
                seq=entry.seq,
            )
        recomputed = entry_hash(
            seq=entry.seq,
            time=entry.time,
            actor=entry.actor,
            action=entry.action,
            target=entry.target,
            outcome=entry.outcome,
            details=entry.details,
            prev_hash=entry.prev_hash,
        )
        if recomputed != entry.hash:
            raise AuditChainError(
                f"audit entry seq {entry.seq} was edited: its hash does not match its fields",
                seq=entry.seq,
            )
        hashes[entry.seq] = entry.hash
        prev_hash = entry.hash
        expected_seq += 1
    if head is not None:
        head_seq, head_hash = head
        if head_seq not in hashes:
            raise AuditChainError(
                f"the audit log ends at seq {expected_seq - 1} but its head anchor names "
                f"seq {head_seq}: the last entries were removed",
                seq=min(head_seq, expected_seq),
            )
        if hashes[head_seq] != head_hash:
            raise AuditChainError(
                f"audit entry seq {head_seq} differs from the head anchor: the log was rewritten",
                seq=head_seq,
            )
    return expected_seq - 1


def _write_head(head_file: Path, seq: int, digest: str) -> None:
    current = read_head(head_file, strict=False)
    if current is not None and current[0] >= seq:
        return
    try:
        atomic_write(head_file, canonical_json({"seq": seq, "hash": digest}), mode=0o600)
    except OSError as exc:  # the chain is intact; only the anchor lags
        logger.warning("cannot write the audit head anchor %s: %s", head_file, exc.strerror)


def read_head(head_file: Path | None, *, strict: bool = True) -> tuple[int, str] | None:
    """The anchored ``(seq, hash)``, or None when there is no anchor yet."""
    if head_file is None or not head_file.exists():
        return None
    try:
        with head_file.open("rb") as handle:
            raw = json.loads(handle.read(MAX_HEAD_FILE))
        seq, digest = raw["seq"], raw["hash"]
    except (OSError, ValueError, KeyError, TypeError):
        seq = digest = None
    if type(seq) is not int or not isinstance(digest, str):
        if not strict:
            return None
        raise AuditChainError(f"the audit head anchor {head_file} is unreadable", seq=0)
    return seq, digest
