"""The agent's state directory and ``state.json``: strict, bounded, atomic, quarantined.

Layout (docs/dev/agent-contracts.md, "State directory")::

    STATE/tuf/  STATE/downloads/  STATE/slots/{a,b}/  STATE/state.json  STATE/audit.log

``state.json`` says which slot is active, which one was active before it, and
whether a trial is under way; it is the one file whose atomic rename *is* the
switch of the install transaction. It is versioned JSON with exactly the keys
below; anything else (truncated, unknown version, extra key, wrong type) is
*corrupt*: the file is renamed ``state.json.corrupt-<utc>`` (RAUC moves a
broken status file aside the same way) and reported, never silently trusted,
and the caller rebuilds what it can from the slots.

Every write goes through :func:`edgeseal.sdk.files.atomic_write` (temp file,
fsync, rename, fsync of the directory), so a power cut leaves the old or the
new file, never a mix.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeseal.device_agent.errors import AgentError
from edgeseal.sdk.files import atomic_write

log = logging.getLogger(__name__)

STATE_VERSION = 1
STATE_FILE = "state.json"
AUDIT_FILE = "audit.log"
SLOTS_DIR = "slots"
TUF_DIR = "tuf"
DOWNLOADS_DIR = "downloads"
LOCK_FILE = ".lock"
SLOT_NAMES: tuple[str, ...] = ("a", "b")
#: state.json and slot.json are well under 4 KiB; a larger file is not ours.
MAX_STATE_BYTES = 64 * 1024
#: Mode of state files: readable by the agent's group (``edgeseal-agent status``).
STATE_FILE_MODE = 0o640

Clock = Callable[[], dt.datetime]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def timestamp(when: dt.datetime) -> str:
    """ISO 8601 UTC to the second, the one time format of every state file."""
    return when.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class StateError(AgentError):
    """A state file could not be read or written."""


class CorruptStateError(StateError):
    """A state file is malformed; it has been moved aside to ``quarantined_to``."""

    def __init__(self, message: str, *, path: Path, quarantined_to: Path | None) -> None:
        super().__init__(message)
        self.path = path
        self.quarantined_to = quarantined_to

    def diagnostics(self) -> str:
        where = f"; moved aside to {self.quarantined_to}" if self.quarantined_to else ""
        return f"{self.path} is corrupt: {self.message}{where}"


@dataclass(frozen=True)
class Quarantine:
    """A report that a corrupt file was moved aside (for the audit log and ``status``)."""

    path: Path
    moved_to: Path | None
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "moved_to": str(self.moved_to), "reason": self.reason}


class StateFormatError(ValueError):
    """Raised by the strict parsers here; the reader turns it into a quarantine."""


@dataclass(frozen=True)
class Trial:
    slot: str
    started_at: str


@dataclass(frozen=True)
class AgentState:
    """The contents of ``state.json``."""

    active: str | None = None
    previous: str | None = None
    trial: Trial | None = None
    boot_attempts: int = 0
    last_update: Mapping[str, Any] | None = field(default=None, hash=False)
    last_error: Mapping[str, Any] | None = field(default=None, hash=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "active": self.active,
            "previous": self.previous,
            "trial": None
            if self.trial is None
            else {"slot": self.trial.slot, "started_at": self.trial.started_at},
            "boot_attempts": self.boot_attempts,
            "last_update": None if self.last_update is None else dict(self.last_update),
            "last_error": None if self.last_error is None else dict(self.last_error),
        }

    @classmethod
    def from_json(cls, doc: Any) -> AgentState:
        keys = {"version", "active", "previous", "trial", "boot_attempts"}
        keys |= {"last_update", "last_error"}
        require_keys(doc, keys, "state.json")
        check_version(doc["version"])
        active = _slot_or_none(doc["active"], "active")
        previous = _slot_or_none(doc["previous"], "previous")
        trial = None
        if doc["trial"] is not None:
            require_keys(doc["trial"], {"slot", "started_at"}, "trial")
            slot = _slot_or_none(doc["trial"]["slot"], "trial.slot")
            if slot is None or slot != active:
                raise StateFormatError("trial.slot must name the active slot")
            trial = Trial(slot, text(doc["trial"]["started_at"], "trial.started_at"))
        attempts = doc["boot_attempts"]
        if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 0:
            raise StateFormatError("boot_attempts must be a non-negative integer")
        for key in ("last_update", "last_error"):
            if doc[key] is not None and not isinstance(doc[key], dict):
                raise StateFormatError(f"{key} must be an object or null")
        return cls(active, previous, trial, attempts, doc["last_update"], doc["last_error"])


def require_keys(doc: Any, keys: set[str], what: str) -> None:
    if not isinstance(doc, dict):
        raise StateFormatError(f"{what} must be a JSON object")
    if set(doc) != keys:
        missing = sorted(keys - set(doc))
        extra = sorted(set(doc) - keys)
        raise StateFormatError(
            f"{what}: missing keys {missing or 'none'}, unknown {extra or 'none'}"
        )


def check_version(version: Any) -> None:
    if version != STATE_VERSION or isinstance(version, bool):
        raise StateFormatError(
            f"unsupported version {version!r} (this agent reads version {STATE_VERSION})"
        )


def text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise StateFormatError(f"{name} must be a non-empty string")
    return value


def _slot_or_none(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if value not in SLOT_NAMES:
        raise StateFormatError(f"{name} must be one of {', '.join(SLOT_NAMES)} or null")
    return str(value)


def read_json(path: Path, what: str) -> Any:
    """Bounded read and parse; FileNotFoundError propagates, everything odd is StateFormatError."""
    with path.open("rb") as handle:
        data = handle.read(MAX_STATE_BYTES + 1)
    if len(data) > MAX_STATE_BYTES:
        raise StateFormatError(f"{what} is larger than {MAX_STATE_BYTES} bytes")
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise StateFormatError(f"{what} is not valid JSON ({exc})") from exc


def write_json(path: Path, doc: Mapping[str, Any], *, mode: int = STATE_FILE_MODE) -> None:
    data = json.dumps(doc, sort_keys=True, indent=1).encode("utf-8") + b"\n"
    atomic_write(path, data, mode=mode)


def quarantine(path: Path, reason: str, now: dt.datetime) -> Quarantine:
    """Rename a corrupt file to ``<name>.corrupt-<utc>`` (never delete evidence)."""
    stamp = now.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    try:
        path.rename(target)
        fsync_dir(path.parent)
    except OSError as exc:
        log.warning("cannot move corrupt %s aside: %s", path, exc)
        return Quarantine(path, None, reason)
    log.error("quarantined corrupt %s to %s: %s", path, target.name, reason)
    return Quarantine(path, target, reason)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_dir(directory: Path, mode: int = 0o700) -> None:
    """Create ``directory`` (and parents) durably: a new entry is fsynced in its parent."""
    if directory.is_dir():
        return
    ensure_dir(directory.parent, mode)
    try:
        directory.mkdir(mode=mode)
    except FileExistsError:
        return
    fsync_dir(directory.parent)


class StateStore:
    """Reads and writes ``STATE/state.json``; collects quarantine reports."""

    def __init__(self, state_dir: Path, *, now: Clock = utc_now) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / STATE_FILE
        self._now = now

    def create_layout(self) -> None:
        """The directories of the layout (idempotent)."""
        for sub in (TUF_DIR, DOWNLOADS_DIR, *(f"{SLOTS_DIR}/{n}" for n in SLOT_NAMES)):
            ensure_dir(self.state_dir / sub)

    def load(self) -> tuple[AgentState | None, Quarantine | None]:
        """``(state, None)``; ``(None, None)`` if absent; ``(None, report)`` if it was corrupt."""
        try:
            doc = read_json(self.path, STATE_FILE)
            return AgentState.from_json(doc), None
        except FileNotFoundError:
            return None, None
        except StateFormatError as exc:
            return None, quarantine(self.path, str(exc), self._now())
        except OSError as exc:
            raise StateError(f"cannot read {self.path}: {exc}") from exc

    def save(self, state: AgentState) -> None:
        try:
            write_json(self.path, state.to_json())
        except OSError as exc:
            raise StateError(f"cannot write {self.path}: {exc}") from exc
