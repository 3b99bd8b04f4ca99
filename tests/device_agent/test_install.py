"""The install transaction, recovery, boot fallback and rollback (software key backend: fast).

The same state machine runs on a real TPM in test_install_tpm.py and under
SIGKILL in test_install_crash.py; here every branch is exercised quickly.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from install_driver import Built, build_release

from edgeseal.device_agent import install as install_mod
from edgeseal.device_agent.errors import WrongHardwareError
from edgeseal.device_agent.install import Installer, TrialFailedError
from edgeseal.device_agent.rollback_floor import DowngradeError, VersionJumpError
from edgeseal.device_agent.slot_state import InstallError, NoActiveModelError, StateBusyError
from edgeseal.device_agent.slots import SlotContentError, SlotInfo
from edgeseal.hardware.errors import PolicyCheckError
from edgeseal.hardware.policy import SignedPCRPolicy, sign_pcr_policy
from edgeseal.hardware.software import SoftwareBackend
from edgeseal.sdk.sealed import ContentKey


class Crash(BaseException):
    """Stands in for SIGKILL in-process: nothing catches a BaseException on the way out."""


@pytest.fixture
def backend(tmp_path: Path) -> SoftwareBackend:
    return SoftwareBackend(tmp_path / "keys")


@pytest.fixture
def policy(backend: SoftwareBackend) -> SignedPCRPolicy:
    authority = ec.generate_private_key(ec.SECP256R1())
    return sign_pcr_policy(authority, backend.pcr_read([0, 9]))


@pytest.fixture
def make(
    tmp_path: Path, backend: SoftwareBackend, policy: SignedPCRPolicy
) -> Callable[..., Installer]:
    def factory(**options: object) -> Installer:
        return Installer(tmp_path / "state", backend, policy, "emulated", **options)  # type: ignore[arg-type]

    return factory


@pytest.fixture
def rel(tmp_path: Path) -> Callable[[int], Built]:
    return lambda version: build_release(tmp_path / "releases", version=version)


def passing(installer: Installer) -> Callable[[SlotInfo], None]:
    def trial(slot: SlotInfo) -> None:
        installer.load_slot(slot.name)

    return trial


def failing(slot: SlotInfo) -> None:
    raise RuntimeError("health check: output 0 off by 3.5 (tolerance 0.01)")


def put(installer: Installer, built: Built, trial: Callable[[SlotInfo], None] | None = None):  # type: ignore[no-untyped-def]
    return installer.install(built.esm, built.key, built.release, trial or passing(installer))


def served(installer: Installer) -> tuple[str, int | None, str]:
    loaded = installer.load_active()
    return loaded.slot.name, loaded.slot.model_version, hashlib.sha256(loaded.plaintext).hexdigest()


def test_two_installs_alternate_slots_and_commit(make, rel) -> None:  # type: ignore[no-untyped-def]
    inst = make()
    v1, v2 = rel(1), rel(2)
    result = put(inst, v1)
    assert (result.outcome, result.slot, result.version) == ("committed", "a", 1)
    assert served(inst) == ("a", 1, v1.digest)
    put(inst, v2)
    state = inst.read_state()
    assert (state.active, state.previous, state.trial) == ("b", "a", None)
    assert served(inst) == ("b", 2, v2.digest)
    assert state.last_update is not None and state.last_update["outcome"] == "committed"
    assert state.last_error is None
    assert inst.slot_info("a").good and inst.slot_info("b").good
    # The floor keeps the fallback slot usable: min(2, 1).
    assert inst.floor.floor() == 1
    events = [e.event for e in inst.audit.entries()]
    assert events.count("install.committed") == 2
    assert "install.step" in events


def test_trial_failure_reverts_to_previous(make, rel) -> None:  # type: ignore[no-untyped-def]
    inst = make()
    v1, v2 = rel(1), rel(2)
    put(inst, v1)
    with pytest.raises(TrialFailedError, match=r"off by 3\.5") as info:
        put(inst, v2, failing)
    assert info.value.step == "trial"
    state = inst.read_state()
    assert (state.active, state.previous, state.trial) == ("a", None, None)
    assert inst.slot_info("b").status == "bad"
    assert state.last_error is not None and state.last_error["code"] == "trial-failed"
    assert state.last_update is not None and state.last_update["outcome"] == "reverted"
    assert state.last_update["model_version"] == 2
    assert served(inst) == ("a", 1, v1.digest)
    assert "install.reverted" in [e.event for e in inst.audit.entries()]
    # The next attempt starts over in the bad slot and commits.
    put(inst, rel(3))
    assert served(inst)[:2] == ("b", 3)


def test_first_install_failing_its_trial_leaves_nothing_active(make, rel) -> None:  # type: ignore[no-untyped-def]
    inst = make()
    with pytest.raises(TrialFailedError):
        put(inst, rel(1), failing)
    assert inst.read_state().active is None
    with pytest.raises(NoActiveModelError):
        inst.load_active()


def test_recover_after_pending_trial_reverts(make, rel) -> None:  # type: ignore[no-untyped-def]
    inst = make()
    v1 = rel(1)
    put(inst, v1)

    def dies(slot: SlotInfo) -> None:
        raise Crash

    with pytest.raises(Crash):
        put(inst, rel(2), dies)
    assert inst.read_state().trial is not None
    fresh = make()
    report = fresh.recover()
    assert any("reverted to slot a" in a for a in report.actions)
    state = fresh.read_state()
    assert state.trial is None and state.active == "a"
    assert state.last_error is not None and state.last_error["code"] == "trial-interrupted"
    assert fresh.slot_info("b").status == "bad"
    assert served(fresh) == ("a", 1, v1.digest)
    # recover() is idempotent.
    assert make().recover().actions == ()


@pytest.mark.parametrize(
    ("step", "expect_new"),
    [
        ("mark-bad", False),
        ("write", False),
        ("verify-written", False),
        ("switch", False),
        ("trial", False),
        ("mark-good", False),
        ("mark-good.slot-good", True),
        ("mark-good.floor", True),
    ],
)
def test_crash_at_each_step_then_recover_serves_old_or_new(  # type: ignore[no-untyped-def]
    make, rel, monkeypatch: pytest.MonkeyPatch, step: str, expect_new: bool
) -> None:
    inst = make()
    v1, v2 = rel(1), rel(2)
    put(inst, v1)

    def fault(name: str) -> None:
        if name == step:
            raise Crash

    monkeypatch.setattr(install_mod, "fault_point", fault)
    with pytest.raises(Crash):
        put(inst, v2)
    monkeypatch.undo()
    fresh = make()
    fresh.recover()
    assert served(fresh) == (("b", 2, v2.digest) if expect_new else ("a", 1, v1.digest))
    assert fresh.read_state().trial is None
    assert fresh.audit.verify() > 0
    # After any crash the next install goes through.
    put(fresh, rel(3))
    assert served(fresh)[1] == 3


def test_written_slot_resumes_at_verify(make, rel, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    inst = make()
    v1 = rel(1)

    def fault(name: str) -> None:
        if name == "verify-written":
            raise Crash

    monkeypatch.setattr(install_mod, "fault_point", fault)
    with pytest.raises(Crash):
        put(inst, v1)
    monkeypatch.undo()
    assert inst.slot_info("a").status == "written"
    put(make(), v1)
    events = [e.event for e in inst.audit.entries()]
    assert "install.resumed" in events
    assert served(inst) == ("a", 1, v1.digest)


def test_recover_completes_a_commit_whose_slot_is_already_good(make, rel) -> None:  # type: ignore[no-untyped-def]
    inst = make()
    v1 = rel(1)
    put(inst, v1)
    # Simulate the end state of a crash after mark-good wrote slot.json.
    state = inst.read_state()
    (inst.state_dir / "state.json").write_text(
        json.dumps({**state.to_json(), "trial": {"slot": "a", "started_at": "x"}})
    )
    report = make().recover()
    assert report.actions == ("completed the commit of slot a (demo v1, good)",)
    assert served(inst) == ("a", 1, v1.digest)


def test_boot_attempts_bound_falls_back(make, rel) -> None:  # type: ignore[no-untyped-def]
    inst = make(boot_attempts=3)
    v1, v2 = rel(1), rel(2)
    put(inst, v1)
    put(inst, v2)
    for attempt in (1, 2, 3):
        assert inst.begin_boot().name == "b"  # type: ignore[union-attr]
        assert inst.read_state().boot_attempts == attempt
        # ... and the agent dies before boot_succeeded()
    slot = inst.begin_boot()
    assert slot is not None and slot.name == "a"
    state = inst.read_state()
    assert (state.active, state.boot_attempts) == ("a", 1)
    assert inst.slot_info("b").status == "bad"
    assert state.last_error is not None and state.last_error["code"] == "boot-attempts-exceeded"
    assert served(inst) == ("a", 1, v1.digest)
    inst.boot_succeeded()
    assert inst.read_state().boot_attempts == 0


def test_boot_attempts_without_a_good_fallback_keep_the_only_model(make, rel) -> None:  # type: ignore[no-untyped-def]
    inst = make(boot_attempts=2)
    v1 = rel(1)
    put(inst, v1)
    for _ in range(4):
        assert inst.begin_boot().name == "a"  # type: ignore[union-attr]
    assert inst.slot_info("a").good
    assert served(inst) == ("a", 1, v1.digest)
    assert "boot.no-fallback" in [e.event for e in inst.audit.entries()]


def test_start_falls_back_when_the_active_model_is_damaged(make, rel) -> None:  # type: ignore[no-untyped-def]
    inst = make()
    v1, v2 = rel(1), rel(2)
    put(inst, v1)
    put(inst, v2)
    model = inst.state_dir / "slots" / "b" / "model.esm"
    data = bytearray(model.read_bytes())
    data[-5] ^= 1
    model.write_bytes(bytes(data))
    loaded = make().start()
    assert loaded is not None and loaded.slot.name == "a"
    assert hashlib.sha256(loaded.plaintext).hexdigest() == v1.digest
    state = inst.read_state()
    assert state.last_error is not None and state.last_error["code"] == "load-failed"
    assert "failed authentication" in state.last_error["message"]
    assert inst.slot_info("b").status == "bad"
    assert (
        repr(loaded)
        == f"LoadedModel(slot a (demo v1, good), plaintext=<{len(v1.plaintext)} bytes>)"
    )


def test_start_does_not_blame_the_model_for_a_pcr_change(  # type: ignore[no-untyped-def]
    make, rel, backend: SoftwareBackend
) -> None:
    inst = make()
    put(inst, rel(1))
    put(inst, rel(2))
    backend.pcr_extend(9, b"\x01" * 32)  # an unapproved kernel
    with pytest.raises(PolicyCheckError, match="PCR 9"):
        make().start()
    assert inst.slot_info("a").good and inst.slot_info("b").good


def test_manual_rollback(make, rel) -> None:  # type: ignore[no-untyped-def]
    inst = make()
    v1 = rel(1)
    put(inst, v1)
    v2 = rel(2)
    put(inst, v2)
    result = inst.rollback()
    assert (result.outcome, result.slot, result.version) == ("rolled-back", "a", 1)
    state = inst.read_state()
    assert state.last_update is not None
    assert state.last_update["rolled_back_from"] == {
        "family": "demo",
        "model_version": 2,
        "sealed_sha256": v2.release.sealed_sha256,
    }
    assert served(inst) == ("a", 1, v1.digest)
    assert inst.slot_info("b").status == "bad"
    with pytest.raises(InstallError, match="cannot roll back"):
        inst.rollback()


def test_downgrade_and_version_jump_refused(make, rel) -> None:  # type: ignore[no-untyped-def]
    inst = make(max_version_step=50)
    put(inst, rel(3))
    put(inst, rel(5))
    assert inst.floor.floor() == 3
    with pytest.raises(DowngradeError, match="anti-rollback floor 3"):
        put(inst, rel(2))
    with pytest.raises(DowngradeError, match="older than the active"):
        put(inst, rel(4))
    with pytest.raises(VersionJumpError, match="max_version_step 50"):
        put(inst, rel(60))
    state = inst.read_state()
    assert state.active == "b" and state.last_error is not None
    assert state.last_update is not None and state.last_update["outcome"] == "refused"
    assert served(inst)[1] == 5
    put(inst, rel(7))
    assert inst.floor.floor() == 5


def test_refused_inputs_change_nothing(make, rel, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    inst = make()
    v1, v2 = rel(1), rel(2)
    put(inst, v1)
    before = inst.slot_info("b")
    with pytest.raises(SlotContentError, match="does not belong"):
        inst.install(v2.esm, ContentKey.generate(), v2.release, passing(inst))
    with pytest.raises(SlotContentError, match="version 2 is not 3"):
        inst.install(v2.esm, v2.key, rel(3).release, passing(inst))
    other_hw = build_release(tmp_path / "hw", version=2, hardware=("rpi4",))
    with pytest.raises(WrongHardwareError):
        inst.install(other_hw.esm, other_hw.key, other_hw.release, passing(inst))
    assert inst.slot_info("b") == before
    # A file that changed after its TUF hash was checked is caught while copying.
    tampered = v2.esm.with_suffix(".x")
    data = bytearray(v2.esm.read_bytes())
    data[-1] ^= 1
    tampered.write_bytes(bytes(data))
    with pytest.raises(InstallError, match="failed at write"):
        inst.install(tampered, v2.key, v2.release, passing(inst))
    assert inst.slot_info("b").status == "bad"
    assert served(inst) == ("a", 1, v1.digest)


def test_corrupt_state_json_is_quarantined_and_rebuilt(make, rel) -> None:  # type: ignore[no-untyped-def]
    inst = make()
    put(inst, rel(1))
    v2 = rel(2)
    put(inst, v2)
    (inst.state_dir / "state.json").write_bytes(b'{"version": 1, "active": "b"')
    fresh = make()
    state = fresh.read_state()
    assert (state.active, state.previous) == ("b", "a")
    assert state.last_error is not None and state.last_error["code"] == "state-corrupt"
    assert len(list(inst.state_dir.glob("state.json.corrupt-*"))) == 1
    assert served(fresh) == ("b", 2, v2.digest)
    assert "state.quarantined" in [e.event for e in fresh.audit.entries()]


def test_corrupt_active_slot_json_falls_back(make, rel) -> None:  # type: ignore[no-untyped-def]
    inst = make()
    v1 = rel(1)
    put(inst, v1)
    put(inst, rel(2))
    (inst.state_dir / "slots" / "b" / "slot.json").write_text('{"version": 1, "status": "good"}')
    fresh = make()
    report = fresh.recover()
    assert report.quarantined and report.quarantined[0].path.name == "slot.json"
    assert served(fresh) == ("a", 1, v1.digest)


def test_one_process_at_a_time(make, rel) -> None:  # type: ignore[no-untyped-def]
    inst = make()
    with inst._locked(), pytest.raises(StateBusyError):
        make().recover()


def test_lost_state_json_is_rebuilt_from_good_slots(make, rel) -> None:  # type: ignore[no-untyped-def]
    inst = make()
    put(inst, rel(1))
    v2 = rel(2)
    put(inst, v2)
    (inst.state_dir / "state.json").unlink()
    fresh = make()
    assert served(fresh) == ("b", 2, v2.digest)
    state = fresh.read_state()
    assert state.previous == "a"
    assert state.last_error is not None and state.last_error["code"] == "state-missing"


def test_move_renames_the_verified_file_into_the_slot(make, rel, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    inst = make()
    v1 = rel(1)
    handed = tmp_path / "state" / "downloads" / "v1.esm"
    handed.parent.mkdir(parents=True, exist_ok=True)
    handed.write_bytes(v1.esm.read_bytes())
    inode = handed.stat().st_ino
    inst.install(handed, v1.key, v1.release, passing(inst), move=True)
    slot_file = inst.state_dir / "slots" / "a" / "model.esm"
    assert not handed.exists()
    assert slot_file.stat().st_ino == inode
    assert slot_file.stat().st_mode & 0o777 == 0o600
    assert served(inst) == ("a", 1, v1.digest)


def test_move_of_a_file_changed_after_handover_is_hashed_and_refused(  # type: ignore[no-untyped-def]
    make, rel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inst = make()
    v1, v2 = rel(1), rel(2)
    put(inst, v1)
    handed = tmp_path / "state" / "downloads" / "v2.esm"
    handed.parent.mkdir(parents=True, exist_ok=True)
    handed.write_bytes(v2.esm.read_bytes())
    real_seal_key = install_mod.seal_key

    def seal_key_and_tamper(slot, *args):  # type: ignore[no-untyped-def]
        # Something writes the slot's file between the rename and verify-written
        # (its size changes: mtime alone may not, within one tick of the file system clock).
        with slot.model_path.open("ab") as handle:
            handle.write(b"\0")
        real_seal_key(slot, *args)

    monkeypatch.setattr(install_mod, "seal_key", seal_key_and_tamper)
    with pytest.raises(InstallError, match="failed at verify-written"):
        inst.install(handed, v2.key, v2.release, passing(inst), move=True)
    assert inst.slot_info("b").status == "bad"
    assert served(inst) == ("a", 1, v1.digest)
