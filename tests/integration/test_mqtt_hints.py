"""Release hints and telemetry through a real mosquitto started by MosquittoBroker.

The server publishes a hint with :func:`publish_hint`; a device's
:class:`MQTTLink` gets it in its callback. The broker's ACL (username = device
id, ``%u`` patterns) is exercised with a plain paho client holding a device's
credentials, i.e. what an attacker who extracted them could do: with MQTT 5 and
QoS 1 a denied publish is answered "Not authorized" (DESIGN "Verified facts").
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import pytest

from components import require_executable
from edgeseal.device_agent.mqtt_link import MQTTLink, MQTTLinkSettings
from edgeseal.ota_server.broker import SERVER_USERNAME, MosquittoBroker
from edgeseal.ota_server.hints import publish_hint, release_hint
from edgeseal.sdk.mqtt_messages import (
    TELEMETRY_FILTER,
    ReleaseHint,
    Telemetry,
    hint_topic,
    parse_telemetry,
    telemetry_topic,
)
from mqtt_fixtures import WAIT_S, raw_client, running_broker

pytestmark = pytest.mark.mosquitto
FAMILY = "detector"
#: PUBACK reason codes below 0x80 are successes; 0x10 means nobody subscribed yet.
ACCEPTED = ("Success", "No matching subscribers")


@pytest.fixture
def broker() -> Iterator[MosquittoBroker]:
    require_executable("mosquitto", "mosquitto")
    with running_broker() as running:
        yield running


class Hints:
    """Collects hints from the link's network thread."""

    def __init__(self) -> None:
        self.received: list[ReleaseHint] = []
        self.event = threading.Event()

    def __call__(self, hint: ReleaseHint) -> None:
        self.received.append(hint)
        self.event.set()


@pytest.fixture
def device(broker: MosquittoBroker) -> Iterator[tuple[MQTTLink, Hints]]:
    password = broker.add_device_credentials("dev-1")
    hints = Hints()
    link = MQTTLink(MQTTLinkSettings(broker.endpoint, "dev-1", password, FAMILY), on_hint=hints)
    link.start()
    try:
        assert link.wait_subscribed(WAIT_S), link.last_connect_error
        yield link, hints
    finally:
        link.stop()


def test_server_hint_reaches_the_device_callback(
    broker: MosquittoBroker, device: tuple[MQTTLink, Hints]
) -> None:
    _link, hints = device
    result = publish_hint(broker.hint_settings(), release_hint(FAMILY, 7))
    assert result.published, result.reason
    assert hints.event.wait(WAIT_S)
    assert [(h.family, h.version) for h in hints.received] == [(FAMILY, 7)]


def test_retained_hint_reaches_a_device_that_connects_later(broker: MosquittoBroker) -> None:
    assert publish_hint(broker.hint_settings(), release_hint(FAMILY, 3)).published
    password = broker.add_device_credentials("late-1")
    hints = Hints()
    link = MQTTLink(MQTTLinkSettings(broker.endpoint, "late-1", password, FAMILY), on_hint=hints)
    link.start()
    try:
        assert hints.event.wait(WAIT_S)
        assert hints.received[0].version == 3
    finally:
        link.stop()


def test_device_cannot_publish_a_hint(
    broker: MosquittoBroker, device: tuple[MQTTLink, Hints]
) -> None:
    _link, hints = device
    password = broker.add_device_credentials("dev-evil")
    forged = ReleaseHint(FAMILY, 99, "2025-01-01T00:00:00Z").to_bytes()
    with raw_client(broker.endpoint, "dev-evil", password) as evil:
        assert evil.connect() == "Success"
        assert evil.publish(hint_topic(FAMILY), forged, retain=True) == "Not authorized"
    # The server's next hint arrives, and it is the only one the device saw.
    assert publish_hint(broker.hint_settings(), release_hint(FAMILY, 8)).published
    assert hints.event.wait(WAIT_S)
    assert [h.version for h in hints.received] == [8]


def test_device_cannot_publish_telemetry_as_another_device(broker: MosquittoBroker) -> None:
    password = broker.add_device_credentials("dev-a")
    broker.add_device_credentials("dev-b")
    telemetry = Telemetry("dev-b", FAMILY, 1, "installed", "2025-01-01T00:00:00Z")
    with raw_client(broker.endpoint, "dev-a", password) as dev_a:
        assert dev_a.connect() == "Success"
        assert dev_a.publish(telemetry_topic("dev-b"), telemetry.to_bytes()) == "Not authorized"
        own = Telemetry("dev-a", FAMILY, 1, "installed", "2025-01-01T00:00:00Z")
        assert dev_a.publish(telemetry_topic("dev-a"), own.to_bytes()) in ACCEPTED


def test_client_id_of_another_device_does_not_grant_its_topic(broker: MosquittoBroker) -> None:
    """The ACL keys on the username (%u), not on the client id a client picks (%c)."""
    password = broker.add_device_credentials("dev-a")
    with raw_client(broker.endpoint, "dev-a", password, client_id="dev-b") as dev_a:
        assert dev_a.connect() == "Success"
        payload = Telemetry("dev-b", FAMILY, 1, "failed", "2025-01-01T00:00:00Z").to_bytes()
        assert dev_a.publish(telemetry_topic("dev-b"), payload) == "Not authorized"


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b'{"schema":1,"family":"detector","version":1.5,"SECRET":1}', id="malformed"),
        pytest.param(b"\xff\xfe not json SECRET", id="not-utf8"),
        pytest.param(
            b'{"schema":1,"family":"detector","version":1,"published_at":"'
            + b"S" * 5000
            + b'SECRET"}',
            id="oversized",
        ),
        pytest.param(
            b'{"schema":2,"family":"detector","version":1,"published_at":"2025-01-01T00:00:00Z"}',
            id="unknown-schema",
        ),
        pytest.param(ReleaseHint("other", 1, "2025-01-01T00:00:00Z").to_bytes(), id="other-family"),
    ],
)
def test_bad_hint_is_ignored_and_logged_without_payload(
    broker: MosquittoBroker,
    device: tuple[MQTTLink, Hints],
    caplog: pytest.LogCaptureFixture,
    payload: bytes,
) -> None:
    _link, hints = device
    caplog.set_level(logging.INFO, logger="edgeseal.device_agent.mqtt_link")
    with raw_client(broker.endpoint, SERVER_USERNAME, broker.server_password()) as server:
        assert server.connect() == "Success"
        assert server.publish(hint_topic(FAMILY), payload) in ACCEPTED
    # QoS 1 from one publisher on one topic keeps its order: once this valid hint
    # arrives, the bad one before it has been handled.
    assert publish_hint(broker.hint_settings(), release_hint(FAMILY, 5)).published
    assert hints.event.wait(WAIT_S)
    assert [h.version for h in hints.received] == [5]
    ignored = [r for r in caplog.records if "ignored" in r.getMessage()]
    assert len(ignored) == 1
    assert ignored[0].levelno == logging.WARNING
    assert "SECRET" not in caplog.text


def test_wrong_password_is_refused(broker: MosquittoBroker) -> None:
    broker.add_device_credentials("dev-1")
    with raw_client(broker.endpoint, "dev-1", "not-the-password") as client:
        assert client.connect() in ("Not authorized", "Bad user name or password")
    hints: list[ReleaseHint] = []
    link = MQTTLink(
        MQTTLinkSettings(broker.endpoint, "dev-1", "not-the-password", FAMILY),
        on_hint=hints.append,
    )
    link.start()  # returns at once; the refusal is logged and retried with backoff
    try:
        deadline = time.monotonic() + WAIT_S
        while not link.last_connect_error and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not link.connected
    finally:
        link.stop()
    assert link.last_connect_error in ("Not authorized", "Bad user name or password")


def test_anonymous_and_revoked_devices_are_refused(broker: MosquittoBroker) -> None:
    with raw_client(broker.endpoint, "", "") as anonymous:
        anonymous.client.username_pw_set(None)
        assert anonymous.connect() != "Success"
    password = broker.add_device_credentials("dev-r")
    assert broker.remove_device_credentials("dev-r")
    with raw_client(broker.endpoint, "dev-r", password) as revoked:
        assert revoked.connect() != "Success"


def test_telemetry_reaches_a_server_side_subscriber(
    broker: MosquittoBroker, device: tuple[MQTTLink, Hints]
) -> None:
    link, _hints = device
    with raw_client(broker.endpoint, SERVER_USERNAME, broker.server_password()) as server:
        assert server.connect() == "Success"
        assert server.subscribe(TELEMETRY_FILTER) == ["Granted QoS 1"]

        class Result:
            outcome = "refused"
            family = FAMILY
            version = 9
            reason = "health check failed:\nlatency over budget"
            at = "2025-02-01T10:00:00Z"

        mid = link.publish_cycle(Result(), active_version=8)
        assert mid is not None
        assert link.wait_acked(mid, WAIT_S) == ""
        ((topic, payload, _retain),) = server.wait_messages(1)
    telemetry = parse_telemetry(topic, payload)
    assert telemetry.device == "dev-1"
    assert (telemetry.outcome, telemetry.active_version, telemetry.attempted_version) == (
        "refused",
        8,
        9,
    )
    assert telemetry.reason == "health check failed: latency over budget"


def test_server_cannot_be_impersonated_by_a_device_username(broker: MosquittoBroker) -> None:
    from edgeseal.ota_server.broker import BrokerError

    with pytest.raises(BrokerError):
        broker.add_device_credentials(SERVER_USERNAME)
