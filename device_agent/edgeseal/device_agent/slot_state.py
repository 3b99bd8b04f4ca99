"""The A/B slot state of one state directory, as the installer reads and settles it.

:class:`SlotState` holds the slots, state.json, the audit log and the NV
anti-rollback floor; it takes the state directory's lock, reads state.json
(quarantining a corrupt one and rebuilding it from the good slots), loads a
slot's model (the trial and restart path), reverts a failed trial to the
previous good slot and raises the floor. The install transaction
(:mod:`~edgeseal.device_agent.install`) and start-up, fallback and rollback
(:mod:`~edgeseal.device_agent.recovery`) are built on it.

The anti-rollback floor is raised to the *lowest* version among the good slots
the device may still fall back to (the active one and the previous one): a
floor above the previous slot would turn the boot-attempt fallback and a
manual rollback into "no model at all".
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from edgeseal.device_agent.audit import DeviceAuditLog
from edgeseal.device_agent.errors import AgentError
from edgeseal.device_agent.rollback_floor import DEFAULT_MAX_STEP, DEFAULT_NV_INDEX, RollbackFloor
from edgeseal.device_agent.slots import Slot, SlotInfo, open_slot
from edgeseal.device_agent.state import (
    AUDIT_FILE,
    LOCK_FILE,
    SLOT_NAMES,
    AgentState,
    Clock,
    Quarantine,
    StateStore,
    timestamp,
    utc_now,
)
from edgeseal.hardware.backend import KeyBackend
from edgeseal.hardware.errors import HardwareError
from edgeseal.hardware.policy import SignedPCRPolicy

log = logging.getLogger(__name__)

DEFAULT_BOOT_ATTEMPTS = 3
DEFAULT_MAX_MODEL_BYTES = 512 * 1024 * 1024


class InstallError(AgentError):
    """An install did not commit; state.json's last_error and the audit log say why."""

    def __init__(self, message: str, *, step: str | None = None, txn: str | None = None):
        super().__init__(message, field=step)
        self.step = step
        self.txn = txn


class StateBusyError(AgentError):
    """Another agent process holds the state directory."""


class NoActiveModelError(AgentError):
    """No slot is active (nothing was ever installed, or every slot went bad)."""


class LoadedModel(NamedTuple):
    """``(slot, plaintext)``; repr never shows the plaintext."""

    slot: SlotInfo
    plaintext: bytes

    def __repr__(self) -> str:
        return f"LoadedModel({self.slot.describe()}, plaintext=<{len(self.plaintext)} bytes>)"


@dataclass(frozen=True)
class InstallResult:
    outcome: str
    txn: str
    slot: str
    family: str
    version: int
    at: str


class SlotState:
    """The slots, state.json, audit log and NV floor of one state directory."""

    def __init__(
        self,
        state_dir: Path,
        backend: KeyBackend,
        approved_policy: SignedPCRPolicy,
        hardware_class: str,
        *,
        now: Clock = utc_now,
        nv_counter_index: int = DEFAULT_NV_INDEX,
        max_version_step: int = DEFAULT_MAX_STEP,
        boot_attempts: int = DEFAULT_BOOT_ATTEMPTS,
        max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES,
        new_txn: Callable[[], str] = lambda: secrets.token_hex(8),
    ) -> None:
        self.state_dir = Path(state_dir)
        self._backend = backend
        self._approved = approved_policy
        self.hardware_class = hardware_class
        self._now = now
        self.boot_attempt_limit = boot_attempts
        self.max_model_bytes = max_model_bytes
        self._new_txn = new_txn
        self.store = StateStore(self.state_dir, now=now)
        self.store.create_layout()
        self.audit = DeviceAuditLog(self.state_dir / AUDIT_FILE, now=now)
        self.floor = RollbackFloor(backend, nv_counter_index, max_step=max_version_step)
        self._slots = {name: Slot(self.state_dir, name) for name in SLOT_NAMES}
        self.quarantined: list[Quarantine] = []

    # -- reading state --------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise StateBusyError(
                    f"another agent process is using {self.state_dir} (lock {LOCK_FILE})"
                ) from exc
            yield
        finally:
            os.close(fd)

    def _stamp(self) -> str:
        return timestamp(self._now())

    def slot_info(self, name: str) -> SlotInfo:
        info, report = self._slots[name].read_info(self._now())
        if report is not None:
            self._report_quarantine(report)
        return info

    def _report_quarantine(self, report: Quarantine) -> None:
        self.quarantined.append(report)
        self.audit.append("state.quarantined", **report.to_json())

    def read_state(self) -> AgentState:
        """state.json; if corrupt it is quarantined and rebuilt from the good slots."""
        state, report = self.store.load()
        if state is not None:
            return state
        if report is not None:
            self._report_quarantine(report)
        good = sorted(
            (i for i in map(self.slot_info, SLOT_NAMES) if i.good),
            key=lambda i: (i.model_version or 0, i.installed_at or ""),
            reverse=True,
        )
        if report is None and not good:
            return AgentState()  # a new device: nothing installed yet
        # Corrupt, or lost while slots hold good models: rebuild rather than drop them.
        code, reason = ("state-missing", "state.json is missing")
        if report is not None:
            code, reason = ("state-corrupt", f"state.json was corrupt: {report.reason}")
        state = AgentState(
            active=good[0].name if good else None,
            previous=good[1].name if len(good) > 1 else None,
            last_error=self._error("recover", code, reason, None),
        )
        self.store.save(state)
        self.audit.append("state.rebuilt", code=code, active=state.active, previous=state.previous)
        log.error("%s; rebuilt from the slots: active slot %s", reason, state.active)
        return state

    def status(self) -> dict[str, Any]:
        """state.json and every slot.json as JSON-ready values (no TPM needed)."""
        state = self.read_state()
        return {
            "state": state.to_json(),
            "slots": {name: self.slot_info(name).to_json() for name in SLOT_NAMES},
            "quarantined": [q.to_json() for q in self.quarantined],
        }

    def _error(self, step: str, code: str, message: str, txn: str | None) -> dict[str, Any]:
        return {"at": self._stamp(), "step": step, "code": code, "message": message, "txn": txn}

    def _update(
        self, outcome: str, txn: str | None, slot: SlotInfo | None, reason: str | None = None
    ) -> dict[str, Any]:
        return {
            "outcome": outcome,
            "txn": txn,
            "at": self._stamp(),
            "slot": None if slot is None else slot.name,
            "family": None if slot is None else slot.family,
            "model_version": None if slot is None else slot.model_version,
            "target_path": None if slot is None else slot.target_path,
            "reason": reason,
        }

    # -- loading --------------------------------------------------------------------------

    def load_slot(self, name: str) -> LoadedModel:
        """Unseal key.sealed, open model.esm in memory, check it: the trial and restart path."""
        info = self.slot_info(name)
        if info.model_version is not None:
            self.floor.check(info.model_version, what=info.describe())
        plaintext = open_slot(
            self._slots[name],
            info,
            backend=self._backend,
            approved=self._approved,
            hardware_class=self.hardware_class,
            max_bytes=self.max_model_bytes,
        )
        return LoadedModel(info, plaintext)

    def load_active(self) -> LoadedModel:
        """The active slot's model; needs no network and no envelope."""
        state = self.read_state()
        if state.active is None:
            raise NoActiveModelError(f"no model is installed in {self.state_dir}")
        info = self.slot_info(state.active)
        in_trial = state.trial is not None and state.trial.slot == info.name
        if not info.good and not in_trial:
            raise NoActiveModelError(f"the active {info.describe()} is not good")
        return self.load_slot(state.active)

    # -- reverting a trial and raising the floor ------------------------------------------

    def _revert(self, state: AgentState, reason: str, code: str, txn: str | None) -> AgentState:
        """Leave the trial slot bad and the previous good slot active."""
        assert state.trial is not None
        failed = self.slot_info(state.trial.slot)
        self._slots[failed.name].write_info(SlotInfo(failed.name, "bad"))
        back = state.previous
        if back is not None and not self.slot_info(back).good:
            back = None
        new_state = AgentState(
            active=back,
            previous=None,
            trial=None,
            boot_attempts=0,
            last_update=self._update("reverted", txn, failed, reason),
            last_error=self._error("trial", code, reason, txn),
        )
        self.store.save(new_state)
        self.audit.append(
            "install.reverted", txn=txn, code=code, slot=failed.name, to=back, reason=reason
        )
        log.error("%s; reverted to slot %s", reason, back)
        return new_state

    def _floor_target(self, state: AgentState) -> int | None:
        versions = [
            info.model_version
            for info in (self.slot_info(n) for n in (state.active, state.previous) if n)
            if info.good and info.model_version is not None
        ]
        return min(versions) if versions else None

    def _raise_floor(self, state: AgentState, txn: str | None) -> None:
        target = self._floor_target(state)
        if target is None:
            return
        try:
            floor = self.floor.raise_to(target)
        except (HardwareError, AgentError) as exc:
            # Committed anyway; recover() raises the floor again at the next start.
            log.warning(
                "cannot raise the anti-rollback floor to %d: %s", target, describe_error(exc)
            )
            self.audit.append("floor.failed", txn=txn, target=target, message=describe_error(exc))
            return
        self.audit.append("floor.raised", txn=txn, floor=floor, target=target)


def describe_error(exc: BaseException) -> str:
    """An error's ``diagnostics()`` text if it has one, else its type and message."""
    diagnostics = getattr(exc, "diagnostics", None)
    if callable(diagnostics):
        return str(diagnostics())
    return f"{type(exc).__name__}: {exc}"


__all__ = [
    "DEFAULT_BOOT_ATTEMPTS",
    "DEFAULT_MAX_MODEL_BYTES",
    "InstallError",
    "InstallResult",
    "LoadedModel",
    "NoActiveModelError",
    "SlotState",
    "StateBusyError",
    "describe_error",
]
