"""Announce a published release on MQTT: a retained QoS 1 hint per family.

A hint is never trusted (DESIGN "Flows" 3): it only makes agents run their
normal TUF-verified update check sooner, and agents poll anyway. So publishing
a hint is best effort: :func:`publish_hint` connects, publishes
``edgeseal/v1/hints/<family>`` retained with QoS 1 (a device that connects
later still gets the newest hint), waits for the broker's PUBACK, and
disconnects - all within ``timeout_s``. Every failure (broker down, refused
credentials, "Not authorized", timeout) is logged and returned as a
:class:`HintResult`; nothing raises into the release flow.
"""

from __future__ import annotations

import logging
import secrets
import ssl
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from edgeseal.sdk.mqtt_messages import MQTTEndpoint, ReleaseHint

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class HintSettings:
    """Where and as whom the server publishes hints."""

    endpoint: MQTTEndpoint
    username: str
    password: str
    timeout_s: float = DEFAULT_TIMEOUT_S

    def __repr__(self) -> str:  # never print the password
        return f"HintSettings({self.endpoint.url!r}, username={self.username!r})"


@dataclass(frozen=True)
class HintResult:
    """What became of one hint: ``published`` or the reason it was not."""

    published: bool
    topic: str
    reason: str = ""


def release_hint(family: str, version: int, now: datetime | None = None) -> ReleaseHint:
    """The hint announcing ``family`` at ``version``, stamped ``now`` (UTC, seconds)."""
    when = (now or datetime.now(UTC)).astimezone(UTC)
    return ReleaseHint(family, version, when.strftime("%Y-%m-%dT%H:%M:%SZ"))


def publish_hint(settings: HintSettings, hint: ReleaseHint) -> HintResult:
    """Publish ``hint`` retained with QoS 1; never raises (see the module docstring)."""
    topic = hint.topic
    try:
        reason = _publish(settings, topic, hint.to_bytes())
    except Exception as exc:  # noqa: BLE001 - best effort by design: log, return, go on
        reason = f"{type(exc).__name__}: {exc}"
    if reason:
        log.warning(
            "release hint %s v%d not published to %s: %s",
            hint.family,
            hint.version,
            settings.endpoint.url,
            reason,
        )
        return HintResult(False, topic, reason)
    log.info("release hint %s v%d published on %s", hint.family, hint.version, topic)
    return HintResult(True, topic)


def publish_hint_in_background(settings: HintSettings, hint: ReleaseHint) -> threading.Thread:
    """:func:`publish_hint` on a daemon thread: the caller (a release being published
    inside a database transaction) never waits for the broker."""
    thread = threading.Thread(
        target=publish_hint, args=(settings, hint), name=f"hint-{hint.family}", daemon=True
    )
    thread.start()
    return thread


class _Outcome:
    """What the paho network thread saw, handed to the caller's thread."""

    def __init__(self) -> None:
        self.connected = threading.Event()
        self.acked = threading.Event()
        self.connect_reason = ""
        self.publish_reason = ""
        self.mid: int | None = None
        self.lock = threading.Lock()
        self.early_acks: dict[int, str] = {}


def _publish(settings: HintSettings, topic: str, payload: bytes) -> str:
    from paho.mqtt import client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    deadline = time.monotonic() + settings.timeout_s
    outcome = _Outcome()

    def on_connect(
        _c: mqtt.Client, _u: Any, _flags: Any, reason_code: Any, _props: Any = None
    ) -> None:
        outcome.connect_reason = "" if not reason_code.is_failure else str(reason_code)
        outcome.connected.set()

    def on_publish(_c: mqtt.Client, _u: Any, mid: int, reason_code: Any, _props: Any) -> None:
        text = "" if not reason_code.is_failure else str(reason_code)
        with outcome.lock:
            if outcome.mid is None:
                outcome.early_acks[mid] = text
                return
            if mid != outcome.mid:
                return
            outcome.publish_reason = text
        outcome.acked.set()

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"{settings.username}-hints-{secrets.token_hex(4)}",
        protocol=mqtt.MQTTv5,
    )
    client.username_pw_set(settings.username, settings.password)
    client.connect_timeout = max(0.1, settings.timeout_s)
    if settings.endpoint.tls:
        client.tls_set_context(ssl.create_default_context())
    client.on_connect = on_connect
    client.on_publish = on_publish
    client.connect(settings.endpoint.host, settings.endpoint.port, keepalive=30)
    client.loop_start()
    try:
        if not outcome.connected.wait(max(0.0, deadline - time.monotonic())):
            return "no answer from the broker in time"
        if outcome.connect_reason:
            return f"the broker refused the connection: {outcome.connect_reason}"
        info = client.publish(topic, payload, qos=1, retain=True)
        with outcome.lock:
            outcome.mid = info.mid
            if info.mid in outcome.early_acks:
                outcome.publish_reason = outcome.early_acks[info.mid]
                outcome.acked.set()
        if not outcome.acked.wait(max(0.0, deadline - time.monotonic())):
            return "the broker did not acknowledge the hint in time"
        if outcome.publish_reason:
            return f"the broker refused the hint: {outcome.publish_reason}"
        return ""
    finally:
        client.disconnect()
        client.loop_stop()


__all__ = [
    "HintResult",
    "HintSettings",
    "publish_hint",
    "publish_hint_in_background",
    "release_hint",
]
