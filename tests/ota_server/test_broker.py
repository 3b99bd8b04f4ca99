"""MosquittoBroker: generated files (pure) and a real mosquitto (start, reload, restart)."""

from __future__ import annotations

import base64
import hashlib
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from components import require_executable
from edgeseal.ota_server.broker import (
    SERVER_USERNAME,
    BrokerError,
    MosquittoBroker,
    acl_text,
    mosquitto_password_hash,
)
from edgeseal.ota_server.hints import publish_hint, release_hint
from edgeseal.sdk.mqtt_messages import ReleaseHint, hint_topic
from mqtt_fixtures import WAIT_S, raw_client, running_broker

# Known answer made with `mosquitto_passwd -b FILE dev1 s3cret` (mosquitto 2.0.11, Debian 12).
MOSQUITTO_PASSWD_LINE = (
    "dev1:$7$101$USxKbUFazI3pelyL$5aRqa5BpUbRrq2IsDsYta1TsC9u3haXYFWeYNd4XMwf4GYDD7LTqVT5sFOecME"
    "+RxHs7FoOr4lkS7E+M013unQ=="
)


def test_password_hash_matches_mosquitto_passwd() -> None:
    _user, hashed = MOSQUITTO_PASSWD_LINE.split(":", 1)
    salt = base64.b64decode(hashed.split("$")[3])
    assert mosquitto_password_hash("s3cret", salt=salt) == hashed


def test_password_hash_is_salted_pbkdf2_sha512() -> None:
    one, two = mosquitto_password_hash("pw"), mosquitto_password_hash("pw")
    assert one != two
    _, kind, iterations, salt, digest = one.split("$")
    assert kind == "7"
    expected = hashlib.pbkdf2_hmac("sha512", b"pw", base64.b64decode(salt), int(iterations))
    assert base64.b64decode(digest) == expected


def test_acl_keys_devices_on_their_username() -> None:
    text = acl_text()
    assert "%c" not in text
    assert "pattern write edgeseal/v1/devices/%u/telemetry" in text
    assert "pattern read edgeseal/v1/hints/#" in text
    server_block = text.split(f"user {SERVER_USERNAME}\n", 1)[1].split("\n\n", 1)[0]
    assert server_block.splitlines() == [
        "topic write edgeseal/v1/hints/#",
        "topic read edgeseal/v1/devices/+/telemetry",
    ]


@pytest.mark.parametrize("bad", ["a:b", "a/b", "+", "#", "", "x" * 129, SERVER_USERNAME])
def test_bad_or_reserved_device_ids_are_refused(tmp_path: Path, bad: str) -> None:
    broker = MosquittoBroker(tmp_path / "broker")
    with pytest.raises(BrokerError):
        broker.add_device_credentials(bad)


def test_credentials_written_before_start_are_kept(tmp_path: Path) -> None:
    broker = MosquittoBroker(tmp_path / "broker")
    broker.dir.mkdir()
    broker.add_device_credentials("dev-1")
    broker.add_device_credentials("dev-2")
    assert broker.device_ids() == ["dev-1", "dev-2"]
    assert broker.remove_device_credentials("dev-1")
    assert not broker.remove_device_credentials("dev-1")
    assert broker.device_ids() == ["dev-2"]


# --- a real mosquitto --------------------------------------------------------------------------


@pytest.fixture
def broker() -> Iterator[MosquittoBroker]:
    require_executable("mosquitto", "mosquitto")
    with running_broker() as running:
        yield running


@pytest.mark.mosquitto
def test_generated_config(broker: MosquittoBroker) -> None:
    conf = broker.conf_file.read_text().splitlines()
    assert "allow_anonymous false" in conf
    assert f"listener {broker.port} 127.0.0.1" in conf
    assert f"acl_file {broker.acl_file}" in conf
    assert broker.running()


@pytest.mark.mosquitto
@pytest.mark.skipif(os.geteuid() != 0, reason="mosquitto drops privileges only when root")
def test_files_fit_mosquittos_dropped_privileges(broker: MosquittoBroker) -> None:
    user = pwd.getpwnam("mosquitto")
    for path in (broker.pid_file.parent, broker.log_file.parent, broker.data_dir):
        assert path.stat().st_uid == user.pw_uid
    for path in (broker.conf_file, broker.password_file, broker.acl_file):
        st = path.stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, user.pw_gid, 0o640)
    st = broker.server_password_file.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600)
    assert "user mosquitto" in broker.conf_file.read_text()


@pytest.mark.skipif(os.geteuid() != 0, reason="mosquitto drops privileges only when root")
def test_unreachable_directory_is_refused_with_a_clear_error() -> None:
    require_executable("mosquitto", "mosquitto")
    base = Path(tempfile.mkdtemp(prefix="edgeseal-mqtt-"))  # 0700: mosquitto cannot enter
    try:
        with pytest.raises(BrokerError, match="not searchable") as info:
            MosquittoBroker(base / "broker", port=0).start()
        assert str(base) in info.value.diagnostics()
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.mosquitto
def test_new_and_revoked_credentials_take_effect_at_once(broker: MosquittoBroker) -> None:
    password = broker.add_device_credentials("dev-1")
    with raw_client(broker.endpoint, "dev-1", password) as client:
        assert client.connect() == "Success"
    broker.remove_device_credentials("dev-1")
    with raw_client(broker.endpoint, "dev-1", password) as client:
        assert client.connect() != "Success"
    replaced = broker.add_device_credentials("dev-1")
    with raw_client(broker.endpoint, "dev-1", password) as client:
        assert client.connect() != "Success"
    with raw_client(broker.endpoint, "dev-1", replaced) as client:
        assert client.connect() == "Success"


def test_a_stale_pid_file_is_never_signalled(tmp_path: Path) -> None:
    """A pid file outlives a killed broker and its pid may be reused: SIGHUP would kill."""
    broker = MosquittoBroker(tmp_path / "broker")
    broker.pid_file.parent.mkdir(parents=True)
    other = subprocess.Popen(["sleep", "30"])
    try:
        broker.pid_file.write_text(f"{other.pid}\n")
        assert broker.running_pid() is None
        assert broker.reload() is False
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


@pytest.mark.mosquitto
def test_another_process_finds_the_broker_and_reloads_it(broker: MosquittoBroker) -> None:
    """`device mqtt-credentials` and revocation run outside the process that owns the broker."""
    elsewhere = MosquittoBroker(broker.dir)
    assert elsewhere.running_pid() == broker.pid()
    password = elsewhere.add_device_credentials("dev-1")
    with raw_client(broker.endpoint, "dev-1", password) as client:
        assert client.connect() == "Success"
        assert elsewhere.remove_device_credentials("dev-1")
        deadline = time.monotonic() + WAIT_S
        while client.client.is_connected() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not client.client.is_connected()  # mosquitto drops it on the reload
    with raw_client(broker.endpoint, "dev-1", password) as client:
        assert client.connect() != "Success"


@pytest.mark.mosquitto
def test_retained_hint_and_credentials_survive_a_restart(broker: MosquittoBroker) -> None:
    password = broker.add_device_credentials("dev-1")
    assert publish_hint(broker.hint_settings(), release_hint("detector", 4)).published
    port = broker.port
    broker.stop()
    assert not broker.running()
    restarted = MosquittoBroker(broker.dir, port=port)
    restarted.start()
    try:
        with raw_client(restarted.endpoint, "dev-1", password) as device:
            assert device.connect() == "Success"
            assert device.subscribe(hint_topic("detector")) == ["Granted QoS 1"]
            ((_topic, payload, retained),) = device.wait_messages(1)
        assert retained
        assert ReleaseHint.from_bytes(payload).version == 4
    finally:
        restarted.stop()


@pytest.mark.mosquitto
def test_hint_publication_failures_are_returned_not_raised(broker: MosquittoBroker) -> None:
    settings = broker.hint_settings()
    broker.stop()
    result = publish_hint(settings, release_hint("detector", 1))
    assert not result.published
    assert result.reason


@pytest.mark.mosquitto
def test_start_failure_names_mosquittos_error() -> None:
    require_executable("mosquitto", "mosquitto")
    with running_broker() as first:
        second = MosquittoBroker(first.dir.parent / "second", port=first.port)
        with pytest.raises(BrokerError, match="could not start"):
            second.start()
