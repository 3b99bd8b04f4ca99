"""The server's telemetry subscriber through a real mosquitto (MosquittoBroker, the
broker ``edgeseal-server run`` starts, in the server's data directory).

Devices publish with a plain paho client (what a device, or whoever extracted its
broker password, can run), using the sdk's :class:`Telemetry` builder and a
password issued by :func:`issue_mqtt_credentials`. Every dropped message is
counted under its reason and changes no row.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from release_helpers import device_key_pem
from server_fixture import RunningServer, running_server

from components import require_executable, require_module
from edgeseal.ota_server.app import create_app
from edgeseal.ota_server.broker import SERVER_USERNAME, MosquittoBroker
from edgeseal.ota_server.config import ServerConfig
from edgeseal.ota_server.context import ServerContext
from edgeseal.ota_server.db import DeviceReportRow
from edgeseal.ota_server.devices import issue_mqtt_credentials
from edgeseal.ota_server.revocation import mark_revoked
from edgeseal.ota_server.telemetry import (
    MALFORMED,
    MISMATCH,
    REVOKED,
    STORED,
    UNKNOWN_DEVICE,
    ReportRejected,
    TelemetrySettings,
    TelemetrySubscriber,
    parse_report,
)
from edgeseal.sdk.mqtt_messages import MAX_PAYLOAD_BYTES, Telemetry, telemetry_topic
from mqtt_fixtures import WAIT_S, raw_client

pytestmark = pytest.mark.mosquitto
FAMILY = "detector"
NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


def telemetry(device_id: str, *, outcome: str = "installed", version: int = 8) -> Telemetry:
    return Telemetry(
        device=device_id,
        family=FAMILY,
        active_version=version,
        outcome=outcome,
        reason="health check failed" if outcome == "failed" else None,
        attempted_version=version + 1 if outcome == "failed" else None,
        at="2030-01-02T03:00:00Z",
    )


# -- pure parsing ---------------------------------------------------------------------------


def test_parse_report_checks_topic_payload_and_size() -> None:
    good = telemetry("cam-1")
    assert parse_report(telemetry_topic("cam-1"), good.to_bytes()) == good
    cases = [
        (telemetry_topic("cam-2"), good.to_bytes(), MISMATCH),
        (telemetry_topic("cam-1"), b"{not json", MALFORMED),
        (telemetry_topic("cam-1"), b" " * (MAX_PAYLOAD_BYTES + 1), MALFORMED),
        ("edgeseal/v1/devices/cam-1/other", good.to_bytes(), MALFORMED),
        (
            telemetry_topic("cam-1"),
            good.to_bytes().replace(b'"schema":1', b'"schema":2'),
            MALFORMED,
        ),
    ]
    for topic, payload, outcome in cases:
        with pytest.raises(ReportRejected) as rejected:
            parse_report(topic, payload)
        assert rejected.value.outcome == outcome


# -- a real broker ------------------------------------------------------------------------------


class Fleet:
    def __init__(self, server: RunningServer, broker: MosquittoBroker, ctx: ServerContext) -> None:
        self.server = server
        self.broker = broker
        self.ctx = ctx

    def settings(self) -> TelemetrySettings:
        return TelemetrySettings(
            self.broker.endpoint, SERVER_USERNAME, self.broker.server_password()
        )

    def add_device(self, device_id: str) -> str:
        """Add ``device_id`` and return its broker password (as enrollment would)."""
        body = {
            "id": device_id,
            "public_key_pem": device_key_pem()[1],
            "hardware_class": "rpi5",
            "channel": "stable",
        }
        answer = self.server.request(
            "POST", "/api/v1/devices", token=self.server.admin_token, body=body
        )
        assert answer.status == 201, answer.body
        with self.ctx.db.session() as session:
            return issue_mqtt_credentials(self.ctx, session, device_id).password

    def row(self, device_id: str) -> DeviceReportRow | None:
        with self.ctx.db.session() as session:
            return session.get(DeviceReportRow, device_id)


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    require_executable("mosquitto", "mosquitto")
    require_module("paho.mqtt", "paho-mqtt")
    # Not under tmp_path: run as root, mosquitto drops to its own user (mqtt_fixtures.py).
    base = Path(tempfile.mkdtemp(prefix="edgeseal-telemetry-"))
    base.chmod(0o711)
    config = ServerConfig(bin_bits=4, refresh_interval=3600, mqtt_port=1883)
    try:
        with running_server(base / "server", config=config) as server:
            broker = MosquittoBroker(server.data_dir / "broker", port=0)
            ctx = ServerContext.open(server.data_dir, now=lambda: NOW)
            broker.start()
            try:
                yield Fleet(server, broker, ctx)
            finally:
                broker.stop()
                ctx.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def subscriber(fleet: Fleet) -> Iterator[TelemetrySubscriber]:
    sub = TelemetrySubscriber(fleet.settings(), fleet.ctx.db, clock=fleet.ctx.now)
    sub.start()
    try:
        assert sub.wait_subscribed(WAIT_S)
        yield sub
    finally:
        sub.stop()


def publish(fleet: Fleet, username: str, password: str, topic: str, payload: bytes) -> None:
    with raw_client(fleet.broker.endpoint, username, password) as device:
        assert device.connect() == "Success"
        assert device.publish(topic, payload) == "Success"


def test_device_report_is_stored_and_replaced(
    fleet: Fleet, subscriber: TelemetrySubscriber
) -> None:
    password = fleet.add_device("cam-1")
    first = telemetry("cam-1", version=7)
    publish(fleet, "cam-1", password, first.topic, first.to_bytes())
    assert subscriber.wait_count(STORED, 1, WAIT_S)
    second = telemetry("cam-1", outcome="failed", version=7)
    publish(fleet, "cam-1", password, second.topic, second.to_bytes())
    assert subscriber.wait_count(STORED, 2, WAIT_S)
    row = fleet.row("cam-1")
    assert row is not None
    assert (row.family, row.version, row.attempted_version, row.outcome, row.reason) == (
        FAMILY,
        7,
        8,
        "failed",
        "health check failed",
    )
    assert row.reported_at == "2030-01-02T03:00:00Z"
    assert row.received_at == "2030-01-02T03:04:05Z"


def test_malformed_mismatched_unknown_and_revoked_are_dropped(
    fleet: Fleet, subscriber: TelemetrySubscriber
) -> None:
    password = fleet.add_device("cam-1")
    fleet.add_device("cam-2")
    topic = telemetry_topic("cam-1")
    publish(fleet, "cam-1", password, topic, b'{"schema":1,"device":"cam-1"}')
    publish(fleet, "cam-1", password, topic, b"\xff" * 100)
    assert subscriber.wait_count(MALFORMED, 2, WAIT_S)
    # A device may write only its own topic (broker ACL); its payload naming another is dropped.
    publish(fleet, "cam-1", password, topic, telemetry("cam-2").to_bytes())
    assert subscriber.wait_count(MISMATCH, 1, WAIT_S)
    # Broker credentials the fleet database does not know (a broker out of step with it).
    ghost = fleet.broker.add_device_credentials("ghost")
    publish(fleet, "ghost", ghost, telemetry_topic("ghost"), telemetry("ghost").to_bytes())
    assert subscriber.wait_count(UNKNOWN_DEVICE, 1, WAIT_S)
    # Revoked in the database while its broker password still works (revoking through
    # the API also removes the password, so it could not publish at all).
    with fleet.ctx.db.session() as session:
        mark_revoked(session, "cam-1")
    publish(fleet, "cam-1", password, topic, telemetry("cam-1").to_bytes())
    assert subscriber.wait_count(REVOKED, 1, WAIT_S)
    counts = subscriber.counts()
    assert counts[STORED] == 0 and counts[MALFORMED] == 2
    assert fleet.row("cam-1") is None and fleet.row("cam-2") is None


def test_reconnects_after_the_broker_restarts(
    fleet: Fleet, subscriber: TelemetrySubscriber
) -> None:
    password = fleet.add_device("cam-1")
    fleet.broker.stop()
    deadline = time.monotonic() + WAIT_S
    while subscriber.subscribed:
        assert time.monotonic() < deadline, "the subscriber did not notice the broker left"
        time.sleep(0.01)
    fleet.broker.start()  # same port
    assert subscriber.wait_subscribed(WAIT_S)
    report = telemetry("cam-1")
    publish(fleet, "cam-1", password, report.topic, report.to_bytes())
    assert subscriber.wait_count(STORED, 1, WAIT_S)


def test_the_app_runs_the_subscriber_while_it_serves(fleet: Fleet) -> None:
    """``run`` hands the broker's settings to the app; its lifespan starts and stops
    the subscriber."""
    password = fleet.add_device("cam-1")
    app = create_app(fleet.server.data_dir, telemetry_settings=fleet.settings())

    async def serve() -> None:
        async with app.router.lifespan_context(app):
            sub = app.state.telemetry
            assert isinstance(sub, TelemetrySubscriber)
            assert await asyncio.to_thread(sub.wait_subscribed, WAIT_S)
            report = telemetry("cam-1")
            await asyncio.to_thread(
                publish, fleet, "cam-1", password, report.topic, report.to_bytes()
            )
            assert await asyncio.to_thread(sub.wait_count, STORED, 1, WAIT_S)

    asyncio.run(serve())
    assert fleet.row("cam-1") is not None
