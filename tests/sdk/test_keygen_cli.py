"""``edgeseal keygen``: a key ``release sign`` can use, never overwritten, never plaintext."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from edgeseal.sdk.cli import main
from edgeseal.sdk.signing import load_release_signer


def test_keygen_writes_an_encrypted_key_release_sign_can_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("EDGESEAL_KEY_PASSPHRASE", "correct horse")
    key = tmp_path / "rm.key"
    assert main(["keygen", str(key)]) == 0
    assert b"ENCRYPTED PRIVATE KEY" in key.read_bytes()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    signer = load_release_signer(key, b"correct horse")
    public = (tmp_path / "rm.key.pub.pem").read_text()
    assert "PUBLIC KEY" in public and signer.public_key.keyval["public"].strip() == public.strip()
    with pytest.raises(Exception, match="wrong passphrase"):
        load_release_signer(key, b"wrong")
    assert main(["keygen", str(key)]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err


def test_keygen_needs_a_passphrase(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGESEAL_KEY_PASSPHRASE", raising=False)
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert main(["keygen", str(tmp_path / "k")]) == 1
    assert not (tmp_path / "k").exists()
