"""Revoking a device (DESIGN flow 6) through the real server, TUF client and mosquitto.

A revoked device gets no new envelopes (and loses the ones still published),
no broker access (a real mosquitto refuses its login and drops its open
connection) and cannot enroll; ``POST /api/v1/devices/{id}/revoke`` is for
operators and admins only, and every call, accepted or refused, is audited.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from release_helpers import build_release, device_key_pem, publish, sign
from server_fixture import RunningServer, running_server
from tuf.ngclient import Updater

from edgeseal.ota_server.broker import MosquittoBroker
from edgeseal.ota_server.cli import main
from edgeseal.ota_server.config import ServerConfig
from edgeseal.ota_server.db import Database, DeviceAttestationRow
from edgeseal.sdk.envelope import SoftwareRecipient, open_envelope
from mqtt_fixtures import WAIT_S, raw_client


def updater(server: RunningServer, tmp_path: Path, name: str) -> Updater:
    root = server.request("GET", "/tuf/metadata/1.root.json")
    assert root.status == 200
    (tmp_path / name / "metadata").mkdir(parents=True)
    (tmp_path / name / "targets").mkdir(parents=True)
    client = Updater(
        metadata_dir=str(tmp_path / name / "metadata"),
        metadata_base_url=f"{server.base_url}/tuf/metadata/",
        target_base_url=f"{server.base_url}/tuf/targets/",
        target_dir=str(tmp_path / name / "targets"),
        bootstrap=root.body,
    )
    client.refresh()
    return client


def add_device(server: RunningServer, token: str, device_id: str) -> Any:
    key, pem = device_key_pem()
    body = {"id": device_id, "public_key_pem": pem, "hardware_class": "rpi5", "channel": "stable"}
    answer = server.request("POST", "/api/v1/devices", token=token, body=body)
    assert answer.status == 201, answer.body
    return key


def revoke(server: RunningServer, token: str | None, device_id: str, body: Any = None) -> Any:
    return server.request("POST", f"/api/v1/devices/{device_id}/revoke", token=token, body=body)


def audit(server: RunningServer, action: str) -> list[dict[str, Any]]:
    entries = server.request("GET", "/api/v1/audit", token=server.admin_token).json()
    return [e for e in entries if e["action"] == action]


def envelope(release_version: int, device_id: str) -> str:
    return f"envelopes/{device_id}/detector-{release_version}.env"


def test_revoked_device_gets_no_envelopes(ota_server: RunningServer, tmp_path: Path) -> None:
    server = ota_server
    server.add_family("detector")
    rm = server.token("release-manager", "detector")
    operator = server.token("operator")
    keep_key = add_device(server, operator, "dev-keep")
    add_device(server, operator, "dev-stolen")
    first = build_release(server, "detector", 1)
    publish(server, first, rm)
    before = updater(server, tmp_path, "before")
    assert before.get_targetinfo(envelope(1, "dev-stolen")) is not None

    answer = revoke(server, operator, "dev-stolen")
    assert answer.status == 200, answer.body
    assert answer.json() == {
        "id": "dev-stolen",
        "revoked": True,
        "enrolled": False,
        "already_revoked": False,
        "envelopes_removed": [envelope(1, "dev-stolen")],
        "mqtt_credentials_removed": False,
    }
    # the envelope of the release it had not fetched yet is gone; the others stay
    after = updater(server, tmp_path, "after")
    assert after.get_targetinfo(envelope(1, "dev-stolen")) is None
    assert after.get_targetinfo(envelope(1, "dev-keep")) is not None

    second = build_release(server, "detector", 2)
    publish(server, second, rm)
    client = updater(server, tmp_path, "second")
    assert client.get_targetinfo(envelope(2, "dev-stolen")) is None
    info = client.get_targetinfo(envelope(2, "dev-keep"))
    assert info is not None
    data = Path(client.download_target(info)).read_bytes()
    assert open_envelope(data, SoftwareRecipient(keep_key), second.info.header) == (
        second.info.content_key
    )
    published = [e["details"] for e in audit(server, "release.sign") if "published" in e["details"]]
    assert [d["envelopes"] for d in published] == [2, 1]  # release 2: dev-keep only

    # a yank still works though the revoked device's envelope is already gone
    yank = server.request("POST", "/api/v1/releases/detector-1/yank", token=rm, body={})
    assert yank.status == 200, yank.body
    sign(server, "detector-1", rm, 0)
    assert sign(server, "detector-1", rm, 1)["state"] == "yanked"
    assert updater(server, tmp_path, "yanked").get_targetinfo(envelope(1, "dev-keep")) is None

    devices = server.request("GET", "/api/v1/devices", token=server.token("viewer")).json()
    listed = {d["id"]: d["revoked"] for d in devices}
    assert listed == {"dev-keep": False, "dev-stolen": True}


def test_revoking_again_removes_what_an_older_revocation_left(
    ota_server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before revocation removed envelopes it only set the flag: revoking again finishes it."""
    server = ota_server
    server.add_family("detector")
    rm = server.token("release-manager", "detector")
    add_device(server, server.admin_token, "dev-old")
    publish(server, build_release(server, "detector", 1), rm)
    db = Database.open(server.data_dir / "server.db")
    try:
        with db.session() as session:  # what `device revoke` used to do (enrolled device)
            row = DeviceAttestationRow(
                device_id="dev-old",
                ak_public=b"ak",
                ek_certificate_sha256="0" * 64,
                pcr_bank="sha256",
                pcrs={},
                enrolled="2025-01-01T00:00:00Z",
                revoked=True,
            )
            session.add(row)
    finally:
        db.close()
    assert updater(server, tmp_path, "a").get_targetinfo(envelope(1, "dev-old")) is not None
    assert main(["--data", str(server.data_dir), "device", "revoke", "--id", "dev-old"]) == 0
    out = capsys.readouterr().out
    assert "already revoked" in out and "1 envelope(s) removed" in out
    assert updater(server, tmp_path, "b").get_targetinfo(envelope(1, "dev-old")) is None


def test_revoke_route_roles_and_audit(ota_server: RunningServer) -> None:
    server = ota_server
    server.add_family("detector")
    add_device(server, server.admin_token, "dev-1")
    tokens = {
        "none": None,
        "bad": "est1.0123456789abcdef." + "A" * 43,
        "viewer": server.token("viewer", name="vera"),
        "release-manager": server.token("release-manager", "detector", name="rita"),
        "operator": server.token("operator", name="otto"),
        "admin": server.admin_token,
    }
    expected = {
        "none": 401,
        "bad": 401,
        "viewer": 403,
        "release-manager": 403,
        "operator": 200,
        "admin": 200,
    }
    for who, status in expected.items():
        answer = revoke(server, tokens[who], "dev-1")
        assert answer.status == status, (who, answer.body)
        if status >= 400:
            assert set(answer.json()["error"]) == {"code", "message"}
            # a refused call changed nothing
            devices = server.request("GET", "/api/v1/devices", token=server.admin_token).json()
            assert devices[0]["revoked"] is False
        else:
            assert answer.json()["already_revoked"] is (who == "admin")
    unknown = revoke(server, server.admin_token, "ghost")
    assert unknown.status == 404 and unknown.json()["error"]["code"] == "not-found"
    with_body = revoke(server, server.admin_token, "dev-1", body={"reason": "stolen"})
    assert with_body.status == 400
    assert revoke(server, server.admin_token, "dev-1", body={}).status == 200

    entries = audit(server, "device.revoke")
    assert [(e["actor"].split("#")[0], e["outcome"]) for e in entries] == [
        ("anonymous", "refused"),
        ("anonymous", "refused"),
        ("vera", "refused"),
        ("rita", "refused"),
        ("otto", "accepted"),
        ("admin", "accepted"),
        ("admin", "refused"),
        ("admin", "refused"),
        ("admin", "accepted"),
    ]
    assert all(e["target"].endswith("/revoke") for e in entries)
    assert entries[2]["details"]["status"] == 403
    assert entries[4]["details"] == {
        "device": "dev-1",
        "enrolled": False,
        "already_revoked": False,
        "envelopes_removed": 0,
        "mqtt_credentials_removed": False,
    }
    assert main(["--data", str(server.data_dir), "audit", "verify"]) == 0


# --- a real mosquitto ---------------------------------------------------------------------------


@pytest.fixture
def server_with_broker() -> Iterator[tuple[RunningServer, MosquittoBroker]]:
    """The server and the broker of its data directory (as ``edgeseal-server run`` starts it).

    Not under pytest's ``tmp_path``: run as root, mosquitto drops to the user
    ``mosquitto``, which must be able to enter the data directory (mqtt_fixtures.py).
    """
    from components import require_executable, require_module

    require_executable("mosquitto", "mosquitto")
    require_module("paho.mqtt", "paho-mqtt")
    base = Path(tempfile.mkdtemp(prefix="edgeseal-revoke-"))
    base.chmod(0o711)
    config = ServerConfig(bin_bits=4, refresh_interval=3600, mqtt_port=1883)
    try:
        with running_server(base / "server", config=config) as server:
            server.data_dir.chmod(0o711)  # init makes it 0700
            broker = MosquittoBroker(server.data_dir / "broker", port=0)
            broker.start()
            try:
                yield server, broker
            finally:
                broker.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def mqtt_credentials(server: RunningServer, device_id: str, out: Path) -> int:
    argv = ["--data", str(server.data_dir), "device", "mqtt-credentials", "--id", device_id]
    return main([*argv, "--output", str(out)])


@pytest.mark.mosquitto
def test_revoked_device_loses_broker_access(
    server_with_broker: tuple[RunningServer, MosquittoBroker], tmp_path: Path
) -> None:
    server, broker = server_with_broker
    operator = server.token("operator")
    passwords = {}
    for device_id in ("dev-keep", "dev-stolen"):
        add_device(server, operator, device_id)
        assert mqtt_credentials(server, device_id, tmp_path / device_id) == 0
        passwords[device_id] = (tmp_path / device_id).read_text().strip()

    with (
        raw_client(broker.endpoint, "dev-keep", passwords["dev-keep"]) as keep,
        raw_client(broker.endpoint, "dev-stolen", passwords["dev-stolen"]) as stolen,
    ):
        assert keep.connect() == "Success"
        assert stolen.connect() == "Success"
        answer = revoke(server, operator, "dev-stolen")
        assert answer.status == 200, answer.body
        assert answer.json()["mqtt_credentials_removed"] is True
        # the broker reloaded before the answer: the open connection is dropped at once
        deadline = time.monotonic() + WAIT_S
        while stolen.client.is_connected() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not stolen.client.is_connected()
        assert keep.client.is_connected()
        assert keep.subscribe("edgeseal/v1/hints/#") == ["Granted QoS 1"]
    with raw_client(broker.endpoint, "dev-stolen", passwords["dev-stolen"]) as again:
        assert again.connect() in ("Not authorized", "Bad user name or password")
    assert broker.device_ids() == ["dev-keep"]

    (tmp_path / "dev-stolen").unlink()
    assert mqtt_credentials(server, "dev-stolen", tmp_path / "dev-stolen") == 1
    assert not (tmp_path / "dev-stolen").exists()
    assert broker.device_ids() == ["dev-keep"]
    refused = audit(server, "device.mqtt-credentials")[-1]
    assert refused["outcome"] == "refused" and "revoked" in refused["details"]["reason"]


def test_revocation_ends_open_challenges(ota_server: RunningServer) -> None:
    """An enrollment or key release the device started before it was revoked cannot finish."""
    from edgeseal.ota_server.db import EnrollmentChallengeRow, KeyReleaseChallengeRow

    server = ota_server
    server.add_family("detector")
    rm = server.token("release-manager", "detector")
    add_device(server, server.admin_token, "dev-open")
    publish(server, build_release(server, "detector", 1), rm)
    db = Database.open(server.data_dir / "server.db")
    try:
        with db.session() as session:
            session.add(
                EnrollmentChallengeRow(
                    id="enroll-1",
                    device_id="dev-open",
                    ak_public=b"ak",
                    ek_certificate_sha256="0" * 64,
                    secret_sha256="0" * 64,
                    nonce=b"\0" * 32,
                    pcrs=[0],
                    created="2026-01-01T00:00:00Z",
                    expires="2999-01-01T00:00:00Z",
                )
            )
            session.add(
                KeyReleaseChallengeRow(
                    id="key-1",
                    device_id="dev-open",
                    release_id="detector-1",
                    nonce=b"\0" * 32,
                    pcrs=[0],
                    expires="2999-01-01T00:00:00Z",
                )
            )
    finally:
        db.close()
    assert revoke(server, server.admin_token, "dev-open").status == 200
    db = Database.open(server.data_dir / "server.db")
    try:
        with db.session() as session:
            assert session.get(EnrollmentChallengeRow, "enroll-1") is None
            assert session.get(KeyReleaseChallengeRow, "key-1") is None
    finally:
        db.close()
