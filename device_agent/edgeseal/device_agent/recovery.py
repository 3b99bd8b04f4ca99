"""Start-up, boot-attempt fallback and manual rollback over the A/B model slots.

:meth:`BootRecovery.start` is the agent's start-up: :meth:`~BootRecovery.recover`
settles a trial the install transaction (:mod:`~edgeseal.device_agent.install`)
left pending (reverts it, or finishes ``mark-good`` if the slot was already
marked good), checks the active slot and raises the NV floor again;
:meth:`~BootRecovery.begin_boot` counts the start attempt and past the bound
falls back to the other good slot; the model is loaded and checked, and
:meth:`~BootRecovery.boot_succeeded` resets the counter. :meth:`~BootRecovery.rollback`
is the operator's way back to the previous good slot.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from edgeseal.device_agent.errors import AgentError
from edgeseal.device_agent.slot_state import (
    InstallError,
    InstallResult,
    LoadedModel,
    NoActiveModelError,
    SlotState,
    describe_error,
)
from edgeseal.device_agent.slots import SlotInfo, other_slot
from edgeseal.device_agent.state import SLOT_NAMES, AgentState, Quarantine
from edgeseal.hardware.errors import HardwareError, PolicyCheckError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecoveryReport:
    """What :meth:`BootRecovery.recover` found and did."""

    state: AgentState
    actions: tuple[str, ...] = ()
    quarantined: tuple[Quarantine, ...] = field(default=())


class BootRecovery(SlotState):
    """Start-up, fallback and rollback of the slots; the installer's other half."""

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
                log.warning("cannot fall back to %s: %s", other.describe(), describe_error(exc))
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
        retries and the boot-attempt bound decides - except a boot outside the
        signed PCR policy, which does not count as an attempt at all.
        """
        self.recover()
        for _ in SLOT_NAMES:
            if self.begin_boot() is None:
                return None
            try:
                loaded = self.load_active()
                if check is not None:
                    check(loaded)
            except PolicyCheckError:
                # The boot is outside the signed PCR policy: the TPM refuses the key
                # whichever slot is tried and no model is at fault, so this start must
                # not count towards falling back (that would mark good slots bad).
                self.boot_succeeded()
                raise
            except (HardwareError, OSError):
                raise
            except Exception as exc:  # a model failing any check falls back
                with self._locked():
                    state = self.read_state()
                    _, moved = self._fall_back(
                        state,
                        f"the active model failed at start: {describe_error(exc)}",
                        "load-failed",
                    )
                if not moved:
                    raise
                continue
            self.boot_succeeded()
            return loaded
        raise NoActiveModelError("no slot could be started")

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


__all__ = ["BootRecovery", "RecoveryReport"]
