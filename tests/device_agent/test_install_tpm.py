"""The install transaction on an emulated device: real swtpm, real envelopes, real TFLite.

The content key comes out of the device's TPM (HPKE envelope opened with
TPM2_ECDH_ZGen under the signed PCR policy), is re-sealed by the TPM into the
slot, and after a reboot the committed model is loaded from the slot alone:
no envelope, no release files, no network.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from install_driver import build_release, content_key_from_envelope, tflite_trial, write_release_dir

from components import require_module
from edgeseal.device_agent.install import Installer, TrialFailedError
from edgeseal.device_agent.rollback_floor import DowngradeError
from edgeseal.hardware.emulated import EmulatedDevice
from edgeseal.hardware.errors import PolicyCheckError, TPMCommandError

pytestmark = [pytest.mark.swtpm, pytest.mark.tflite]


@pytest.fixture
def device(tmp_path: Path, swtpm_ca: Path) -> Iterator[EmulatedDevice]:
    require_module("ai_edge_litert", "ai-edge-litert")
    dev = EmulatedDevice.create(tmp_path / "device", ca_dir=swtpm_ca, running=True)
    try:
        yield dev
    finally:
        dev.stop()


def _publish(tmp_path: Path, device: EmulatedDevice, version: int) -> tuple[Path, Path, object]:
    built = build_release(tmp_path / "built", version=version)
    rel_dir = tmp_path / f"published-{version}"
    write_release_dir(built, rel_dir, device.device_key_public())
    return rel_dir, rel_dir / "model.esm", built


def test_install_restart_and_policy_update(tmp_path: Path, device: EmulatedDevice) -> None:
    state_dir = tmp_path / "state"
    hw = device.profile.hardware_class
    built = {}
    with device.backend() as backend:
        inst = Installer(state_dir, backend, device.signed_policy(), hw)
        for version in (1, 2):
            rel_dir, esm, b = _publish(tmp_path, device, version)
            built[version] = b
            key = content_key_from_envelope(
                esm, (rel_dir / "envelope").read_bytes(), backend, device.signed_policy()
            )
            result = inst.install(esm, key, b.release, tflite_trial(inst, b.seed))  # type: ignore[attr-defined]
            assert result.outcome == "committed"
        # A release that fails its health check on the device: reverted, v2 stays.
        rel_dir, esm, bad = _publish(tmp_path, device, 3)
        key = content_key_from_envelope(
            esm, (rel_dir / "envelope").read_bytes(), backend, device.signed_policy()
        )
        with pytest.raises(TrialFailedError, match="is not"):
            inst.install(esm, key, bad.release, tflite_trial(inst, seed=99))  # type: ignore[attr-defined]
        state = inst.read_state()
        assert state.active == "b" and state.last_error["code"] == "trial-failed"  # type: ignore[index]
        assert inst.floor.floor() == 1
    # Reboot, and the releases are gone: the slot alone must do.
    for path in tmp_path.glob("published-*"):
        shutil.rmtree(path)
    shutil.rmtree(tmp_path / "built")
    device.restart()
    with device.backend() as backend:
        inst = Installer(state_dir, backend, device.signed_policy(), hw)
        assert inst.recover().actions == ()
        # Slot a was overwritten by the failed v3: v2 is the only good model, so the floor
        # rises to 2 (the lowest version the device may still fall back to).
        assert inst.floor.floor() == 2
        loaded = inst.start(check=lambda m: tflite_trial(inst, built[2].seed)(m.slot))  # type: ignore[attr-defined]
        assert loaded is not None and loaded.slot.model_version == 2
        assert hashlib.sha256(loaded.plaintext).hexdigest() == built[2].digest  # type: ignore[attr-defined]
        assert inst.read_state().boot_attempts == 0
        with pytest.raises(DowngradeError):
            old = build_release(tmp_path / "old", version=1)
            inst.install(old.esm, old.key, old.release, lambda s: None)
    # An unapproved kernel: the TPM refuses to unseal key.sealed, and the slots are not blamed.
    device.tamper("kernel")
    device.restart()
    with device.backend() as backend:
        inst = Installer(state_dir, backend, device.signed_policy(), hw)
        with pytest.raises(PolicyCheckError, match="PCR 9"):
            inst.start()
        assert inst.slot_info("b").good and inst.read_state().active == "b"
    # The embedded team approves the new kernel: the same key.sealed opens again.
    approved = device.approve()
    with device.backend() as backend:
        inst = Installer(state_dir, backend, approved, hw)
        loaded = inst.start()
        assert loaded is not None
        assert hashlib.sha256(loaded.plaintext).hexdigest() == built[2].digest  # type: ignore[attr-defined]
    assert inst.audit.verify() > 10


def test_key_sealed_is_useless_on_another_tpm(
    tmp_path: Path, device: EmulatedDevice, swtpm_ca: Path
) -> None:
    """Copying a slot to another device gets nothing: key.sealed belongs to one TPM."""
    b = build_release(tmp_path / "built", version=1)
    with device.backend() as backend:
        inst = Installer(tmp_path / "state", backend, device.signed_policy(), "emulated")
        inst.install(b.esm, b.key, b.release, lambda s: None)
    other = EmulatedDevice.create(tmp_path / "other", ca_dir=swtpm_ca, running=True)
    try:
        shutil.copytree(tmp_path / "state" / "slots", tmp_path / "stolen" / "slots")
        shutil.copy(tmp_path / "state" / "state.json", tmp_path / "stolen" / "state.json")
        with other.backend() as backend:
            thief = Installer(tmp_path / "stolen", backend, other.signed_policy(), "emulated")
            with pytest.raises(TPMCommandError, match="sealed by another TPM"):
                thief.load_active()
    finally:
        other.stop()
