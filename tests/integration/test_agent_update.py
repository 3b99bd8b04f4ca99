"""The update cycle end to end: the real OTA server on loopback, an emulated device on swtpm,
real TFLite models released (2 of 3 signatures) through the sdk, the agent run as
``edgeseal-agent run`` / ``check-now`` subprocesses.

Covered: a good update is served on the inference socket; a model failing its golden
health check is refused and not retried; a release for another hardware class is
ignored; a download tampered on the server's disk is refused by TUF; a validly signed
older version is refused (NV floor intact); the agent killed during the trial reverts
at the next start; after a commit the agent restarts and serves the new model with
the server gone.
"""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest
from agent_fleet import fleet, served

from components import require_module

pytestmark = [pytest.mark.swtpm, pytest.mark.tflite]


def test_update_refusals_and_restart_without_network(tmp_path: Path, swtpm_ca: Path) -> None:
    require_module("ai_edge_litert", "ai-edge-litert")
    with fleet(tmp_path) as f:
        dev = f.add_device("dev-1", swtpm_ca)
        try:
            v1 = f.publish(1)
            first = dev.check_now()  # no agent running: the check runs in-process
            assert first["outcome"] == "installed", first
            with dev.daemon():
                np.testing.assert_allclose(served(dev), v1.expected(), atol=1e-6)

                # a good update is committed and served at once by the running agent
                v2 = f.publish(2)
                result = dev.check_now()
                assert (result["outcome"], result["version"]) == ("installed", 2), result
                assert set(result["phases"]) == {
                    "refresh",
                    "download",
                    "unwrap",
                    "decrypt",
                    "health_check",
                    "commit",
                }
                np.testing.assert_allclose(served(dev), v2.expected(), atol=1e-6)

                # a model that fails its golden health check: refused, v2 still served
                f.publish(3, broken=True)
                result = dev.check_now()
                assert (result["outcome"], result["version"]) == ("refused", 3), result
                assert "health check failed" in result["reason"]
                np.testing.assert_allclose(served(dev), v2.expected(), atol=1e-6)
                status = dev.status()
                assert status["active_version"] == 2
                assert status["last_error"]["code"] == "trial-failed"
                assert "health check failed" in status["last_error"]["message"]
                assert status["last_update"]["outcome"] == "reverted"
                # ... and not retried at the next poll
                again = dev.check_now()
                assert again["outcome"] == "no-update" and "not retrying" in again["reason"]

                # a release for another hardware class is not for us
                f.publish(4, hardware=("rpi5",))
                assert dev.check_now()["outcome"] == "no-update"

                # a download tampered with on the server's disk: TUF refuses it
                f.publish(5)
                target = f.target_file(5)
                data = bytearray(target.read_bytes())
                data[len(data) // 2] ^= 0x01
                target.write_bytes(bytes(data))
                result = dev.check_now()
                assert (result["outcome"], result["version"]) == ("refused", 5), result
                np.testing.assert_allclose(served(dev), v2.expected(), atol=1e-6)
                status = dev.status()
                assert status["active_version"] == 2
                assert status["last_error"]["step"] == "download"
                audit = (dev.state_dir / "audit.log").read_text()
                assert '"update.refused"' in audit and '"install.reverted"' in audit
            assert not (dev.state_dir / "agent.pid").exists()  # graceful shutdown
        except BaseException:
            dev.device.stop()
            raise
    # the server is stopped: a restart serves the committed v2 without any network
    try:
        with dev.daemon():
            np.testing.assert_allclose(served(dev), v2.expected(), atol=1e-6)
            assert dev.status()["serving"]["version"] == 2
            failed = dev.check_now()
            assert failed["outcome"] == "failed", failed
            np.testing.assert_allclose(served(dev), v2.expected(), atol=1e-6)
    finally:
        dev.device.stop()


def test_downgrade_refused_and_floor_intact(tmp_path: Path, swtpm_ca: Path) -> None:
    require_module("ai_edge_litert", "ai-edge-litert")
    with fleet(tmp_path) as f:
        dev = f.add_device("dev-2", swtpm_ca)
        try:
            f.publish(1)
            v2 = f.publish(2)
            assert dev.check_now()["version"] == 2  # the newest; v1 never installed
            assert dev.status()["floor"] == 2
            f.yank(2)  # now a validly signed v1 is the newest published release
            result = dev.check_now()
            assert result["outcome"] == "refused", result
            assert "downgrade" in result["reason"]
            status = dev.status()
            assert status["active_version"] == 2 and status["floor"] == 2
            assert status["last_error"]["code"] == "downgrade"
            assert status["slots"]["a"]["plaintext_digest"] == status["active_digest"]
            with dev.daemon():
                np.testing.assert_allclose(served(dev), v2.expected(), atol=1e-6)
        finally:
            dev.device.stop()


def test_kill_during_trial_reverts_at_next_start(tmp_path: Path, swtpm_ca: Path) -> None:
    require_module("ai_edge_litert", "ai-edge-litert")
    with fleet(tmp_path) as f:
        dev = f.add_device("dev-3", swtpm_ca)
        try:
            v1 = f.publish(1)
            assert dev.check_now()["outcome"] == "installed"
            f.publish(2)
            killed = dev.cli("check-now", "--json", fault="trial")
            assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
            assert dev.status()["trial"] is not None  # died with the trial pending
            with dev.daemon():
                np.testing.assert_allclose(served(dev), v1.expected(), atol=1e-6)
                status = dev.status()
                assert status["active_version"] == 1 and status["trial"] is None
                assert status["last_update"]["outcome"] == "reverted"
                assert status["last_error"]["code"] == "trial-interrupted"
        finally:
            dev.device.stop()
