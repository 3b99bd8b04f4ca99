"""Key files of the TUF roles: ECDSA P-256, PKCS#8 PEM, passphrase-encrypted.

Offline keys (root officers, targets officers, release managers) live in files
encrypted with a passphrase (cryptography's ``BestAvailableEncryption``); the
server's online keys (snapshot, timestamp, envelopes) are written unencrypted
with mode 0600 in a 0700 directory, because the server must sign unattended.
Public keys travel as SubjectPublicKeyInfo PEM.

Errors are :class:`~edgeseal.ota_server.errors.KeyFileError` naming the file;
a passphrase never appears in a message or a log.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from securesystemslib.signer import CryptoSigner, SSlibKey

from edgeseal.ota_server.errors import KeyFileError
from edgeseal.sdk.files import atomic_write

logger = logging.getLogger(__name__)

SCHEME = "ecdsa-sha2-nistp256"
MAX_KEY_FILE = 64 * 1024


def _passphrase_bytes(passphrase: str | bytes | None) -> bytes | None:
    if passphrase is None:
        return None
    data = passphrase.encode() if isinstance(passphrase, str) else passphrase
    if not data:
        raise KeyFileError("an empty passphrase is not allowed; pass None for no encryption")
    return data


def _key_from_public(public: ec.EllipticCurvePublicKey) -> SSlibKey:
    return SSlibKey.from_crypto(public, scheme=SCHEME)


def private_key_pem(private: ec.EllipticCurvePrivateKey, passphrase: str | bytes | None) -> bytes:
    """PKCS#8 PEM of ``private``, encrypted when a passphrase is given."""
    secret = _passphrase_bytes(passphrase)
    encryption: serialization.KeySerializationEncryption = (
        serialization.NoEncryption()
        if secret is None
        else serialization.BestAvailableEncryption(secret)
    )
    return private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def write_private_key(
    path: Path, private: ec.EllipticCurvePrivateKey, passphrase: str | bytes | None
) -> SSlibKey:
    """Write ``private`` to ``path`` (mode 0600, atomically); return its public TUF key."""
    atomic_write(Path(path), private_key_pem(private, passphrase), mode=0o600)
    return _key_from_public(private.public_key())


def generate_key_file(path: Path, passphrase: str | bytes | None) -> SSlibKey:
    """Generate a P-256 key, write it to ``path`` and return the public TUF key.

    Refuses to overwrite an existing file: losing a TUF key by accident is
    worse than an error.
    """
    path = Path(path)
    if path.exists():
        raise KeyFileError(f"refusing to overwrite existing key file {path}", field=str(path))
    private = ec.generate_private_key(ec.SECP256R1())
    key = write_private_key(path, private, passphrase)
    logger.info("generated key %s in %s", key.keyid, path)
    return key


def _read_bounded(path: Path) -> bytes:
    try:
        with Path(path).open("rb") as handle:
            data = handle.read(MAX_KEY_FILE + 1)
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror}", field=str(path)) from exc
    if len(data) > MAX_KEY_FILE:
        raise KeyFileError(f"key file {path} is larger than {MAX_KEY_FILE} bytes", field=str(path))
    return data


def load_signer(path: Path, passphrase: str | bytes | None) -> CryptoSigner:
    """Load a private key file as a TUF signer (scheme ``ecdsa-sha2-nistp256``)."""
    data = _read_bounded(path)
    secret = _passphrase_bytes(passphrase)
    try:
        private = serialization.load_pem_private_key(data, password=secret)
    except TypeError as exc:
        # cryptography: password given for an unencrypted key, or missing for an encrypted one
        wanted = "no passphrase" if secret is not None else "a passphrase"
        raise KeyFileError(f"key file {path} needs {wanted}", field=str(path)) from exc
    except ValueError as exc:
        raise KeyFileError(
            f"cannot decrypt key file {path}: wrong passphrase or not a PEM private key",
            field=str(path),
        ) from exc
    if not isinstance(private, ec.EllipticCurvePrivateKey) or not isinstance(
        private.curve, ec.SECP256R1
    ):
        raise KeyFileError(f"key file {path} is not an ECDSA P-256 key", field=str(path))
    return CryptoSigner(private, _key_from_public(private.public_key()))


def load_public_key(path: Path) -> SSlibKey:
    """Load a SubjectPublicKeyInfo PEM file as a TUF key."""
    data = _read_bounded(path)
    try:
        public = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise KeyFileError(f"{path} is not a PEM public key", field=str(path)) from exc
    if not isinstance(public, ec.EllipticCurvePublicKey) or not isinstance(
        public.curve, ec.SECP256R1
    ):
        raise KeyFileError(f"public key {path} is not an ECDSA P-256 key", field=str(path))
    return _key_from_public(public)


def public_key_pem(key: SSlibKey) -> bytes:
    """SubjectPublicKeyInfo PEM of a TUF ECDSA key."""
    if key.keytype != "ecdsa" or key.scheme != SCHEME:
        raise KeyFileError(f"key {key.keyid} is not an {SCHEME} key", field="keytype")
    public = serialization.load_pem_public_key(key.keyval["public"].encode())
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def write_public_key(path: Path, key: SSlibKey) -> None:
    """Write ``key`` as SubjectPublicKeyInfo PEM (atomically)."""
    atomic_write(Path(path), public_key_pem(key), mode=0o644)
