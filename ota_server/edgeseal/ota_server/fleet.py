"""The release manager's fleet view of one model family: who serves what, who failed,
who went silent (``GET /api/v1/fleet``).

A device belongs to a family's fleet when its latest report
(:mod:`edgeseal.ota_server.telemetry`) names the family, or, when it never
reported, when its hardware class is one of the family's releases. Revoked
devices are listed (``"revoked": true``) but left out of the summary.

Everything shown is what devices *said* (telemetry), stamped with the
device's clock (``reported_at``) and the server's (``received_at``); silence
is judged on the server's clock only.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from edgeseal.ota_server.db import (
    DeviceAttestationRow,
    DeviceReportRow,
    DeviceRow,
    ReleaseRow,
    isotime,
)

DEFAULT_SILENT_HOURS = 24
#: A year: anything longer is a typo, not a question.
MAX_SILENT_HOURS = 24 * 366
#: Outcomes of a last cycle that a release manager must look at.
FAILING_OUTCOMES = ("failed", "refused")


def report_json(row: DeviceReportRow | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {
        "family": row.family,
        "version": row.version,
        "attempted_version": row.attempted_version,
        "outcome": row.outcome,
        "reason": row.reason,
        "reported_at": row.reported_at,
        "received_at": row.received_at,
    }


def fleet_status(
    session: Session, family: str, *, now: datetime, silent_hours: int = DEFAULT_SILENT_HOURS
) -> dict[str, Any]:
    """The fleet of ``family``: every device with its last report, and a summary."""
    hardware: set[str] = set()
    for classes in session.scalars(select(ReleaseRow.hardware).where(ReleaseRow.family == family)):
        hardware.update(classes)
    rows = session.execute(
        select(DeviceRow, DeviceAttestationRow.revoked, DeviceReportRow)
        .outerjoin(DeviceAttestationRow, DeviceAttestationRow.device_id == DeviceRow.id)
        .outerjoin(DeviceReportRow, DeviceReportRow.device_id == DeviceRow.id)
        .order_by(DeviceRow.id)
    )
    silent_before = isotime(now - timedelta(hours=silent_hours))
    devices: list[dict[str, Any]] = []
    versions: Counter[int | None] = Counter()
    failing: list[str] = []
    silent: list[str] = []
    never_reported = revoked_count = 0
    for device, revoked, report in rows:
        mine = report.family == family if report is not None else device.hardware_class in hardware
        if not mine:
            continue
        is_silent = report is None or report.received_at < silent_before
        devices.append(
            {
                "id": device.id,
                "hardware_class": device.hardware_class,
                "channel": device.channel,
                "revoked": bool(revoked),
                "silent": is_silent,
                "report": report_json(report),
            }
        )
        if revoked:
            revoked_count += 1
            continue
        if is_silent:
            silent.append(device.id)
        if report is None:
            never_reported += 1
            continue
        versions[report.version] += 1
        if report.outcome in FAILING_OUTCOMES:
            failing.append(device.id)
    return {
        "family": family,
        "generated_at": isotime(now),
        "silent_hours": silent_hours,
        "devices": devices,
        "summary": {
            "devices": len(devices) - revoked_count,
            "revoked": revoked_count,
            "never_reported": never_reported,
            "versions": [
                {"version": version, "devices": count}
                for version, count in sorted(
                    versions.items(), key=lambda item: (item[0] is None, -(item[0] or 0))
                )
            ],
            "failing": failing,
            "silent": silent,
        },
    }


__all__ = ["DEFAULT_SILENT_HOURS", "FAILING_OUTCOMES", "MAX_SILENT_HOURS", "fleet_status"]
