"""The device audit log: append-only JSON lines, each carrying the hash of the one before.

``STATE/audit.log`` records every outcome of the install transaction,
recovery, boot fallback and rollback, with a stable event id and the
transaction id (RAUC's event log), so ``status`` and an investigator can say
what the device did and a rewritten or deleted line is detectable::

    {"at":"2026-01-01T00:00:00Z","event":"install.committed","fields":{...},
     "hash":"<sha256 hex>","prev":"<hash of the previous line>","seq":7,"txn":"9f..","v":1}

``hash`` is SHA-256 over the canonical JSON (sorted keys, no spaces) of the
line without ``hash``; the first line's ``prev`` is 64 zeros. :func:`verify`
re-computes the chain and raises :class:`AuditLogError` naming the first bad
line. The chain proves order and completeness of what is there; it cannot
stop someone with write access from truncating the tail (the remote copy the
agent reports is the answer to that).

A power cut during an append can leave a last line without its newline.
The next append cuts that torn tail and records its size and hash in an
``audit.torn-tail`` event, so nothing disappears without a trace.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeseal.device_agent.errors import AgentError
from edgeseal.device_agent.state import Clock, timestamp, utc_now

log = logging.getLogger(__name__)

AUDIT_VERSION = 1
GENESIS = "0" * 64
#: One line is a few hundred bytes; messages are cut to MAX_TEXT.
MAX_LINE_BYTES = 64 * 1024
MAX_TEXT = 2000
_TAIL_READ = 2 * MAX_LINE_BYTES
_KEYS = {"v", "seq", "at", "event", "txn", "prev", "fields", "hash"}


class AuditLogError(AgentError):
    """The audit log is malformed or its hash chain is broken."""

    def __init__(self, message: str, *, line: int | None = None) -> None:
        super().__init__(message, field=None if line is None else f"line {line}")
        self.line = line


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    at: str
    event: str
    txn: str | None
    prev: str
    fields: Mapping[str, Any]
    hash: str


def _canonical(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _entry_hash(doc: Mapping[str, Any]) -> str:
    return hashlib.sha256(_canonical({k: v for k, v in doc.items() if k != "hash"})).hexdigest()


def _bounded(value: Any) -> Any:
    """Cut long strings (error messages) so one event cannot grow a line without bound."""
    if isinstance(value, str):
        return value if len(value) <= MAX_TEXT else value[:MAX_TEXT] + "..."
    if isinstance(value, Mapping):
        return {str(k): _bounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_bounded(v) for v in value]
    return value


class DeviceAuditLog:
    """Appends to and verifies one hash-chained audit log file."""

    def __init__(self, path: Path, *, now: Clock = utc_now) -> None:
        self.path = Path(path)
        self._now = now

    def append(self, event: str, *, txn: str | None = None, **fields: Any) -> AuditEntry:
        """Append one event durably (write + fsync) and return it."""
        prev, seq = self._tail()
        doc: dict[str, Any] = {
            "v": AUDIT_VERSION,
            "seq": seq,
            "at": timestamp(self._now()),
            "event": event,
            "txn": txn,
            "prev": prev,
            "fields": _bounded(fields),
        }
        doc["hash"] = _entry_hash(doc)
        line = _canonical(doc) + b"\n"
        if len(line) > MAX_LINE_BYTES:
            raise AuditLogError(f"audit event {event} is larger than {MAX_LINE_BYTES} bytes")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        log.debug("audit %s seq=%d txn=%s", event, seq, txn)
        return AuditEntry(seq, doc["at"], event, txn, prev, doc["fields"], doc["hash"])

    def _tail(self) -> tuple[str, int]:
        """Hash and next sequence number after the last complete line (cutting a torn tail)."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return GENESIS, 0
        if size == 0:
            return GENESIS, 0
        with self.path.open("rb+") as handle:
            start = max(0, size - _TAIL_READ)
            handle.seek(start)
            tail = handle.read()
            torn = b""
            if not tail.endswith(b"\n"):
                cut = tail.rfind(b"\n")
                if cut < 0 and start > 0:
                    raise AuditLogError("the audit log's last line is longer than allowed")
                torn = tail[cut + 1 :]
                handle.truncate(start + cut + 1)
                handle.flush()
                os.fsync(handle.fileno())
                tail = tail[: cut + 1]
        lines = tail.splitlines()
        if not lines or (start > 0 and len(lines) < 2):
            if torn and not lines and start == 0:
                prev, seq = GENESIS, 0
            else:
                raise AuditLogError("cannot find the last complete line of the audit log")
        else:
            last = self._parse(lines[-1], None)
            prev, seq = last.hash, last.seq + 1
        if torn:
            log.warning("audit log had a torn last line (%d bytes): cut it", len(torn))
            entry = self._append_raw(
                prev,
                seq,
                "audit.torn-tail",
                {"bytes": len(torn), "sha256": hashlib.sha256(torn).hexdigest()},
            )
            return entry.hash, entry.seq + 1
        return prev, seq

    def _append_raw(self, prev: str, seq: int, event: str, fields: dict[str, Any]) -> AuditEntry:
        doc: dict[str, Any] = {
            "v": AUDIT_VERSION,
            "seq": seq,
            "at": timestamp(self._now()),
            "event": event,
            "txn": None,
            "prev": prev,
            "fields": fields,
        }
        doc["hash"] = _entry_hash(doc)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, _canonical(doc) + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        return AuditEntry(seq, doc["at"], event, None, prev, fields, doc["hash"])

    @staticmethod
    def _parse(raw: bytes, number: int | None) -> AuditEntry:
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise AuditLogError("a line is not valid JSON", line=number) from exc
        if not isinstance(doc, dict) or set(doc) != _KEYS or doc["v"] != AUDIT_VERSION:
            raise AuditLogError("a line is not a version 1 audit entry", line=number)
        if _entry_hash(doc) != doc["hash"]:
            raise AuditLogError("a line does not match its hash (it was modified)", line=number)
        return AuditEntry(
            doc["seq"], doc["at"], doc["event"], doc["txn"], doc["prev"], doc["fields"], doc["hash"]
        )

    def entries(self) -> Iterator[AuditEntry]:
        """Every entry, verified line by line and against the chain (raises on the first break)."""
        prev, expected_seq = GENESIS, 0
        try:
            handle = self.path.open("rb")
        except FileNotFoundError:
            return
        with handle:
            number = 0
            while True:
                raw = handle.readline(MAX_LINE_BYTES + 1)
                if not raw:
                    return
                number += 1
                if len(raw) > MAX_LINE_BYTES:
                    raise AuditLogError("a line is longer than allowed", line=number)
                if not raw.endswith(b"\n"):
                    raise AuditLogError("the last line is torn (no newline)", line=number)
                entry = self._parse(raw, number)
                if entry.prev != prev or entry.seq != expected_seq:
                    raise AuditLogError(
                        "the hash chain is broken here (a line before it was removed, "
                        "reordered or modified)",
                        line=number,
                    )
                prev, expected_seq = entry.hash, entry.seq + 1
                yield entry

    def verify(self) -> int:
        """Verify the whole chain; return the number of entries. Raises AuditLogError."""
        return sum(1 for _ in self.entries())
