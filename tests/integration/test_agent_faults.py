"""Faults during an update that a device really meets, each leaving it on its current
good model, recorded in its state and shown by ``status``:

- the TPM refuses to unwrap the new release's key (the boot chain changed since the
  PCR policy was signed);
- the disk refuses the download (the kernel's file-size limit, RLIMIT_FSIZE, makes
  every large write fail, as a full disk does).
"""

from __future__ import annotations

import json
import resource
import signal
import subprocess
from pathlib import Path

import pytest
from agent_fleet import AGENT, AgentDevice, agent_env, fleet

from components import require_module

pytestmark = [pytest.mark.swtpm, pytest.mark.tflite]


def _check_now_with_file_limit(dev: AgentDevice, limit: int) -> dict[str, object]:
    def limit_writes() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    done = subprocess.run(
        [AGENT, "check-now", "--json"],
        env=agent_env(EDGESEAL_AGENT_CONFIG=str(dev.config)),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        preexec_fn=limit_writes,
    )
    assert done.stdout, done.stderr[-3000:]
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return result


def test_tpm_refusal_and_full_disk_keep_the_current_model(tmp_path: Path, swtpm_ca: Path) -> None:
    require_module("ai_edge_litert", "ai-edge-litert")
    with fleet(tmp_path) as f:
        dev = f.add_device("dev-f", swtpm_ca)
        try:
            v1 = f.publish(1)
            assert dev.check_now()["outcome"] == "installed"

            # the disk refuses a 2 MB download: failed, v1 kept, the reason recorded
            f.publish(2, size=2 * 1024 * 1024)
            result = _check_now_with_file_limit(dev, 512 * 1024)
            assert (result["outcome"], result["version"]) == ("failed", 2), result
            status = dev.status()
            assert (
                status["active_version"] == 1
                and status["active_digest"] == v1.meta.plaintext.digest.hex()
            )
            assert status["last_check"]["outcome"] == "failed"

            # the boot chain changes: the TPM refuses to unwrap release 3's key
            f.publish(3)
            dev.device.tamper("bootloader")
            dev.device.restart()
            result = dev.check_now()
            assert result["outcome"] in ("failed", "refused"), result
            assert result["version"] == 3 and "PCR 4" in str(result["reason"]), result
            status = dev.status()
            assert (
                status["active_version"] == 1
                and status["active_digest"] == v1.meta.plaintext.digest.hex()
            )
            assert "PCR 4" in json.dumps(status["last_error"]), status["last_error"]
        finally:
            dev.device.stop()
