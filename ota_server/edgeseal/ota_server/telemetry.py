"""Fleet telemetry in: the server's subscriber to ``edgeseal/v1/devices/+/telemetry``.

Devices publish :class:`~edgeseal.sdk.mqtt_messages.Telemetry` after every
update cycle. ``edgeseal-server run`` (with a broker) starts a
:class:`TelemetrySubscriber`: a paho MQTT 5 client logged in as the server's
own broker user (the ACL lets it read every device's telemetry), QoS 1, on its
own network thread, reconnecting with exponential backoff
(:data:`RECONNECT_MIN_S` to :data:`RECONNECT_MAX_S`) and resuming its
persistent session (:data:`SESSION_EXPIRY_S`), so reports sent while the
server restarts are delivered when it is back.

Each message goes through two steps:

1. :func:`parse_report` (pure): the sdk's strict parser, bounded to
   :data:`~edgeseal.sdk.mqtt_messages.MAX_PAYLOAD_BYTES` before decoding; the
   device id in the topic must equal the one in the payload. The broker's ACL
   already restricts each device to its own topic by username; checking both
   costs nothing and holds even behind a broker configured by someone else.
2. :func:`store_report`: one read (is the device known, is it revoked) and one
   upsert of its row in ``device_reports`` - the latest report per device.

Every message is counted under exactly one :data:`OUTCOMES` key; a dropped one
is logged with its size and reason, never its bytes, and nothing a device
sends can stop the subscriber. Telemetry is what a device *says*: it is shown
to people (``GET /api/v1/fleet``) and never used for a trust decision.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from edgeseal.ota_server.db import (
    Database,
    DeviceAttestationRow,
    DeviceReportRow,
    DeviceRow,
    isotime,
)
from edgeseal.sdk.errors import FormatError
from edgeseal.sdk.mqtt_messages import (
    MAX_PAYLOAD_BYTES,
    TELEMETRY_FILTER,
    MQTTEndpoint,
    Telemetry,
    device_from_telemetry_topic,
)

if TYPE_CHECKING:
    from paho.mqtt.client import Client, MQTTMessage

log = logging.getLogger(__name__)

#: Reconnect backoff bounds (seconds): paho doubles the delay from min up to max.
RECONNECT_MIN_S = 1
RECONNECT_MAX_S = 60
#: How long the broker keeps the subscriber's session (and queues QoS 1 reports)
#: while the server is away.
SESSION_EXPIRY_S = 3600
KEEPALIVE_S = 30
#: The broker's packets are at most this large (its own limit is 16 KiB).
MAX_INCOMING_PACKET_BYTES = 16 * 1024

STORED = "stored"
MALFORMED = "malformed"
MISMATCH = "device-mismatch"
UNKNOWN_DEVICE = "unknown-device"
REVOKED = "revoked"
ERROR = "error"
#: What became of a message; :attr:`TelemetrySubscriber.counts` counts each.
OUTCOMES = (STORED, MALFORMED, MISMATCH, UNKNOWN_DEVICE, REVOKED, ERROR)


class ReportRejected(Exception):  # noqa: N818 - a drop reason, not a crash
    """A telemetry message was dropped; ``outcome`` is one of :data:`OUTCOMES`."""

    def __init__(self, outcome: str, reason: str) -> None:
        super().__init__(reason)
        self.outcome = outcome
        self.reason = reason


@dataclass(frozen=True)
class TelemetrySettings:
    """Where and as whom the server reads telemetry (its own broker user)."""

    endpoint: MQTTEndpoint
    username: str
    password: str

    def __repr__(self) -> str:  # never print the password
        return f"TelemetrySettings({self.endpoint.url!r}, username={self.username!r})"


def parse_report(topic: str, payload: bytes | bytearray) -> Telemetry:
    """The report ``payload`` on ``topic``, or :class:`ReportRejected` (pure, bounded)."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ReportRejected(MALFORMED, f"payload exceeds {MAX_PAYLOAD_BYTES} bytes")
    try:
        device = device_from_telemetry_topic(topic)
        report = Telemetry.from_bytes(payload)
    except FormatError as exc:
        raise ReportRejected(MALFORMED, exc.diagnostics()) from None
    if report.device != device:
        raise ReportRejected(MISMATCH, "the payload names another device than its topic")
    return report


def store_report(session: Session, report: Telemetry, *, received_at: datetime) -> None:
    """Upsert ``report`` as its device's latest; :class:`ReportRejected` for an unknown or
    revoked device."""
    found = session.execute(
        select(DeviceRow.id, DeviceAttestationRow.revoked)
        .outerjoin(DeviceAttestationRow, DeviceAttestationRow.device_id == DeviceRow.id)
        .where(DeviceRow.id == report.device)
    ).first()
    if found is None:
        raise ReportRejected(UNKNOWN_DEVICE, "unknown device")
    if found.revoked:
        raise ReportRejected(REVOKED, "the device is revoked")
    values = {
        "family": report.family,
        "version": report.active_version,
        "attempted_version": report.attempted_version,
        "outcome": report.outcome,
        "reason": report.reason,
        "reported_at": report.at,
        "received_at": isotime(received_at),
    }
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(DeviceReportRow).values(device_id=report.device, **values)
    session.execute(statement.on_conflict_do_update(index_elements=["device_id"], set_=values))


def ingest(db: Database, topic: str, payload: bytes | bytearray, *, received_at: datetime) -> str:
    """Parse and store one message; returns its outcome (one of :data:`OUTCOMES`), never
    raises for anything a device can send."""
    try:
        report = parse_report(topic, payload)
        with db.session() as session:
            store_report(session, report, received_at=received_at)
    except ReportRejected as exc:
        log.warning("telemetry dropped (%s, %d bytes): %s", exc.outcome, len(payload), exc.reason)
        return exc.outcome
    except Exception:
        log.exception("telemetry not stored (%d bytes): internal error", len(payload))
        return ERROR
    return STORED


class TelemetrySubscriber:
    """The server's telemetry reader on its own paho network thread (module docstring).

    :meth:`start` returns at once; :meth:`stop` disconnects and joins the thread.
    ``clock`` stamps ``received_at``.
    """

    def __init__(
        self,
        settings: TelemetrySettings,
        db: Database,
        *,
        clock: Callable[[], datetime],
        client_id: str | None = None,
    ) -> None:
        self.settings = settings
        self._db = db
        self._clock = clock
        self._client_id = client_id or f"{settings.username}-telemetry"
        self._lock = threading.Condition()
        self._counts: Counter[str] = Counter()
        self._subscribed = threading.Event()
        self._client: Client | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        from paho.mqtt import client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        if self._client is not None:
            return
        s = self.settings
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self._client_id, protocol=mqtt.MQTTv5
        )
        client.username_pw_set(s.username, s.password)
        client.reconnect_delay_set(min_delay=RECONNECT_MIN_S, max_delay=RECONNECT_MAX_S)
        if s.endpoint.tls:
            client.tls_set_context(ssl.create_default_context())
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_subscribe = self._handle_subscribe
        client.on_message = self._handle_message
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.MaximumPacketSize = MAX_INCOMING_PACKET_BYTES
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        client.connect_async(
            s.endpoint.host,
            s.endpoint.port,
            keepalive=KEEPALIVE_S,
            clean_start=False,
            properties=props,
        )
        client.loop_start()
        self._client = client
        log.info("telemetry subscriber for %s started", s.endpoint.url)

    def stop(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        client.disconnect()
        client.loop_stop()
        self._subscribed.clear()
        log.info("telemetry subscriber stopped")

    @property
    def subscribed(self) -> bool:
        """Connected and subscribed now (False from a lost connection until the next)."""
        return self._subscribed.is_set()

    def wait_subscribed(self, timeout: float) -> bool:
        """True once the subscription is acknowledged (after each (re)connect)."""
        return self._subscribed.wait(timeout)

    # -- counters -----------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """How many messages ended in each of :data:`OUTCOMES` since :meth:`start`."""
        with self._lock:
            return {outcome: self._counts[outcome] for outcome in OUTCOMES}

    def wait_count(self, outcome: str, count: int, timeout: float) -> bool:
        """True once ``count`` messages ended in ``outcome`` (tests, diagnostics)."""
        with self._lock:
            return self._lock.wait_for(lambda: self._counts[outcome] >= count, timeout)

    # -- paho callbacks (network thread) ------------------------------------------------------

    def _handle_connect(
        self, client: Client, _u: Any, _flags: Any, reason_code: Any, _props: Any
    ) -> None:
        if reason_code.is_failure:
            log.warning("the broker refused the telemetry subscriber: %s (retrying)", reason_code)
            return
        client.subscribe(TELEMETRY_FILTER, qos=1)
        log.info("telemetry subscriber connected to %s", self.settings.endpoint.url)

    def _handle_disconnect(
        self, _c: Client, _u: Any, _flags: Any, reason_code: Any, _props: Any
    ) -> None:
        was = self._subscribed.is_set()
        self._subscribed.clear()
        if was and self._client is not None:
            log.warning("telemetry subscriber lost the broker (%s); reconnecting", reason_code)

    def _handle_subscribe(
        self, _c: Client, _u: Any, _mid: int, reason_codes: list[Any], _props: Any
    ) -> None:
        if any(rc.is_failure for rc in reason_codes):
            log.warning(
                "the broker refused the telemetry subscription: %s",
                ", ".join(str(rc) for rc in reason_codes),
            )
            return
        self._subscribed.set()

    def _handle_message(self, _c: Client, _u: Any, message: MQTTMessage) -> None:
        try:
            outcome = ingest(self._db, message.topic, message.payload, received_at=self._clock())
        except Exception:  # never let a message kill paho's network thread
            log.exception("telemetry message not handled")
            outcome = ERROR
        with self._lock:
            self._counts[outcome] += 1
            self._lock.notify_all()


__all__ = [
    "OUTCOMES",
    "ReportRejected",
    "TelemetrySettings",
    "TelemetrySubscriber",
    "ingest",
    "parse_report",
    "store_report",
]
