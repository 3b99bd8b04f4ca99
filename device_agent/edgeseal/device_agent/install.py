"""The install transaction, recovery and boot fallback over the A/B model slots (RAUC order).

Named steps, each calling :func:`~edgeseal.device_agent.faults.fault_point`
first so the crash-injection tests can SIGKILL the agent there::

    mark-bad -> write -> verify-written -> switch -> trial -> mark-good

* ``mark-bad``: the inactive slot's slot.json says ``bad`` before a byte of
  it changes, so a half-written slot never looks usable.
* ``write``: put the downloaded (TUF-verified) .esm into the slot: moved
  (renamed, fsynced, directories fsynced) when the caller hands the file over
  (``move=True``, what the updater does), else copied with its SHA-256
  checked on the way; re-seal the content key in the TPM under the signed
  PCR policy's authority into key.sealed (a restart needs neither network nor
  envelope); slot.json ``written``. A kill after the rename leaves the slot
  ``bad`` and the download gone: the next attempt downloads and writes again.
* ``verify-written``: check the slot: the model's hash (read back, unless it is
  the very renamed file whose hash the caller just verified, see
  :func:`~edgeseal.device_agent.slots.verify_written`), the key unseals and
  matches the model's key commitment.
* ``switch``: one atomic, fsynced rename of state.json: ``active`` = new,
  ``previous`` = old, ``trial`` = new slot.
* ``trial``: the caller's ``trial(slot)`` loads the slot through
  :meth:`Installer.load_slot` (the path a restart uses) and health-checks it;
  it raises on failure and the installer reverts to ``previous``.
* ``mark-good``: slot.json ``good`` (sub-step ``mark-good.slot-good``), then
  state.json without trial (``mark-good.floor``), then the NV floor.

Crash anywhere before ``switch`` completes: ``previous`` state untouched, the
target slot is bad or written, the next attempt redoes or resumes it. Crash
after: :meth:`Installer.recover` finds the pending trial and reverts, unless
the slot was already marked good (the health check passed), in which case it
finishes ``mark-good``. Either way the device serves the old or the new good
model, never anything else.

The anti-rollback floor is raised, at ``mark-good``, to the *lowest* version
among the good slots the device may still fall back to (the new one and the
previous one), not to the new version: a floor above the previous slot would
turn the boot-attempt fallback and a manual rollback into "no model at all".
Anything older than the fallback is refused for good.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import secrets
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

from edgeseal.device_agent.audit import DeviceAuditLog
from edgeseal.device_agent.config import AgentConfig
from edgeseal.device_agent.errors import AgentError
from edgeseal.device_agent.faults import fault_point
from edgeseal.device_agent.rollback_floor import (
    DEFAULT_MAX_STEP,
    DEFAULT_NV_INDEX,
    DowngradeError,
    RollbackFloor,
)
from edgeseal.device_agent.slots import (
    DIGEST_ALGS,
    FileIdentity,
    Slot,
    SlotInfo,
    check_sealed_file,
    copy_model,
    move_model,
    open_slot,
    other_slot,
    seal_key,
    verify_written,
)
from edgeseal.device_agent.state import (
    AUDIT_FILE,
    LOCK_FILE,
    SLOT_NAMES,
    AgentState,
    Clock,
    Quarantine,
    StateStore,
    Trial,
    timestamp,
    utc_now,
)
from edgeseal.hardware.backend import KeyBackend
from edgeseal.hardware.errors import HardwareError
from edgeseal.hardware.policy import SignedPCRPolicy
from edgeseal.sdk.errors import EdgesealError
from edgeseal.sdk.sealed import ContentKey

log = logging.getLogger(__name__)

STEPS = ("mark-bad", "write", "verify-written", "switch", "trial", "mark-good")
DEFAULT_BOOT_ATTEMPTS = 3
DEFAULT_MAX_MODEL_BYTES = 512 * 1024 * 1024
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
#: Errors of a slot's contents or of the inputs (the slot is bad), as opposed to a crash.
_EXPECTED = (AgentError, EdgesealError, HardwareError, OSError, ValueError)

Trial_ = Callable[[SlotInfo], None]


class InstallError(AgentError):
    """An install did not commit; state.json's last_error and the audit log say why."""

    def __init__(self, message: str, *, step: str | None = None, txn: str | None = None):
        super().__init__(message, field=step)
        self.step = step
        self.txn = txn


class TrialFailedError(InstallError):
    """The new model failed its trial; the device was reverted to the previous slot."""


class StateBusyError(AgentError):
    """Another agent process holds the state directory."""


class NoActiveModelError(AgentError):
    """No slot is active (nothing was ever installed, or every slot went bad)."""


@dataclass(frozen=True)
class Release:
    """What the (TUF-verified) release says about the sealed model to install."""

    family: str
    version: int
    target_path: str
    sealed_sha256: str
    plaintext_digest: str
    digest_alg: str = "blake3"

    def __post_init__(self) -> None:
        if type(self.version) is not int or self.version < 0:
            raise ValueError(f"release version must be a non-negative integer: {self.version!r}")
        for name in ("sealed_sha256", "plaintext_digest"):
            if not _HEX64.match(getattr(self, name)):
                raise ValueError(f"release {name} must be 64 lower-case hex digits")
        if self.digest_alg not in DIGEST_ALGS:
            raise ValueError(f"release digest_alg must be one of {', '.join(DIGEST_ALGS)}")
        if not self.family or not self.target_path:
            raise ValueError("release family and target_path must not be empty")


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


@dataclass(frozen=True)
class RecoveryReport:
    """What :meth:`Installer.recover` found and did."""

    state: AgentState
    actions: tuple[str, ...] = ()
    quarantined: tuple[Quarantine, ...] = field(default=())


class Installer:
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

    # -- the install transaction ----------------------------------------------------------

    def install(
        self,
        model_path: Path,
        content_key: ContentKey,
        release: Release,
        trial: Trial_,
        *,
        move: bool = False,
    ) -> InstallResult:
        """Install ``model_path`` into the inactive slot; commit only if ``trial`` passes.

        ``move=True`` hands the file over: it must be on the state directory's
        file system (else it is copied) and its SHA-256 must have just been
        verified against ``release.sealed_sha256`` by the caller (the updater's
        TUF download); it is renamed into the slot, not copied, and not hashed
        again unless it changed (see :func:`~edgeseal.device_agent.slots.verify_written`).

        Raises (after recording why in state.json and the audit log):
        DowngradeError / VersionJumpError / InstallError when refused or failed
        before the switch (nothing changed for the active model), and
        TrialFailedError when the trial failed (reverted to the previous slot).
        """
        with self._locked():
            state = self.read_state()
            if state.trial is not None:
                raise InstallError(
                    f"a trial of slot {state.trial.slot} is pending: run recover() first"
                )
            txn = self._new_txn()
            target = other_slot(state.active) if state.active else SLOT_NAMES[0]
            planned = SlotInfo(
                name=target,
                status="written",
                family=release.family,
                model_version=release.version,
                target_path=release.target_path,
                sealed_sha256=release.sealed_sha256,
                plaintext_digest=release.plaintext_digest,
                digest_alg=release.digest_alg,
                installed_at=self._stamp(),
            )
            self.audit.append(
                "install.started",
                txn=txn,
                slot=target,
                family=release.family,
                version=release.version,
                target_path=release.target_path,
            )
            try:
                self._precheck(state, Path(model_path), content_key, planned)
                handed_over = FileIdentity.of(Path(model_path)) if move else None
            except _EXPECTED as exc:
                self._fail(
                    state=state, txn=txn, step="check", outcome="refused", planned=planned, exc=exc
                )
                raise
            step = "mark-bad"
            written: FileIdentity | None = None
            try:
                current = self.slot_info(target)
                if self._resumable(current, planned):
                    # Written by an earlier attempt: its bytes are read back and hashed.
                    self.audit.append("install.resumed", txn=txn, slot=target)
                    planned = current
                else:
                    self._mark_bad(target, txn)
                    step = "write"
                    written = self._write(Path(model_path), content_key, planned, txn, handed_over)
                step = "verify-written"
                self._verify_written(planned, txn, written)
            except _EXPECTED as exc:
                self._slots[target].write_info(SlotInfo(target, "bad"))
                self._fail(
                    state=state, txn=txn, step=step, outcome="failed", planned=planned, exc=exc
                )
                raise InstallError(
                    f"install of {release.family} v{release.version} failed at {step}: "
                    f"{_describe(exc)}",
                    step=step,
                    txn=txn,
                ) from exc
            state = self._switch(state, planned, txn)
            fault_point("trial")
            try:
                trial(planned)
            except Exception as exc:  # any failure of the health check reverts
                reason = f"trial of {planned.describe()} failed: {_describe(exc)}"
                self._revert(state, reason, "trial-failed", txn)
                raise TrialFailedError(reason, step="trial", txn=txn) from exc
            return self._mark_good(state, planned, txn)

    def _precheck(
        self, state: AgentState, model_path: Path, key: ContentKey, planned: SlotInfo
    ) -> None:
        version = planned.model_version or 0
        self.floor.check(version)
        if state.active is not None:
            active = self.slot_info(state.active)
            if active.good and active.model_version is not None and version < active.model_version:
                raise DowngradeError(
                    f"{planned.family} v{version} is older than the active {active.describe()}: "
                    "refusing a downgrade (use rollback to go back to the previous slot)",
                    version=version,
                    floor=active.model_version,
                )
        check_sealed_file(model_path, planned, key, self.hardware_class, self.max_model_bytes)

    def _resumable(self, current: SlotInfo, planned: SlotInfo) -> bool:
        """A slot already ``written`` with this very release resumes at verify-written."""
        same = ("family", "model_version", "target_path", "sealed_sha256", "plaintext_digest")
        return (
            current.status == "written"
            and all(getattr(current, k) == getattr(planned, k) for k in same)
            and self._slots[current.name].key_path.exists()
        )

    def _mark_bad(self, target: str, txn: str) -> None:
        fault_point("mark-bad")
        self._slots[target].write_info(SlotInfo(target, "bad"))
        self.audit.append("install.step", txn=txn, step="mark-bad", slot=target)

    def _write(
        self,
        model_path: Path,
        key: ContentKey,
        planned: SlotInfo,
        txn: str,
        handed_over: FileIdentity | None,
    ) -> FileIdentity | None:
        """Write the slot; the identity of a verified file moved into it, else None."""
        fault_point("write")
        slot = self._slots[planned.name]
        sha256 = planned.sealed_sha256 or ""
        moved = False
        if handed_over is not None:
            moved = move_model(model_path, slot, sha256, self.max_model_bytes)
        else:
            copy_model(model_path, slot, sha256, self.max_model_bytes)
        seal_key(slot, key, self._backend, self._approved)
        slot.write_info(planned)
        self.audit.append("install.step", txn=txn, step="write", slot=planned.name)
        return handed_over if moved else None

    def _verify_written(self, planned: SlotInfo, txn: str, written: FileIdentity | None) -> None:
        fault_point("verify-written")
        verify_written(
            self._slots[planned.name],
            planned,
            backend=self._backend,
            approved=self._approved,
            hardware_class=self.hardware_class,
            max_bytes=self.max_model_bytes,
            verified=written,
        )
        self.audit.append("install.step", txn=txn, step="verify-written", slot=planned.name)

    def _switch(self, state: AgentState, planned: SlotInfo, txn: str) -> AgentState:
        fault_point("switch")
        old = self.slot_info(state.active) if state.active else None
        new_state = replace(
            state,
            active=planned.name,
            previous=old.name if old is not None and old.good else None,
            trial=Trial(planned.name, self._stamp()),
            boot_attempts=0,
        )
        self.store.save(new_state)
        self.audit.append("install.step", txn=txn, step="switch", slot=planned.name)
        return new_state

    def _mark_good(self, state: AgentState, planned: SlotInfo, txn: str) -> InstallResult:
        fault_point("mark-good")
        good = planned.with_status("good")
        self._slots[planned.name].write_info(good)
        fault_point("mark-good.slot-good")
        # Audited before state.json: a kill in between leaves a pending trial on a good
        # slot, which recover() completes (and audits again as recover.completed).
        self.audit.append(
            "install.committed",
            txn=txn,
            slot=good.name,
            family=good.family,
            version=good.model_version,
        )
        state = replace(
            state, trial=None, last_update=self._update("committed", txn, good), last_error=None
        )
        self.store.save(state)
        fault_point("mark-good.floor")
        self._raise_floor(state, txn)
        log.info("committed %s", good.describe())
        return InstallResult(
            "committed", txn, good.name, good.family or "", good.model_version or 0, self._stamp()
        )

    def _fail(
        self,
        *,
        state: AgentState,
        txn: str,
        step: str,
        outcome: str,
        planned: SlotInfo,
        exc: BaseException,
    ) -> None:
        code = "downgrade" if isinstance(exc, DowngradeError) else f"{step}-{outcome}"
        message = _describe(exc)
        log.error("install %s at %s: %s", outcome, step, message)
        self.store.save(
            replace(
                state,
                last_update=self._update(outcome, txn, planned, message),
                last_error=self._error(step, code, message, txn),
            )
        )
        self.audit.append(f"install.{outcome}", txn=txn, step=step, code=code, message=message)

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
            log.warning("cannot raise the anti-rollback floor to %d: %s", target, _describe(exc))
            self.audit.append("floor.failed", txn=txn, target=target, message=_describe(exc))
            return
        self.audit.append("floor.raised", txn=txn, floor=floor, target=target)

    # -- start-up -------------------------------------------------------------------------

    def recover(self) -> RecoveryReport:
        """At start: settle a pending trial, check the active slot, re-raise the NV floor."""
        with self._locked():
            return self._recover()

    def _recover(self) -> RecoveryReport:
        actions: list[str] = []
        state = self.read_state()
        if state.trial is not None:
            info = self.slot_info(state.trial.slot)
            if info.good:
                # The trial passed and mark-good had begun: finish it.
                state = replace(
                    state,
                    trial=None,
                    last_update=self._update("committed", None, info, "completed at restart"),
                    last_error=None,
                )
                self.store.save(state)
                self.audit.append("recover.completed", slot=info.name)
                actions.append(f"completed the commit of {info.describe()}")
            else:
                reason = (
                    f"the agent stopped during the trial of {info.describe()} "
                    "(crash, kill or power cut)"
                )
                state = self._revert(state, reason, "trial-interrupted", None)
                actions.append(f"reverted to slot {state.active}: {reason}")
        if state.active is not None and not self.slot_info(state.active).good:
            reason = f"the active {self.slot_info(state.active).describe()} is not good"
            state, moved = self._fall_back(state, reason, "active-not-good")
            actions.append(f"fell back to slot {state.active}" if moved else reason)
        self._raise_floor(state, None)
        return RecoveryReport(state, tuple(actions), tuple(self.quarantined))

    def _fall_back(self, state: AgentState, reason: str, code: str) -> tuple[AgentState, bool]:
        """Make the other slot active if it is good and allowed by the floor; mark this one bad."""
        assert state.active is not None
        current = state.active
        other = self.slot_info(other_slot(current))
        usable = other.good
        if usable and other.model_version is not None:
            try:
                self.floor.check(other.model_version, what=other.describe())
            except AgentError as exc:
                log.warning("cannot fall back to %s: %s", other.describe(), _describe(exc))
                usable = False
        if not usable:
            error = self._error("boot", code, f"{reason}; no good slot to fall back to", None)
            state = replace(state, last_error=error)
            self.store.save(state)
            self.audit.append("boot.no-fallback", code=code, slot=current, reason=reason)
            return state, False
        self._slots[current].write_info(SlotInfo(current, "bad"))
        state = AgentState(
            active=other.name,
            previous=None,
            trial=None,
            boot_attempts=0,
            last_update=self._update("fell-back", None, other, reason),
            last_error=self._error("boot", code, reason, None),
        )
        self.store.save(state)
        self.audit.append("boot.fallback", code=code, frm=current, to=other.name, reason=reason)
        log.error("%s: fell back to %s", reason, other.describe())
        return state, True

    def begin_boot(self) -> SlotInfo | None:
        """Count a start attempt before loading; past the bound, fall back to the other slot.

        Returns the slot to load (None when nothing is installed). Call
        :meth:`boot_succeeded` once the model loaded and passed its startup check.
        """
        with self._locked():
            state = self.read_state()
            if state.active is None:
                return None
            attempts = state.boot_attempts + 1
            if attempts > self.boot_attempt_limit:
                reason = (
                    f"slot {state.active} failed to start {state.boot_attempts} times "
                    f"(limit {self.boot_attempt_limit})"
                )
                state, moved = self._fall_back(state, reason, "boot-attempts-exceeded")
                attempts = 1 if moved else attempts
            state = replace(state, boot_attempts=attempts)
            self.store.save(state)
            assert state.active is not None
            return self.slot_info(state.active)

    def boot_succeeded(self) -> None:
        """The active model loaded and passed its startup check: reset the attempt counter."""
        with self._locked():
            state = self.read_state()
            if state.boot_attempts:
                self.store.save(replace(state, boot_attempts=0))

    def start(self, check: Callable[[LoadedModel], None] | None = None) -> LoadedModel | None:
        """The whole start-up: recover, count the attempt, load, check, reset the counter.

        A model that fails to load or check for a reason of its own (integrity,
        format, floor, check) makes the other good slot active at once; a TPM or
        disk error is raised as is (both slots would fail alike), so a restart
        retries and the boot-attempt bound decides.
        """
        self.recover()
        for _ in SLOT_NAMES:
            if self.begin_boot() is None:
                return None
            try:
                loaded = self.load_active()
                if check is not None:
                    check(loaded)
            except (HardwareError, OSError):
                raise
            except Exception as exc:  # a model failing any check falls back
                with self._locked():
                    state = self.read_state()
                    _, moved = self._fall_back(
                        state, f"the active model failed at start: {_describe(exc)}", "load-failed"
                    )
                if not moved:
                    raise
                continue
            self.boot_succeeded()
            return loaded
        raise NoActiveModelError("no slot could be started")

    # -- outcomes decided before the transaction ---------------------------------------------

    def record_outcome(
        self,
        outcome: str,
        *,
        step: str,
        code: str,
        message: str,
        family: str | None,
        version: int | None,
        target_path: str | None = None,
    ) -> None:
        """Record an update refused or failed *before* :meth:`install` (TUF, header, unwrap).

        state.json's last_update/last_error and the audit log say why, as
        :meth:`install` does for its own failures; the active model is untouched.
        """
        with self._locked():
            state = self.read_state()
            txn = self._new_txn()
            update = {
                "outcome": outcome,
                "txn": txn,
                "at": self._stamp(),
                "slot": None,
                "family": family,
                "model_version": version,
                "target_path": target_path,
                "reason": message,
            }
            self.store.save(
                replace(
                    state,
                    last_update=update,
                    last_error=self._error(step, code, message, txn),
                )
            )
            self.audit.append(
                f"update.{outcome}",
                txn=txn,
                step=step,
                code=code,
                family=family,
                version=version,
                message=message,
            )

    # -- manual rollback ------------------------------------------------------------------

    def rollback(self) -> InstallResult:
        """Go back to the previous good slot (operator action); the current one becomes bad."""
        with self._locked():
            state = self.read_state()
            if state.trial is not None:
                raise InstallError("a trial is pending: run recover() first", step="rollback")
            if state.active is None:
                raise NoActiveModelError("nothing is installed: there is nothing to roll back")
            current = self.slot_info(state.active)
            other = self.slot_info(other_slot(state.active))
            if not other.good:
                raise InstallError(
                    f"cannot roll back: {other.describe()} is not a good model", step="rollback"
                )
            self.floor.check(other.model_version or 0, what=other.describe())
            txn = self._new_txn()
            self._slots[current.name].write_info(SlotInfo(current.name, "bad"))
            reason = f"manual rollback from {current.describe()}"
            update = self._update("rolled-back", txn, other, reason)
            update["rolled_back_from"] = {
                "family": current.family,
                "model_version": current.model_version,
                "sealed_sha256": current.sealed_sha256,
            }
            self.store.save(
                AgentState(active=other.name, last_update=update, last_error=state.last_error)
            )
            self.audit.append(
                "rollback.manual",
                txn=txn,
                frm=current.name,
                to=other.name,
                version=other.model_version,
            )
            return InstallResult(
                "rolled-back",
                txn,
                other.name,
                other.family or "",
                other.model_version or 0,
                self._stamp(),
            )


def _describe(exc: BaseException) -> str:
    diagnostics = getattr(exc, "diagnostics", None)
    if callable(diagnostics):
        return str(diagnostics())
    return f"{type(exc).__name__}: {exc}"


def installer_options(config: AgentConfig) -> Mapping[str, Any]:
    """Installer keyword arguments from an :class:`~edgeseal.device_agent.config.AgentConfig`."""
    return {
        "nv_counter_index": config.nv_counter_index,
        "max_version_step": config.max_version_step,
        "boot_attempts": config.boot_attempts,
        "max_model_bytes": config.max_model_bytes,
    }


__all__ = [
    "STEPS",
    "InstallError",
    "InstallResult",
    "Installer",
    "LoadedModel",
    "NoActiveModelError",
    "RecoveryReport",
    "Release",
    "StateBusyError",
    "TrialFailedError",
    "installer_options",
]
