"""Devices of the fleet: adding one (with its key envelopes) and revoking one.

Adding a device (``POST /api/v1/devices`` or ``edgeseal-server device add``)
records its TPM decryption key and publishes, in the same step, its envelope
for every published release of its hardware class, so it can install the
current model right away. Device ids become TUF target path segments, hence
the strict rule ``^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$``.

Revoking one (``POST /api/v1/devices/{id}/revoke`` or ``edgeseal-server device
revoke``; DESIGN flow 6), in one audited step, enrolled or not:

1. records the revocation (:mod:`edgeseal.ota_server.revocation`): trust
   bundles then fail the device, it cannot enroll again, publication makes no
   envelope for it and ``device mqtt-credentials`` refuses it;
2. removes its MQTT password from the broker's password file and makes a
   running broker reload, which disconnects it (:mod:`edgeseal.ota_server.broker`);
3. removes its envelopes from the TUF repository (the online ``envelopes``
   bins, re-signed by the server), so it cannot fetch the content key of a
   release it has not fetched yet. A key it already fetched cannot be taken
   back: a revoked device keeps the models it had.

Revoking again is harmless and redoes 2 and 3 for whatever is left, e.g. after
an interrupted revocation or one made before revocations did 2 and 3.

A device's MQTT broker password (release hints, telemetry) comes from
:func:`issue_mqtt_credentials`, the one way to make one: a successful
enrollment calls it (:mod:`edgeseal.ota_server.enrollment`), and so does
``edgeseal-server device mqtt-credentials`` (rotation by hand). It refuses a
revoked device, so revocation's step 2 cannot be undone by either.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from edgeseal.ota_server.auth import Principal, require_operator
from edgeseal.ota_server.broker import BrokerError, MosquittoBroker
from edgeseal.ota_server.context import ServerContext
from edgeseal.ota_server.db import DeviceAttestationRow, DeviceRow, isotime
from edgeseal.ota_server.publication import (
    device_envelope_paths,
    device_public_key,
    envelopes_for_device,
)
from edgeseal.ota_server.releases import check_keys
from edgeseal.ota_server.revocation import get_device, is_revoked, mark_revoked
from edgeseal.ota_server.service_errors import (
    BadRequestError,
    ConfigError,
    ConflictError,
    ServiceError,
)
from edgeseal.sdk.hazmat.format import NAME_RULE, is_valid_name
from edgeseal.sdk.releases import is_valid_device_id

CHANNEL_RE = re.compile(r"^[a-z0-9-]{1,32}$")
MAX_PEM = 4096
_KEYS = frozenset({"id", "public_key_pem", "hardware_class", "channel"})


class MQTTCredentialsUnavailableError(ServiceError):
    """The server runs a broker but cannot give a device credentials for it (its own fault)."""

    status = 503
    code = "mqtt-credentials-unavailable"


@dataclass(frozen=True)
class MQTTCredentials:
    """A device's broker login: ``username`` is its device id; the password is shown once.

    ``url`` is where devices reach the broker, None when the server cannot name it
    (only when the caller did not require it).
    """

    url: str | None
    username: str
    password: str = field(repr=False)

    def to_json(self) -> dict[str, str | None]:
        return {"url": self.url, "username": self.username, "password": self.password}


def issue_mqtt_credentials(
    ctx: ServerContext,
    session: Session,
    device_id: str,
    *,
    request_host: str | None = None,
    require_url: bool = True,
) -> MQTTCredentials:
    """Create (or rotate) ``device_id``'s broker password; a running broker reloads at once.

    The password is random, only its hash is stored (the broker's password file), and
    the caller hands it to the device once: it is never logged or audited. The URL is
    :meth:`~edgeseal.ota_server.config.ServerConfig.device_mqtt_url`, checked before the
    password changes when ``require_url``. Refused (409) when the server runs no broker
    (``mqtt_port = 0``) or the device is revoked; 404 for an unknown device; 503 when
    the broker's files cannot be written or no URL can be named.
    """
    if not ctx.config.mqtt_port:
        raise ConflictError("this server runs no MQTT broker: set mqtt_port in server.toml")
    get_device(session, device_id)
    if is_revoked(session, device_id):
        raise ConflictError(f"device {device_id} is revoked: it gets no broker credentials")
    try:
        try:
            url: str | None = ctx.config.device_mqtt_url(request_host)
        except ConfigError:
            if require_url:
                raise
            url = None
        password = MosquittoBroker(ctx.data.broker).add_device_credentials(device_id)
    except (BrokerError, ConfigError) as exc:
        raise MQTTCredentialsUnavailableError(
            f"cannot issue MQTT credentials: {exc.diagnostics()}", field=exc.field
        ) from None
    return MQTTCredentials(url=url, username=device_id, password=password)


def device_json(row: DeviceRow, *, revoked: bool = False) -> dict[str, Any]:
    return {
        "id": row.id,
        "hardware_class": row.hardware_class,
        "channel": row.channel,
        "public_key_pem": row.public_key_pem,
        "created": row.created,
        "revoked": revoked,
    }


def list_devices(session: Session) -> list[dict[str, Any]]:
    rows = session.execute(
        select(DeviceRow, DeviceAttestationRow.revoked)
        .outerjoin(DeviceAttestationRow, DeviceAttestationRow.device_id == DeviceRow.id)
        .order_by(DeviceRow.id)
    )
    return [device_json(device, revoked=bool(revoked)) for device, revoked in rows]


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


def revoke_device(
    ctx: ServerContext, session: Session, principal: Principal | None, device_id: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Revoke a device (see the module docstring). ``principal`` None: the local CLI."""
    if principal is not None:
        require_operator(principal)
    record = mark_revoked(session, device_id)
    device = get_device(session, device_id)
    # Broker first: it is local files and a signal, and cutting the device off is what
    # matters most; the repository change comes last, just before the commit.
    broker = MosquittoBroker(ctx.data.broker)
    mqtt_removed = broker.remove_device_credentials(device_id)  # reloads a running broker
    if not mqtt_removed:
        broker.reload()  # a retry: make sure a running broker has dropped it too
    candidates = device_envelope_paths(session, device)
    removed = (
        ctx.repository.publish_envelopes({}, remove=candidates, now=ctx.now(), missing_ok=True)
        if candidates
        else []
    )
    answer = {
        "id": device_id,
        "revoked": True,
        "enrolled": record.enrolled,
        "already_revoked": record.already_revoked,
        "envelopes_removed": removed,
        "mqtt_credentials_removed": mqtt_removed,
    }
    details = {
        "device": device_id,
        "enrolled": record.enrolled,
        "already_revoked": record.already_revoked,
        "envelopes_removed": len(removed),
        "mqtt_credentials_removed": mqtt_removed,
    }
    return answer, details
