"""Anti-rollback: a model version floor kept in a TPM NV monotonic counter.

TUF stops a server or mirror from rolling *metadata* back, but TUF's trusted
metadata lives on the disk, and a disk can be wiped or restored from an old
image. The floor lives in the TPM instead: a monotonic NV counter
(TPM 2.0 Part 1, 37.2.x, TPM_NT_COUNTER) can only go up, survives power cuts,
swtpm restarts and re-flashing the disk, and cannot be reset by the OS.

Rules (docs/dev/agent-contracts.md, "Anti-rollback"):

* a model whose version is below the floor is refused (:class:`DowngradeError`),
  even when its release is validly signed;
* a version more than ``max_step`` above the floor is refused
  (:class:`VersionJumpError`): the counter only moves by one per TPM command,
  so a version of 2**40 would take forever to reach and would wear the NV;
* :meth:`RollbackFloor.raise_to` increments the counter until it reads at
  least the version (idempotent: a crash half way leaves a counter that the
  next call continues from).

A TPM starts a new counter at the highest value any counter on it ever held
(and the backends make a defined counter read >= 1 at once), so the first
floor of a device may be above zero: releases start at version 1.

This module only talks to the counter; *which* version the installer raises
the floor to is decided in :mod:`edgeseal.device_agent.install`.
"""

from __future__ import annotations

import logging

from edgeseal.device_agent.errors import AgentError
from edgeseal.hardware.backend import KeyBackend
from edgeseal.hardware.errors import KeyNotFoundError

log = logging.getLogger(__name__)

DEFAULT_NV_INDEX = 0x01500010
DEFAULT_MAX_STEP = 10000


class VersionFloorError(AgentError):
    """A model version is refused by the anti-rollback floor."""

    def __init__(self, message: str, *, version: int, floor: int) -> None:
        super().__init__(message, field="version")
        self.version = version
        self.floor = floor


class DowngradeError(VersionFloorError):
    """The version is below the floor held by the TPM: a rollback, refused."""


class VersionJumpError(VersionFloorError):
    """The version is more than ``max_version_step`` above the floor."""


class RollbackFloor:
    """The version floor in NV counter ``index`` of ``backend``'s TPM."""

    def __init__(
        self,
        backend: KeyBackend,
        index: int = DEFAULT_NV_INDEX,
        *,
        max_step: int = DEFAULT_MAX_STEP,
    ) -> None:
        if max_step < 1:
            raise ValueError("max_step must be >= 1")
        self._backend = backend
        self.index = index
        self.max_step = max_step

    def ensure(self) -> None:
        """Define the counter if it does not exist yet (idempotent)."""
        self._backend.nv_counter_define(self.index)

    def floor(self) -> int:
        """The current floor; defines the counter on first use."""
        try:
            return self._backend.nv_counter_read(self.index)
        except KeyNotFoundError:
            log.info("defining the anti-rollback NV counter 0x%08x", self.index)
            self.ensure()
            return self._backend.nv_counter_read(self.index)

    def check(self, version: int, *, what: str = "model") -> None:
        """Raise DowngradeError / VersionJumpError unless ``version`` may be installed."""
        floor = self.floor()
        if version < floor:
            raise DowngradeError(
                f"{what} version {version} is below this device's anti-rollback floor "
                f"{floor} (TPM NV counter 0x{self.index:08x}): refusing a rollback, even "
                "though the release may be validly signed",
                version=version,
                floor=floor,
            )
        if version - floor > self.max_step:
            raise VersionJumpError(
                f"{what} version {version} is {version - floor} above the anti-rollback floor "
                f"{floor}, more than max_version_step {self.max_step}: the TPM counter "
                "would have to be incremented that many times. Release versions must grow "
                "in small steps (or raise max_version_step in the agent configuration)",
                version=version,
                floor=floor,
            )

    def raise_to(self, version: int) -> int:
        """Increment the counter until it reads >= ``version``; return the new floor."""
        floor = self.floor()
        if version - floor > self.max_step:
            self.check(version)
        steps = 0
        while floor < version:
            floor = self._backend.nv_counter_increment(self.index)
            steps += 1
        if steps:
            log.info("anti-rollback floor raised to %d (%d increments)", floor, steps)
        return floor
