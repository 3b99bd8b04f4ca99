"""The agent's MQTT link: the pure hint scheduler, strict hint handling, reconnection."""

from __future__ import annotations

import logging
import random
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from components import require_executable, require_module
from edgeseal.device_agent.errors import AgentError
from edgeseal.device_agent.mqtt_link import (
    HintPolicy,
    HintScheduler,
    MQTTLink,
    MQTTLinkError,
    MQTTLinkSettings,
    read_password_file,
)
from edgeseal.ota_server.broker import SERVER_USERNAME
from edgeseal.sdk.mqtt_messages import (
    TELEMETRY_FILTER,
    MQTTEndpoint,
    ReleaseHint,
    Telemetry,
    parse_telemetry,
)
from mqtt_fixtures import WAIT_S, raw_client, running_broker

AT = "2025-01-31T12:00:00Z"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def hint(version: int = 5, family: str = "detector") -> ReleaseHint:
    return ReleaseHint(family, version, AT)


# --- HintScheduler (pure) ----------------------------------------------------------------------


def scheduler(clock: FakeClock, seed: int = 1) -> HintScheduler:
    return HintScheduler(
        HintPolicy(jitter_s=30.0, min_interval_s=60.0), clock=clock, rng=random.Random(seed)
    )


def test_hint_schedules_one_jittered_check() -> None:
    clock = FakeClock()
    sched = scheduler(clock)
    due = sched.offer(hint())
    assert due is not None and clock.now <= due <= clock.now + 30.0
    assert not sched.take_due()
    clock.now = due
    assert sched.take_due()
    assert not sched.take_due()


def test_jitter_spreads_a_fleet() -> None:
    dues = []
    for seed in range(50):
        clock = FakeClock()
        due = scheduler(clock, seed).offer(hint())
        assert due is not None
        dues.append(due - clock.now)
    assert min(dues) >= 0.0 and max(dues) <= 30.0
    assert max(dues) - min(dues) > 10.0


def test_a_burst_of_hints_is_one_check() -> None:
    clock = FakeClock()
    sched = scheduler(clock)
    first = sched.offer(hint(5))
    assert sched.offer(hint(6)) is None
    assert sched.offer(hint(7)) is None
    assert sched.due == first


def test_checks_are_debounced_by_min_interval() -> None:
    clock = FakeClock()
    sched = scheduler(clock)
    due = sched.offer(hint(5))
    assert due is not None
    clock.now = due
    assert sched.take_due()
    clock.now += 1.0
    again = sched.offer(hint(6))
    assert again is not None and again >= due + 60.0
    clock.now = due + 59.0
    assert not sched.take_due()
    clock.now = again
    assert sched.take_due()


def test_hint_for_the_running_version_or_older_is_ignored() -> None:
    sched = scheduler(FakeClock())
    assert sched.offer(hint(5), current_version=5) is None
    assert sched.offer(hint(4), current_version=5) is None
    assert sched.offer(hint(6), current_version=5) is not None


def test_a_poll_covers_a_pending_hint() -> None:
    clock = FakeClock()
    sched = scheduler(clock)
    assert sched.offer(hint()) is not None
    sched.note_check()
    clock.now += 1000.0
    assert not sched.take_due()


def test_scheduler_is_thread_safe() -> None:
    clock = FakeClock()
    sched = scheduler(clock)
    results: list[float | None] = []
    threads = [
        threading.Thread(target=lambda: results.append(sched.offer(hint()))) for _ in range(20)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r is not None for r in results) == 1


# --- settings ----------------------------------------------------------------------------------


def test_settings_refuse_ids_that_break_topics() -> None:
    endpoint = MQTTEndpoint("127.0.0.1", 1883)
    for device, family in (("a/b", "detector"), ("dev", "a+b"), ("x:y", "detector")):
        with pytest.raises(MQTTLinkError):
            MQTTLinkSettings(endpoint, device, "pw", family)
    assert issubclass(MQTTLinkError, AgentError)


def test_settings_from_config_read_the_password_file(tmp_path: Path) -> None:
    secret = tmp_path / "mqtt.password"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    settings = MQTTLinkSettings.from_config(
        url="mqtt://127.0.0.1:1884", device_id="dev-1", password_file=secret, family="detector"
    )
    assert settings.password == "s3cret"
    assert "s3cret" not in repr(settings)
    with pytest.raises(MQTTLinkError) as info:
        MQTTLinkSettings.from_config(
            url="http://x", device_id="dev-1", password_file=secret, family="detector"
        )
    assert info.value.field == "mqtt_url"


@pytest.mark.parametrize("content", [b"", b"\n", b"a\nb\n", b"x" * 2000])
def test_bad_password_files_are_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "pw"
    path.write_bytes(content)
    with pytest.raises(MQTTLinkError):
        read_password_file(path)
    with pytest.raises(MQTTLinkError, match="cannot read"):
        read_password_file(tmp_path / "missing")


# --- message handling without a broker --------------------------------------------------------


@dataclass
class FakeMessage:
    topic: str
    payload: bytes


def link_with(received: list[ReleaseHint]) -> MQTTLink:
    settings = MQTTLinkSettings(MQTTEndpoint("127.0.0.1", 1), "dev-1", "pw", "detector")
    return MQTTLink(settings, on_hint=received.append)


@pytest.mark.parametrize(
    ("topic", "payload", "why"),
    [
        ("edgeseal/v1/hints/other", hint(family="other").to_bytes(), "unexpected topic"),
        ("edgeseal/v1/hints/detector", hint(family="other").to_bytes(), "another family"),
        ("edgeseal/v1/hints/detector", b'{"SECRET": 1}', "invalid"),
        ("edgeseal/v1/hints/detector", b"SECRET" * 1000, "oversized"),
    ],
)
def test_bad_messages_are_ignored_and_logged_without_payload(
    caplog: pytest.LogCaptureFixture, topic: str, payload: bytes, why: str
) -> None:
    received: list[ReleaseHint] = []
    link = link_with(received)
    with caplog.at_level(logging.WARNING, logger="edgeseal.device_agent.mqtt_link"):
        link._handle_message(None, None, FakeMessage(topic, payload))  # type: ignore[arg-type]
    assert received == []
    assert why in caplog.text
    assert "SECRET" not in caplog.text


def test_a_failing_callback_does_not_escape(caplog: pytest.LogCaptureFixture) -> None:
    def explode(_hint: ReleaseHint) -> None:
        raise RuntimeError("boom")

    settings = MQTTLinkSettings(MQTTEndpoint("127.0.0.1", 1), "dev-1", "pw", "detector")
    link = MQTTLink(settings, on_hint=explode)
    message = FakeMessage("edgeseal/v1/hints/detector", hint().to_bytes())
    link._handle_message(None, None, message)  # type: ignore[arg-type]
    assert "hint callback failed" in caplog.text


def test_publish_before_start_is_dropped_not_raised() -> None:
    link = link_with([])
    assert link.publish_telemetry(Telemetry("dev-1", "detector", 1, "installed", AT)) is None


# --- reconnection with a real broker ----------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.mosquitto
def test_link_started_before_the_broker_connects_later_and_delivers_queued_telemetry() -> None:
    require_executable("mosquitto", "mosquitto")
    require_module("paho.mqtt", "paho-mqtt")
    port = _free_port()
    # The broker's credentials are made first (files only), the broker starts later.
    with running_broker(port=port) as broker:
        password = broker.add_device_credentials("dev-1")
        broker.stop()
        settings = MQTTLinkSettings(broker.endpoint, "dev-1", password, "detector")
        # random.Random(1) makes the first retry delay 1 s (randint(1, 2)).
        link = MQTTLink(settings, on_hint=lambda _h: None, rng=random.Random(1))
        link.start()  # nothing listens: returns at once, retries with backoff
        try:
            assert not link.connected
            mid = link.publish_cycle(
                _Result("installed", "detector", 3, None, AT), active_version=3
            )
            assert mid is not None  # queued while offline
            broker.start()
            with raw_client(broker.endpoint, SERVER_USERNAME, broker.server_password()) as server:
                assert server.connect() == "Success"
                assert server.subscribe(TELEMETRY_FILTER) == ["Granted QoS 1"]
                assert link.wait_connected(WAIT_S)
                ((topic, payload, _r),) = server.wait_messages(1)
            assert parse_telemetry(topic, payload).outcome == "installed"
        finally:
            link.stop()


@dataclass(frozen=True)
class _Result:
    outcome: str
    family: str
    version: int | None
    reason: str | None
    at: str
