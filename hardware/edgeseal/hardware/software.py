"""INSECURE software key backend: the KeyBackend interface with keys in plain files.

For development and for tests of higher layers on machines without swtpm. It
protects nothing: the device key, the sealing key, the simulated PCR bank and
the NV counters are files in ``state_dir`` (mode 0600) that anyone with the
files can read or rewrite. Every log line it emits starts with
``INSECURE software key backend`` and ``insecure`` is True, so that it cannot
be mistaken for the TPM in a log or a status report.

It does enforce the same policy semantics as the TPM backend (PCR-bound seals
refuse changed PCRs; authority-bound keys need a signed policy for the current
PCR values, by that authority), so the agent's tests behave the same on both.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edgeseal.hardware.backend import (
    check_approved,
    check_nv_index,
    check_pcr_indices,
    check_seal_args,
    pcr_mismatch_message,
)
from edgeseal.hardware.errors import (
    AttestationUnsupportedError,
    HardwareError,
    KeyExistsError,
    KeyNotFoundError,
    NVCounterError,
    PolicyCheckError,
)
from edgeseal.hardware.files import atomic_write
from edgeseal.hardware.policy import (
    BANK_SHA256,
    DIGEST_SIZE,
    PCRValues,
    SignedPCRPolicy,
    policy_authorize_digest,
)
from edgeseal.hardware.tpm_blob import SealedBlob

MARKER = "INSECURE software key backend"
_NO_ATTESTATION = "attestation needs a TPM; the software backend has none"


class _InsecureAdapter(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Prefix every record with MARKER so no log line of this backend can pass unnoticed."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"{MARKER}: {msg}", kwargs


log = _InsecureAdapter(logging.getLogger(__name__), {})
STATE_VERSION = 1
_BLOB_PARTS = ("ciphertext", "nonce")
_MAX_STATE_BYTES = 64 * 1024
_COUNTER_MAX = 2**64 - 1


class SoftwareBackend:
    """:class:`~edgeseal.hardware.backend.KeyBackend` in files; development only."""

    kind = "software"
    insecure = True

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._closed = False
        log.warning(
            "keys are plain files in %s; it protects nothing (development only)",
            self.state_dir,
        )
        self._storage_key = self._load_storage_key()

    # -- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def flush_transients(self) -> None:
        """Nothing to flush: there are no transient objects outside this process."""

    def simulate_reboot(self) -> None:
        """Reset the simulated PCRs to zero, as a TPM's are at power-on."""
        self._write_json("pcrs.json", {"version": STATE_VERSION, BANK_SHA256: {}})
        log.info("simulated reboot: PCRs reset")

    # -- state files ----------------------------------------------------------------------

    def _path(self, name: str) -> Path:
        if self._closed:
            raise HardwareError(f"{MARKER} is closed")
        return self.state_dir / name

    def _write(self, name: str, data: bytes) -> None:
        """Atomic, 0600, fsync'ed (a power cut leaves the old or the new file)."""
        atomic_write(self._path(name), data, mode=0o600)

    def _read(self, name: str) -> bytes | None:
        path = self._path(name)
        try:
            with path.open("rb") as f:
                data = f.read(_MAX_STATE_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise HardwareError(f"{MARKER}: cannot read {path}: {exc}") from exc
        if len(data) > _MAX_STATE_BYTES:
            raise HardwareError(f"{MARKER}: {path} is larger than {_MAX_STATE_BYTES} bytes")
        return data

    def _write_json(self, name: str, doc: dict[str, Any]) -> None:
        self._write(name, json.dumps(doc, sort_keys=True).encode("utf-8"))

    def _read_json(self, name: str) -> dict[str, Any] | None:
        data = self._read(name)
        if data is None:
            return None
        try:
            doc = json.loads(data)
        except ValueError as exc:
            raise HardwareError(f"{MARKER}: {name} is corrupt: {exc}") from exc
        if not isinstance(doc, dict) or doc.get("version") != STATE_VERSION:
            raise HardwareError(f"{MARKER}: {name} has an unknown format or version")
        return doc

    def _load_storage_key(self) -> bytes:
        key = self._read("storage.key")
        if key is None:
            key = AESGCM.generate_key(bit_length=256)
            self._write("storage.key", key)
            log.warning("created a sealing key in %s", self.state_dir)
        if len(key) != 32:
            raise HardwareError(f"{MARKER}: storage.key is corrupt")
        return key

    # -- device decryption key ------------------------------------------------------------

    def _device_key(self) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
        doc = self._read_json("device_key.json")
        if doc is None:
            raise KeyNotFoundError(f"{MARKER}: no device key in {self.state_dir}")
        try:
            key = serialization.load_pem_private_key(doc["private_key"].encode(), password=None)
            auth_policy = bytes.fromhex(doc["auth_policy"])
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise HardwareError(f"{MARKER}: device_key.json is corrupt") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise HardwareError(f"{MARKER}: device_key.json does not hold an ECC key")
        return key, auth_policy

    def create_device_key(
        self, authority: ec.EllipticCurvePublicKey | None, *, replace: bool = False
    ) -> ec.EllipticCurvePublicKey:
        if self._read("device_key.json") is not None and not replace:
            raise KeyExistsError(f"{MARKER}: a device key already exists in {self.state_dir}")
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        auth_policy = b"" if authority is None else policy_authorize_digest(authority)
        self._write_json(
            "device_key.json",
            {
                "version": STATE_VERSION,
                "private_key": pem.decode(),
                "auth_policy": auth_policy.hex(),
            },
        )
        log.warning("created a device key as a plain file in %s", self.state_dir)
        return key.public_key()

    def device_key_public(self) -> ec.EllipticCurvePublicKey:
        return self._device_key()[0].public_key()

    def ecdh_zgen(
        self, peer: ec.EllipticCurvePublicKey, *, approved: SignedPCRPolicy | None = None
    ) -> bytes:
        if not isinstance(peer.curve, ec.SECP256R1):
            raise TypeError(f"the peer key must be ECC P-256, got {peer.curve.name}")
        key, auth_policy = self._device_key()
        if auth_policy:
            self._require_signed(auth_policy, approved, "the device key")
        return key.exchange(ec.ECDH(), peer)

    def _require_signed(
        self, auth_policy: bytes, approved: SignedPCRPolicy | None, what: str
    ) -> None:
        policy = check_approved(auth_policy, approved, what)
        changed = policy.changed_pcrs(self.pcr_read(policy.values.indices))
        if changed:
            raise PolicyCheckError(pcr_mismatch_message(changed, "since the policy was signed"))

    # -- sealing --------------------------------------------------------------------------

    def seal(
        self,
        secret: bytes,
        *,
        pcrs: Sequence[int] = (),
        authority: ec.EllipticCurvePublicKey | None = None,
    ) -> bytes:
        indices = check_seal_args(secret, pcrs, authority)
        values = self.pcr_read(indices) if indices else None
        binding = "pcr" if values is not None else "auth" if authority is None else "authorize"
        header = SealedBlob("software", binding, values, authority, {})
        nonce = secrets.token_bytes(12)
        ciphertext = AESGCM(self._storage_key).encrypt(nonce, secret, header.header())
        blob = SealedBlob(
            "software", binding, values, authority, {"nonce": nonce, "ciphertext": ciphertext}
        )
        log.debug("sealed %d bytes (binding %s)", len(secret), binding)
        return blob.to_bytes()

    def unseal(self, blob: bytes, *, approved: SignedPCRPolicy | None = None) -> bytes:
        sealed = SealedBlob.from_bytes(blob, backend="software", part_names=_BLOB_PARTS)
        try:
            secret = AESGCM(self._storage_key).decrypt(
                sealed.parts["nonce"], sealed.parts["ciphertext"], sealed.header()
            )
        except (InvalidTag, ValueError) as exc:
            raise HardwareError(
                f"{MARKER}: the sealed blob does not authenticate (tampered, or from another "
                "state directory)"
            ) from exc
        if sealed.pcrs is not None:
            changed = sealed.pcrs.changed(self.pcr_read(sealed.pcrs.indices))
            if changed:
                raise PolicyCheckError(pcr_mismatch_message(changed, "since sealing"))
        elif sealed.authority is not None:
            auth_policy = policy_authorize_digest(sealed.authority)
            self._require_signed(auth_policy, approved, "the sealed secret")
        return secret

    # -- PCRs -----------------------------------------------------------------------------

    def _pcr_bank(self) -> dict[int, bytes]:
        doc = self._read_json("pcrs.json")
        if doc is None:
            return {}
        try:
            return {int(k): bytes.fromhex(v) for k, v in doc[BANK_SHA256].items()}
        except (KeyError, ValueError, AttributeError, TypeError) as exc:
            raise HardwareError(f"{MARKER}: pcrs.json is corrupt") from exc

    def pcr_read(self, indices: Sequence[int]) -> PCRValues:
        wanted = check_pcr_indices(indices)
        if not wanted:
            raise ValueError("pcr_read needs at least one PCR index")
        bank = self._pcr_bank()
        return PCRValues(BANK_SHA256, {i: bank.get(i, bytes(DIGEST_SIZE)) for i in wanted})

    def pcr_extend(self, index: int, digest: bytes) -> None:
        (index,) = check_pcr_indices([index])
        if len(digest) != DIGEST_SIZE:
            raise ValueError(f"a sha256 PCR extend takes a 32-byte digest, got {len(digest)}")
        bank = self._pcr_bank()
        # TPM2_PCR_Extend (Part 3, 22.2): PCR_new := H(PCR_old || digest).
        bank[index] = hashlib.sha256(bank.get(index, bytes(DIGEST_SIZE)) + digest).digest()
        self._write_json(
            "pcrs.json",
            {"version": STATE_VERSION, BANK_SHA256: {str(i): d.hex() for i, d in bank.items()}},
        )

    # -- NV counters ----------------------------------------------------------------------

    def _counters(self) -> tuple[int, dict[int, int]]:
        doc = self._read_json("nv.json")
        if doc is None:
            return 0, {}
        try:
            return int(doc["max_ever"]), {int(k, 16): int(v) for k, v in doc["counters"].items()}
        except (KeyError, ValueError, AttributeError, TypeError) as exc:
            raise HardwareError(f"{MARKER}: nv.json is corrupt") from exc

    def _save_counters(self, max_ever: int, counters: dict[int, int]) -> None:
        self._write_json(
            "nv.json",
            {
                "version": STATE_VERSION,
                "max_ever": max_ever,
                "counters": {f"0x{i:08x}": v for i, v in counters.items()},
            },
        )

    def nv_counter_define(self, index: int) -> None:
        check_nv_index(index)
        max_ever, counters = self._counters()
        if index in counters:
            return
        # Like a TPM: a new counter starts above the highest value any counter ever held.
        counters[index] = max_ever + 1
        self._save_counters(max_ever + 1, counters)
        log.info("defined NV counter 0x%08x", index)

    def nv_counter_increment(self, index: int) -> int:
        check_nv_index(index)
        max_ever, counters = self._counters()
        if index not in counters:
            raise KeyNotFoundError(f"{MARKER}: no NV counter 0x{index:08x}")
        if counters[index] >= _COUNTER_MAX:
            raise NVCounterError(f"{MARKER}: NV counter 0x{index:08x} is at its maximum")
        counters[index] += 1
        self._save_counters(max(max_ever, counters[index]), counters)
        return counters[index]

    def nv_counter_read(self, index: int) -> int:
        check_nv_index(index)
        _, counters = self._counters()
        if index not in counters:
            raise KeyNotFoundError(f"{MARKER}: no NV counter 0x{index:08x}")
        return counters[index]

    def ek_certificates(self) -> list[bytes]:
        """A software backend has no endorsement key and so no EK certificate."""
        return []

    # -- attestation: none without a TPM ---------------------------------------------------

    def create_attestation_key(self, *, replace: bool = False) -> bytes:
        raise AttestationUnsupportedError(_NO_ATTESTATION)

    def attestation_key_public(self) -> bytes:
        raise AttestationUnsupportedError(_NO_ATTESTATION)

    def quote(self, qualifying_data: bytes, pcrs: Sequence[int]) -> tuple[bytes, bytes]:
        raise AttestationUnsupportedError(_NO_ATTESTATION)

    def activate_credential(self, credential_blob: bytes, encrypted_secret: bytes) -> bytes:
        raise AttestationUnsupportedError(_NO_ATTESTATION)
