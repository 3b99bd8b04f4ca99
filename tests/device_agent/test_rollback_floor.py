"""The anti-rollback floor in a real TPM NV counter (swtpm), across a TPM restart."""

from __future__ import annotations

from pathlib import Path

import pytest
from install_driver import build_release

from edgeseal.device_agent.install import Installer
from edgeseal.device_agent.rollback_floor import (
    DowngradeError,
    RollbackFloor,
    VersionJumpError,
)
from edgeseal.hardware.backend import open_backend
from edgeseal.hardware.emulated import EmulatedDevice
from edgeseal.hardware.swtpm import SwtpmProcess

pytestmark = pytest.mark.swtpm

INDEX = 0x01500010


def test_floor_check_raise_and_restart(swtpm: SwtpmProcess) -> None:
    with open_backend(swtpm.tcti) as backend:
        floor = RollbackFloor(backend, INDEX, max_step=100)
        start = floor.floor()  # defines the counter on first use
        assert start >= 1
        floor.check(start)
        floor.check(start + 100)
        with pytest.raises(
            DowngradeError, match=f"below this device's anti-rollback floor {start}"
        ):
            floor.check(start - 1)
        with pytest.raises(VersionJumpError, match="max_version_step 100"):
            floor.check(start + 101)
        assert floor.raise_to(start + 5) == start + 5
        assert floor.raise_to(start + 2) == start + 5  # never goes down
        with pytest.raises(VersionJumpError):
            floor.raise_to(start + 5 + 101)
    swtpm.stop()
    swtpm.start()
    with open_backend(swtpm.tcti) as backend:
        floor = RollbackFloor(backend, INDEX, max_step=100)
        assert floor.floor() == start + 5
        with pytest.raises(DowngradeError) as info:
            floor.check(start + 4)
        assert (info.value.version, info.value.floor) == (start + 4, start + 5)
        assert "refusing a rollback" in info.value.diagnostics()


def test_wiped_disk_cannot_roll_the_device_back(tmp_path: Path, swtpm_ca: Path) -> None:
    """The floor survives losing the whole state directory and a reboot of the device."""
    device = EmulatedDevice.create(tmp_path / "dev", ca_dir=swtpm_ca, running=True)
    try:
        approved = device.signed_policy()
        hw = device.profile.hardware_class
        with device.backend() as backend:
            inst = Installer(tmp_path / "state", backend, approved, hw)
            for version in (3, 4):
                built = build_release(tmp_path / "rel", version=version)
                inst.install(built.esm, built.key, built.release, lambda s: None)
            assert inst.floor.floor() == 3
        device.restart()
        with device.backend() as backend:
            wiped = Installer(tmp_path / "state-after-wipe", backend, approved, hw)
            old = build_release(tmp_path / "rel", version=2)
            with pytest.raises(DowngradeError):
                wiped.install(old.esm, old.key, old.release, lambda s: None)
            assert wiped.read_state().active is None
            assert wiped.read_state().last_error["code"] == "downgrade"  # type: ignore[index]
    finally:
        device.stop()
