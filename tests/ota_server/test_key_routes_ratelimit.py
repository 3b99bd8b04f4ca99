"""Rate limits of the attested key-release routes, through the real server.

The server runs with small limits from ``server.toml`` (:class:`ServerConfig`)
and an injected clock, so "after the window" is a step of the clock, not a
sleep. A device is enrolled over HTTP with :class:`enroll_helpers.SoftTpm` and
an attested release is published with the real release flow, so an allowed
challenge is a real 200, not just "anything but 429". One test drives the
device agent's own client to show it takes a 429 as "retry later".
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from enroll_helpers import EkCa, SoftTpm, pcr_values
from release_helpers import build_release, device_key_pem, publish
from server_fixture import Response, RunningServer, running_server

import edgeseal.ota_server.app as app_module
from edgeseal.ota_server.config import ServerConfig
from edgeseal.ota_server.ek_ca import add_ek_cas
from edgeseal.ota_server.service_errors import ConfigError
from edgeseal.sdk.key_release import CHALLENGE_PATH, RELEASE_PATH, KeyChallengeRequest

FAMILY = "detector"
MiB = 1024 * 1024


@dataclass
class Clock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class Env:
    server: RunningServer
    clock: Clock
    ca: EkCa
    operator: str

    def enrolled_device(self, device_id: str) -> None:
        _key, pem = device_key_pem()
        added = self.server.request(
            "POST",
            "/api/v1/devices",
            token=self.operator,
            body={
                "id": device_id,
                "public_key_pem": pem,
                "hardware_class": "rpi5",
                "channel": "stable",
            },
        )
        assert added.status == 201, added.body
        tpm = SoftTpm(self.ca)
        started = self.server.request(
            "POST", "/v1/enroll/start", token=self.operator, body=tpm.start_body(device_id)
        )
        assert started.status == 200, started.body
        body = tpm.finish_body(started.json(), pcr_values())
        finished = self.server.request("POST", "/v1/enroll/finish", token=self.operator, body=body)
        assert finished.status == 200, finished.body

    def publish_attested(self, version: int) -> None:
        rm = self.server.token("release-manager", FAMILY)
        release = build_release(self.server, FAMILY, version)
        release.meta = dataclasses.replace(release.meta, key_release="attested")
        release.body["custom"] = release.meta.to_custom()
        publish(self.server, release, rm)

    def ask(self, device_id: str, version: int = 1) -> Response:
        body = KeyChallengeRequest(device_id, FAMILY, version).encode()
        return self.server.request("POST", CHALLENGE_PATH, body=body)

    def audit(self, action: str) -> list[dict[str, Any]]:
        answer = self.server.request("GET", "/api/v1/audit", token=self.server.admin_token)
        assert answer.status == 200, answer.body
        body = answer.json()
        entries = body["entries"] if isinstance(body, dict) else body
        return [e for e in entries if e["action"] == action]


Start = Callable[..., Env]


@pytest.fixture
def start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Start]:
    """Start a server with the given key-release limits (requests a minute) and a fake clock."""
    clock = Clock(datetime.now(UTC).replace(microsecond=0))
    real_create_app = app_module.create_app

    def create_app(data_dir: Path, **kwargs: Any) -> Any:
        return real_create_app(data_dir, now=clock, **kwargs)

    monkeypatch.setattr(app_module, "create_app", create_app)  # running_server imports it late
    stack = contextlib.ExitStack()

    def started(*, per_device: int, per_address: int) -> Env:
        config = ServerConfig(
            bin_bits=4,
            max_upload=8 * MiB,
            refresh_interval=3600,
            key_release_per_device=per_device,
            key_release_per_address=per_address,
        )
        server = stack.enter_context(running_server(tmp_path / "server", config=config))
        ca = EkCa()
        add_ek_cas(server.data_dir / "ek-ca", ca.pem(), source="test")
        server.add_family(FAMILY)
        return Env(server, clock, ca, server.token("operator"))

    with stack:
        yield started


def error_of(answer: Response) -> tuple[int, str]:
    return answer.status, answer.json()["error"]["code"]


# --- per device ---------------------------------------------------------------------------------


def test_a_challenge_over_the_devices_limit_gets_429_and_works_again_later(start: Start) -> None:
    env = start(per_device=3, per_address=1000)
    env.enrolled_device("dev-1")
    env.enrolled_device("dev-2")
    env.publish_attested(1)
    assert [env.ask("dev-1").status for _ in range(3)] == [200, 200, 200]
    refused = env.ask("dev-1")
    assert error_of(refused) == (429, "rate-limited")
    assert refused.headers["retry-after"] == "20"  # 60 s / 3: one request's refill
    assert "at most 3 a minute" in refused.json()["error"]["message"]
    # another device is unaffected
    assert env.ask("dev-2").status == 200
    # one refill interval later, dev-1 gets one more challenge; then it waits again
    env.clock.advance(19)
    assert env.ask("dev-1").status == 429
    env.clock.advance(1)
    assert env.ask("dev-1").status == 200
    assert env.ask("dev-1").status == 429
    # a full minute refills the whole allowance (and no more)
    env.clock.advance(600)
    assert [env.ask("dev-1").status for _ in range(4)] == [200, 200, 200, 429]


def test_the_device_limit_holds_before_the_database_is_asked(start: Start) -> None:
    """An unknown device is limited too: the 429 comes before the 404 would."""
    env = start(per_device=2, per_address=1000)
    assert [env.ask("ghost").status for _ in range(3)] == [404, 404, 429]
    refused_challenges = env.audit("key.challenge")
    assert len(refused_challenges) == 2  # the limited request never reached the service


def test_a_flood_costs_one_audit_entry_a_minute(start: Start) -> None:
    env = start(per_device=2, per_address=1000)
    for _ in range(2):
        assert env.ask("ghost").status == 404
    statuses = [env.ask("ghost").status for _ in range(40)]
    assert statuses == [429] * 40
    (entry,) = env.audit("key.rate-limited")
    assert entry["outcome"] == "refused"
    assert entry["actor"] == "anonymous" and entry["target"] == "devices/ghost"
    assert entry["details"]["status"] == 429
    assert "more refused" not in entry["details"]["reason"]
    assert len(env.audit("key.challenge")) == 2
    # a minute later the flood goes on: one more entry, counting what was not audited
    env.clock.advance(60)
    statuses = [env.ask("ghost").status for _ in range(10)]
    assert statuses == [404, 404] + [429] * 8
    entries = env.audit("key.rate-limited")
    assert len(entries) == 2
    assert "39 more refused since the last entry" in entries[1]["details"]["reason"]


# --- per address --------------------------------------------------------------------------------


def test_the_address_limit_covers_both_routes_before_the_body_is_read(start: Start) -> None:
    env = start(per_device=1000, per_address=4)
    assert env.ask("ghost").status == 404
    assert env.ask("ghost").status == 404
    assert error_of(env.server.request("POST", RELEASE_PATH, body=b"{}"))[0] == 400
    assert error_of(env.server.request("POST", RELEASE_PATH, body=b"{}"))[0] == 400
    # over the limit: neither a malformed nor an oversize body is even looked at
    refused = env.server.request("POST", RELEASE_PATH, body=b"not json")
    assert error_of(refused) == (429, "rate-limited")
    assert refused.headers["retry-after"] == "15"  # 60 s / 4
    assert error_of(env.server.request("POST", CHALLENGE_PATH, body=b"x" * (2 * MiB))) == (
        429,
        "rate-limited",
    )
    assert env.ask("someone-else").status == 429  # the address, whatever the device
    (entry,) = env.audit("key.rate-limited")
    assert entry["target"] == "addresses/127.0.0.1"
    assert len(env.audit("key.challenge")) == 2
    assert len(env.audit("key.release")) == 2
    env.clock.advance(15)
    assert env.ask("ghost").status == 404


def test_zero_turns_the_limits_off(start: Start) -> None:
    env = start(per_device=0, per_address=0)
    assert {env.ask("ghost").status for _ in range(25)} == {404}
    assert env.audit("key.rate-limited") == []


def test_the_device_agents_client_takes_a_429_as_retry_later(start: Start) -> None:
    from edgeseal.device_agent.key_release import KeyReleaseClient, KeyReleaseUnavailableError

    env = start(per_device=1, per_address=1000)
    env.enrolled_device("dev-1")
    env.publish_attested(1)
    client = KeyReleaseClient(env.server.base_url)
    client.challenge(KeyChallengeRequest("dev-1", FAMILY, 1))
    with pytest.raises(KeyReleaseUnavailableError) as unavailable:
        client.challenge(KeyChallengeRequest("dev-1", FAMILY, 1))
    assert unavailable.value.status == 429


# --- server.toml --------------------------------------------------------------------------------


def test_the_limits_are_on_by_default_and_written_by_init() -> None:
    config = ServerConfig()
    assert (config.key_release_per_device, config.key_release_per_address) == (10, 60)
    text = config.to_toml()
    assert "key_release_per_device = 10" in text and "key_release_per_address = 60" in text
    assert ServerConfig.from_toml(text) == config
    # a server.toml written before these keys existed gets the defaults
    old = "\n".join(line for line in text.splitlines() if not line.startswith("key_release_"))
    assert ServerConfig.from_toml(old + "\n") == config


@pytest.mark.parametrize("value", [-1, 1_000_001, "10", 1.5, True])
@pytest.mark.parametrize("key", ["key_release_per_device", "key_release_per_address"])
def test_a_bad_limit_is_refused(key: str, value: object) -> None:
    with pytest.raises(ConfigError) as error:
        ServerConfig(**{key: value})  # type: ignore[arg-type]
    assert error.value.field == key
