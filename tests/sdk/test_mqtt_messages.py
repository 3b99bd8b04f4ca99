"""The MQTT payloads: strict, bounded, versioned; errors never quote the payload."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeseal.sdk.errors import FormatError
from edgeseal.sdk.mqtt_messages import (
    MAX_PAYLOAD_BYTES,
    MAX_REASON_CHARS,
    OUTCOMES,
    MQTTEndpoint,
    ReleaseHint,
    Telemetry,
    clip_reason,
    device_from_telemetry_topic,
    hint_topic,
    parse_mqtt_url,
    parse_telemetry,
    telemetry_topic,
)

AT = "2025-01-31T12:00:00Z"
HINT = {"schema": 1, "family": "detector", "version": 7, "published_at": AT}
TELEMETRY = {
    "schema": 1,
    "device": "pi-0042",
    "family": "detector",
    "active_version": 6,
    "attempted_version": 7,
    "outcome": "refused",
    "reason": "health check failed",
    "at": AT,
    "agent_version": "0.1.0",
}


def encode(body: Any) -> bytes:
    return json.dumps(body).encode()


def test_hint_round_trip_and_topic() -> None:
    hint = ReleaseHint.from_bytes(encode(HINT))
    assert hint == ReleaseHint("detector", 7, AT)
    assert hint.topic == hint_topic("detector") == "edgeseal/v1/hints/detector"
    assert ReleaseHint.from_bytes(hint.to_bytes()) == hint
    assert json.loads(hint.to_bytes()) == HINT


def test_telemetry_round_trip_and_topic() -> None:
    telemetry = parse_telemetry("edgeseal/v1/devices/pi-0042/telemetry", encode(TELEMETRY))
    assert telemetry.outcome == "refused" and telemetry.active_version == 6
    assert telemetry.topic == telemetry_topic("pi-0042")
    assert Telemetry.from_bytes(telemetry.to_bytes()) == telemetry
    assert json.loads(telemetry.to_bytes()) == TELEMETRY


def test_telemetry_must_name_the_device_of_its_topic() -> None:
    with pytest.raises(FormatError, match="another device"):
        parse_telemetry(telemetry_topic("pi-0043"), encode(TELEMETRY))


@pytest.mark.parametrize(
    "topic",
    [
        "edgeseal/v1/devices/+/telemetry",
        "edgeseal/v1/devices/a/b/telemetry",
        "edgeseal/v2/devices/a/telemetry",
        "edgeseal/v1/devices/a/status",
        "edgeseal/v1/devices//telemetry",
    ],
)
def test_bad_telemetry_topics_are_refused(topic: str) -> None:
    with pytest.raises(FormatError):
        device_from_telemetry_topic(topic)


@pytest.mark.parametrize("name", ["a/b", "#", "+", "", "A" * 200, "x:y"])
def test_topic_builders_refuse_wildcards_and_separators(name: str) -> None:
    with pytest.raises(FormatError):
        telemetry_topic(name)
    with pytest.raises(FormatError):
        hint_topic(name)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"schema": 2}, "schema"),
        ({"schema": True}, "schema"),
        ({"schema": "1"}, "schema"),
        ({"version": -1}, "version"),
        ({"version": True}, "version"),
        ({"version": 2**63}, "version"),
        ({"family": "Detector"}, "family"),
        ({"family": "../x"}, "family"),
        ({"published_at": "2025-13-01T00:00:00Z"}, "published_at"),
        ({"published_at": "2025-01-01T00:00:00+00:00"}, "published_at"),
        ({"published_at": 1700000000}, "published_at"),
        ({"extra": 1}, "hint"),
    ],
)
def test_hint_fields_are_checked(change: dict[str, Any], field: str) -> None:
    with pytest.raises(FormatError) as info:
        ReleaseHint.from_bytes(encode({**HINT, **change}))
    assert info.value.field == field


def test_missing_key_is_named() -> None:
    body = dict(HINT)
    del body["version"]
    with pytest.raises(FormatError, match="missing: version"):
        ReleaseHint.from_bytes(encode(body))


@pytest.mark.parametrize(
    "raw",
    [
        b'{"schema":1,"schema":1,"family":"detector","version":7,"published_at":"'
        + AT.encode()
        + b'"}',
        b'{"schema":1,"family":"detector","version":7.0,"published_at":"' + AT.encode() + b'"}',
        b'{"schema":1,"family":"detector","version":NaN,"published_at":"' + AT.encode() + b'"}',
        b"\xef\xbb\xbf" + encode(HINT),  # a BOM is not JSON
        b"[" * 3000 + b"]" * 3000,
        b"",
        b"null",
        b"[]",
        encode(HINT)[:-1],
    ],
)
def test_hint_payloads_outside_strict_json_are_refused(raw: bytes) -> None:
    with pytest.raises(FormatError):
        ReleaseHint.from_bytes(raw)


def test_oversized_payload_is_refused_before_decoding() -> None:
    big = encode({**HINT, "published_at": "x" * MAX_PAYLOAD_BYTES})
    with pytest.raises(FormatError, match=f"at most {MAX_PAYLOAD_BYTES} bytes"):
        ReleaseHint.from_bytes(big)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"outcome": "pwned"}, "outcome"),
        ({"reason": "a\nb"}, "reason"),
        ({"reason": "r" * (MAX_REASON_CHARS + 1)}, "reason"),
        ({"device": "a/b"}, "device"),
        ({"active_version": "6"}, "active_version"),
        ({"agent_version": ""}, "agent_version"),
        ({"at": "yesterday"}, "at"),
    ],
)
def test_telemetry_fields_are_checked(change: dict[str, Any], field: str) -> None:
    with pytest.raises(FormatError) as info:
        Telemetry.from_bytes(encode({**TELEMETRY, **change}))
    assert info.value.field == field


def test_largest_telemetry_fits_the_bound() -> None:
    telemetry = Telemetry(
        device="d" * 64,
        family="f" * 64,
        active_version=2**63 - 1,
        attempted_version=2**63 - 1,
        outcome="rolled-back",
        reason="\U0001f600" * MAX_REASON_CHARS,
        at=AT,
        agent_version="9" * 32,
    )
    data = telemetry.to_bytes()
    assert len(data) <= MAX_PAYLOAD_BYTES
    assert Telemetry.from_bytes(data) == telemetry


def test_clip_reason_makes_any_text_acceptable() -> None:
    reason = clip_reason("line one\nline two\x00" + "x" * 2000)
    assert reason is not None and len(reason) == MAX_REASON_CHARS
    Telemetry("d", "f", None, "failed", AT, reason=reason)
    assert clip_reason(None) is None


def test_errors_never_quote_the_payload() -> None:
    for change in ({"family": "SECRETVALUE"}, {"published_at": "SECRETVALUE"}, {"SECRETKEY": 1}):
        with pytest.raises(FormatError) as info:
            ReleaseHint.from_bytes(encode({**HINT, **change}))
        assert "SECRET" not in info.value.diagnostics()


@pytest.mark.parametrize(
    ("url", "endpoint"),
    [
        ("mqtt://127.0.0.1:1884", MQTTEndpoint("127.0.0.1", 1884)),
        ("mqtt://broker.example.com", MQTTEndpoint("broker.example.com", 1883)),
        ("mqtts://broker.example.com", MQTTEndpoint("broker.example.com", 8883, tls=True)),
        ("mqtt://[::1]:1883/", MQTTEndpoint("::1", 1883)),
    ],
)
def test_mqtt_urls(url: str, endpoint: MQTTEndpoint) -> None:
    assert parse_mqtt_url(url) == endpoint
    assert parse_mqtt_url(endpoint.url) == endpoint


@pytest.mark.parametrize(
    "url",
    ["http://x", "mqtt://", "mqtt://u:p@host", "mqtt://host/topic", "mqtt://host:99999", "x" * 600],
)
def test_bad_mqtt_urls(url: str) -> None:
    with pytest.raises(FormatError):
        parse_mqtt_url(url)


# --- property-based: untrusted bytes only ever parse or raise FormatError ---------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=MAX_PAYLOAD_BYTES + 16))
def test_arbitrary_bytes_parse_or_raise_format_error(data: bytes) -> None:
    for parse in (ReleaseHint.from_bytes, Telemetry.from_bytes):
        with contextlib.suppress(FormatError):
            parse(data)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from([*HINT, *TELEMETRY, "other"]),
        json_values,
        max_size=10,
    )
)
def test_arbitrary_objects_parse_or_raise_format_error(body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    for parse in (ReleaseHint.from_bytes, Telemetry.from_bytes):
        try:
            message = parse(data)
        except FormatError:
            continue
        assert parse(message.to_bytes()) == message


@settings(max_examples=200, deadline=None)
@given(
    st.from_regex(r"[a-z0-9][a-z0-9._-]{0,63}", fullmatch=True),
    st.integers(min_value=0, max_value=2**63 - 1),
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", fullmatch=True),
    st.sampled_from(OUTCOMES),
    st.one_of(st.none(), st.text(max_size=600)),
)
def test_valid_messages_round_trip(
    family: str, version: int, device: str, outcome: str, reason: str | None
) -> None:
    hint = ReleaseHint(family, version, AT)
    assert ReleaseHint.from_bytes(hint.to_bytes()) == hint
    telemetry = Telemetry(device, family, version, outcome, AT, reason=clip_reason(reason))
    data = telemetry.to_bytes()
    assert len(data) <= MAX_PAYLOAD_BYTES
    assert parse_telemetry(telemetry_topic(device), data) == telemetry
