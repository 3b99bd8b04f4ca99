"""``edgeseal-agent rollback``: back to the previous good model, in-process and
through a running agent (SIGHUP), and the rolled-back release is not reinstalled
by the next check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from agent_fleet import fleet, served

from components import require_module

pytestmark = [pytest.mark.swtpm, pytest.mark.tflite]


def test_rollback_through_the_running_agent(tmp_path: Path, swtpm_ca: Path) -> None:
    require_module("ai_edge_litert", "ai-edge-litert")
    with fleet(tmp_path) as f:
        dev = f.add_device("dev-r", swtpm_ca)
        try:
            v1 = f.publish(1)
            assert dev.check_now()["outcome"] == "installed"
            v2 = f.publish(2)
            assert dev.check_now()["version"] == 2
            with dev.daemon():
                np.testing.assert_allclose(served(dev), v2.expected(), atol=1e-6)
                done = dev.cli("rollback", "--json")
                assert done.returncode == 0, done.stderr[-2000:]
                status = dev.status()
                assert status["active_version"] == 1, status
                np.testing.assert_allclose(served(dev), v1.expected(), atol=1e-6)
                again = dev.check_now()
                assert again["outcome"] != "installed", again
                assert dev.status()["active_version"] == 1
        finally:
            dev.device.stop()


def test_rollback_without_a_previous_model_is_refused(tmp_path: Path, swtpm_ca: Path) -> None:
    require_module("ai_edge_litert", "ai-edge-litert")
    with fleet(tmp_path) as f:
        dev = f.add_device("dev-s", swtpm_ca)
        try:
            f.publish(1)
            assert dev.check_now()["outcome"] == "installed"
            done = dev.cli("rollback")
            assert done.returncode == 1
            assert done.stderr.startswith("error: "), done.stderr[-2000:]
            assert dev.status()["active_version"] == 1
        finally:
            dev.device.stop()
