"""Enrollment issues the device's MQTT credentials (DESIGN flow 1) when the server runs a broker.

Through the real server and a real mosquitto on the server's broker directory
(what ``edgeseal-server run`` starts): the credentials ``/v1/enroll/finish``
answers log in to it, re-enrollment rotates them, ``device mqtt-credentials``
still rotates them by hand, and the password is nowhere but in the answer -
not in the audit log, not in a log record, not in any file of the data
directory. Service-level tests cover the broker URL rules and a failure that
must leave the enrollment unrecorded.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from enroll_helpers import EkCa, SoftTpm, pcr_values
from release_helpers import device_key_pem
from server_fixture import RunningServer, new_signer, running_server
from sqlalchemy.orm import Session

from components import require_executable, require_module
from edgeseal.ota_server.audit import AuditLog
from edgeseal.ota_server.broker import MosquittoBroker
from edgeseal.ota_server.cli import main as server_main
from edgeseal.ota_server.config import ServerConfig
from edgeseal.ota_server.context import ServerContext
from edgeseal.ota_server.db import DeviceAttestationRow
from edgeseal.ota_server.devices import MQTTCredentialsUnavailableError, add_device
from edgeseal.ota_server.ek_ca import add_ek_cas
from edgeseal.ota_server.enrollment import Enrollment
from edgeseal.ota_server.initialize import Officers, initialize
from edgeseal.ota_server.service_errors import ConfigError
from edgeseal.sdk.mqtt_messages import hint_topic, parse_mqtt_url
from mqtt_fixtures import raw_client

BASELINE = pcr_values()
FAMILY = "detector"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _officers() -> Officers:
    root, targets = new_signer(), new_signer()
    return Officers(
        root_keys=[root.public_key],
        root_threshold=1,
        root_signers=[root],
        targets_keys=[targets.public_key],
        targets_threshold=1,
        targets_signers=[targets],
    )


# --- the broker URL devices are given (pure) ---------------------------------------------------


def test_device_mqtt_url_rules() -> None:
    assert ServerConfig(mqtt_port=1884).device_mqtt_url("ignored") == "mqtt://127.0.0.1:1884"
    lan = ServerConfig(mqtt_port=1883, mqtt_bind="10.0.0.5")
    assert lan.device_mqtt_url(None) == "mqtt://10.0.0.5:1883"
    wildcard = ServerConfig(mqtt_port=1883, mqtt_bind="0.0.0.0")
    assert wildcard.device_mqtt_url("ota.example.com") == "mqtt://ota.example.com:1883"
    assert wildcard.device_mqtt_url("fd00::1") == "mqtt://[fd00::1]:1883"
    for unusable in (None, "", "bad host/x"):
        with pytest.raises(ConfigError, match="set mqtt_public_url"):
            wildcard.device_mqtt_url(unusable)
    public = ServerConfig(
        mqtt_port=1883, mqtt_bind="0.0.0.0", mqtt_public_url="mqtts://broker.example.com:8883"
    )
    assert public.device_mqtt_url("ota.example.com") == "mqtts://broker.example.com:8883"
    assert ServerConfig.from_toml(public.to_toml()) == public
    assert 'mqtt_public_url = ""' in ServerConfig().to_toml()  # init documents the key
    for bad in ("http://x", "mqtt://user:pw@x", "mqtt://x/path", 5):
        with pytest.raises(ConfigError, match="mqtt_public_url"):
            ServerConfig(mqtt_public_url=bad)  # type: ignore[arg-type]


# --- the service (no broker process: the password file is what changes) -----------------------


def _context(tmp_path: Path, config: ServerConfig) -> tuple[ServerContext, EkCa]:
    data = tmp_path / "server"
    initialize(data, _officers(), config=config)
    ctx = ServerContext.open(data)
    body = {
        "id": "dev-1",
        "public_key_pem": device_key_pem()[1],
        "hardware_class": "rpi5",
        "channel": "stable",
    }

    def work(session: Session) -> tuple[Any, dict[str, Any]]:
        return add_device(ctx, session, None, body)

    ctx.mutate(actor="test", action="device.add", target="dev-1", work=work)
    ca = EkCa()
    add_ek_cas(ctx.data.ek_ca, ca.pem(), source="test")
    return ctx, ca


def _enroll(ctx: ServerContext, tpm: SoftTpm, **kwargs: Any) -> Any:
    enrollment = Enrollment(ctx, actor="test-operator")
    challenge = enrollment.start("dev-1", tpm.ek_certificate, tpm.ak_public)
    secret = tpm.activate_credential(challenge.credential_blob, challenge.encrypted_secret)
    quote = tpm.quote(challenge.nonce, BASELINE)
    return enrollment.finish(challenge.challenge_id, secret, BASELINE, quote, **kwargs)


def test_enrollment_issues_and_rotates_credentials(tmp_path: Path) -> None:
    config = ServerConfig(bin_bits=1, mqtt_port=1883, mqtt_public_url="mqtts://mq.example.com")
    ctx, ca = _context(tmp_path, config)
    try:
        tpm = SoftTpm(ca)
        first = _enroll(ctx, tpm)
        assert first.mqtt is not None and first.mqtt.url == "mqtts://mq.example.com"
        assert first.mqtt.username == "dev-1" and len(first.mqtt.password) >= 32
        assert first.mqtt.password not in repr(first) + repr(first.mqtt)
        broker = MosquittoBroker(ctx.data.broker)
        assert broker.device_ids() == ["dev-1"]
        second = _enroll(ctx, tpm)  # re-enrollment rotates the password
        assert second.mqtt.password != first.mqtt.password
        stored = broker.password_file.read_text()
        with ctx.db.session() as session:
            entries = [e.as_json() for e in AuditLog.entries(session)]
        finishes = [e for e in entries if e["action"] == "enroll.finish"]
        assert [e["details"]["mqtt_credentials_issued"] for e in finishes] == [True, True]
        for password in (first.mqtt.password, second.mqtt.password):
            assert password not in stored and password not in json.dumps(entries)
    finally:
        ctx.close()


def test_no_usable_broker_url_leaves_the_enrollment_unrecorded(tmp_path: Path) -> None:
    """The password file changes last: a refusal before it rolls the baseline back."""
    config = ServerConfig(bin_bits=1, mqtt_port=1883, mqtt_bind="0.0.0.0")
    ctx, ca = _context(tmp_path, config)
    try:
        with pytest.raises(MQTTCredentialsUnavailableError, match="set mqtt_public_url") as info:
            _enroll(ctx, SoftTpm(ca))  # no request, so no host name to offer
        assert info.value.status == 503
        with ctx.db.session() as session:
            assert session.get(DeviceAttestationRow, "dev-1") is None
            last = AuditLog.entries(session)[-1]
        assert (last.action, last.outcome) == ("enroll.finish", "refused")
        assert MosquittoBroker(ctx.data.broker).device_ids() == []
        assert _enroll(ctx, SoftTpm(ca), request_host="ota.example.com").mqtt.url == (
            "mqtt://ota.example.com:1883"
        )
    finally:
        ctx.close()


# --- through the real server and a real mosquitto ---------------------------------------------


@pytest.fixture
def server_with_broker(caplog: pytest.LogCaptureFixture) -> Iterator[RunningServer]:
    """The real server with ``mqtt_port`` set and mosquitto running its broker directory.

    Outside pytest's tmp_path: run as root, mosquitto drops to its own user, which
    must be able to reach the directory (see tests/mqtt_fixtures.py).
    """
    require_executable("mosquitto", "mosquitto")
    require_module("paho.mqtt", "paho-mqtt")
    caplog.set_level(logging.DEBUG)
    base = Path(tempfile.mkdtemp(prefix="edgeseal-enroll-mqtt-"))
    base.chmod(0o711)
    port = _free_port()
    config = ServerConfig(bin_bits=1, refresh_interval=3600, mqtt_port=port)
    try:
        with running_server(base / "server", config=config) as server:
            broker = MosquittoBroker(server.data_dir / "broker", port=port)
            broker.start()  # what `edgeseal-server run` does with this config
            try:
                yield server
            finally:
                broker.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _add_and_trust(server: RunningServer) -> tuple[EkCa, str]:
    ca = EkCa()
    add_ek_cas(server.data_dir / "ek-ca", ca.pem(), source="test")
    operator = server.token("operator")
    body = {
        "id": "dev-1",
        "public_key_pem": device_key_pem()[1],
        "hardware_class": "rpi5",
        "channel": "stable",
    }
    added = server.request("POST", "/api/v1/devices", token=operator, body=body)
    assert added.status == 201, added.body
    return ca, operator


def _http_enroll(server: RunningServer, tpm: SoftTpm, token: str) -> Any:
    started = server.request("POST", "/v1/enroll/start", token=token, body=tpm.start_body("dev-1"))
    assert started.status == 200, started.body
    body = tpm.finish_body(started.json(), BASELINE)
    return server.request("POST", "/v1/enroll/finish", token=token, body=body)


def _connects(url: str, password: str) -> bool:
    with raw_client(parse_mqtt_url(url), "dev-1", password) as client:
        if client.connect() != "Success":
            return False
        assert client.subscribe(hint_topic(FAMILY)) == ["Granted QoS 1"]
        return True


def _files_hold(root: Path, secret: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and secret in p.read_bytes()]


@pytest.mark.mosquitto
def test_enrollment_answers_credentials_that_log_in_to_the_broker(
    server_with_broker: RunningServer,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = server_with_broker
    ca, operator = _add_and_trust(server)
    tpm = SoftTpm(ca)
    finished = _http_enroll(server, tpm, operator)
    assert finished.status == 200, finished.body
    answer = finished.json()
    assert set(answer) == {"device_id", "enrolled", "mqtt"}
    mqtt = answer["mqtt"]
    port = ServerConfig.from_toml((server.data_dir / "server.toml").read_text()).mqtt_port
    assert mqtt["url"] == f"mqtt://127.0.0.1:{port}" and mqtt["username"] == "dev-1"
    first = mqtt["password"]
    assert _connects(mqtt["url"], first)

    # re-enrolling rotates it; the running broker takes the new one at once
    second = _http_enroll(server, tpm, operator).json()["mqtt"]["password"]
    assert second != first
    assert not _connects(mqtt["url"], first)
    assert _connects(mqtt["url"], second)

    # `device mqtt-credentials` still rotates by hand, through the same mechanism
    out = server.data_dir.parent / "dev-1.mqtt-password"
    argv = ["--data", str(server.data_dir), "device", "mqtt-credentials", "--id", "dev-1"]
    assert server_main([*argv, "--output", str(out)]) == 0
    assert f"mqtt_url: mqtt://127.0.0.1:{port}" in capsys.readouterr().out
    third = out.read_text().strip()
    assert not _connects(mqtt["url"], second)
    assert _connects(mqtt["url"], third)
    out.unlink()

    # the passwords are nowhere else: audit log, log records, data directory
    audit = server.request("GET", "/api/v1/audit", token=server.admin_token)
    entries = audit.json()["entries"] if isinstance(audit.json(), dict) else audit.json()
    issued = [e["details"].get("mqtt_credentials_issued") for e in entries]
    assert issued.count(True) == 2
    for password in (first, second, third):
        assert password not in audit.body.decode()
        assert password not in caplog.text
        assert _files_hold(server.data_dir, password.encode()) == []

    # revoked: the broker drops it, and it cannot enroll to get credentials back
    revoked = server.request("POST", "/api/v1/devices/dev-1/revoke", token=operator, body={})
    assert revoked.status == 200 and revoked.json()["mqtt_credentials_removed"] is True
    assert not _connects(mqtt["url"], third)
    again = server.request("POST", "/v1/enroll/start", token=operator, body=tpm.start_body("dev-1"))
    assert again.status == 403 and "revoked" in again.json()["error"]["message"]
