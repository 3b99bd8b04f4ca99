"""``edgeseal-agent enroll``, the device's side, against a small fake server on loopback.

The device is a real emulated one (swtpm with an EK certificate from the test
CA); the fake server does what the contract says the OTA server does with the
sdk's pure building blocks (MakeCredential to the EK from the certificate,
verify the quote over its nonce) and checks the shape of every request; with
``mqtt`` set it answers a broker login too, as a server running a broker does.
The full agent-against-the-real-server flow is tests/integration/test_attestation_e2e.py.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import os
import secrets
import stat
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_der_public_key,
)
from cryptography.x509.oid import NameOID

from edgeseal.device_agent.cli import main as agent_main
from edgeseal.device_agent.config import AgentConfig, load_config
from edgeseal.device_agent.daemon import (
    MAX_POLICY_BYTES,
    DaemonError,
    NoSignedPolicyError,
    read_signed_policy,
)
from edgeseal.device_agent.enroll import (
    ENROLLMENT_FILE,
    EnrollChallenge,
    EnrollmentError,
    MQTTCredentials,
    install_mqtt_credentials,
    mqtt_drop_in_text,
    select_ek_certificate,
)
from edgeseal.device_agent.mqtt_link import MQTTLinkSettings
from edgeseal.hardware.emulated import POLICY_FILE, EmulatedDevice
from edgeseal.hardware.errors import PolicyFormatError
from edgeseal.hardware.policy import PCRValues, authority_fingerprint, sign_pcr_policy
from edgeseal.sdk.credential import make_credential
from edgeseal.sdk.errors import AttestationError
from edgeseal.sdk.quote import verify_quote
from edgeseal.sdk.tpm_wire import tpm_name

TOKEN = "op-" + "t0k3n" * 8
PROFILE_PCRS = [0, 4, 9, 15]
MQTT_PASSWORD = "mq-" + "pAssw0rd" * 5
MQTT_URL = "mqtt://broker.example.com:1883"


# --- the fake server --------------------------------------------------------------------------


@dataclass
class FakeServer:
    """What the OTA server's enrollment routes do, in a few lines; ``mode`` injects refusals."""

    url: str = ""
    mode: str = "ok"
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    challenges: dict[str, dict[str, Any]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    #: The ``mqtt`` block of finish's answer (a server running a broker), or None.
    mqtt: dict[str, Any] | None = None

    def start(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if set(body) != {"device_id", "ek_certificate", "ak_public"}:
            self.problems.append(f"start body keys {sorted(body)}")
        if self.mode == "refuse-start":
            return 403, {"error": {"code": "ek_untrusted", "message": "EK chain not trusted"}}
        ek_cert = x509.load_der_x509_certificate(base64.b64decode(body["ek_certificate"]))
        ek_public = ek_cert.public_key()
        assert isinstance(ek_public, rsa.RSAPublicKey)
        ak_public = base64.b64decode(body["ak_public"])
        name = tpm_name(ak_public)
        if self.mode == "wrong-name":  # a credential for some other object: the TPM refuses
            name = name[:2] + secrets.token_bytes(32)
        secret, nonce = secrets.token_bytes(32), secrets.token_bytes(32)
        blob, encrypted = make_credential(ek_public, name, secret)
        challenge_id = secrets.token_hex(8)
        self.challenges[challenge_id] = {"secret": secret, "nonce": nonce, "ak_public": ak_public}
        self.challenges[challenge_id]["device_id"] = body["device_id"]
        return 200, {
            "challenge_id": challenge_id,
            "credential_blob": base64.b64encode(blob).decode(),
            "encrypted_secret": base64.b64encode(encrypted).decode(),
            "nonce": nonce.hex(),
            "pcrs": PROFILE_PCRS,
        }

    def finish(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        keys = {"challenge_id", "secret", "pcrs", "quote", "pcr_policy_authority"}
        if set(body) != keys or set(body["quote"]) != {"attest", "signature"}:
            self.problems.append(f"finish body keys {sorted(body)}")
        authority = body.get("pcr_policy_authority")
        if authority is not None:  # what the server stores: a P-256 SubjectPublicKeyInfo
            key = load_der_public_key(base64.b64decode(authority, validate=True))
            if not isinstance(key, ec.EllipticCurvePublicKey):
                self.problems.append("the policy authority is not an EC key")
        challenge = self.challenges.pop(body["challenge_id"])
        if base64.b64decode(body["secret"]) != challenge["secret"]:
            return 403, {"error": {"code": "wrong_secret", "message": "wrong credential secret"}}
        pcrs = {int(i): bytes.fromhex(v) for i, v in body["pcrs"].items()}
        if sorted(pcrs) != PROFILE_PCRS:
            self.problems.append(f"quoted PCRs {sorted(pcrs)}")
        try:
            verify_quote(
                base64.b64decode(body["quote"]["attest"]),
                base64.b64decode(body["quote"]["signature"]),
                challenge["ak_public"],
                qualifying_data=challenge["nonce"],
                pcrs=pcrs,
            )
        except AttestationError as exc:
            return 400, {"error": {"code": "bad_quote", "message": exc.message}}
        answer: dict[str, Any] = {"device_id": challenge["device_id"], "enrolled": True}
        if self.mqtt is not None:
            answer["mqtt"] = self.mqtt
        return 200, answer


def _handler(server: FakeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                server.problems.append("missing or wrong bearer token")
            if self.headers.get("Content-Type") != "application/json":
                server.problems.append(f"content type {self.headers.get('Content-Type')}")
            length = int(self.headers["Content-Length"])
            body = json.loads(self.rfile.read(length))
            server.requests.append((self.path, body))
            routes = {"/v1/enroll/start": server.start, "/v1/enroll/finish": server.finish}
            status, answer = routes[self.path](body) if self.path in routes else (404, {})
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *_args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def fake_server() -> Iterator[FakeServer]:
    server = FakeServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(server))
    server.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()


# --- the device -------------------------------------------------------------------------------


@dataclass
class Device:
    emulated: EmulatedDevice
    config: Path
    token_file: Path
    state_dir: Path
    mqtt_password_file: Path


@pytest.fixture
def device(tmp_path: Path, swtpm_ca: Path, fake_server: FakeServer) -> Iterator[Device]:
    emulated = EmulatedDevice.create(
        tmp_path / "dev", device_id="enroll-1", ca_dir=swtpm_ca, running=True
    )
    try:
        state_dir = tmp_path / "state"
        config = tmp_path / "agent.toml"
        # never the default /etc/edgeseal/mqtt-password: enroll writes there
        password_file = tmp_path / "etc" / "mqtt-password"
        config.write_text(
            "version = 1\n"
            'device_id = "enroll-1"\n'
            f'state_dir = "{state_dir}"\n'
            f'key_backend = "emulated:{emulated.state_dir}"\n'
            'profile = "emulated"\n'
            f'server_url = "{fake_server.url}"\n'
            f'mqtt_password_file = "{password_file}"\n'
        )
        token_file = tmp_path / "operator.token"
        token_file.write_text(TOKEN + "\n")
        token_file.chmod(0o600)
        yield Device(emulated, config, token_file, state_dir, password_file)
    finally:
        emulated.stop()


def enroll(dev: Device, *extra: str) -> int:
    return agent_main(
        ["enroll", "--config", str(dev.config), "--token-file", str(dev.token_file), *extra]
    )


@pytest.mark.swtpm
def test_enroll_runs_the_handshake_and_records_it(
    device: Device,
    fake_server: FakeServer,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    assert enroll(device) == 0
    out = capsys.readouterr()
    assert fake_server.problems == []
    assert [path for path, _ in fake_server.requests] == ["/v1/enroll/start", "/v1/enroll/finish"]
    start = fake_server.requests[0][1]
    assert start["device_id"] == "enroll-1"
    ak_public = base64.b64decode(start["ak_public"])

    record = json.loads((device.state_dir / ENROLLMENT_FILE).read_text())
    assert record["enrolled"] is True and record["device_id"] == "enroll-1"
    assert record["ak_name"] == tpm_name(ak_public).hex()
    assert record["server"] == fake_server.url
    assert sorted(int(i) for i in record["pcrs"]) == PROFILE_PCRS
    with device.emulated.backend() as backend:
        assert backend.attestation_key_public() == ak_public
        values = backend.pcr_read(PROFILE_PCRS)
    assert record["pcrs"] == {str(i): values.digests[i].hex() for i in PROFILE_PCRS}
    assert "enrolled enroll-1" in out.out and "created" in out.out

    # the policy authority of the device's signed PCR policy went with the quote, so
    # the server accepts boot states it approves later; the record names it
    authority = device.emulated.signed_policy().authority
    finish = fake_server.requests[1][1]
    assert base64.b64decode(finish["pcr_policy_authority"]) == authority.public_bytes(
        Encoding.DER, PublicFormat.SubjectPublicKeyInfo
    )
    fingerprint = authority_fingerprint(authority)
    assert record["pcr_policy_authority_fingerprint"] == fingerprint
    assert f"PCR policy authority: {fingerprint}" in out.out
    # the token is never printed nor logged
    assert TOKEN not in out.out + out.err + caplog.text

    # a second enrollment (e.g. after the server lost it) reuses the AK in the TPM
    assert enroll(device, "--json") == 0
    again = json.loads(capsys.readouterr().out)
    assert again["ak_created"] is False and again["ak_name"] == record["ak_name"]
    # a server without a broker issues no MQTT login, and nothing MQTT is written
    assert again["mqtt"] is None and "MQTT" not in out.out
    assert not device.mqtt_password_file.exists()
    assert not device.config.with_name("agent.toml.d").exists()


def _mqtt_answer(password: str = MQTT_PASSWORD) -> dict[str, Any]:
    return {"url": MQTT_URL, "username": "enroll-1", "password": password}


@pytest.mark.swtpm
def test_enroll_installs_the_mqtt_login_for_run(
    device: Device,
    fake_server: FakeServer,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    fake_server.mqtt = _mqtt_answer()
    assert enroll(device) == 0
    out = capsys.readouterr()
    assert fake_server.problems == []
    password_file = device.mqtt_password_file
    assert password_file.read_text() == MQTT_PASSWORD + "\n"
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    drop_in = device.config.with_name("agent.toml.d") / "50-mqtt.toml"
    assert stat.S_IMODE(drop_in.stat().st_mode) == 0o644
    assert MQTT_URL in out.out and str(password_file) in out.out and str(drop_in) in out.out

    # the next `run` reads exactly this: the config names the broker and the file
    config = load_config(device.config, env={})
    assert isinstance(config, AgentConfig)
    assert (config.mqtt_url, config.mqtt_password_file) == (MQTT_URL, password_file)
    settings = MQTTLinkSettings.from_config(
        url=config.mqtt_url,
        device_id=config.device_id,
        password_file=config.mqtt_password_file,
        family="detector",
    )
    assert settings.password == MQTT_PASSWORD and settings.endpoint.host == "broker.example.com"

    # the password is nowhere else
    record = (device.state_dir / ENROLLMENT_FILE).read_text()
    for text in (out.out, out.err, caplog.text, record, drop_in.read_text()):
        assert MQTT_PASSWORD not in text

    # re-enrolling rotates it; an environment override is pointed out, not fought
    fake_server.mqtt = _mqtt_answer("mq-" + "r0tated!" * 5)
    monkeypatch.setenv("EDGESEAL_AGENT_MQTT_URL", "mqtt://elsewhere:1883")
    assert enroll(device, "--json") == 0
    out = capsys.readouterr()
    doc = json.loads(out.out)
    assert doc["mqtt"] == {
        "url": MQTT_URL,
        "username": "enroll-1",
        "password_file": str(password_file),
        "drop_in": str(drop_in),
    }
    assert "overrides it" in out.err and "mqtt://elsewhere:1883" in out.err
    assert password_file.read_text() == "mq-" + "r0tated!" * 5 + "\n"
    assert "r0tated" not in out.out + out.err + caplog.text


@pytest.mark.swtpm
def test_a_device_without_a_signed_policy_sends_no_authority_and_says_so(
    device: Device, fake_server: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    (device.emulated.state_dir / POLICY_FILE).unlink()
    assert enroll(device) == 0
    out = capsys.readouterr().out
    assert fake_server.problems == []
    assert fake_server.requests[1][1]["pcr_policy_authority"] is None
    assert "PCR policy authority: none" in out and "only the baseline" in out
    record = json.loads((device.state_dir / ENROLLMENT_FILE).read_text())
    assert record["pcr_policy_authority_fingerprint"] is None


@pytest.mark.swtpm
def test_a_malformed_signed_policy_stops_enrollment_before_the_server_is_asked(
    device: Device, fake_server: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    (device.emulated.state_dir / POLICY_FILE).write_text('{"format": "nope"}')
    assert enroll(device) == 1
    err = capsys.readouterr().err
    assert "cannot read the device's signed PCR policy" in err and "signed PCR policy" in err
    assert fake_server.requests == []
    assert not (device.state_dir / ENROLLMENT_FILE).exists()


@pytest.mark.swtpm
def test_mqtt_login_that_cannot_be_written_fails_after_recording_the_enrollment(
    device: Device, fake_server: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    device.mqtt_password_file.parent.parent.mkdir(exist_ok=True)
    device.mqtt_password_file.parent.write_text("a file, not a directory")
    fake_server.mqtt = _mqtt_answer()
    assert enroll(device) == 1
    err = capsys.readouterr().err
    assert "could not be installed" in err and "enroll again" in err
    assert MQTT_PASSWORD not in err
    assert (device.state_dir / ENROLLMENT_FILE).exists()  # the server did enroll it


@pytest.mark.swtpm
def test_a_malformed_mqtt_answer_is_refused(
    device: Device, fake_server: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_server.mqtt = _mqtt_answer() | {"username": "someone-else"}
    assert enroll(device) == 1
    err = capsys.readouterr().err
    assert "user name" in err and MQTT_PASSWORD not in err
    assert not device.mqtt_password_file.exists()


@pytest.mark.swtpm
def test_a_server_refusal_is_reported_with_its_message(
    device: Device, fake_server: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_server.mode = "refuse-start"
    assert enroll(device) == 1
    err = capsys.readouterr().err
    assert "refused the enrollment" in err and "EK chain not trusted" in err
    assert not (device.state_dir / ENROLLMENT_FILE).exists()


@pytest.mark.swtpm
def test_a_credential_for_another_key_is_refused_by_the_tpm(
    device: Device, fake_server: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_server.mode = "wrong-name"
    assert enroll(device) == 1
    assert "TPM refused" in capsys.readouterr().err
    assert [path for path, _ in fake_server.requests] == ["/v1/enroll/start"]
    assert not (device.state_dir / ENROLLMENT_FILE).exists()


def test_enroll_refuses_while_the_agent_runs(
    tmp_path: Path, fake_server: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    config = tmp_path / "agent.toml"
    config.write_text(
        f'version = 1\ndevice_id = "d1"\nstate_dir = "{state_dir}"\n'
        f'key_backend = "software:{tmp_path / "keys"}"\nserver_url = "{fake_server.url}"\n'
    )
    token = tmp_path / "t"
    token.write_text(TOKEN)
    # a live process that looks like the agent (read_pid checks the command line)
    agent = subprocess.Popen(["sh", "-c", "sleep 30", "edgeseal-agent"])
    try:
        (state_dir / "agent.pid").write_text(f"{agent.pid}\n")
        code = agent_main(["enroll", "--config", str(config), "--token-file", str(token)])
    finally:
        agent.kill()
        agent.wait()
    assert code == 1
    assert "stop it first" in capsys.readouterr().err
    assert fake_server.requests == []


@pytest.mark.parametrize(("text", "match"), [("", "one token line"), ("a\nb\n", "one token line")])
def test_token_file_must_hold_one_token(
    tmp_path: Path, text: str, match: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        f'version = 1\ndevice_id = "d1"\nstate_dir = "{tmp_path}"\n'
        'server_url = "http://127.0.0.1:9"\n'
    )
    token = tmp_path / "t"
    token.write_text(text)
    assert agent_main(["enroll", "--config", str(config), "--token-file", str(token)]) == 1
    assert match in capsys.readouterr().err


# --- pure pieces ------------------------------------------------------------------------------


def _cert(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ek")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(Encoding.DER)


def test_signed_policy_is_read_from_pcr_policy_path_as_the_daemon_does(tmp_path: Path) -> None:
    """Not emulated: ``pcr_policy_path``, bounded; a missing file is "no policy"."""
    path = tmp_path / "pcr-policy.json"
    config = AgentConfig(device_id="d1", state_dir=tmp_path / "state", pcr_policy_path=path)
    with pytest.raises(NoSignedPolicyError, match="no signed PCR policy"):
        read_signed_policy(config)
    key = ec.generate_private_key(ec.SECP256R1())
    policy = sign_pcr_policy(key, PCRValues("sha256", {i: bytes([i]) * 32 for i in PROFILE_PCRS}))
    path.write_bytes(policy.to_bytes())
    assert read_signed_policy(config).to_bytes() == policy.to_bytes()
    path.write_bytes(b" " * (MAX_POLICY_BYTES + 1))
    with pytest.raises(DaemonError, match="larger than any PCR policy") as err:
        read_signed_policy(config)
    assert not isinstance(err.value, NoSignedPolicyError)
    path.write_bytes(b"[]")
    with pytest.raises(PolicyFormatError):
        read_signed_policy(config)


def test_select_ek_certificate_picks_rsa_2048() -> None:
    ecc = _cert(ec.generate_private_key(ec.SECP256R1()))
    rsa2048 = _cert(rsa.generate_private_key(65537, 2048))
    assert select_ek_certificate([ecc, b"garbage", rsa2048]) == rsa2048
    with pytest.raises(EnrollmentError, match="ECC EKs are not supported"):
        select_ek_certificate([ecc])
    with pytest.raises(EnrollmentError, match="no EK certificate"):
        select_ek_certificate([])


GOOD_CHALLENGE = {
    "challenge_id": "c-1",
    "credential_blob": base64.b64encode(b"\0" * 70).decode(),
    "encrypted_secret": base64.b64encode(b"\0" * 258).decode(),
    "nonce": "ab" * 32,
    "pcrs": [15, 0, 4, 9],
}


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"nonce": "ab" * 33}, "nonce"),
        ({"nonce": "xyz"}, "nonce"),
        ({"pcrs": [0, 24]}, "PCR"),
        ({"pcrs": []}, "PCR"),
        ({"pcrs": [0, 0]}, "PCR"),
        ({"pcrs": [True]}, "PCR"),
        ({"credential_blob": "%%%"}, "base64"),
        ({"encrypted_secret": base64.b64encode(b"\0" * 5000).decode()}, "encrypted_secret"),
        ({"challenge_id": "../x y"}, "challenge id"),
    ],
)
def test_challenge_from_the_server_is_checked(change: dict[str, Any], match: str) -> None:
    assert EnrollChallenge.from_json(GOOD_CHALLENGE).pcrs == (0, 4, 9, 15)
    with pytest.raises(EnrollmentError, match=match):
        EnrollChallenge.from_json({**GOOD_CHALLENGE, **change})


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"url": "http://broker:1883"}, "mqtt:// or mqtts://"),
        ({"url": "mqtt://u:p@broker"}, "no credentials"),
        ({"username": "other"}, "user name"),
        ({"password": "short"}, "16..256"),
        ({"password": MQTT_PASSWORD + " x"}, "without spaces"),
        ({"password": "p" * 257}, "16..256"),
        ({"password": 42}, "printable"),
        ({"extra": 1}, "url, username, password"),
    ],
)
def test_mqtt_answer_from_the_server_is_checked(change: dict[str, Any], match: str) -> None:
    good = _mqtt_answer()
    credentials = MQTTCredentials.from_json(good, "enroll-1")
    assert credentials.password == MQTT_PASSWORD and MQTT_PASSWORD not in repr(credentials)
    with pytest.raises(EnrollmentError, match=match) as info:
        MQTTCredentials.from_json(good | change, "enroll-1")
    assert MQTT_PASSWORD not in info.value.diagnostics()
    with pytest.raises(EnrollmentError):
        MQTTCredentials.from_json([good], "enroll-1")


def test_drop_in_escapes_what_it_names(tmp_path: Path) -> None:
    odd = tmp_path / 'dir "quoted" \\ back' / "pw"
    text = mqtt_drop_in_text("mqtt://[::1]:1883", odd)
    config = tmp_path / "agent.toml"
    config.write_text('version = 1\nmqtt_url = "mqtt://old:1"\n')
    (tmp_path / "agent.toml.d").mkdir()
    (tmp_path / "agent.toml.d" / "50-mqtt.toml").write_text(text)
    loaded = load_config(config)
    assert (loaded.mqtt_url, loaded.mqtt_password_file) == ("mqtt://[::1]:1883", odd)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another user")
def test_password_file_goes_to_the_agents_user_when_enroll_runs_as_root(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    os.chown(state_dir, 65534, 65534)  # the agent's user owns its state directory
    credentials = MQTTCredentials(MQTT_URL, "enroll-1", MQTT_PASSWORD)
    done = install_mqtt_credentials(
        credentials,
        config_file=tmp_path / "agent.toml",
        password_file=tmp_path / "mqtt-password",
        state_dir=state_dir,
    )
    st = done.password_file.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (65534, 65534, 0o600)
    assert done.drop_in == tmp_path / "agent.toml.d" / "50-mqtt.toml"
