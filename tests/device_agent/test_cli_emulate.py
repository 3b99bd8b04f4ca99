"""``edgeseal-agent emulate``: argument parsing, the subcommands, and a real end-to-end run."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from components import require_executable, require_module
from edgeseal.device_agent.cli import emulate
from edgeseal.hardware.emulated import EmulatedDevice
from edgeseal.hardware.localca import ensure_local_ca
from edgeseal.sdk.cli.common import run_command


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgeseal-agent")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    emulate.register(parser.add_subparsers(dest="command", required=True))
    return parser


def test_parser_subcommands(tmp_path: Path) -> None:
    parser = _parser()
    args = parser.parse_args(
        ["emulate", "create", "--dir", str(tmp_path), "--profile", "rpi4-tpm", "--id", "pi-7"]
    )
    assert args.func is emulate._create
    assert (args.dir, args.profile, args.device_id, args.running) == (
        tmp_path,
        "rpi4-tpm",
        "pi-7",
        False,
    )
    for action, func in [
        ("start", emulate._start),
        ("stop", emulate._stop),
        ("approve", emulate._approve),
    ]:
        assert parser.parse_args(["emulate", action, "--dir", "d"]).func is func
    args = parser.parse_args(["emulate", "status", "--dir", "d", "--json"])
    assert args.func is emulate._status and args.json
    args = parser.parse_args(["emulate", "tamper", "kernel", "--digest", "ab" * 32, "--dir", "d"])
    assert (args.func, args.component, args.digest) == (emulate._tamper, "kernel", "ab" * 32)


def test_parser_refuses_unknown_component(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["emulate", "tamper", "initrd", "--dir", "d"])
    assert "invalid choice: 'initrd'" in capsys.readouterr().err


def test_dir_defaults_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGESEAL_DEVICE_DIR", "/srv/dev-9")
    assert _parser().parse_args(["emulate", "status"]).dir == Path("/srv/dev-9")
    monkeypatch.delenv("EDGESEAL_DEVICE_DIR")
    assert _parser().parse_args(["emulate", "status"]).dir is None


def _run(argv: list[str]) -> int:
    return run_command(_parser().parse_args(argv))


def test_errors_are_diagnosed_not_raised(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EDGESEAL_DEVICE_DIR", raising=False)
    assert _run(["emulate", "status"]) == 1
    assert "pass --dir or set EDGESEAL_DEVICE_DIR" in capsys.readouterr().err
    assert _run(["emulate", "status", "--dir", str(tmp_path)]) == 1
    assert "is not an emulated device" in capsys.readouterr().err


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_executable("swtpm", "swtpm")
    require_executable("swtpm_setup", "swtpm-tools")
    require_module("tpm2_pytss", "tpm2-pytss")
    return ensure_local_ca(tmp_path_factory.mktemp("swtpm-ca")).ca_dir


@pytest.fixture
def device_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "dev"
    try:
        yield path
    finally:
        if (path / "device.json").exists():
            EmulatedDevice(path).stop()


@pytest.mark.swtpm
def test_subcommands_in_process(
    device_dir: Path, ca_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = ["--dir", str(device_dir)]
    assert _run(["emulate", "create", *d, "--id", "cli-1", "--ca-dir", str(ca_dir)]) == 0
    assert "created emulated device cli-1 (emulated)" in capsys.readouterr().out
    assert _run(["emulate", "status", *d]) == 0
    assert "power      stopped" in capsys.readouterr().out
    assert _run(["emulate", "tamper", "rootfs", "--digest", "cd" * 32, *d]) == 0
    assert f"rootfs is now {'cd' * 32}" in capsys.readouterr().out
    assert _run(["emulate", "tamper", "rootfs", "--digest", "xyz", *d]) == 1
    assert "64 lower-case hex" in capsys.readouterr().err
    assert _run(["emulate", "status", "--json", *d]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["manifest"]["rootfs"] == "cd" * 32
    assert status["running"] is False
    assert _run(["emulate", "approve", *d]) == 0
    assert "signed a PCR policy over PCR 0, 4, 9, 15" in capsys.readouterr().out
    assert EmulatedDevice(device_dir).signed_policy().values.indices == [0, 4, 9, 15]


def _agent() -> list[str]:
    script = Path(sys.executable).with_name("edgeseal-agent")
    return [str(script)] if script.exists() else [sys.executable, "-m", "edgeseal.device_agent.cli"]


@pytest.mark.swtpm
def test_end_to_end_through_the_agent_command(device_dir: Path, ca_dir: Path) -> None:
    """create / start / status --json / tamper / start again / stop in separate processes."""
    env = {**os.environ, "EDGESEAL_DEVICE_DIR": str(device_dir), "TSS2_LOG": "all+none"}

    def agent(*argv: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*_agent(), "emulate", *argv],
            check=False,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        return result

    agent("create", "--id", "e2e-1", "--ca-dir", str(ca_dir))
    started = agent("start")
    assert "device e2e-1 running: TCTI swtpm:host=127.0.0.1,port=" in started.stdout
    # The emulator outlived the command that started it.
    status = json.loads(agent("status", "--json").stdout)
    assert status["running"] is True
    assert status["policy_matches"] is True
    assert status["tcti"] in started.stdout
    agent("start")  # idempotent: no second measurement
    assert json.loads(agent("status", "--json").stdout)["policy_matches"] is True

    agent("tamper", "bootloader")
    assert json.loads(agent("status", "--json").stdout)["pending_reboot"] is True
    agent("stop")
    agent("start")
    human = agent("status").stdout
    assert "DIFFER from the signed policy: PCR 4 (bootloader)" in human
    status = json.loads(agent("status", "--json").stdout)
    assert status["changed_pcrs"] == [4]

    agent("approve")
    assert json.loads(agent("status", "--json").stdout)["policy_matches"] is True
    agent("stop")
    status = json.loads(agent("status", "--json").stdout)
    assert status["running"] is False
    assert "stopped" in agent("status").stdout
