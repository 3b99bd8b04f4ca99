"""The revocation record of a device, and the questions the rest of the server asks of it.

DESIGN flow 6: a revoked device gets no new envelopes, no released keys and
no broker access, and cannot enroll again. The record lives in the
``device_attestation`` table (``revoked = True``), whether or not the device
ever enrolled: a stolen device may never have, and a table the server already
has needs no migration. A device revoked before it enrolled gets a row
*without* an attestation key (empty ``ak_public``, ``enrolled`` =
:data:`~edgeseal.ota_server.db.NOT_ENROLLED`); trust bundles leave such rows
out, since there is nothing to attest against (and a technician's check
already fails a device the bundle does not list).

What revocation *does* - removing the device's envelopes and broker
credentials - is :func:`edgeseal.ota_server.devices.revoke_device`; this
module only reads and writes the record, inside the caller's transaction.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import ColumnElement, delete, exists, select
from sqlalchemy.orm import Session

from edgeseal.ota_server.db import (
    NOT_ENROLLED,
    DeviceAttestationRow,
    DeviceRow,
    EnrollmentChallengeRow,
    KeyReleaseChallengeRow,
)
from edgeseal.ota_server.service_errors import NotFoundError


@dataclass(frozen=True)
class RevocationRecord:
    """What :func:`mark_revoked` found and did."""

    device_id: str
    #: The device had enrolled (it has an AK and a baseline in the trust bundle).
    enrolled: bool
    #: It was revoked before this call (revocation is idempotent).
    already_revoked: bool


def is_revoked(session: Session, device_id: str) -> bool:
    return bool(
        session.scalar(
            select(DeviceAttestationRow.revoked).where(DeviceAttestationRow.device_id == device_id)
        )
    )


def not_revoked() -> ColumnElement[bool]:
    """A filter on ``DeviceRow`` queries: the device is not revoked."""
    return ~exists().where(
        DeviceAttestationRow.device_id == DeviceRow.id,
        DeviceAttestationRow.revoked.is_(True),
    )


def get_device(session: Session, device_id: str) -> DeviceRow:
    row = session.get(DeviceRow, device_id) if len(device_id) <= 64 else None
    if row is None:
        raise NotFoundError(
            f"unknown device {device_id[:64]!r}: the operator must add it first "
            "(edgeseal-server device add)"
        )
    return row


def mark_revoked(session: Session, device_id: str) -> RevocationRecord:
    """Record ``device_id`` as revoked (enrolled or not); drop its open enrollment challenges."""
    get_device(session, device_id)
    row = session.get(DeviceAttestationRow, device_id)
    if row is None:
        row = DeviceAttestationRow(
            device_id=device_id,
            ak_public=b"",
            ek_certificate_sha256="",
            pcr_bank="",
            pcrs={},
            enrolled=NOT_ENROLLED,
            revoked=False,
        )
        session.add(row)
    already = bool(row.revoked)
    row.revoked = True
    # Open challenges die with the device: no enrollment and no key release may finish.
    for table in (EnrollmentChallengeRow, KeyReleaseChallengeRow):
        session.execute(delete(table).where(table.device_id == device_id))
    session.flush()
    return RevocationRecord(
        device_id=device_id, enrolled=row.enrolled != NOT_ENROLLED, already_revoked=already
    )
