"""MQTT topics and payloads: release hints and fleet telemetry.

DESIGN: "MQTT carries release hints and fleet telemetry". A hint is never
trusted: it only makes an agent run its normal TUF-verified update check
sooner, so nothing in a hint is used for a trust decision. Telemetry is what a
device *says* about itself; the broker's ACL (username = device id, ``%u``
patterns) makes sure a device can speak only under its own topic, and
:func:`parse_telemetry` checks that the payload names the same device.

Topics (version 1)::

    edgeseal/v1/hints/<family>                 server -> devices, retained, QoS 1
    edgeseal/v1/devices/<device_id>/telemetry  device -> server, QoS 1

Payloads are compact JSON objects carrying ``"schema": 1``, parsed strictly
(STYLE 3, 6): at most :data:`MAX_PAYLOAD_BYTES` bytes (checked before
decoding), UTF-8, no duplicate keys, no floats/NaN, exactly the documented
keys, every value bounded. Errors are :class:`~edgeseal.sdk.errors.FormatError`
and never quote the payload: a receiver logs them as they are.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from edgeseal.sdk import strict_json
from edgeseal.sdk.errors import FormatError
from edgeseal.sdk.hazmat.format import MAX_MODEL_VERSION, NAME_RULE, is_valid_name
from edgeseal.sdk.releases import DEVICE_ID_RULE, is_valid_device_id

__all__ = [
    "HINTS_FILTER",
    "MAX_PAYLOAD_BYTES",
    "MAX_REASON_CHARS",
    "OUTCOMES",
    "SCHEMA_VERSION",
    "TELEMETRY_FILTER",
    "MQTTEndpoint",
    "ReleaseHint",
    "Telemetry",
    "clip_reason",
    "device_from_telemetry_topic",
    "hint_topic",
    "parse_mqtt_url",
    "parse_telemetry",
    "telemetry_topic",
]

SCHEMA_VERSION = 1
#: Largest payload either message may have; checked before any decoding.
MAX_PAYLOAD_BYTES = 4096
MAX_REASON_CHARS = 512
MAX_AGENT_VERSION_CHARS = 32
TOPIC_ROOT = "edgeseal/v1"
HINTS_FILTER = f"{TOPIC_ROOT}/hints/#"
TELEMETRY_FILTER = f"{TOPIC_ROOT}/devices/+/telemetry"
#: The outcomes of an update cycle (``edgeseal.device_agent.updater``) plus an operator rollback.
OUTCOMES = ("no-update", "installed", "refused", "failed", "rolled-back")
TIME_RULE = "UTC to the second, e.g. 2025-01-31T12:00:00Z"
DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}

_TIME_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z", re.ASCII)
_AGENT_VERSION_RE = re.compile(r"[0-9A-Za-z.+-]{1,32}", re.ASCII)
_HINT_KEYS = frozenset({"schema", "family", "version", "published_at"})
_TELEMETRY_KEYS = frozenset(
    {
        "schema",
        "device",
        "family",
        "active_version",
        "attempted_version",
        "outcome",
        "reason",
        "at",
        "agent_version",
    }
)


# --- topics ----------------------------------------------------------------------------------


def hint_topic(family: str) -> str:
    """``edgeseal/v1/hints/<family>``."""
    return f"{TOPIC_ROOT}/hints/{_family(family, 'family')}"


def telemetry_topic(device_id: str) -> str:
    """``edgeseal/v1/devices/<device_id>/telemetry``."""
    return f"{TOPIC_ROOT}/devices/{_device(device_id, 'device')}/telemetry"


def device_from_telemetry_topic(topic: str) -> str:
    """The device id a telemetry topic names, or :class:`FormatError`."""
    parts = topic.split("/") if isinstance(topic, str) else []
    if len(parts) != 5 or parts[:3] != ["edgeseal", "v1", "devices"] or parts[4] != "telemetry":
        raise FormatError("not an edgeseal v1 telemetry topic", field="topic")
    return _device(parts[3], "topic")


# --- payloads --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReleaseHint:
    """ "A release of ``family`` at ``version`` was published" - a reason to check, no more."""

    family: str
    version: int
    published_at: str

    def __post_init__(self) -> None:
        _family(self.family, "family")
        _int(self.version, 0, MAX_MODEL_VERSION, "version")
        _time(self.published_at, "published_at")

    @property
    def topic(self) -> str:
        return hint_topic(self.family)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "family": self.family,
            "version": self.version,
            "published_at": self.published_at,
        }

    def to_bytes(self) -> bytes:
        return _dump(self.to_json())

    @classmethod
    def from_json(cls, value: object) -> ReleaseHint:
        body = _object(value, _HINT_KEYS, "hint")
        return cls(
            family=_family(body["family"], "family"),
            version=_int(body["version"], 0, MAX_MODEL_VERSION, "version"),
            published_at=_time(body["published_at"], "published_at"),
        )

    @classmethod
    def from_bytes(cls, data: bytes | bytearray) -> ReleaseHint:
        return cls.from_json(_load(data, "hint"))


@dataclass(frozen=True)
class Telemetry:
    """What a device reports after an update cycle (or an operator rollback)."""

    device: str
    family: str
    active_version: int | None
    outcome: str
    at: str
    reason: str | None = None
    attempted_version: int | None = None
    agent_version: str = "0.0.0"

    def __post_init__(self) -> None:
        _device(self.device, "device")
        _family(self.family, "family")
        _optional_int(self.active_version, "active_version")
        _optional_int(self.attempted_version, "attempted_version")
        _outcome(self.outcome)
        _time(self.at, "at")
        _reason(self.reason)
        _agent_version(self.agent_version)

    @property
    def topic(self) -> str:
        return telemetry_topic(self.device)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "device": self.device,
            "family": self.family,
            "active_version": self.active_version,
            "attempted_version": self.attempted_version,
            "outcome": self.outcome,
            "reason": self.reason,
            "at": self.at,
            "agent_version": self.agent_version,
        }

    def to_bytes(self) -> bytes:
        data = _dump(self.to_json())
        if len(data) > MAX_PAYLOAD_BYTES:  # pragma: no cover - the field bounds keep it far below
            raise FormatError(f"telemetry exceeds {MAX_PAYLOAD_BYTES} bytes", field="telemetry")
        return data

    @classmethod
    def from_json(cls, value: object) -> Telemetry:
        body = _object(value, _TELEMETRY_KEYS, "telemetry")
        return cls(
            device=_device(body["device"], "device"),
            family=_family(body["family"], "family"),
            active_version=_optional_int(body["active_version"], "active_version"),
            attempted_version=_optional_int(body["attempted_version"], "attempted_version"),
            outcome=_outcome(body["outcome"]),
            reason=_reason(body["reason"]),
            at=_time(body["at"], "at"),
            agent_version=_agent_version(body["agent_version"]),
        )

    @classmethod
    def from_bytes(cls, data: bytes | bytearray) -> Telemetry:
        return cls.from_json(_load(data, "telemetry"))


def parse_telemetry(topic: str, payload: bytes | bytearray) -> Telemetry:
    """Telemetry received on ``topic``; the payload must name the topic's device."""
    device = device_from_telemetry_topic(topic)
    telemetry = Telemetry.from_bytes(payload)
    if telemetry.device != device:
        raise FormatError("telemetry names another device than its topic", field="device")
    return telemetry


def clip_reason(text: str | None) -> str | None:
    """A free-text reason made acceptable for :class:`Telemetry` (printable, bounded)."""
    if text is None:
        return None
    cleaned = "".join(c if c.isprintable() else " " for c in text)
    return cleaned[:MAX_REASON_CHARS]


# --- where the broker is ---------------------------------------------------------------------


@dataclass(frozen=True)
class MQTTEndpoint:
    """A broker address: ``mqtt://host:port`` (plain) or ``mqtts://host:port`` (TLS)."""

    host: str
    port: int
    tls: bool = False

    @property
    def url(self) -> str:
        scheme = "mqtts" if self.tls else "mqtt"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"


def parse_mqtt_url(url: str) -> MQTTEndpoint:
    """``mqtt://host[:port]`` or ``mqtts://host[:port]``; nothing else (no path, no userinfo)."""
    if not isinstance(url, str) or len(url) > 512:
        raise FormatError("an MQTT URL must be a string of at most 512 characters", field="url")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise FormatError(f"not a valid MQTT URL: {url!r}", field="url") from None
    if parts.scheme not in DEFAULT_PORTS:
        raise FormatError("an MQTT URL starts with mqtt:// or mqtts://", field="url")
    if not parts.hostname or parts.username or parts.password:
        raise FormatError("an MQTT URL names a host and no credentials", field="url")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise FormatError("an MQTT URL has no path, query or fragment", field="url")
    return MQTTEndpoint(
        host=parts.hostname,
        port=port if port is not None else DEFAULT_PORTS[parts.scheme],
        tls=parts.scheme == "mqtts",
    )


# --- strict parsing helpers (messages never quote the offending value) -----------------------


def _load(data: bytes | bytearray, what: str) -> object:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise FormatError(f"a {what} payload must be bytes", field=what)
    if len(data) > MAX_PAYLOAD_BYTES:
        raise FormatError(f"a {what} payload is at most {MAX_PAYLOAD_BYTES} bytes", field=what)
    try:
        return strict_json.loads(bytes(data))
    except strict_json.StrictJSONError:
        raise FormatError(f"a {what} payload is not strict UTF-8 JSON", field=what) from None


def _dump(body: Mapping[str, Any]) -> bytes:
    return json.dumps(
        body, separators=(",", ":"), sort_keys=True, allow_nan=False, ensure_ascii=False
    ).encode("utf-8")


def _object(value: object, keys: frozenset[str], where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise FormatError(f"a {where} must be a JSON object", field=where)
    if "schema" in value and value["schema"] != SCHEMA_VERSION:
        raise FormatError(
            f"{where} schema is not {SCHEMA_VERSION} (the one this edgeseal reads)", field="schema"
        )
    if value.keys() != keys:
        missing = sorted(keys - value.keys())
        extra = len(value.keys() - keys)
        raise FormatError(
            f"a {where} needs exactly the keys {', '.join(sorted(keys))} "
            f"(missing: {', '.join(missing) or 'none'}; {extra} unknown)",
            field=where,
        )
    if type(value["schema"]) is not int:
        raise FormatError(f"{where} schema must be the integer {SCHEMA_VERSION}", field="schema")
    return value


def _int(value: object, low: int, high: int, where: str) -> int:
    if type(value) is not int or not low <= value <= high:
        raise FormatError(f"{where} must be an integer from {low} to {high}", field=where)
    return value


def _optional_int(value: object, where: str) -> int | None:
    return None if value is None else _int(value, 0, MAX_MODEL_VERSION, where)


def _family(value: object, where: str) -> str:
    if not is_valid_name(value):
        raise FormatError(f"{where} is not a valid family name ({NAME_RULE})", field=where)
    assert isinstance(value, str)
    return value


def _device(value: object, where: str) -> str:
    if not is_valid_device_id(value):
        raise FormatError(f"{where} is not a valid device id ({DEVICE_ID_RULE})", field=where)
    assert isinstance(value, str)
    return value


def _time(value: object, where: str) -> str:
    if not isinstance(value, str) or _TIME_RE.fullmatch(value) is None:
        raise FormatError(f"{where} must be a time {TIME_RULE}", field=where)
    try:
        dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        raise FormatError(f"{where} is not a calendar time ({TIME_RULE})", field=where) from None
    return value


def _outcome(value: object) -> str:
    if not isinstance(value, str) or value not in OUTCOMES:
        raise FormatError(f"outcome must be one of {', '.join(OUTCOMES)}", field="outcome")
    return value


def _reason(value: object) -> str | None:
    if value is None:
        return None
    if (
        not isinstance(value, str)
        or len(value) > MAX_REASON_CHARS
        or not all(c.isprintable() for c in value)
    ):
        raise FormatError(
            f"reason must be null or printable text of at most {MAX_REASON_CHARS} characters",
            field="reason",
        )
    return value


def _agent_version(value: object) -> str:
    if not isinstance(value, str) or _AGENT_VERSION_RE.fullmatch(value) is None:
        raise FormatError(
            f"agent_version must be 1-{MAX_AGENT_VERSION_CHARS} characters of "
            "A-Z, a-z, 0-9, '.', '+', '-'",
            field="agent_version",
        )
    return value
