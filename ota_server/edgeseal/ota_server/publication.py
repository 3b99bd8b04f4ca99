"""Publishing a release: its family metadata, then one key envelope per device.

Once a release's proposal has its threshold of signatures, the staged sealed
model becomes a TUF target, the family metadata is published with a new
snapshot and timestamp, and the release's content key is resealed from its KEK
envelope to every device of a matching hardware class that is not revoked (a
device added later gets the envelopes of every published release when it is
added). A yank publishes the family without the target and removes whatever
envelopes of it are still published (a revoked device's are already gone). A
rollout change publishes the family with only the target's ``rollout_percent``
changed and records the signed percentage on the release row.

Runs inside the caller's database transaction, like :mod:`edgeseal.ota_server.releases`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select
from sqlalchemy.orm import Session
from tuf.api.metadata import Metadata, Targets

from edgeseal.ota_server import db
from edgeseal.ota_server.context import ServerContext
from edgeseal.ota_server.db import DeviceRow, ReleaseRow, isotime
from edgeseal.ota_server.hints import publish_hint_in_background, release_hint
from edgeseal.ota_server.revocation import is_revoked, not_revoked
from edgeseal.ota_server.service_errors import BadRequestError, ConflictError
from edgeseal.sdk.errors import EdgesealError
from edgeseal.sdk.hazmat.format import decode_header
from edgeseal.sdk.releases import envelope_target_path

logger = logging.getLogger(__name__)


def upload_file_for(ctx: ServerContext, release_id: str) -> Path:
    """Where a release's checked sealed model waits for publication (not served)."""
    return ctx.data.uploads / f"{release_id}.esm"


def publish_release(
    ctx: ServerContext, session: Session, row: ReleaseRow, signed: Metadata[Targets]
) -> dict[str, Any]:
    """Publish (or yank, or change the rollout of) ``row`` with its ``signed`` family
    metadata; return audit details."""
    now = ctx.now()
    repo = ctx.repository
    if row.state == db.AWAITING_SIGNATURES:
        staged = upload_file_for(ctx, row.id)
        added = repo.add_target_file(row.target_path, staged)
        if added.length != row.sealed_size or added.hashes.get("sha256") != row.sealed_sha256:
            raise ConflictError(f"the staged upload of {row.id} changed on disk; upload it again")
        repo.publish_family(row.family, signed, now=now)
        row.state = db.PUBLISHED
        row.published = isotime(now)
        staged.unlink(missing_ok=True)
        # The release is public now; the database must say so even if the envelopes
        # fail (devices then wait for them; the failure is in the log and the audit).
        try:
            envelopes = envelopes_for_release(ctx, session, row)
            if envelopes:
                repo.publish_envelopes(envelopes, now=now)
        except EdgesealError as exc:
            logger.exception("published %s but its envelopes failed", row.id)
            return {"published": row.target_path, "envelope_error": exc.diagnostics()[:500]}
        # An MQTT hint (never trusted, best effort, off this thread) makes devices check
        # sooner, once their envelopes exist; only when ``run`` started a broker.
        if ctx.hint_settings is not None:
            publish_hint_in_background(
                ctx.hint_settings, release_hint(row.family, row.version, now)
            )
        logger.info("published %s with %d envelopes", row.id, len(envelopes))
        return {"published": row.target_path, "envelopes": len(envelopes)}
    if row.state == db.ROLLOUT_AWAITING_SIGNATURES:
        return _publish_rollout(ctx, row, signed)
    repo.publish_family(row.family, signed, now=now)
    row.state = db.YANKED
    candidates = published_envelope_paths(session, row)
    removed = (
        repo.publish_envelopes({}, remove=candidates, now=now, missing_ok=True)
        if candidates
        else []
    )
    logger.info("yanked %s, removed %d envelopes", row.id, len(removed))
    return {"yanked": row.target_path, "envelopes_removed": len(removed)}


def _publish_rollout(
    ctx: ServerContext, row: ReleaseRow, signed: Metadata[Targets]
) -> dict[str, Any]:
    """Publish a signed change of ``row``'s ``rollout_percent``; the row follows what was signed.

    Envelopes are untouched: every device of the hardware class already has one, and
    the cohort rule on the device decides who installs. Devices that installed the
    release under a larger percentage keep it (a rollout never uninstalls).
    """
    now = ctx.now()
    target = signed.signed.targets[row.target_path]
    percent = target.custom["edgeseal"]["rollout_percent"]
    previous = row.custom.get("rollout_percent")
    ctx.repository.publish_family(row.family, signed, now=now)
    row.custom = {**row.custom, "rollout_percent": percent}
    row.state = db.PUBLISHED
    if ctx.hint_settings is not None:
        publish_hint_in_background(ctx.hint_settings, release_hint(row.family, row.version, now))
    logger.info("rollout of %s: %s%% -> %s%%", row.id, previous, percent)
    return {"rollout": row.target_path, "from_percent": previous, "to_percent": percent}


# --- envelopes ------------------------------------------------------------------------------


def device_public_key(pem: str) -> ec.EllipticCurvePublicKey:
    key = serialization.load_pem_public_key(pem.encode("ascii"))
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise BadRequestError("a device key must be a P-256 public key")
    return key


def _delivers_envelopes(row: ReleaseRow) -> bool:
    return row.header is not None and row.custom.get("key_release", "envelope") == "envelope"


def seal_content_key(
    ctx: ServerContext, row: ReleaseRow, devices: Sequence[DeviceRow]
) -> list[bytes]:
    """``row``'s content key, opened from its KEK envelope, sealed to each device's decryption
    key and bound to the release's sealed header: one HPKE envelope per device, in order.

    The one recipe of every device envelope, published (below) or released on a quote
    (:mod:`edgeseal.ota_server.key_release`). It does not ask whether the device may have it.
    """
    if row.header is None:
        raise ConflictError(f"release {row.id} has no checked sealed model: no key to seal")
    return ctx.kek.reseal(
        row.kek_envelope,
        decode_header(row.header),
        [device_public_key(d.public_key_pem) for d in devices],
    )


def envelopes_for_release(
    ctx: ServerContext, session: Session, row: ReleaseRow
) -> dict[str, bytes]:
    """Envelopes of one release for every device of a matching hardware class, but revoked ones."""
    if not _delivers_envelopes(row) or row.header is None:
        return {}
    devices = list(
        session.scalars(
            select(DeviceRow)
            .where(DeviceRow.hardware_class.in_(row.hardware), not_revoked())
            .order_by(DeviceRow.id)
        )
    )
    sealed = seal_content_key(ctx, row, devices)
    return {
        envelope_target_path(d.id, row.family, row.version): env
        for d, env in zip(devices, sealed, strict=True)
    }


def envelopes_for_device(
    ctx: ServerContext, session: Session, device: DeviceRow
) -> dict[str, bytes]:
    """Envelopes for one (new) device of every published release of its hardware class.

    None for a revoked device (a revoked id cannot be added again, but no path
    may make envelopes for one)."""
    out: dict[str, bytes] = {}
    if is_revoked(session, device.id):
        return out
    rows = session.scalars(select(ReleaseRow).where(ReleaseRow.state.in_(db.LIVE_STATES)))
    for row in rows:
        if device.hardware_class not in row.hardware or not _delivers_envelopes(row):
            continue
        (envelope,) = seal_content_key(ctx, row, [device])
        out[envelope_target_path(device.id, row.family, row.version)] = envelope
    return out


def published_envelope_paths(session: Session, row: ReleaseRow) -> list[str]:
    """Every envelope path a release may have published: one per device of its hardware
    classes, revoked or not (a revocation removes its envelopes, but one made before
    revocations did may have left them); remove them with ``missing_ok``."""
    if not _delivers_envelopes(row):
        return []
    devices = session.scalars(select(DeviceRow).where(DeviceRow.hardware_class.in_(row.hardware)))
    return sorted(envelope_target_path(d.id, row.family, row.version) for d in devices)


def device_envelope_paths(session: Session, device: DeviceRow) -> list[str]:
    """Every envelope path ``device`` may have (one per release of its hardware class ever
    published; a yank removed its envelopes, but asking costs little); remove them with
    ``missing_ok``."""
    rows = session.scalars(
        select(ReleaseRow)
        .where(ReleaseRow.state.in_((*db.LIVE_STATES, db.YANKED)))
        .order_by(ReleaseRow.id)
    )
    return sorted(
        envelope_target_path(device.id, row.family, row.version)
        for row in rows
        if device.hardware_class in row.hardware and _delivers_envelopes(row)
    )
