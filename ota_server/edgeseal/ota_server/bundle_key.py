"""The trust bundle signing key: ECDSA P-256 at ``DIR/keys/bundle-key.pem``.

A PKCS#8 PEM, mode 0600 in the 0700 key directory, unencrypted like the
server's other online keys (it signs unattended exports). ``init`` creates it;
a data directory from before gets it on first use. Creation never overwrites:
two processes racing both end up with the one key that won (write a temporary
file, then ``link`` it into place). Technicians pin the public key
(``edgeseal-server attest bundle-key``); replacing the key means handing them
the new one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgeseal.ota_server.service_errors import ConfigError

logger = logging.getLogger(__name__)

BUNDLE_KEY_FILE = "bundle-key.pem"
MAX_KEY_FILE = 16 * 1024


def load_bundle_key(keys_dir: Path, *, create: bool = True) -> ec.EllipticCurvePrivateKey:
    """The bundle signing key; generated first when missing and ``create`` is set."""
    path = Path(keys_dir) / BUNDLE_KEY_FILE
    if create and not path.exists():
        _create_key(path)
    try:
        mode = path.stat().st_mode
        with path.open("rb") as handle:
            pem = handle.read(MAX_KEY_FILE + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read the bundle key {path}: {exc.strerror}") from None
    if stat.S_IMODE(mode) & 0o077:
        raise ConfigError(f"the bundle key {path} is readable by others: chmod 600 it")
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"the bundle key {path} is not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ConfigError(f"the bundle key {path} is not a P-256 key")
    return key


def bundle_public_key_pem(keys_dir: Path) -> bytes:
    """SubjectPublicKeyInfo PEM of the bundle key (what technicians pin)."""
    return (
        load_bundle_key(keys_dir)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def _create_key(path: Path) -> None:
    """Write a new P-256 key to ``path`` unless one appears there first (no overwrite)."""
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):  # another process won the race
            os.link(tmp, path)
            logger.info("created the trust bundle key %s", path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
