"""Trust bundles: what a field technician's laptop needs to attest devices offline.

A bundle (format: :mod:`edgeseal.sdk.trust_bundle`) lists every enrolled
device - its hardware class, AK, EK certificate hash, boot-state baseline,
PCR policy authority (the key whose signed PCR policies approve boot states
other than the baseline; null when it enrolled without one) and whether it is
revoked (a device revoked before it enrolled is not listed: an unlisted
device fails the technician's check anyway) - and every published
or yanked release with its plaintext digest, so ``edgeseal attest`` can say
whether the model a device runs is one the fleet published. It is signed
with the server's *bundle key* and expires after ``valid_days`` (30 by
default): a stolen laptop's bundle ages out, and a revocation reaches
technicians with the next export.

The bundle key lives in :mod:`edgeseal.ota_server.bundle_key`; technicians
pin its public key (``edgeseal-server attest bundle-key``).
"""

from __future__ import annotations

import base64
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from edgeseal.ota_server import db
from edgeseal.ota_server.bundle_key import load_bundle_key
from edgeseal.ota_server.db import (
    NOT_ENROLLED,
    DeviceAttestationRow,
    DeviceRow,
    ReleaseRow,
    isotime,
)
from edgeseal.ota_server.service_errors import BadRequestError, ConflictError
from edgeseal.sdk.trust_bundle import MAX_BUNDLE_BYTES, sign_trust_bundle

BUNDLE_TYPE = "edgeseal-trust-bundle"
BUNDLE_VERSION = 1
DEFAULT_VALID_DAYS = 30
MAX_VALID_DAYS = 366
#: Release states whose model may be running on a device (a pending yank is still published).
_LISTED_STATES = (*db.LIVE_STATES, db.YANKED)


# --- the payload ---------------------------------------------------------------------------


def bundle_payload(
    session: Session, *, now: datetime, valid_days: int = DEFAULT_VALID_DAYS, issuer: str
) -> dict[str, Any]:
    """The payload of a trust bundle issued ``now`` (docs/dev/attestation-contracts.md)."""
    if type(valid_days) is not int or not 1 <= valid_days <= MAX_VALID_DAYS:
        raise BadRequestError(f"a bundle is valid for 1 to {MAX_VALID_DAYS} days", field="days")
    return {
        "type": BUNDLE_TYPE,
        "version": BUNDLE_VERSION,
        "issued": isotime(now),
        "expires": isotime(now + timedelta(days=valid_days)),
        "issuer": issuer,
        "devices": _devices(session),
        "releases": _releases(session),
    }


def _devices(session: Session) -> list[dict[str, Any]]:
    rows = session.execute(
        select(DeviceAttestationRow, DeviceRow.hardware_class)
        .join(DeviceRow, DeviceRow.id == DeviceAttestationRow.device_id)
        # a device revoked before it enrolled has no AK to attest against: left out
        .where(DeviceAttestationRow.enrolled != NOT_ENROLLED)
        .order_by(DeviceAttestationRow.device_id)
    )
    return [
        {
            "device_id": att.device_id,
            "hardware_class": hardware_class,
            "ak_public": base64.b64encode(att.ak_public).decode("ascii"),
            "ek_certificate_sha256": att.ek_certificate_sha256,
            "pcr_bank": att.pcr_bank,
            "pcrs": dict(sorted(att.pcrs.items(), key=lambda item: int(item[0]))),
            "pcr_policy_authority": (
                None
                if att.pcr_policy_authority is None
                else base64.b64encode(att.pcr_policy_authority).decode("ascii")
            ),
            "revoked": bool(att.revoked),
        }
        for att, hardware_class in rows
    ]


def _releases(session: Session) -> list[dict[str, Any]]:
    rows = session.scalars(
        select(ReleaseRow)
        .where(ReleaseRow.state.in_(_LISTED_STATES))
        .order_by(ReleaseRow.family, ReleaseRow.version)
    )
    # ``custom`` was checked as ReleaseMetadata (edgeseal.sdk.releases) when the release
    # was created: plaintext = {"digest_alg", "digest" (hex), "size"}.
    return [
        {
            "family": row.family,
            "version": row.version,
            "digest_alg": row.custom["plaintext"]["digest_alg"],
            "plaintext_digest": row.custom["plaintext"]["digest"],
            "yanked": row.state == db.YANKED,
        }
        for row in rows
    ]


def export_bundle(
    session: Session,
    keys_dir: Path,
    *,
    now: datetime,
    valid_days: int = DEFAULT_VALID_DAYS,
    issuer: str,
) -> tuple[bytes, dict[str, Any]]:
    """The signed bundle file's bytes, and its payload."""
    payload = bundle_payload(session, now=now, valid_days=valid_days, issuer=issuer)
    data = sign_trust_bundle(payload, load_bundle_key(keys_dir))
    if len(data) > MAX_BUNDLE_BYTES:  # what edgeseal attest would refuse to read
        raise ConflictError(
            f"the trust bundle would be {len(data)} bytes, over the {MAX_BUNDLE_BYTES}-byte "
            f"limit of its readers ({len(payload['devices'])} devices)"
        )
    return data, payload
