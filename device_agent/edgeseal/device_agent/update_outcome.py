"""How an update cycle ends: its outcome, the time of each phase, and the record of why.

A cycle ends with one of :data:`OUTCOMES`; the updater stops a cycle early by
raising :class:`EndOfCycleError`, which :class:`OutcomeRecorder` builds after
recording a refusal or failure in state.json (``last_update`` /
``last_error``), the audit log and, for a release not to retry,
failed-releases.json.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edgeseal.device_agent.slot_state import describe_error
from edgeseal.device_agent.update_records import ReleaseKey, UpdateRecords
from edgeseal.sdk.releases import ReleaseMetadata

if TYPE_CHECKING:
    from edgeseal.device_agent.install import Installer

OUTCOMES = ("no-update", "installed", "refused", "failed")
PHASES = ("refresh", "download", "unwrap", "decrypt", "health_check", "commit")


@dataclass(frozen=True)
class UpdateResult:
    """What one cycle did; ``phases`` are seconds per phase (see :data:`PHASES`)."""

    outcome: str
    family: str
    version: int | None = None
    reason: str | None = None
    phases: dict[str, float] = field(default_factory=dict)
    at: str = ""
    cycle: str = ""

    @property
    def total_seconds(self) -> float:
        return sum(self.phases.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "family": self.family,
            "version": self.version,
            "reason": self.reason,
            "phases": {k: round(v, 6) for k, v in self.phases.items()},
            "at": self.at,
            "cycle": self.cycle,
        }


class PhaseTimer:
    """Accumulates the wall time of each phase (perf_counter injected for tests)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = self._clock()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + self._clock() - start


class EndOfCycleError(Exception):
    """Internal to the update cycle: end the cycle with ``outcome`` and a recorded reason."""

    def __init__(
        self, outcome: str, step: str, code: str, message: str, version: int | None = None
    ) -> None:
        super().__init__(message)
        self.version = version
        self.outcome = outcome
        self.step = step
        self.code = code
        self.message = message


class OutcomeRecorder:
    """Records a cycle's refusal or failure and returns the error that ends the cycle."""

    def __init__(self, installer: Installer, records: UpdateRecords) -> None:
        self._installer = installer
        self._records = records

    def refuse(  # noqa: PLR0917 - the refusal's fields, in the order they are read
        self,
        step: str,
        code: str,
        message: str,
        meta: ReleaseMetadata,
        path: str | None,
        remember: ReleaseKey | None = None,
    ) -> EndOfCycleError:
        if remember is not None:
            self._records.remember(remember)
        self._installer.record_outcome(
            "refused",
            step=step,
            code=code,
            message=message,
            family=meta.family,
            version=meta.version,
            target_path=path,
        )
        return EndOfCycleError("refused", step, code, message, meta.version)

    def fail(
        self,
        exc: BaseException,
        step: str,
        family: str,
        meta: ReleaseMetadata | None,
        *,
        code: str | None = None,
        remember: ReleaseKey | None = None,
    ) -> EndOfCycleError:
        """TUF verification failures are refusals; network/disk/TPM problems are failures."""
        from edgeseal.device_agent.tuf_errors import TargetVerificationError, TUFRepositoryError

        refused = isinstance(exc, TUFRepositoryError | TargetVerificationError)
        outcome = "refused" if refused else "failed"
        if refused and remember is not None:
            self._records.remember(remember)
        message = f"{step}: {describe_error(exc)}"
        self._installer.record_outcome(
            outcome,
            step=step,
            code=code or f"{step}-{outcome}",
            message=message,
            family=family,
            version=None if meta is None else meta.version,
            target_path=None if meta is None else meta.target_path,
        )
        return EndOfCycleError(
            outcome, step, code or step, message, None if meta is None else meta.version
        )


__all__ = [
    "OUTCOMES",
    "PHASES",
    "EndOfCycleError",
    "OutcomeRecorder",
    "PhaseTimer",
    "UpdateResult",
]
