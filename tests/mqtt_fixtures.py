"""A real mosquitto for tests, and a plain paho client to play server, device or attacker.

``running_broker()`` starts :class:`~edgeseal.ota_server.broker.MosquittoBroker`
on a free loopback port. Its directory is not under pytest's ``tmp_path``:
run as root, mosquitto drops to the user ``mosquitto``, which cannot enter
``/tmp/pytest-of-root`` (0700); a ``mkdtemp`` folder made searchable (0711)
is the smallest thing that works for root and non-root alike.

``RawClient`` is deliberately not edgeseal code: it is what anyone holding a
device's (or the server's) credentials could run, so the ACL tests use it.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from components import require_executable, require_module
from edgeseal.ota_server.broker import MosquittoBroker
from edgeseal.sdk.mqtt_messages import MQTTEndpoint

WAIT_S = 10.0


@contextlib.contextmanager
def running_broker(port: int = 0) -> Iterator[MosquittoBroker]:
    require_executable("mosquitto", "mosquitto")
    require_module("paho.mqtt", "paho-mqtt")
    base = Path(tempfile.mkdtemp(prefix="edgeseal-mqtt-"))
    base.chmod(0o711)
    broker = MosquittoBroker(base / "broker", port=port)
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()
        shutil.rmtree(base, ignore_errors=True)


class RawClient:
    """A paho MQTT 5 client with blocking helpers (tests only)."""

    def __init__(
        self, endpoint: MQTTEndpoint, username: str, password: str, client_id: str = ""
    ) -> None:
        from paho.mqtt import client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self._cond = threading.Condition()
        self.connect_reason: str | None = None
        self.acks: dict[int, str] = {}
        self.subacks: dict[int, list[str]] = {}
        self.messages: list[tuple[str, bytes, bool]] = []
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"raw-{username}",
            protocol=mqtt.MQTTv5,
        )
        self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.endpoint = endpoint

    # callbacks
    def _on_connect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        with self._cond:
            self.connect_reason = str(rc)
            self._cond.notify_all()

    def _on_publish(self, _c: Any, _u: Any, mid: int, rc: Any, _p: Any) -> None:
        with self._cond:
            self.acks[mid] = str(rc)
            self._cond.notify_all()

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, rcs: list[Any], _p: Any) -> None:
        with self._cond:
            self.subacks[mid] = [str(rc) for rc in rcs]
            self._cond.notify_all()

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        with self._cond:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))
            self._cond.notify_all()

    def _wait(self, predicate: Any) -> None:
        with self._cond:
            assert self._cond.wait_for(predicate, WAIT_S), "no answer from the broker"

    # blocking helpers
    def connect(self) -> str:
        """Connect and return the CONNACK reason ("Success" or why not)."""
        self.client.connect(self.endpoint.host, self.endpoint.port, keepalive=30)
        self.client.loop_start()
        self._wait(lambda: self.connect_reason is not None)
        assert self.connect_reason is not None
        return self.connect_reason

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> str:
        """Publish with QoS 1 and return the PUBACK reason ("Success", "Not authorized")."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        self._wait(lambda: info.mid in self.acks)
        return self.acks[info.mid]

    def subscribe(self, topic: str) -> list[str]:
        _rc, mid = self.client.subscribe(topic, qos=1)
        assert mid is not None
        self._wait(lambda: mid in self.subacks)
        return self.subacks[mid]

    def wait_messages(self, count: int) -> list[tuple[str, bytes, bool]]:
        self._wait(lambda: len(self.messages) >= count)
        return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextlib.contextmanager
def raw_client(
    endpoint: MQTTEndpoint, username: str, password: str, *, client_id: str = ""
) -> Iterator[RawClient]:
    client = RawClient(endpoint, username, password, client_id)
    try:
        yield client
    finally:
        client.close()
