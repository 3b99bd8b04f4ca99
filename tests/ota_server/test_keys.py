"""Key files: P-256 PKCS#8 PEM encrypted with a passphrase; SPKI public keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeseal.ota_server.errors import KeyFileError
from edgeseal.ota_server.keys import (
    generate_key_file,
    load_public_key,
    load_signer,
    write_public_key,
)


def test_round_trip_with_passphrase(tmp_path: Path) -> None:
    key_file = tmp_path / "officer1.pem"
    key = generate_key_file(key_file, "correct horse")
    assert key.scheme == "ecdsa-sha2-nistp256"
    assert key_file.stat().st_mode & 0o777 == 0o600
    pem = key_file.read_bytes()
    assert b"ENCRYPTED PRIVATE KEY" in pem

    signer = load_signer(key_file, "correct horse")
    assert signer.public_key == key
    signature = signer.sign(b"payload")
    key.verify_signature(signature, b"payload")

    public_file = tmp_path / "officer1.pub"
    write_public_key(public_file, key)
    assert public_file.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert load_public_key(public_file) == key


def test_wrong_or_missing_passphrase_is_a_clear_error(tmp_path: Path) -> None:
    key_file = tmp_path / "rm.pem"
    generate_key_file(key_file, b"secret-passphrase")
    with pytest.raises(KeyFileError) as info:
        load_signer(key_file, "wrong")
    message = info.value.diagnostics()
    assert "wrong passphrase" in message and str(key_file) in message
    assert "secret-passphrase" not in message and "wrong" in message
    with pytest.raises(KeyFileError, match="needs a passphrase"):
        load_signer(key_file, None)


def test_refusals(tmp_path: Path) -> None:
    key_file = tmp_path / "k.pem"
    generate_key_file(key_file, None)
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        generate_key_file(key_file, "x")
    with pytest.raises(KeyFileError, match="needs no passphrase"):
        load_signer(key_file, "x")
    with pytest.raises(KeyFileError, match="empty passphrase"):
        generate_key_file(tmp_path / "e.pem", "")
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"not a key")
    with pytest.raises(KeyFileError):
        load_public_key(garbage)
    with pytest.raises(KeyFileError, match="cannot read"):
        load_signer(tmp_path / "missing.pem", None)
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    other = tmp_path / "ed.pem"
    other.write_bytes(
        ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(KeyFileError, match="not an ECDSA P-256 key"):
        load_signer(other, None)
