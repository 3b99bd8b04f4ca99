"""Signing and threshold checks, and the server's online keys.

Every check the clients will make is made here first, with python-tuf's own
``get_verification_result``, so that the server never publishes metadata a
client would refuse, and refuses with a message a person can act on
("detector: 2 of 3 required signatures, 1 valid").

Online keys (snapshot, timestamp, envelopes) are files named by role and keyid
in the 0700 keys directory; the keyid in the current root (or in the
``envelopes`` delegation) says which file to load, so a rotation can write the
new key before the metadata that trusts it without ever being ambiguous.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from securesystemslib.signer import CryptoSigner, Key, Signature, Signer
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, Root, Targets

from edgeseal.ota_server.errors import KeyConfigError, ThresholdError
from edgeseal.ota_server.keys import load_signer, private_key_pem
from edgeseal.sdk.files import atomic_write

logger = logging.getLogger(__name__)

ONLINE_ROLES = ("snapshot", "timestamp", "envelopes")


def check_role_keys(role: str, keys: Sequence[Key], threshold: int) -> None:
    """Refuse a key set that no threshold could be met with, or with duplicates."""
    keyids = [key.keyid for key in keys]
    if not keys:
        raise KeyConfigError(f"{role}: at least one key is required", field=role)
    if len(set(keyids)) != len(keyids):
        raise KeyConfigError(f"{role}: the same key is listed twice", field=role)
    if not 1 <= threshold <= len(keys):
        raise KeyConfigError(
            f"{role}: threshold {threshold} must be between 1 and the {len(keys)} keys",
            field=role,
        )


def sign(md: Metadata[Any], signers: Sequence[Signer]) -> None:
    """Replace the signatures of ``md`` by one from each signer."""
    md.signatures.clear()
    for signer in signers:
        try:
            md.sign(signer, append=True)
        except UnsignedMetadataError as exc:
            raise KeyConfigError(f"signing {md.signed.type} failed: {exc}") from exc


def require_threshold(
    delegator: Root | Targets, role: str, payload: bytes, signatures: dict[str, Signature]
) -> None:
    """Raise :class:`ThresholdError` unless ``role``'s threshold is met under ``delegator``."""
    result = delegator.get_verification_result(role, payload, signatures)
    if not result.verified:
        keys = len(delegator.get_delegated_role(role).keyids)
        raise ThresholdError(role, threshold=result.threshold, keys=keys, valid=len(result.signed))


def require_root_threshold(previous: Root | None, new: Root, md: Metadata[Root]) -> None:
    """Spec 5.3.4: a new root must meet the thresholds of both the old and the new root."""
    result = new.get_root_verification_result(previous, md.signed_bytes, md.signatures)
    old = previous if previous is not None else new
    for label, part, root in (("old", result.first, old), ("new", result.second, new)):
        if not part.verified:
            raise ThresholdError(
                f"root ({label} keys)",
                threshold=part.threshold,
                keys=len(root.roles["root"].keyids),
                valid=len(part.signed),
            )


def online_key_path(keys_dir: Path, role: str, keyid: str) -> Path:
    return Path(keys_dir) / f"{role}.{keyid}.pem"


def new_online_key() -> tuple[CryptoSigner, bytes]:
    """A fresh P-256 online signer and its unencrypted PKCS#8 PEM (written 0600)."""
    private = ec.generate_private_key(ec.SECP256R1())
    signer = CryptoSigner(private)
    return signer, private_key_pem(private, None)


def write_online_key(keys_dir: Path, role: str, keyid: str, pem: bytes) -> None:
    keys_dir = Path(keys_dir)
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    keys_dir.chmod(0o700)
    atomic_write(online_key_path(keys_dir, role, keyid), pem, mode=0o600)


def load_online_signer(keys_dir: Path, role: str, keyid: str) -> CryptoSigner:
    """Load the online key of ``role`` that the current metadata trusts."""
    signer = load_signer(online_key_path(keys_dir, role, keyid), None)
    if signer.public_key.keyid != keyid:
        raise KeyConfigError(f"online key file for {role} holds another key", field=role)
    return signer


def remove_online_key(keys_dir: Path, role: str, keyid: str) -> None:
    """Delete a retired online key (a rotated key may be a compromised one)."""
    online_key_path(keys_dir, role, keyid).unlink(missing_ok=True)
