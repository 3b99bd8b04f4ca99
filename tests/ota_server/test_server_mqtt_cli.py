"""``edgeseal-server device mqtt-credentials``: a device's broker password, written
0600 for the device, hashed in the broker's password file, audited; refused when the
server runs no broker, for an unknown device and for a revoked one."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from release_helpers import device_key_pem

from edgeseal.ota_server.cli import main


@pytest.fixture
def data(tmp_path: Path) -> Path:
    passfile = tmp_path / "pass"
    passfile.write_text("correct horse battery staple\n")
    code = main(
        [
            "--data", str(tmp_path / "data"), "init", "--officer-keys", str(tmp_path / "off"),
            "--officers", "1", "--threshold", "1", "--bin-bits", "1",
            "--passphrase-file", str(passfile),
        ]
    )  # fmt: skip
    assert code == 0
    return tmp_path / "data"


def add_device(data: Path, tmp_path: Path, device_id: str) -> None:
    pem = tmp_path / f"{device_id}.pub.pem"
    pem.write_text(device_key_pem()[1])
    argv = ["--data", str(data), "device", "add", "--id", device_id, "--pubkey", str(pem)]
    assert main([*argv, "--hardware-class", "rpi5"]) == 0


def credentials(data: Path, device_id: str, out: Path) -> int:
    return main(
        ["--data", str(data), "device", "mqtt-credentials", "--id", device_id, "--output", str(out)]
    )


def enable_broker(data: Path) -> None:
    config = data / "server.toml"
    config.write_text(config.read_text().replace("mqtt_port = 0", "mqtt_port = 1883"))


def test_refused_without_a_broker(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pw"
    assert (
        main(
            ["--data", str(data), "device", "mqtt-credentials", "--id", "d1", "--output", str(out)]
        )
        == 1
    )
    assert "no MQTT broker" in capsys.readouterr().err
    assert not out.exists()


def test_credentials_written_hashed_and_audited(data: Path, tmp_path: Path) -> None:
    enable_broker(data)
    add_device(data, tmp_path, "d1")
    out = tmp_path / "pw"
    assert credentials(data, "d1", out) == 0
    password = out.read_text().strip()
    assert len(password) >= 32 and stat.S_IMODE(out.stat().st_mode) == 0o600
    entries = (data / "broker" / "passwords").read_text()
    assert entries.count("d1:") == 1 and password not in entries
    assert main(["--data", str(data), "audit", "verify"]) == 0


def test_refused_for_unknown_and_revoked_devices(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    enable_broker(data)
    out = tmp_path / "pw"
    assert credentials(data, "ghost", out) == 1
    assert "unknown device" in capsys.readouterr().err
    add_device(data, tmp_path, "d1")
    assert credentials(data, "d1", out) == 0
    assert "d1:" in (data / "broker" / "passwords").read_text()
    out.unlink()
    assert main(["--data", str(data), "device", "revoke", "--id", "d1"]) == 0
    assert "MQTT credentials removed" in capsys.readouterr().out
    assert "d1:" not in (data / "broker" / "passwords").read_text()
    assert credentials(data, "d1", out) == 1
    assert "is revoked" in capsys.readouterr().err
    assert not out.exists()
    assert "d1:" not in (data / "broker" / "passwords").read_text()
    assert main(["--data", str(data), "audit", "verify"]) == 0
