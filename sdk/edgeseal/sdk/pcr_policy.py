"""Boot states approved after enrollment: signed PCR policies, checked by a verifier.

A device's model key is bound with TPM2_PolicyAuthorize to a *policy
authority* (the embedded team's ECDSA P-256 key): any PCR values the authority
signed unlock it, so an approved OS update does not strand the key. A verifier
(the technician's ``boot-state`` check, the server's attested key release)
accepts the same states with :func:`approved_state`
(docs/dev/attestation-contracts.md, "Boot states approved after enrollment").

The document is the JSON that ``edgeseal.hardware.policy.SignedPCRPolicy.to_bytes()``
writes (the sdk may not import the hardware layer, so it is read again here)::

    {"format": "edgeseal-signed-pcr-policy", "version": 1, "bank": "sha256",
     "pcrs": {"<index>": <64 lowercase hex>, ...},
     "policy_digest": <64 lowercase hex>,
     "authority": base64(DER SubjectPublicKeyInfo, ECDSA P-256),
     "signature": base64(DER ECDSA over aHash)}

where, with TPM 2.0 Library Part 3 (rev. 1.59) section 23.7 and 23.16,
``policy_digest = SHA-256(0^32 || u32 TPM_CC_PolicyPCR || TPML_PCR_SELECTION ||
SHA-256(values in ascending index order))`` and the signature is over
``aHash = SHA-256(policy_digest || policyRef)`` with an empty policyRef, as a
*prehashed* digest (TPM2_VerifySignature checks the digest itself).

:func:`load_signed_pcr_policy` bounds the input (:data:`MAX_POLICY_BYTES`),
parses it strictly (:mod:`edgeseal.sdk.strict_json`, exact keys), recomputes
the policy digest and verifies the signature with the authority the document
names. Pure: bytes in, :class:`ApprovedPCRs` out; every refusal is a
:class:`PCRPolicyError` (an :class:`~edgeseal.sdk.errors.AttestationError`)
whose ``reason`` says why the policy does not count and whose message says
exactly what is wrong.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from edgeseal.sdk import strict_json
from edgeseal.sdk.errors import AttestationError

__all__ = [
    "BANK",
    "MAX_AUTHORITY_BYTES",
    "MAX_POLICY_BYTES",
    "MAX_SIGNATURE_BYTES",
    "POLICY_FORMAT",
    "POLICY_VERSION",
    "ApprovedPCRs",
    "PCRPolicyError",
    "Reason",
    "approval_hash",
    "approved_state",
    "authority_fingerprint",
    "load_signed_pcr_policy",
    "parse_policy_authority",
    "policy_pcr_digest",
]

POLICY_FORMAT = "edgeseal-signed-pcr-policy"
POLICY_VERSION = 1
BANK = "sha256"
#: Largest signed PCR policy read (bytes of the JSON document; also the bound of its base64
#: form on the wire, decoded). A policy names at most 24 PCRs: about 2.5 KiB.
MAX_POLICY_BYTES = 16 * 1024
#: Largest authority SubjectPublicKeyInfo DER accepted (a P-256 one is 91 bytes).
MAX_AUTHORITY_BYTES = 512
#: DER ECDSA-Sig-Value of two P-256 integers is at most 72 bytes.
MAX_SIGNATURE_BYTES = 72

# TPM 2.0 Part 2, 6.3 (TPM_ALG_ID) and 6.5.2 (TPM_CC); PC Client PCRs 0..23.
_TPM_ALG_SHA256 = 0x000B
_TPM_CC_POLICY_PCR = 0x0000017F
_PCR_COUNT = 24
_PCR_SELECT_SIZE = 3
_DIGEST_SIZE = 32
_KEYS = frozenset({"format", "version", "bank", "pcrs", "policy_digest", "authority", "signature"})
_HEX64 = re.compile(r"[0-9a-f]{64}", re.ASCII)
_PCR_INDEX = re.compile(r"0|[1-9][0-9]?", re.ASCII)

#: Why a signed PCR policy does not count: ``missing`` (none sent, or no authority
#: enrolled), ``malformed`` (not this format, over a bound), ``digest`` (policy_digest is
#: not the one of its values), ``signature`` (does not verify under its authority),
#: ``authority`` (signed by another authority than the enrolled one), ``values`` (it does
#: not approve the reported PCR values).
Reason = Literal["missing", "malformed", "digest", "signature", "authority", "values"]


class PCRPolicyError(AttestationError):
    """A signed PCR policy does not approve the reported state; ``reason`` says why.

    ``pcrs`` lists the PCR indices that differ for reason ``values`` (else empty).
    """

    def __init__(
        self,
        message: str,
        *,
        reason: Reason,
        field: str | None = "pcr_policy",
        pcrs: Iterable[int] = (),
    ) -> None:
        super().__init__(message, field=field)
        self.reason: Reason = reason
        self.pcrs: tuple[int, ...] = tuple(sorted(pcrs))


@dataclass(frozen=True)
class ApprovedPCRs:
    """PCR values a policy authority approved, from a verified signed PCR policy.

    ``values`` maps PCR index (ascending) to its sha256 value; ``authority_der`` is
    the authority's SubjectPublicKeyInfo DER and ``fingerprint`` the first 16 hex
    characters of its SHA-256 (hardware's ``authority_fingerprint``).
    """

    values: dict[int, bytes]
    authority: ec.EllipticCurvePublicKey = field(compare=False)
    authority_der: bytes
    fingerprint: str
    policy_digest: bytes


# --- the TPM computations --------------------------------------------------------------------


def policy_pcr_digest(values: Mapping[int, bytes]) -> bytes:
    """The policyDigest of a fresh sha256 session after TPM2_PolicyPCR on ``values``.

    Part 3, 23.7: ``H(0^32 || TPM_CC_PolicyPCR || TPML_PCR_SELECTION || H(values))``
    with the selection one sha256 bank of PCRs 0..23 and the values in ascending
    index order. ValueError for an index outside 0..23 or a value that is not 32 bytes.
    """
    if not values:
        raise ValueError("a PCR policy names at least one PCR")
    bitmap = bytearray(_PCR_SELECT_SIZE)
    composite = hashlib.sha256()
    for index in sorted(values):
        if type(index) is not int or not 0 <= index < _PCR_COUNT:
            raise ValueError(f"PCR index must be 0..{_PCR_COUNT - 1}, got {index!r}")
        if len(values[index]) != _DIGEST_SIZE:
            raise ValueError(f"PCR {index}: a sha256 value is {_DIGEST_SIZE} bytes")
        bitmap[index // 8] |= 1 << (index % 8)
        composite.update(values[index])
    selection = struct.pack(">IHB", 1, _TPM_ALG_SHA256, _PCR_SELECT_SIZE) + bytes(bitmap)
    return hashlib.sha256(
        bytes(_DIGEST_SIZE) + struct.pack(">I", _TPM_CC_POLICY_PCR) + selection + composite.digest()
    ).digest()


def approval_hash(approved_policy: bytes, policy_ref: bytes = b"") -> bytes:
    """aHash = SHA-256(approvedPolicy || policyRef): what the authority signs (Part 3, 23.16)."""
    return hashlib.sha256(approved_policy + policy_ref).digest()


def authority_fingerprint(authority_der: bytes) -> str:
    """A short human id of an authority: the first 16 hex of SHA-256 of its SPKI DER."""
    return hashlib.sha256(authority_der).hexdigest()[:16]


def parse_policy_authority(der: bytes, where: str = "authority") -> ec.EllipticCurvePublicKey:
    """An authority key from its DER SubjectPublicKeyInfo; it must be ECDSA P-256."""
    if not isinstance(der, bytes) or not 0 < len(der) <= MAX_AUTHORITY_BYTES:
        raise PCRPolicyError(
            f"the {where} must be 1 to {MAX_AUTHORITY_BYTES} bytes of DER SubjectPublicKeyInfo",
            reason="malformed",
            field=where,
        )
    try:
        key = serialization.load_der_public_key(der)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise PCRPolicyError(
            f"the {where} is not a DER SubjectPublicKeyInfo", reason="malformed", field=where
        ) from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise PCRPolicyError(
            f"the {where} must be an ECDSA P-256 public key", reason="malformed", field=where
        )
    return key


def _spki(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# --- loading ---------------------------------------------------------------------------------


def load_signed_pcr_policy(data: bytes) -> ApprovedPCRs:
    """Parse a signed PCR policy, recompute its digest and verify its signature.

    The signature is checked with the authority *in the document*: whether that
    authority is the one a device is enrolled with is :func:`approved_state`'s job.
    """
    if not isinstance(data, bytes | bytearray):
        raise PCRPolicyError("a signed PCR policy is bytes", reason="malformed")
    if len(data) > MAX_POLICY_BYTES:
        raise PCRPolicyError(
            f"the signed PCR policy is {len(data)} bytes, over the limit of {MAX_POLICY_BYTES}",
            reason="malformed",
        )
    try:
        doc = strict_json.loads(bytes(data))
    except strict_json.StrictJSONError as exc:
        raise PCRPolicyError(
            f"the signed PCR policy is not strict UTF-8 JSON ({exc.rule})", reason="malformed"
        ) from None
    if not isinstance(doc, dict):
        raise PCRPolicyError("the signed PCR policy must be a JSON object", reason="malformed")
    missing = sorted(_KEYS - doc.keys())
    unknown = sorted(str(k)[:40] for k in doc.keys() - _KEYS)
    if missing or unknown:
        raise PCRPolicyError(
            f"the signed PCR policy needs exactly the keys {', '.join(sorted(_KEYS))} "
            f"(missing: {', '.join(missing) or 'none'}; unknown: {', '.join(unknown) or 'none'})",
            reason="malformed",
        )
    if doc["format"] != POLICY_FORMAT:
        raise PCRPolicyError(
            f"not a signed PCR policy (format must be {POLICY_FORMAT!r})", reason="malformed"
        )
    if type(doc["version"]) is not int or doc["version"] != POLICY_VERSION:
        raise PCRPolicyError(
            f"signed PCR policy version {str(doc['version'])[:20]} is not {POLICY_VERSION}, "
            "the one this edgeseal reads",
            reason="malformed",
        )
    if doc["bank"] != BANK:
        raise PCRPolicyError(
            f"the signed PCR policy is over the {str(doc['bank'])[:20]!r} PCR bank; only "
            f"{BANK} is supported",
            reason="malformed",
            field="pcr_policy.bank",
        )
    values = _values(doc["pcrs"])
    claimed = _hex64(doc["policy_digest"], "pcr_policy.policy_digest")
    authority_der = _b64(doc["authority"], MAX_AUTHORITY_BYTES, "pcr_policy.authority")
    authority = parse_policy_authority(authority_der, "pcr_policy.authority")
    signature = _b64(doc["signature"], MAX_SIGNATURE_BYTES, "pcr_policy.signature")

    digest = policy_pcr_digest(values)
    if not hmac.compare_digest(digest, claimed):
        raise PCRPolicyError(
            "the signed PCR policy's policy_digest is not the TPM2_PolicyPCR digest of the "
            f"PCR values it names (claimed {claimed.hex()[:12]}..., computed "
            f"{digest.hex()[:12]}...): the values or the digest were changed",
            reason="digest",
            field="pcr_policy.policy_digest",
        )
    der = _spki(authority)
    fingerprint = authority_fingerprint(der)
    try:
        authority.verify(signature, approval_hash(digest), ec.ECDSA(Prehashed(hashes.SHA256())))
    except (InvalidSignature, ValueError):
        raise PCRPolicyError(
            "the signed PCR policy's signature does not verify under the authority it names "
            f"({fingerprint}): it was modified or re-signed",
            reason="signature",
            field="pcr_policy.signature",
        ) from None
    return ApprovedPCRs(
        values=values,
        authority=authority,
        authority_der=der,
        fingerprint=fingerprint,
        policy_digest=digest,
    )


def approved_state(
    policy_bytes: bytes | None,
    authority_der: bytes | None,
    reported: Mapping[int, bytes],
) -> ApprovedPCRs:
    """The approval that makes ``reported`` a state the device's authority signed.

    Requires a policy that :func:`load_signed_pcr_policy` accepts, signed by the
    authority ``authority_der`` (the one enrolled for the device), whose values
    equal ``reported`` on every index ``reported`` has (it may name more PCRs).
    ``None`` for ``policy_bytes`` (the device sent none) or ``authority_der`` (none
    enrolled) is refused with reason ``missing``. Raises :class:`PCRPolicyError`.
    """
    if authority_der is None:
        raise PCRPolicyError(
            "no PCR policy authority is enrolled for the device, so no signed PCR policy counts",
            reason="missing",
            field="pcr_policy_authority",
        )
    enrolled = _spki(parse_policy_authority(bytes(authority_der), "pcr_policy_authority"))
    if policy_bytes is None:
        raise PCRPolicyError("the device sent no signed PCR policy", reason="missing")
    approved = load_signed_pcr_policy(policy_bytes)
    if not hmac.compare_digest(approved.authority_der, enrolled):
        raise PCRPolicyError(
            f"the signed PCR policy is signed by authority {approved.fingerprint}, not by the "
            f"device's enrolled policy authority {authority_fingerprint(enrolled)}",
            reason="authority",
            field="pcr_policy.authority",
        )
    if not reported:
        raise PCRPolicyError("no PCR values were reported", reason="values", field="pcrs")
    differing: list[int] = []
    notes: list[str] = []
    for index in sorted(reported):
        value = reported[index]
        allowed = approved.values.get(index)
        if allowed is None:
            differing.append(index)
            notes.append(f"PCR {index} is not in the policy")
        elif not hmac.compare_digest(allowed, value):
            differing.append(index)
            notes.append(
                f"PCR {index} approved {allowed.hex()[:12]}..., reported {value.hex()[:12]}..."
            )
    if differing:
        head = (
            f"PCR {differing[0]}"
            if len(differing) == 1
            else "PCRs " + ", ".join(str(i) for i in differing)
        )
        raise PCRPolicyError(
            f"{head} reported by the device differ from the values the signed PCR policy of "
            f"authority {approved.fingerprint} approves ({'; '.join(notes)})",
            reason="values",
            field="pcrs",
            pcrs=differing,
        )
    return approved


# --- fields ----------------------------------------------------------------------------------


def _values(value: Any) -> dict[int, bytes]:
    if not isinstance(value, dict) or not 1 <= len(value) <= _PCR_COUNT:
        raise PCRPolicyError(
            f"the signed PCR policy's pcrs must be an object of 1 to {_PCR_COUNT} PCR index -> "
            "64 lowercase hex",
            reason="malformed",
            field="pcr_policy.pcrs",
        )
    out: dict[int, bytes] = {}
    for key, digest in value.items():
        if _PCR_INDEX.fullmatch(key) is None or int(key) >= _PCR_COUNT:
            raise PCRPolicyError(
                f"the signed PCR policy names PCR {key[:8]!r}; indices are 0..{_PCR_COUNT - 1}",
                reason="malformed",
                field="pcr_policy.pcrs",
            )
        out[int(key)] = _hex64(digest, f"pcr_policy.pcrs.{key}")
    return dict(sorted(out.items()))


def _hex64(value: Any, where: str) -> bytes:
    if not isinstance(value, str) or _HEX64.fullmatch(value) is None:
        raise PCRPolicyError(
            f"{where} must be 64 lowercase hex characters", reason="malformed", field=where
        )
    return bytes.fromhex(value)


def _b64(value: Any, limit: int, where: str) -> bytes:
    if not isinstance(value, str) or not 0 < len(value) <= 4 * ((limit + 2) // 3):
        raise PCRPolicyError(
            f"{where} must be base64 of 1 to {limit} bytes", reason="malformed", field=where
        )
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise PCRPolicyError(
            f"{where} is not valid base64", reason="malformed", field=where
        ) from None
    if not 0 < len(raw) <= limit:
        raise PCRPolicyError(
            f"{where} must be base64 of 1 to {limit} bytes", reason="malformed", field=where
        )
    return raw
