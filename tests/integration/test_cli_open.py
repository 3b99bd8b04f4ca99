"""The device's open path through the real entry points: ``edgeseal seal`` on the
release manager's side, ``edgeseal-agent open`` on an emulated device (real swtpm,
real TFLite interpreter). Every refusal names what was refused and writes nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from components import require_module
from edgeseal.hardware.emulated import EmulatedDevice
from edgeseal.sdk import modelgen

pytestmark = pytest.mark.swtpm
BIN = Path(sys.executable).parent


def cli(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TSS2_LOG": "all+none"}
    return subprocess.run(
        [str(BIN / argv[0]), *argv[1:]],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
        env=env,
        timeout=120,
    )


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, swtpm_ca: Path
) -> Iterator[dict[str, EmulatedDevice]]:
    """Two running emulated devices (one module: creating devices is the slow part)."""
    require_module("ai_edge_litert", "ai-edge-litert")
    base = tmp_path_factory.mktemp("fleet")
    devices = {
        name: EmulatedDevice.create(base / name, device_id=name, ca_dir=swtpm_ca, running=True)
        for name in ("dev-a", "dev-b")
    }
    try:
        yield devices
    finally:
        for device in devices.values():
            device.stop()


@pytest.fixture
def release(tmp_path: Path, fleet: dict[str, EmulatedDevice]) -> dict[str, Path]:
    """A model sealed to dev-a with ``edgeseal seal``, plus an input and the expected output."""
    layers = modelgen.random_layers([6, 5, 3], seed=11)
    (tmp_path / "m.tflite").write_bytes(modelgen.mlp_model(layers))
    x = np.linspace(-2, 2, 6, dtype=np.float32).reshape(1, 6)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "expected.npy", modelgen.reference_mlp(x, layers))
    pub = fleet["dev-a"].state_dir / "device-key.pub.pem"
    done = cli(
        "edgeseal", "seal", "m.tflite", "--family", "clf", "--version", "3",
        "--hardware", "emulated", "--to", str(pub), "-o", "m.esm", "--envelope", "m.env",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return {"dir": tmp_path, "esm": tmp_path / "m.esm", "env": tmp_path / "m.env"}


def open_on(
    device: EmulatedDevice, esm: Path, env: Path, cwd: Path
) -> subprocess.CompletedProcess[str]:
    return cli(
        "edgeseal-agent", "open", str(esm), "--envelope", str(env),
        "--device", str(device.state_dir), "--input", "x.npy", "--json", cwd=cwd,
    )  # fmt: skip


def listing(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


def test_open_runs_the_model_matching_numpy(
    release: dict[str, Path], fleet: dict[str, EmulatedDevice]
) -> None:
    done = open_on(fleet["dev-a"], release["esm"], release["env"], release["dir"])
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["family"], result["version"]) == ("clf", 3)
    expected = np.load(release["dir"] / "expected.npy")
    np.testing.assert_allclose(np.array(result["outputs"][0]), expected, rtol=1e-5, atol=1e-6)


def test_inspect_needs_no_key(release: dict[str, Path]) -> None:
    done = cli("edgeseal", "inspect", "m.esm", "--json", cwd=release["dir"])
    assert done.returncode == 0, done.stderr
    header = json.loads(done.stdout)
    assert header["family"] == "clf" and header["version"] == 3
    assert header["hardware"] == ["emulated"] and header["authenticated"] is False


def test_other_device_cannot_open(
    release: dict[str, Path], fleet: dict[str, EmulatedDevice]
) -> None:
    before = listing(release["dir"])
    done = open_on(fleet["dev-b"], release["esm"], release["env"], release["dir"])
    assert done.returncode == 1
    assert "envelope" in done.stderr and "Traceback" not in done.stderr
    assert listing(release["dir"]) == before


@pytest.mark.parametrize("where", ["header", "middle", "last-byte"])
def test_flipped_bit_refused_and_nothing_written(
    release: dict[str, Path], fleet: dict[str, EmulatedDevice], where: str
) -> None:
    data = bytearray(release["esm"].read_bytes())
    index = {"header": 40, "middle": len(data) // 2, "last-byte": len(data) - 1}[where]
    data[index] ^= 0x10
    release["esm"].write_bytes(bytes(data))
    before = listing(release["dir"])
    done = open_on(fleet["dev-a"], release["esm"], release["env"], release["dir"])
    assert done.returncode == 1
    assert done.stderr.startswith("error: "), done.stderr
    assert "outputs" not in done.stdout
    assert listing(release["dir"]) == before


def test_truncated_file_refused_by_name(
    release: dict[str, Path], fleet: dict[str, EmulatedDevice]
) -> None:
    data = release["esm"].read_bytes()
    release["esm"].write_bytes(data[:-100])
    done = open_on(fleet["dev-a"], release["esm"], release["env"], release["dir"])
    assert done.returncode == 1
    assert "truncated" in done.stderr


def test_wrong_hardware_class_refused(tmp_path: Path, fleet: dict[str, EmulatedDevice]) -> None:
    (tmp_path / "m.tflite").write_bytes(modelgen.mlp_model(modelgen.random_layers([2, 2], seed=1)))
    np.save(tmp_path / "x.npy", np.zeros((1, 2), dtype=np.float32))
    pub = fleet["dev-a"].state_dir / "device-key.pub.pem"
    sealed = cli(
        "edgeseal", "seal", "m.tflite", "--family", "clf", "--version", "1",
        "--hardware", "rpi4", "--to", str(pub), "-o", "m.esm", "--envelope", "m.env", cwd=tmp_path,
    )  # fmt: skip
    assert sealed.returncode == 0, sealed.stderr
    done = open_on(fleet["dev-a"], tmp_path / "m.esm", tmp_path / "m.env", tmp_path)
    assert done.returncode == 1
    assert "rpi4" in done.stderr and "emulated" in done.stderr


def test_changed_boot_chain_refused_until_approved(
    tmp_path_factory: pytest.TempPathFactory, swtpm_ca: Path, release: dict[str, Path]
) -> None:
    device = EmulatedDevice.create(
        tmp_path_factory.mktemp("tamper") / "dev", device_id="dev-t", ca_dir=swtpm_ca, running=True
    )
    try:
        pub = device.state_dir / "device-key.pub.pem"
        cwd = release["dir"]
        sealed = cli(
            "edgeseal", "seal", "m.tflite", "--family", "clf", "--version", "3",
            "--hardware", "emulated", "--to", str(pub), "-o", "t.esm", "--envelope", "t.env",
            cwd=cwd,
        )  # fmt: skip
        assert sealed.returncode == 0, sealed.stderr
        assert open_on(device, cwd / "t.esm", cwd / "t.env", cwd).returncode == 0
        for command in (["tamper", "bootloader"], ["stop"], ["start"]):
            step = cli(
                "edgeseal-agent", "emulate", *command, "--dir", str(device.state_dir), cwd=cwd
            )
            assert step.returncode == 0, step.stderr
        refused = open_on(device, cwd / "t.esm", cwd / "t.env", cwd)
        assert refused.returncode == 1
        assert "PCR policy check failed: PCR 4 changed" in refused.stderr
        approve = cli(
            "edgeseal-agent", "emulate", "approve", "--dir", str(device.state_dir), cwd=cwd
        )
        assert approve.returncode == 0, approve.stderr
        assert open_on(device, cwd / "t.esm", cwd / "t.env", cwd).returncode == 0
    finally:
        device.stop()


def test_seal_refuses_a_key_that_is_not_p256(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate().public_key()
    (tmp_path / "k.pem").write_bytes(
        key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    (tmp_path / "m.tflite").write_bytes(b"TFL3" * 10)
    done = cli(
        "edgeseal", "seal", "m.tflite", "--family", "f", "--version", "1", "--hardware", "h",
        "--to", "k.pem", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 1
    assert "not a P-256 public key" in done.stderr
    assert not (tmp_path / "m.tflite.esm").exists()
