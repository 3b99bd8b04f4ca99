"""The agent's MQTT link: release hints in, fleet telemetry out.

A hint is never trusted (DESIGN "Flows" 3). All it can do is make the agent
run its normal TUF-verified update check sooner; a forged, replayed or
withheld hint changes nothing but timing, and the poll loop runs anyway. So
the link is small and strict:

* :class:`MQTTLink` - a paho MQTT 5 client (username = device id) on its own
  network thread. It subscribes to ``edgeseal/v1/hints/<family>`` (QoS 1),
  parses what arrives with :class:`~edgeseal.sdk.mqtt_messages.ReleaseHint`
  (bounded, strict) and calls ``on_hint(hint)``; anything else is ignored and
  logged with its size and the reason, never its bytes. It publishes
  :class:`~edgeseal.sdk.mqtt_messages.Telemetry` with QoS 1 after each update
  cycle, queued (bounded) while the broker is away. It reconnects with
  exponential backoff (randomized start, so a fleet does not reconnect in
  lock step). No method blocks on the network: :meth:`MQTTLink.start` returns
  at once, a publish only enqueues.
* :class:`HintScheduler` - pure (clock and rng injected): turns hints into at
  most one jittered check per ``min_interval_s``, and none for a version the
  device already runs. The daemon calls :meth:`HintScheduler.offer` from
  ``on_hint`` and :meth:`HintScheduler.take_due` in its loop.

``on_hint`` runs on paho's network thread: it must only record (the scheduler
does, under a lock) and return.
"""

from __future__ import annotations

import logging
import random
import secrets
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from edgeseal.device_agent.errors import AgentError
from edgeseal.sdk.errors import FormatError
from edgeseal.sdk.mqtt_messages import (
    MAX_PAYLOAD_BYTES,
    MQTTEndpoint,
    ReleaseHint,
    Telemetry,
    clip_reason,
    hint_topic,
    parse_mqtt_url,
    telemetry_topic,
)

if TYPE_CHECKING:
    from paho.mqtt.client import Client, MQTTMessage

log = logging.getLogger(__name__)

#: A password file holds one line; anything larger is not one.
MAX_PASSWORD_FILE_BYTES = 1024
#: Largest packet the broker may send us (MQTT 5 Maximum Packet Size): a 4 KiB
#: payload plus topic and properties. The broker drops larger ones for us.
MAX_INCOMING_PACKET_BYTES = 8 * 1024
_MAX_TRACKED_ACKS = 64


class MQTTLinkError(AgentError):
    """The MQTT link is misconfigured (URL, password file)."""


def _agent_version() -> str:
    from edgeseal.sdk import __version__

    return __version__


@dataclass(frozen=True)
class MQTTLinkSettings:
    """The ``[mqtt]`` settings of one agent (the password comes from a file at the edge)."""

    endpoint: MQTTEndpoint
    device_id: str
    password: str = field(repr=False)
    family: str
    keepalive_s: int = 60
    reconnect_min_s: int = 1
    reconnect_max_s: int = 300
    max_queued_telemetry: int = 32
    connect_timeout_s: float = 10.0
    agent_version: str = field(default_factory=_agent_version)

    def __post_init__(self) -> None:
        try:
            hint_topic(self.family)
            telemetry_topic(self.device_id)
        except FormatError as exc:
            raise MQTTLinkError(exc.message, field=exc.field) from None
        if not 1 <= self.reconnect_min_s <= self.reconnect_max_s:
            raise MQTTLinkError("need 1 <= reconnect_min_s <= reconnect_max_s", field="reconnect")

    @classmethod
    def from_config(
        cls, *, url: str, device_id: str, password_file: Path, family: str
    ) -> MQTTLinkSettings:
        try:
            endpoint = parse_mqtt_url(url)
        except FormatError as exc:
            raise MQTTLinkError(exc.message, field="mqtt_url") from None
        return cls(endpoint, device_id, read_password_file(password_file), family)


def read_password_file(path: Path) -> str:
    """The broker password: the first line of ``path`` (at most 1 KiB)."""
    try:
        with Path(path).open("rb") as handle:
            data = handle.read(MAX_PASSWORD_FILE_BYTES + 1)
            mode = Path(path).stat().st_mode
    except OSError as exc:
        raise MQTTLinkError(
            f"cannot read the MQTT password file {path}: {exc.strerror}",
            field="mqtt_password_file",
        ) from None
    if len(data) > MAX_PASSWORD_FILE_BYTES:
        raise MQTTLinkError(f"{path} is too large for a password file", field="mqtt_password_file")
    password = data.decode("utf-8", errors="replace").strip()
    if not password or "\n" in password:
        raise MQTTLinkError(f"{path} must hold one password line", field="mqtt_password_file")
    if mode & 0o077:
        log.warning("the MQTT password file %s is readable by others (chmod 600 it)", path)
    return password


# --- debounce and jitter (pure) --------------------------------------------------------------


@dataclass(frozen=True)
class HintPolicy:
    """A hinted check runs ``uniform(0, jitter_s)`` after the hint (so a fleet does not
    hit the server at once), and at most once per ``min_interval_s``."""

    jitter_s: float = 30.0
    min_interval_s: float = 60.0


class HintScheduler:
    """Hints -> at most one pending, jittered, debounced check. No I/O; thread-safe."""

    def __init__(
        self,
        policy: HintPolicy = HintPolicy(),
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.policy = policy
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not a secret
        self._lock = threading.Lock()
        self._due: float | None = None
        self._last_check: float | None = None

    def offer(self, hint: ReleaseHint, *, current_version: int | None = None) -> float | None:
        """Schedule a check for ``hint``; returns when it is due, or None when not needed
        (the device runs that version or newer, or a check is already pending)."""
        with self._lock:
            if current_version is not None and hint.version <= current_version:
                return None
            if self._due is not None:
                return None
            now = self._clock()
            earliest = now
            if self._last_check is not None:
                earliest = max(now, self._last_check + self.policy.min_interval_s)
            self._due = earliest + self._rng.uniform(0.0, self.policy.jitter_s)
            return self._due

    def take_due(self) -> bool:
        """True (once) when the pending check is due; the caller runs it now."""
        with self._lock:
            now = self._clock()
            if self._due is None or now < self._due:
                return False
            self._due = None
            self._last_check = now
            return True

    def note_check(self) -> None:
        """A check starts for another reason (poll, check-now): it covers pending hints."""
        with self._lock:
            self._due = None
            self._last_check = self._clock()

    @property
    def due(self) -> float | None:
        with self._lock:
            return self._due


# --- the link --------------------------------------------------------------------------------


class CycleResult(Protocol):
    """What :class:`~edgeseal.device_agent.update_outcome.UpdateResult` offers telemetry."""

    @property
    def outcome(self) -> str: ...
    @property
    def family(self) -> str: ...
    @property
    def version(self) -> int | None: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def at(self) -> str: ...


def _utc_now_text() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class MQTTLink:
    """See the module docstring. ``start()`` once, ``stop()`` once."""

    def __init__(
        self,
        settings: MQTTLinkSettings,
        *,
        on_hint: Callable[[ReleaseHint], None],
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self._on_hint = on_hint
        self._rng = rng or random.Random()  # noqa: S311 - reconnect spread, not a secret
        self._hint_topic = hint_topic(settings.family)
        self._telemetry_topic = telemetry_topic(settings.device_id)
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._lock = threading.Lock()
        self._acks: OrderedDict[int, str] = OrderedDict()
        self._ack_event = threading.Condition(self._lock)
        self.last_connect_error = ""
        self._client: Client | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background (returns at once); reconnects until :meth:`stop`."""
        from paho.mqtt import client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        s = self.settings
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"{s.device_id}-{secrets.token_hex(4)}",
            protocol=mqtt.MQTTv5,
        )
        client.username_pw_set(s.device_id, s.password)
        client.connect_timeout = s.connect_timeout_s
        client.reconnect_delay_set(
            min_delay=self._rng.randint(s.reconnect_min_s, 2 * s.reconnect_min_s),
            max_delay=s.reconnect_max_s,
        )
        client.max_queued_messages_set(s.max_queued_telemetry)
        if s.endpoint.tls:
            client.tls_set_context(ssl.create_default_context())
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_subscribe = self._handle_subscribe
        client.on_message = self._handle_message
        client.on_publish = self._handle_publish
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.MaximumPacketSize = MAX_INCOMING_PACKET_BYTES
        client.connect_async(
            s.endpoint.host, s.endpoint.port, keepalive=s.keepalive_s, properties=props
        )
        client.loop_start()
        self._client = client
        log.info("MQTT link to %s as %s started", s.endpoint.url, s.device_id)

    def stop(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        client.disconnect()
        client.loop_stop()
        self._connected.clear()
        self._subscribed.clear()
        log.info("MQTT link stopped")

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def wait_subscribed(self, timeout: float) -> bool:
        """True once the hint subscription is acknowledged (after each (re)connect)."""
        return self._subscribed.wait(timeout)

    # -- telemetry ------------------------------------------------------------------------

    def publish_telemetry(self, telemetry: Telemetry) -> int | None:
        """Queue ``telemetry`` (QoS 1); returns its message id, or None when dropped."""
        client = self._client
        if client is None:
            log.warning("telemetry dropped: the MQTT link is not started")
            return None
        if telemetry.device != self.settings.device_id:
            log.warning("telemetry dropped: it names another device")
            return None
        from paho.mqtt.client import MQTT_ERR_NO_CONN, MQTT_ERR_SUCCESS

        info = client.publish(self._telemetry_topic, telemetry.to_bytes(), qos=1)
        if info.rc not in (MQTT_ERR_SUCCESS, MQTT_ERR_NO_CONN):  # NO_CONN: queued
            log.warning("telemetry dropped: %s", info.rc)
            return None
        return info.mid

    def publish_cycle(self, result: CycleResult, *, active_version: int | None) -> int | None:
        """Telemetry for one update cycle; never raises (a report must not stop the agent)."""
        try:
            telemetry = Telemetry(
                device=self.settings.device_id,
                family=result.family,
                active_version=active_version,
                attempted_version=result.version,
                outcome=result.outcome,
                reason=clip_reason(result.reason),
                at=result.at or _utc_now_text(),
                agent_version=self.settings.agent_version,
            )
            return self.publish_telemetry(telemetry)
        except Exception:  # the update loop goes on whatever the report does
            log.exception("cannot publish the telemetry of an update cycle")
            return None

    def wait_acked(self, mid: int, timeout: float) -> str | None:
        """The broker's answer to publish ``mid``: "" accepted, else its reason; None: no
        answer in time. For tests and diagnostics; the agent never waits."""
        deadline = time.monotonic() + timeout
        with self._ack_event:
            while mid not in self._acks:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._ack_event.wait(left)
            return self._acks[mid]

    # -- paho callbacks (network thread) --------------------------------------------------

    def _handle_connect(
        self, client: Client, _u: Any, _flags: Any, reason_code: Any, _props: Any
    ) -> None:
        if reason_code.is_failure:
            self.last_connect_error = str(reason_code)
            log.warning(
                "MQTT broker %s refused %s: %s (retrying with backoff)",
                self.settings.endpoint.url,
                self.settings.device_id,
                reason_code,
            )
            return
        self.last_connect_error = ""
        self._connected.set()
        client.subscribe(self._hint_topic, qos=1)
        log.info("MQTT link connected to %s", self.settings.endpoint.url)

    def _handle_disconnect(
        self, _c: Client, _u: Any, _flags: Any, reason_code: Any, _props: Any
    ) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        self._subscribed.clear()
        if was:
            log.warning("MQTT link lost (%s); reconnecting with backoff", reason_code)

    def _handle_subscribe(
        self, _c: Client, _u: Any, _mid: int, reason_codes: list[Any], _props: Any
    ) -> None:
        if any(rc.is_failure for rc in reason_codes):
            log.warning(
                "MQTT broker refused the hint subscription %s: %s",
                self._hint_topic,
                ", ".join(str(rc) for rc in reason_codes),
            )
            return
        self._subscribed.set()

    def _handle_publish(self, _c: Client, _u: Any, mid: int, reason_code: Any, _props: Any) -> None:
        text = str(reason_code) if reason_code.is_failure else ""
        if text:
            log.warning("the broker refused telemetry (message %d): %s", mid, text)
        with self._ack_event:
            self._acks[mid] = text
            while len(self._acks) > _MAX_TRACKED_ACKS:
                self._acks.popitem(last=False)
            self._ack_event.notify_all()

    def _handle_message(self, _c: Client, _u: Any, message: MQTTMessage) -> None:
        payload = message.payload
        size = len(payload)
        if message.topic != self._hint_topic:
            log.warning("ignored a message on an unexpected topic (%d bytes)", size)
            return
        if size > MAX_PAYLOAD_BYTES:
            log.warning("ignored an oversized hint (%d bytes > %d)", size, MAX_PAYLOAD_BYTES)
            return
        try:
            hint = ReleaseHint.from_bytes(payload)
        except FormatError as exc:
            log.warning("ignored an invalid hint (%d bytes): %s", size, exc.diagnostics())
            return
        if hint.family != self.settings.family:
            log.warning("ignored a hint for another family on %s", self._hint_topic)
            return
        log.info("release hint: %s v%d (checking sooner)", hint.family, hint.version)
        try:
            self._on_hint(hint)
        except Exception:  # a bad callback must not kill the network thread
            log.exception("the hint callback failed")


__all__ = [
    "CycleResult",
    "HintPolicy",
    "HintScheduler",
    "MQTTLink",
    "MQTTLinkError",
    "MQTTLinkSettings",
    "read_password_file",
]
