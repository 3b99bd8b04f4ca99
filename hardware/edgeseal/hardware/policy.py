"""PCR policies computed in software: PolicyPCR, PolicyAuthorize, signed PCR policies.

Everything here is pure (no TPM, no I/O) so that a server, a release tool or a
test can compute the policy a device's TPM will enforce without a TPM.

A key bound with ``TPM2_PolicyAuthorize`` to an *authority* key is usable
whenever the session's policy digest was approved by a signature of that
authority. The approved policy here is always a ``TPM2_PolicyPCR`` digest over
sha256 PCR values, so an approved OS update is handled by signing a new
:class:`SignedPCRPolicy` for the new values instead of re-creating the key;
this is how systemd-cryptenroll's signed PCR policies work.

Spec references are to TPM 2.0 Library Part 2 (structures) and Part 3
(commands), revision 1.59.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    Prehashed,
    decode_dss_signature,
)

from edgeseal.hardware.errors import PolicyCheckError, PolicyFormatError

# TPM 2.0 Part 2, 6.3 (TPM_ALG_ID), 6.4 (TPM_ECC_CURVE), 6.5.2 (TPM_CC), 8.3 (TPMA_OBJECT).
TPM_ALG_SHA256 = 0x000B
TPM_ALG_NULL = 0x0010
TPM_ALG_ECC = 0x0023
TPM_ALG_ECDSA = 0x0018
TPM_ECC_NIST_P256 = 0x0003
TPM_CC_POLICY_AUTHORIZE = 0x0000016A
TPM_CC_POLICY_PCR = 0x0000017F
TPMA_OBJECT_USERWITHAUTH = 0x00000040
TPMA_OBJECT_SIGN_ENCRYPT = 0x00040000

BANK_SHA256 = "sha256"
DIGEST_SIZE = 32
PCR_COUNT = 24
# sizeofSelect of a TPMS_PCR_SELECTION covering PCRs 0..23 (PC Client platforms).
PCR_SELECT_SIZE = 3

POLICY_FORMAT = "edgeseal-signed-pcr-policy"
POLICY_VERSION = 1
# A policy names at most 24 PCRs: a few KiB at most. Anything larger is not ours.
MAX_POLICY_BYTES = 16 * 1024

_ZERO_DIGEST = bytes(DIGEST_SIZE)


def _sha256(*parts: bytes) -> bytes:
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return h.digest()


def pcr_after_extends(digests: Iterable[bytes]) -> bytes:
    """The value of a sha256 PCR after extending each digest, in order, from zero.

    TPM2_PCR_Extend (Part 3, 22.2): ``PCR_new := H(PCR_old || digest)``.
    """
    value = _ZERO_DIGEST
    for digest in digests:
        if len(digest) != DIGEST_SIZE:
            raise ValueError(f"a sha256 PCR extend takes a 32-byte digest, got {len(digest)}")
        value = _sha256(value, digest)
    return value


def _check_index(index: int) -> None:
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < PCR_COUNT:
        raise ValueError(f"PCR index must be an integer in 0..{PCR_COUNT - 1}, got {index!r}")


@dataclass(frozen=True)
class PCRValues:
    """Values of some PCRs of one bank, e.g. read from a TPM or predicted for a release.

    ``digests`` maps PCR index to its 32-byte value; it is copied and sorted.
    """

    bank: str
    digests: Mapping[int, bytes] = field(hash=False)

    def __post_init__(self) -> None:
        if self.bank != BANK_SHA256:
            raise ValueError(f"only the sha256 PCR bank is supported, got {self.bank!r}")
        if not self.digests:
            raise ValueError("a PCR policy needs at least one PCR")
        copied: dict[int, bytes] = {}
        for index in sorted(self.digests):
            _check_index(index)
            digest = bytes(self.digests[index])
            if len(digest) != DIGEST_SIZE:
                raise ValueError(f"PCR {index}: a sha256 value is 32 bytes, got {len(digest)}")
            copied[index] = digest
        object.__setattr__(self, "digests", MappingProxyType(copied))

    @classmethod
    def from_extends(cls, extends: Mapping[int, Sequence[bytes]]) -> PCRValues:
        """The values PCRs hold after the given extends from reset (a predicted boot)."""
        return cls(BANK_SHA256, {i: pcr_after_extends(ds) for i, ds in extends.items()})

    @property
    def indices(self) -> list[int]:
        return list(self.digests)

    def selection(self) -> bytes:
        """The marshaled TPML_PCR_SELECTION of these PCRs (Part 2, 10.9.7 and 10.6.2)."""
        bitmap = bytearray(PCR_SELECT_SIZE)
        for index in self.digests:
            bitmap[index // 8] |= 1 << (index % 8)
        return struct.pack(">IHB", 1, TPM_ALG_SHA256, PCR_SELECT_SIZE) + bytes(bitmap)

    def composite_digest(self) -> bytes:
        """H(values in ascending PCR order): the pcrDigest TPM2_PolicyPCR compares."""
        return _sha256(*self.digests.values())

    def changed(self, current: PCRValues) -> list[int]:
        """Indices whose value in ``current`` differs from (or is missing against) ours."""
        if current.bank != self.bank:
            raise ValueError(f"cannot compare PCR bank {current.bank} with {self.bank}")
        return [i for i, d in self.digests.items() if current.digests.get(i) != d]


def policy_pcr_digest(values: PCRValues) -> bytes:
    """The policyDigest of a fresh sha256 session after TPM2_PolicyPCR on ``values``.

    Part 3, 23.7: ``policyDigest_new := H(policyDigest_old || TPM_CC_PolicyPCR ||
    pcrs || digestTPM)`` with a zero ``policyDigest_old``.
    """
    return _sha256(
        _ZERO_DIGEST,
        struct.pack(">I", TPM_CC_POLICY_PCR),
        values.selection(),
        values.composite_digest(),
    )


def _p256_point(key: ec.EllipticCurvePublicKey) -> tuple[bytes, bytes]:
    if not isinstance(key.curve, ec.SECP256R1):
        raise TypeError(f"the policy authority must be an ECC P-256 key, got {key.curve.name}")
    numbers = key.public_numbers()
    return numbers.x.to_bytes(DIGEST_SIZE, "big"), numbers.y.to_bytes(DIGEST_SIZE, "big")


def authority_tpmt_public(key: ec.EllipticCurvePublicKey) -> bytes:
    """The marshaled TPMT_PUBLIC under which the TPM loads the authority key.

    Part 2, 12.2.4: an ECC signing key (ECDSA-SHA256, P-256, no symmetric, no KDF,
    empty authPolicy). The TPM backend loads exactly these bytes with
    TPM2_LoadExternal, so the name the TPM computes equals :func:`authority_name`.
    """
    x, y = _p256_point(key)
    return b"".join(
        [
            struct.pack(
                ">HHI",
                TPM_ALG_ECC,
                TPM_ALG_SHA256,
                TPMA_OBJECT_SIGN_ENCRYPT | TPMA_OBJECT_USERWITHAUTH,
            ),
            struct.pack(">H", 0),  # authPolicy: empty TPM2B_DIGEST
            struct.pack(">H", TPM_ALG_NULL),  # symmetric
            struct.pack(">HH", TPM_ALG_ECDSA, TPM_ALG_SHA256),  # scheme
            struct.pack(">H", TPM_ECC_NIST_P256),  # curveID
            struct.pack(">H", TPM_ALG_NULL),  # kdf
            struct.pack(">H", len(x)) + x,
            struct.pack(">H", len(y)) + y,
        ]
    )


def authority_name(key: ec.EllipticCurvePublicKey) -> bytes:
    """The TPM name of the authority key: nameAlg || H(TPMT_PUBLIC) (Part 1, 16)."""
    return struct.pack(">H", TPM_ALG_SHA256) + _sha256(authority_tpmt_public(key))


def policy_authorize_digest(authority_public_key: ec.EllipticCurvePublicKey) -> bytes:
    """The authPolicy of an object bound by TPM2_PolicyAuthorize to ``authority_public_key``.

    Part 3, 23.16 with an empty policyRef: ``d := H(0^32 || TPM_CC_PolicyAuthorize ||
    keySign.name)`` then ``policyDigest := H(d || policyRef)``.
    """
    first = _sha256(
        _ZERO_DIGEST,
        struct.pack(">I", TPM_CC_POLICY_AUTHORIZE),
        authority_name(authority_public_key),
    )
    return _sha256(first, b"")


def approval_hash(approved_policy: bytes, policy_ref: bytes = b"") -> bytes:
    """aHash := H(approvedPolicy || policyRef): what the authority signs (Part 3, 23.16)."""
    return _sha256(approved_policy, policy_ref)


def _public_der(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def same_public_key(a: ec.EllipticCurvePublicKey, b: ec.EllipticCurvePublicKey) -> bool:
    return _public_der(a) == _public_der(b)


@dataclass(frozen=True)
class SignedPCRPolicy:
    """PCR values approved by an authority: an ECDSA signature over their policy digest.

    ``signature`` is DER ECDSA over aHash = SHA256(policy_pcr_digest(values) || ""),
    signed as a prehashed digest because TPM2_VerifySignature checks the digest
    itself. Verification (:meth:`verify`) raises; it never returns a bool.
    """

    values: PCRValues
    authority: ec.EllipticCurvePublicKey = field(hash=False)
    signature: bytes

    def __post_init__(self) -> None:
        _p256_point(self.authority)

    @property
    def approved_policy(self) -> bytes:
        return policy_pcr_digest(self.values)

    def signature_rs(self) -> tuple[int, int]:
        """The (r, s) integers of the signature, as TPMS_SIGNATURE_ECDSA carries them."""
        try:
            return decode_dss_signature(self.signature)
        except ValueError as exc:
            raise PolicyCheckError("the PCR policy signature is not a DER ECDSA signature") from exc

    def verify(self, authority: ec.EllipticCurvePublicKey | None = None) -> None:
        """Raise PolicyCheckError unless signed by ``authority`` (default: its own key)."""
        if authority is not None and not same_public_key(authority, self.authority):
            raise PolicyCheckError(
                "PCR policy check failed: the policy is signed by a different authority "
                f"({authority_fingerprint(self.authority)}) than the one the key is bound to "
                f"({authority_fingerprint(authority)})"
            )
        try:
            self.authority.verify(
                self.signature,
                approval_hash(self.approved_policy),
                ec.ECDSA(Prehashed(hashes.SHA256())),
            )
        except InvalidSignature as exc:
            raise PolicyCheckError(
                "PCR policy check failed: the policy signature does not verify under "
                f"authority {authority_fingerprint(self.authority)} (tampered or re-signed)"
            ) from exc

    def changed_pcrs(self, current: PCRValues) -> list[int]:
        """The PCRs whose current value differs from the approved one (sorted)."""
        return self.values.changed(current)

    def to_bytes(self) -> bytes:
        """Versioned JSON, stable key order."""
        doc = {
            "format": POLICY_FORMAT,
            "version": POLICY_VERSION,
            "bank": self.values.bank,
            "pcrs": {str(i): d.hex() for i, d in self.values.digests.items()},
            "policy_digest": self.approved_policy.hex(),
            "authority": base64.b64encode(_public_der(self.authority)).decode("ascii"),
            "signature": base64.b64encode(self.signature).decode("ascii"),
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedPCRPolicy:
        """Parse strictly; raise PolicyFormatError naming what is wrong.

        The signature is *not* verified here: call :meth:`verify` (the backends do).
        """
        if len(data) > MAX_POLICY_BYTES:
            raise PolicyFormatError(
                f"signed PCR policy is {len(data)} bytes, more than the {MAX_POLICY_BYTES} allowed"
            )
        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise PolicyFormatError(f"signed PCR policy is not valid JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise PolicyFormatError("signed PCR policy must be a JSON object")
        expected = {"format", "version", "bank", "pcrs", "policy_digest", "authority", "signature"}
        if set(doc) != expected:
            missing = sorted(expected - set(doc))
            extra = sorted(set(doc) - expected)
            raise PolicyFormatError(
                f"signed PCR policy fields: missing {missing or 'none'}, unknown {extra or 'none'}"
            )
        if doc["format"] != POLICY_FORMAT:
            raise PolicyFormatError(f"not a signed PCR policy (format {doc['format']!r})")
        if doc["version"] != POLICY_VERSION or isinstance(doc["version"], bool):
            raise PolicyFormatError(
                f"unsupported signed PCR policy version {doc['version']!r} "
                f"(this reader supports version {POLICY_VERSION})"
            )
        values = _parse_pcrs(doc["bank"], doc["pcrs"])
        authority = _parse_authority(doc["authority"])
        signature = _b64(doc["signature"], "signature", 128)
        policy = cls(values=values, authority=authority, signature=signature)
        if _text(doc["policy_digest"], "policy_digest") != policy.approved_policy.hex():
            raise PolicyFormatError("policy_digest does not match the PCR values it names")
        return policy


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise PolicyFormatError(f"{name} must be a string")
    return value


def _b64(value: Any, name: str, max_len: int) -> bytes:
    text = _text(value, name)
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise PolicyFormatError(f"{name} is not valid base64") from exc
    if not raw or len(raw) > max_len:
        raise PolicyFormatError(f"{name} must be 1..{max_len} bytes, got {len(raw)}")
    return raw


def _parse_pcrs(bank: Any, pcrs: Any) -> PCRValues:
    if bank != BANK_SHA256:
        raise PolicyFormatError(f"unsupported PCR bank {bank!r} (only sha256)")
    if not isinstance(pcrs, dict) or not pcrs:
        raise PolicyFormatError("pcrs must be a non-empty object of index -> hex digest")
    digests: dict[int, bytes] = {}
    for key, value in pcrs.items():
        if not (isinstance(key, str) and key.isdigit() and str(int(key)) == key):
            raise PolicyFormatError(f"PCR index {key!r} is not a decimal integer")
        index = int(key)
        if index >= PCR_COUNT:
            raise PolicyFormatError(f"PCR index {index} is out of range 0..{PCR_COUNT - 1}")
        text = _text(value, f"PCR {index}")
        if len(text) != 2 * DIGEST_SIZE:
            raise PolicyFormatError(f"PCR {index} must be 64 hex characters")
        try:
            digests[index] = bytes.fromhex(text)
        except ValueError as exc:
            raise PolicyFormatError(f"PCR {index} is not hex") from exc
    return PCRValues(BANK_SHA256, digests)


def _parse_authority(value: Any) -> ec.EllipticCurvePublicKey:
    der = _b64(value, "authority", 512)
    try:
        key = serialization.load_der_public_key(der)
    except ValueError as exc:
        raise PolicyFormatError("authority is not a DER SubjectPublicKeyInfo") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise PolicyFormatError("authority must be an ECC P-256 public key")
    return key


def authority_fingerprint(key: ec.EllipticCurvePublicKey) -> str:
    """A short human id of an authority key: sha256 of its DER SPKI, first 16 hex."""
    return hashlib.sha256(_public_der(key)).hexdigest()[:16]


def sign_pcr_policy(
    authority_private_key: ec.EllipticCurvePrivateKey, values: PCRValues
) -> SignedPCRPolicy:
    """Approve ``values``: sign their PolicyPCR digest for TPM2_PolicyAuthorize."""
    authority = authority_private_key.public_key()
    _p256_point(authority)
    signature = authority_private_key.sign(
        approval_hash(policy_pcr_digest(values)), ec.ECDSA(Prehashed(hashes.SHA256()))
    )
    return SignedPCRPolicy(values=values, authority=authority, signature=signature)
