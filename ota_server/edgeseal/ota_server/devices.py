"""Devices of the fleet, and the key envelopes a new device gets.

Adding a device (``POST /api/v1/devices`` or ``edgeseal-server device add``)
records its TPM decryption key and publishes, in the same step, its envelope
for every published release of its hardware class, so it can install the
current model right away. Device ids become TUF target path segments, hence
the strict rule ``^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$``.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from edgeseal.ota_server.auth import Principal, require_operator
from edgeseal.ota_server.context import ServerContext
from edgeseal.ota_server.db import DeviceRow, isotime
from edgeseal.ota_server.publication import device_public_key, envelopes_for_device
from edgeseal.ota_server.releases import check_keys
from edgeseal.ota_server.service_errors import BadRequestError, ConflictError
from edgeseal.sdk.hazmat.format import NAME_RULE, is_valid_name
from edgeseal.sdk.releases import is_valid_device_id

CHANNEL_RE = re.compile(r"^[a-z0-9-]{1,32}$")
MAX_PEM = 4096
_KEYS = frozenset({"id", "public_key_pem", "hardware_class", "channel"})


def device_json(row: DeviceRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "hardware_class": row.hardware_class,
        "channel": row.channel,
        "public_key_pem": row.public_key_pem,
        "created": row.created,
    }


def list_devices(session: Session) -> list[dict[str, Any]]:
    return [device_json(r) for r in session.scalars(select(DeviceRow).order_by(DeviceRow.id))]


def add_device(
    ctx: ServerContext, session: Session, principal: Principal | None, body: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Record a device and publish its envelopes. ``principal`` None: the local CLI."""
    if principal is not None:
        require_operator(principal)
    check_keys(body, _KEYS)
    device_id, pem = body["id"], body["public_key_pem"]
    hardware_class, channel = body["hardware_class"], body["channel"]
    if not is_valid_device_id(device_id):
        raise BadRequestError("device id must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", field="id")
    if not is_valid_name(hardware_class):
        raise BadRequestError(f"hardware_class must be {NAME_RULE}", field="hardware_class")
    if not isinstance(channel, str) or not CHANNEL_RE.match(channel):
        raise BadRequestError("channel must be 1-32 of a-z, 0-9, '-'", field="channel")
    if not isinstance(pem, str) or len(pem) > MAX_PEM or not pem.isascii():
        raise BadRequestError("public_key_pem must be a PEM text", field="public_key_pem")
    try:
        device_public_key(pem)
    except ValueError:
        raise BadRequestError(
            "public_key_pem is not a PEM public key", field="public_key_pem"
        ) from None
    if session.get(DeviceRow, device_id) is not None:
        raise ConflictError(f"device {device_id} is already registered")
    row = DeviceRow(
        id=device_id,
        public_key_pem=pem,
        hardware_class=hardware_class,
        channel=channel,
        created=isotime(ctx.now()),
    )
    session.add(row)
    session.flush()
    envelopes = envelopes_for_device(ctx, session, row)
    if envelopes:
        ctx.repository.publish_envelopes(envelopes, now=ctx.now())
    answer = device_json(row) | {"envelopes": sorted(envelopes)}
    return answer, {"device": device_id, "envelopes": len(envelopes)}
