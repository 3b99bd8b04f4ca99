"""The install transaction over the A/B model slots (RAUC order).

Start-up, recovery, the boot-attempt fallback and manual rollback are in
:mod:`~edgeseal.device_agent.recovery`; the slot state both work on (lock,
state.json, slot.json, loading a slot, revert, floor) is in
:mod:`~edgeseal.device_agent.slot_state`.

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
after: :meth:`Installer.recover` (from
:class:`~edgeseal.device_agent.recovery.BootRecovery`) finds the pending trial and reverts, unless
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

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edgeseal.device_agent.config import AgentConfig
from edgeseal.device_agent.errors import AgentError
from edgeseal.device_agent.faults import fault_point
from edgeseal.device_agent.recovery import BootRecovery
from edgeseal.device_agent.rollback_floor import DowngradeError
from edgeseal.device_agent.slot_state import (
    InstallError,
    InstallResult,
    describe_error,
)
from edgeseal.device_agent.slots import (
    DIGEST_ALGS,
    FileIdentity,
    SlotInfo,
    check_sealed_file,
    copy_model,
    move_model,
    other_slot,
    seal_key,
    verify_written,
)
from edgeseal.device_agent.state import SLOT_NAMES, AgentState, Trial
from edgeseal.hardware.errors import HardwareError
from edgeseal.sdk.errors import EdgesealError
from edgeseal.sdk.sealed import ContentKey

log = logging.getLogger(__name__)

STEPS = ("mark-bad", "write", "verify-written", "switch", "trial", "mark-good")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
#: Errors of a slot's contents or of the inputs (the slot is bad), as opposed to a crash.
_EXPECTED = (AgentError, EdgesealError, HardwareError, OSError, ValueError)

Trial_ = Callable[[SlotInfo], None]


class TrialFailedError(InstallError):
    """The new model failed its trial; the device was reverted to the previous slot."""


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


class Installer(BootRecovery):
    """The install transaction over :class:`~edgeseal.device_agent.slot_state.SlotState`.

    Start-up, fallback and rollback come from
    :class:`~edgeseal.device_agent.recovery.BootRecovery`.
    """

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
                    f"{describe_error(exc)}",
                    step=step,
                    txn=txn,
                ) from exc
            state = self._switch(state, planned, txn)
            fault_point("trial")
            try:
                trial(planned)
            except Exception as exc:  # any failure of the health check reverts
                reason = f"trial of {planned.describe()} failed: {describe_error(exc)}"
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
        message = describe_error(exc)
        log.error("install %s at %s: %s", outcome, step, message)
        self.store.save(
            replace(
                state,
                last_update=self._update(outcome, txn, planned, message),
                last_error=self._error(step, code, message, txn),
            )
        )
        self.audit.append(f"install.{outcome}", txn=txn, step=step, code=code, message=message)

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
    "Installer",
    "Release",
    "TrialFailedError",
    "installer_options",
]
