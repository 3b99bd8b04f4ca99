"""SIGKILL the agent at every named step of the install transaction and at 200 random moments
of an update; after each kill a fresh agent start must serve the old or the new good model
(compared by the plaintext's SHA-256), never anything else and never nothing.

One server, one emulated device, one small release (v1 installed, v2 published); between
trials the state directory is reset to the v1 snapshot. The NV floor stays at 1 throughout
(it follows the lowest good fallback slot), so every trial is a real v1 -> v2 update. Each
trial's agent is a ``check-now`` process forked from a warm, pre-imported process (see
``Zygote`` in agent_fleet.py); the kill delay is drawn from a seeded RNG over the measured
duration of one update.
"""

from __future__ import annotations

import random
import shutil
import signal
import statistics
import time
from pathlib import Path

import pytest
from agent_fleet import Zygote, fleet

from components import require_module
from edgeseal.device_agent.install import STEPS

pytestmark = [pytest.mark.swtpm, pytest.mark.tflite]

RANDOM_TRIALS = 200
SEED = 20240604
SUB_STEPS = ("mark-good.slot-good", "mark-good.floor")
COMMITTED_AFTER = set(SUB_STEPS)


def test_sigkill_at_every_step_and_at_random_moments(tmp_path: Path, swtpm_ca: Path) -> None:
    require_module("ai_edge_litert", "ai-edge-litert")
    with fleet(tmp_path) as f:
        dev = f.add_device("crash-1", swtpm_ca)
        zygote: Zygote | None = None
        try:
            v1 = f.publish(1)
            assert dev.check_now()["outcome"] == "installed"
            v2 = f.publish(2)
            snapshot = tmp_path / "snapshot"
            shutil.copytree(dev.state_dir, snapshot)

            def reset() -> None:
                shutil.rmtree(dev.state_dir)
                shutil.copytree(snapshot, dev.state_dir)

            good = {v1.digest: 1, v2.digest: 2}
            zygote = Zygote(dev.config)
            failures: list[str] = []

            # 1. every named step of the install transaction
            for step in (*STEPS, *SUB_STEPS):
                reset()
                code = zygote.update(fault=step)
                assert code == -signal.SIGKILL, f"{step}: the agent was not killed ({code})"
                after = zygote.verify()
                want = v2.digest if step in COMMITTED_AFTER else v1.digest
                if after.get("served") != want:
                    failures.append(f"killed at {step}: {after}")

            # 2. the duration of one whole update, then 200 kills at random moments of it
            durations = []
            for _ in range(3):
                reset()
                start = time.monotonic()
                assert zygote.update() == 0
                durations.append(time.monotonic() - start)
                assert zygote.verify().get("served") == v2.digest
            span = statistics.median(durations) * 1.1
            rng = random.Random(SEED)
            served = {1: 0, 2: 0}
            killed = 0
            for trial in range(RANDOM_TRIALS):
                reset()
                delay = rng.uniform(0, span)
                code = zygote.update(kill_after=delay)
                killed += code == -signal.SIGKILL
                after = zygote.verify()
                version = good.get(after.get("served") or "")
                if version is None or after["exit"] != 0:
                    failures.append(f"random trial {trial} (kill at {delay:.3f}s): {after}")
                    continue
                served[version] += 1
            print(
                f"\ncrash trials: {len(STEPS) + len(SUB_STEPS)} named steps + "
                f"{RANDOM_TRIALS} random kills over {span:.3f}s "
                f"({killed} killed mid-update); served old {served[1]}, new {served[2]}; "
                f"failures: {len(failures)}"
            )
            for failure in failures:
                print("  FAIL", failure)
            assert not failures
            assert served[1] and served[2]  # the kills did land on both sides of the commit
        finally:
            if zygote is not None:
                zygote.close()
            dev.device.stop()
