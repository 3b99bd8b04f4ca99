"""``edgeseal-server``: init, tokens, families, devices, releases, refresh, audit verify, run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgeseal.ota_server.cli import main

PASSPHRASE = "correct horse battery staple"


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def initialized(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """One ``init`` for the module (key generation is the slow part); tests copy it."""
    base = tmp_path_factory.mktemp("cli")
    data, officers = base / "data", base / "officers"
    passfile = base / "passphrase"
    passfile.write_text(PASSPHRASE + "\n")
    code = main(
        [
            "--data", str(data), "init", "--officer-keys", str(officers), "--officers", "3",
            "--threshold", "2", "--bin-bits", "4", "--passphrase-file", str(passfile), "--json",
        ]
    )  # fmt: skip
    assert code == 0
    return data, officers, passfile.as_posix()


def copy_of(initialized: tuple[Path, Path, str], tmp_path: Path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(initialized[0], data)
    return data


def test_init_layout_and_permissions(initialized: tuple[Path, Path, str]) -> None:
    data, officers, _ = initialized
    assert (data / "server.toml").read_text().count("version = 1") == 1
    assert oct((data / "keys").stat().st_mode & 0o777) == "0o700"
    # Searchable by mosquitto's user (it drops privileges), listable by nobody else;
    # nothing directly inside is readable by others except the public repository.
    assert oct(data.stat().st_mode & 0o777) == "0o711"
    for entry in data.iterdir():
        if entry.name not in ("repository", "broker"):
            assert entry.stat().st_mode & 0o007 == 0, entry
    for key in (data / "keys").iterdir():
        assert key.stat().st_mode & 0o077 == 0, key
    assert (data / "repository" / "metadata" / "1.root.json").is_file()
    files = sorted(p.name for p in officers.iterdir())
    assert "officer-3-targets.pem" in files and "officer-1-root.pub.pem" in files
    pem = (officers / "officer-1-root.pem").read_bytes()
    assert b"ENCRYPTED PRIVATE KEY" in pem
    assert PASSPHRASE.encode() not in pem
    root = json.loads((data / "repository" / "metadata" / "1.root.json").read_bytes())
    assert root["signed"]["roles"]["root"]["threshold"] == 2
    assert len(root["signed"]["roles"]["root"]["keyids"]) == 3


def test_init_refuses_an_existing_directory(
    initialized: tuple[Path, Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = copy_of(initialized, tmp_path)
    code, _, err = cli(
        capsys, "--data", str(data), "init", "--officer-keys", str(tmp_path / "o2"),
        "--passphrase-file", initialized[2], "--bin-bits", "4",
    )  # fmt: skip
    assert code == 1
    assert "already" in err


def test_operator_commands(
    initialized: tuple[Path, Path, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = copy_of(initialized, tmp_path)
    officers = initialized[1]
    monkeypatch.setenv("EDGESEAL_SERVER_DATA", str(data))
    monkeypatch.setenv("EDGESEAL_KEY_PASSPHRASE", PASSPHRASE)

    code, out, _ = cli(capsys, "token", "create", "--name", "rm", "--role", "release-manager",
                       "--family", "detector", "--json")  # fmt: skip
    assert code == 0
    created = json.loads(out)
    assert created["token"].startswith("est1.") and created["family"] == "detector"

    rm_keys = []
    for i in range(2):
        key = ec.generate_private_key(ec.SECP256R1()).public_key()
        path = tmp_path / f"rm{i}.pub.pem"
        path.write_bytes(
            key.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        rm_keys += ["--key", str(path)]
    targets = ["--targets-key", str(officers / "officer-1-targets.pem"),
               "--targets-key", str(officers / "officer-2-targets.pem")]  # fmt: skip
    code, out, _ = cli(capsys, "family", "add", "detector", *rm_keys, "--threshold", "2",
                       *targets, "--json")  # fmt: skip
    assert code == 0, out
    assert json.loads(out)["threshold"] == 2
    code, _, err = cli(capsys, "family", "add", "detector", *rm_keys, "--threshold", "1",
                       *targets)  # fmt: skip
    assert code == 1 and "set-keys" in err
    code, _, _ = cli(capsys, "family", "set-keys", "detector", *rm_keys, "--threshold", "1",
                     *targets)  # fmt: skip
    assert code == 0
    monkeypatch.setenv("EDGESEAL_KEY_PASSPHRASE", "wrong")
    code, _, err = cli(capsys, "family", "set-keys", "detector", *rm_keys, "--threshold", "2",
                       *targets)  # fmt: skip
    assert code == 1 and "wrong" not in err.replace("wrong passphrase", "")

    device_pem = tmp_path / "device.pem"
    device_pem.write_bytes(
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    code, out, _ = cli(capsys, "device", "add", "--id", "dev-1", "--pubkey", str(device_pem),
                       "--hardware-class", "rpi5", "--json")  # fmt: skip
    assert code == 0 and json.loads(out)["id"] == "dev-1"
    code, _, err = cli(capsys, "device", "add", "--id", "../x", "--pubkey", str(device_pem),
                       "--hardware-class", "rpi5")  # fmt: skip
    assert code == 1 and "device id" in err

    code, out, _ = cli(capsys, "release", "list", "--json")
    assert (code, json.loads(out)) == (0, [])
    code, _, err = cli(capsys, "release", "show", "detector-1")
    assert code == 1 and "no release" in err
    code, out, _ = cli(capsys, "refresh", "--json")
    assert code == 0 and json.loads(out) == {"resigned": []}

    code, out, _ = cli(capsys, "audit", "verify", "--json")
    assert code == 0
    # init, token, family add, refused family add, set-keys, refused set-keys, device, refused
    assert json.loads(out) == {"ok": True, "entries": 8}


def _tampered(initialized: tuple[Path, Path, str], tmp_path: Path, *sql: str) -> Path:
    data = copy_of(initialized, tmp_path)
    for i in range(4):
        assert main(["--data", str(data), "token", "create", "--name", f"t{i}", "--role",
                     "viewer"]) == 0  # fmt: skip
    with sqlite3.connect(data / "server.db") as conn:
        for statement in sql:
            conn.execute(statement)
    return data


@pytest.mark.parametrize(
    ("sql", "seq", "words"),
    [
        (["UPDATE audit SET actor = 'mallory' WHERE seq = 3"], 3, "edited"),
        (["DELETE FROM audit WHERE seq = 2"], 2, "missing"),
        (
            [
                "UPDATE audit SET seq = -2 WHERE seq = 2",
                "UPDATE audit SET seq = 2 WHERE seq = 3",
                "UPDATE audit SET seq = 3 WHERE seq = -2",
            ],
            2,
            "does not link",
        ),
        (["DELETE FROM audit WHERE seq = 5"], 5, "removed"),
    ],
    ids=["edited", "removed", "reordered", "tail-removed"],
)
def test_audit_verify_detects_tampering(
    initialized: tuple[Path, Path, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    sql: list[str],
    seq: int,
    words: str,
) -> None:
    data = _tampered(initialized, tmp_path)
    capsys.readouterr()
    assert cli(capsys, "--data", str(data), "audit", "verify")[0] == 0
    data = _tampered(initialized, tmp_path / "t", *sql)
    capsys.readouterr()
    code, _, err = cli(capsys, "--data", str(data), "audit", "verify")
    assert code == 1
    assert f"seq {seq}" in err and words in err
    code, out, _ = cli(capsys, "--data", str(data), "audit", "verify", "--json")
    assert code == 1 and json.loads(out)["seq"] == seq


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_run_serves_and_stops_gracefully(
    initialized: tuple[Path, Path, str], tmp_path: Path
) -> None:
    data = copy_of(initialized, tmp_path)
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgeseal.ota_server.cli",
            "--data",
            str(data),
            "run",
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ),
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    assert json.loads(r.read())["status"] == "ok"
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
