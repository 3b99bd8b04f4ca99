"""`edgeseal release` argument handling that needs no real server.

The end-to-end flow against the real server is in
tests/ota_server/test_release_flow.py; here: where the token and passphrase
come from, how golden files are checked, and that a failed create leaves no
sealed file behind. A tiny loopback HTTP server stands in where the CLI must
talk to something.
"""

from __future__ import annotations

import http.server
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgeseal.sdk.cli import main
from edgeseal.sdk.cli.common import CLIError
from edgeseal.sdk.cli.release_create import load_golden
from edgeseal.sdk.modelgen import dense_model


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("EDGESEAL_SERVER", "EDGESEAL_TOKEN", "EDGESEAL_KEY_PASSPHRASE", "EDGESEAL_ROOT"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def fake_server() -> Iterator[tuple[str, list[tuple[str, str, str | None]]]]:
    """Answers the KEK, refuses release creation with 500; records (method, path, auth)."""
    seen: list[tuple[str, str, str | None]] = []
    kek = ec.generate_private_key(ec.SECP256R1()).public_key()
    pem = kek.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()

    class _Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _answer(self) -> None:
            seen.append((self.command, self.path, self.headers.get("Authorization")))
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            if self.path == "/api/v1/kek":
                status, body = 200, {"public_key_pem": pem}
            elif self.path.startswith("/api/v1/releases"):
                status, body = 200, [{"id": "detector-1", "state": "published", "version": 1}]
                if self.command == "POST":
                    status, body = 500, {"error": {"code": "internal", "message": "disk full"}}
            else:
                status, body = 404, {"error": {"code": "not-found", "message": "no"}}
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _answer  # noqa: N815

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_token_is_never_a_command_line_argument(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["release", "list", "--server", "http://127.0.0.1:1", "--token", "secret"])
    assert "unrecognized arguments: --token" in capsys.readouterr().err


def test_missing_server_and_token_are_explained(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = run(capsys, "release", "list")
    assert code == 1 and "EDGESEAL_SERVER" in err
    monkeypatch.setenv("EDGESEAL_SERVER", "http://127.0.0.1:1")
    code, _, err = run(capsys, "release", "list")
    assert code == 1 and "EDGESEAL_TOKEN" in err


def test_token_file_wins_over_environment(
    fake_server: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url, seen = fake_server
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    token_file.chmod(0o644)
    monkeypatch.setenv("EDGESEAL_TOKEN", "from-env")
    code, out, _ = run(capsys, "release", "list", "--server", url, "--token-file", str(token_file))
    assert code == 0 and "detector-1" in out
    assert seen[-1][2] == "Bearer from-file"
    assert "readable by other users" in caplog.text
    code, out, _ = run(capsys, "release", "list", "--server", url, "--json")
    assert code == 0 and json.loads(out)[0]["id"] == "detector-1"
    assert seen[-1][2] == "Bearer from-env"


def _npz(path: Path, **arrays: Any) -> Path:
    np.savez(path, **arrays)
    return path


def test_golden_file_rules(tmp_path: Path) -> None:
    x = np.zeros((1, 3), np.float32)
    inputs, outputs = load_golden(_npz(tmp_path / "ok.npz", input_0=x, input_1=x, output_0=x))
    assert len(inputs) == 2 and len(outputs) == 1
    for name, arrays, message in [
        ("extra", {"input_0": x, "weights": x}, "only input_N and output_N"),
        ("gap", {"input_0": x, "input_2": x}, "numbered 0..N-1"),
        ("noinput", {"output_0": x}, "no input_0"),
    ]:
        with pytest.raises(CLIError, match=message):
            load_golden(_npz(tmp_path / f"{name}.npz", **arrays))
    big = np.zeros(600_000, np.float32)
    with pytest.raises(CLIError, match=r"larger than|decompresses"):
        load_golden(_npz(tmp_path / "big.npz", input_0=big))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(CLIError, match=r"not an \.npz"):
        load_golden(tmp_path / "junk.npz")


def _model(tmp_path: Path) -> Path:
    path = tmp_path / "m.tflite"
    path.write_bytes(dense_model(np.ones((2, 3), np.float32), np.zeros(2, np.float32)))
    return path


def _create_args(url: str, model: Path, golden: Path) -> list[str]:
    return [
        "release",
        "create",
        str(model),
        "--server",
        url,
        "--family",
        "detector",
        "--version",
        "1",
        "--hardware",
        "rpi5",
        "--channel",
        "stable",
        "--golden",
        str(golden),
    ]


def test_missing_outputs_without_runtime_is_explained(
    fake_server: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from edgeseal.sdk import runtime

    def unavailable(*_a: Any, **_k: Any) -> Any:
        raise runtime.RuntimeUnavailableError("no TFLite runtime")

    monkeypatch.setattr(runtime, "load_model", unavailable)
    monkeypatch.setenv("EDGESEAL_TOKEN", "t")
    golden = _npz(tmp_path / "g.npz", input_0=np.zeros((1, 3), np.float32))
    code, _, err = run(capsys, *_create_args(fake_server[0], _model(tmp_path), golden))
    assert code == 1 and "no TFLite runtime is installed" in err


def test_failed_create_leaves_no_sealed_file(
    fake_server: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, seen = fake_server
    work = tmp_path / "tmp"
    work.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(work))
    monkeypatch.setenv("EDGESEAL_TOKEN", "t")
    x = np.zeros((1, 3), np.float32)
    golden = _npz(tmp_path / "g.npz", input_0=x, output_0=np.zeros((1, 2), np.float32))
    code, out, err = run(capsys, *_create_args(url, _model(tmp_path), golden))
    assert code == 1 and "server answered 500 internal: disk full" in err
    assert ("POST", "/api/v1/releases", "Bearer t") in seen  # it got as far as creating
    assert os.listdir(work) == []
    assert out == ""


def test_sign_without_passphrase_source_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import argparse

    from edgeseal.sdk.cli.release_sign import read_passphrase

    monkeypatch.setattr("sys.stdin", open(os.devnull))  # noqa: SIM115 - not a TTY
    args = argparse.Namespace(passphrase_file=None, key=tmp_path / "k.pem")
    with pytest.raises(CLIError, match="no passphrase"):
        read_passphrase(args)
    monkeypatch.setenv("EDGESEAL_KEY_PASSPHRASE", "from env")
    assert read_passphrase(args) == b"from env"
    (tmp_path / "p").write_bytes(b"from file\r\n")
    args.passphrase_file = tmp_path / "p"
    assert read_passphrase(args) == b"from file"
