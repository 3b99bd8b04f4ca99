"""SIGKILL the agent at every step of the install transaction; the next start must serve
the old or the new good model, never anything else (Mender crosses every state with a kill).

Each child process (tests/device_agent/install_driver.py) is one start of the agent on
the same emulated device: ``recover()`` + ``load_active()`` (printing what it serves),
then an install of the next release with ``EDGESEAL_FAULT_AT=<step>``, which kills it.
The next child sees the result of that kill.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from install_driver import build_release, write_release_dir

from components import require_module
from edgeseal.device_agent.install import STEPS
from edgeseal.hardware.emulated import EmulatedDevice

pytestmark = [pytest.mark.swtpm, pytest.mark.tflite]

DRIVER = Path(__file__).with_name("install_driver.py")
#: Steps after which the new model is already committed (the trial had passed).
SUB_STEPS = ("mark-good.slot-good", "mark-good.floor")
COMMITTED_AFTER = set(SUB_STEPS)


def _start(device_dir: Path, state_dir: Path, release: Path | None, fault: str | None):  # type: ignore[no-untyped-def]
    env = {k: v for k, v in os.environ.items() if k != "EDGESEAL_FAULT_AT"}
    env["TSS2_LOG"] = "all+none"
    if fault is not None:
        env["EDGESEAL_FAULT_AT"] = fault
    argv = [sys.executable, str(DRIVER), str(device_dir), str(state_dir)]
    if release is not None:
        argv.append(str(release))
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)


def test_sigkill_at_every_step(tmp_path: Path, swtpm_ca: Path) -> None:
    require_module("ai_edge_litert", "ai-edge-litert")
    device = EmulatedDevice.create(tmp_path / "device", ca_dir=swtpm_ca, running=True)
    state_dir = tmp_path / "state"
    try:
        public = device.device_key_public()
        releases = {}
        for version in range(1, len(STEPS) + len(SUB_STEPS) + 2):
            built = build_release(tmp_path / "built", version=version)
            write_release_dir(built, tmp_path / f"rel-{version}", public)
            releases[version] = built

        first = _start(device.state_dir, state_dir, tmp_path / "rel-1", None)
        assert first.returncode == 0, first.stderr
        good = releases[1]
        faults = [*STEPS, *SUB_STEPS]
        outcomes = []
        for n, step in enumerate(faults, start=2):
            killed = _start(device.state_dir, state_dir, tmp_path / f"rel-{n}", step)
            assert killed.returncode == -signal.SIGKILL, (step, killed.stderr[-2000:])
            before = json.loads(killed.stdout.splitlines()[0])
            assert before["served"]["digest"] == good.digest
            after = _start(device.state_dir, state_dir, None, None)
            assert after.returncode == 0, after.stderr[-2000:]
            report = json.loads(after.stdout.splitlines()[0])
            digest = report["served"]["digest"]
            assert digest in (good.digest, releases[n].digest), f"{step}: served unknown model"
            expected = releases[n] if step in COMMITTED_AFTER else good
            assert digest == expected.digest, f"killed at {step}: {report}"
            assert report["floor"] <= report["served"]["version"]
            outcomes.append((step, report["served"]["version"], report["actions"]))
            good = expected
        state = json.loads((state_dir / "state.json").read_text())
        events = [json.loads(line)["event"] for line in (state_dir / "audit.log").open()]
        reverted = events.count("install.reverted")
        completed = events.count("recover.completed")
        print(
            f"\nkill points: {len(faults)}; reverted trials: {reverted}; "
            f"commits completed at restart: {completed}; "
            f"committed: {events.count('install.committed')}"
        )
        for step, version, actions in outcomes:
            print(f"  killed at {step:22s} -> serving v{version} {actions}")
        # Kills during switch-completed-but-untried states were reverted at restart.
        assert reverted == 2  # killed at "trial" and at "mark-good"
        assert completed == 1  # killed after slot.json said good, before state.json
        assert events.count("install.committed") == 2  # v1, and the one killed before its floor
        assert events.count("floor.raised") >= 2
        assert state["trial"] is None
    finally:
        device.stop()
