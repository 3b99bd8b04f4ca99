"""Boot states the server accepts from an enrolled device: its baseline, or an approved one.

A device's model key is bound with TPM2_PolicyAuthorize to a *PCR policy
authority* - the embedded team's key - so any PCR values that authority
signed unlock it, and an approved OS update does not strand the key
(docs/dev/attestation-contracts.md, "Boot states approved after enrollment").
The server accepts the same states: the device sends its authority's public
key at enrollment (:func:`check_policy_authority` keeps its canonical DER in
``device_attestation.pcr_policy_authority``) and, with a quote, the signed PCR
policy it boots under; :func:`check_boot_state` then accepts quoted PCR values
that equal the enrollment baseline, or that a policy signed by the enrolled
authority names (:func:`edgeseal.sdk.pcr_policy.approved_state`).

Pure: values in, :class:`AcceptedBootState` out or
:class:`~edgeseal.sdk.errors.AttestationError` raised. Call it only on PCR
values a verified quote proved, so a caller without a valid quote learns
nothing about a baseline.

Known limit, as for the TPM itself: a state the authority ever approved keeps
counting; there is no revocation of old signed policies yet.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization

from edgeseal.ota_server.service_errors import BadRequestError
from edgeseal.sdk.errors import AttestationError
from edgeseal.sdk.pcr_policy import (
    MAX_AUTHORITY_BYTES,
    approved_state,
    authority_fingerprint,
    parse_policy_authority,
)

__all__ = [
    "APPROVED",
    "BASELINE",
    "MAX_POLICY_AUTHORITY_BYTES",
    "AcceptedBootState",
    "authority_fingerprint",
    "check_boot_state",
    "check_policy_authority",
]

#: Largest DER SubjectPublicKeyInfo taken as a policy authority (a P-256 one is 91 bytes).
MAX_POLICY_AUTHORITY_BYTES = MAX_AUTHORITY_BYTES
#: Audit values of ``boot_state``.
BASELINE = "baseline"
APPROVED = "approved"


def check_policy_authority(der: bytes, *, field: str = "pcr_policy_authority") -> bytes:
    """The canonical DER SubjectPublicKeyInfo of an ECC P-256 public key (400 otherwise).

    Canonical (uncompressed point, as ``SignedPCRPolicy.to_bytes()`` writes the
    authority) so that the stored bytes compare equal to a policy's authority.
    """
    try:
        key = parse_policy_authority(der, field)
    except AttestationError as exc:
        raise BadRequestError(exc.message, field=field) from None
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@dataclass(frozen=True)
class AcceptedBootState:
    """Quoted PCR values the server accepts: the baseline, or a state an authority approved."""

    #: The PCRs whose quoted value differs from the baseline (empty: the baseline).
    changed: tuple[int, ...]
    #: The fingerprint of the authority that approved the state; None for the baseline.
    authority: str | None

    def audit_details(self) -> dict[str, Any]:
        if self.authority is None:
            return {"boot_state": BASELINE}
        return {
            "boot_state": APPROVED,
            "changed_pcrs": list(self.changed),
            "policy_authority": self.authority,
        }


def _indices(indices: Iterable[int]) -> str:
    return ", ".join(str(i) for i in sorted(indices))


def check_boot_state(
    baseline: Mapping[int, bytes],
    pcrs: Mapping[int, bytes],
    *,
    pcr_policy: bytes | None,
    authority_der: bytes | None,
) -> AcceptedBootState:
    """Accept ``pcrs`` (proven by a quote) when they equal ``baseline`` or when
    ``pcr_policy`` is signed by ``authority_der`` (the enrolled authority) for exactly
    these values; AttestationError (``field="pcrs"``) naming the PCRs that differ from
    the baseline and why the policy did not count otherwise."""
    changed = sorted(set(pcrs) ^ set(baseline) | {i for i in pcrs if baseline.get(i) != pcrs[i]})
    if not changed:
        return AcceptedBootState((), None)
    try:
        # Refuses a missing policy or authority too, saying which (reason "missing").
        approved = approved_state(pcr_policy, authority_der, pcrs)
    except AttestationError as exc:
        head = (
            f"PCR {changed[0]} differs" if len(changed) == 1 else f"PCRs {_indices(changed)} differ"
        )
        raise AttestationError(
            f"{head} from the enrollment baseline and no signed PCR policy approves the new "
            f"state: {exc.message} (if the change is approved, have the device's PCR policy "
            "authority sign it, or enroll the device again)",
            field="pcrs",
        ) from None
    return AcceptedBootState(tuple(changed), approved.fingerprint)
