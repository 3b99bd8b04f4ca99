"""``edgeseal-server attest bundle|bundle-key``, ``ek-ca add`` and ``device revoke``.

A real server on loopback with a published and a yanked release and a device
enrolled over HTTP; the CLI runs against the same data directory, and the
bundle it writes must load with the sdk's :func:`load_trust_bundle` and the
exported key - and with no other key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from enroll_helpers import EkCa, SoftTpm, pcr_values
from release_helpers import build_release, device_key_pem, publish, sign
from server_fixture import RunningServer

from edgeseal.ota_server.cli import main
from edgeseal.ota_server.ek_ca import add_ek_cas
from edgeseal.sdk.errors import AttestationError
from edgeseal.sdk.trust_bundle import TrustBundle, load_trust_bundle

BASELINE = pcr_values()


def cli(capsys: pytest.CaptureFixture[str], server: RunningServer, *argv: str) -> tuple[int, str]:
    code = main(["--data", str(server.data_dir), *argv])
    out, err = capsys.readouterr()
    return code, out + err


def pinned_key(path: Path) -> ec.EllipticCurvePublicKey:
    key = serialization.load_pem_public_key(path.read_bytes())
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


def add_device(server: RunningServer, token: str, device_id: str) -> None:
    body = {
        "id": device_id,
        "public_key_pem": device_key_pem()[1],
        "hardware_class": "rpi5",
        "channel": "stable",
    }
    answer = server.request("POST", "/api/v1/devices", token=token, body=body)
    assert answer.status == 201, answer.body


def enroll(server: RunningServer, token: str, tpm: SoftTpm, device_id: str) -> None:
    started = server.request(
        "POST", "/v1/enroll/start", token=token, body=tpm.start_body(device_id)
    )
    assert started.status == 200, started.body
    body = tpm.finish_body(started.json(), BASELINE)
    finished = server.request("POST", "/v1/enroll/finish", token=token, body=body)
    assert finished.status == 200, finished.body


def export(
    capsys: pytest.CaptureFixture[str], server: RunningServer, tmp_path: Path, *extra: str
) -> tuple[TrustBundle, Path]:
    bundle, key = tmp_path / "trust.json", tmp_path / "bundle-key.pem"
    code, out = cli(capsys, server, "attest", "bundle", "--out", str(bundle), *extra)
    assert code == 0, out
    code, out = cli(capsys, server, "attest", "bundle-key", "--out", str(key))
    assert code == 0, out
    return load_trust_bundle(bundle.read_bytes(), pinned_key(key)), bundle


def test_bundle_lists_enrolled_devices_and_releases_and_marks_revocation(
    ota_server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = ota_server
    server.add_family("detector")
    rm = server.token("release-manager", "detector")
    operator = server.token("operator")
    first = build_release(server, "detector", 1)
    publish(server, first, rm)
    second = build_release(server, "detector", 2)
    publish(server, second, rm)
    yank = server.request("POST", "/api/v1/releases/detector-1/yank", token=rm, body={})
    assert yank.status == 200, yank.body
    sign(server, "detector-1", rm, 0)
    assert sign(server, "detector-1", rm, 1)["state"] == "yanked"

    ca = EkCa()
    ca_file = tmp_path / "vendor-ca.pem"
    ca_file.write_bytes(ca.pem())
    code, out = cli(capsys, server, "ek-ca", "add", str(ca_file))
    assert code == 0, out
    assert "Test TPM Vendor Root CA" in out and "Test TPM Vendor EK CA" in out
    add_device(server, operator, "dev-1")
    add_device(server, operator, "dev-2")  # added, never enrolled: not in the bundle
    tpm = SoftTpm(ca)
    enroll(server, operator, tpm, "dev-1")

    bundle, path = export(capsys, server, tmp_path, "--valid-days", "7", "--issuer", "fleet-a")
    assert bundle.issuer == "fleet-a"
    now = datetime.now(UTC)
    assert not bundle.expired(now) and bundle.expired(now + timedelta(days=7, minutes=1))
    assert [d.device_id for d in bundle.devices] == ["dev-1"]
    device = bundle.device("dev-1")
    assert device is not None
    assert device.hardware_class == "rpi5" and device.ak_public == tpm.ak_public
    assert device.ek_certificate_sha256 == hashlib.sha256(tpm.ek_certificate).hexdigest()
    assert dict(device.pcrs) == BASELINE and device.pcr_bank == "sha256"
    assert device.revoked is False
    assert device.pcr_policy_authority is None  # it enrolled without one
    for release, yanked in ((first, True), (second, False)):
        listed = bundle.release("detector", release.version)
        assert listed is not None
        assert listed.yanked is yanked
        assert listed.digest_alg == release.info.header.digest_alg
        assert listed.plaintext_digest == release.info.header.plaintext_digest
    # the bundle holds no secret: only public keys, hashes and PCR values
    payload = base64.b64decode(json.loads(path.read_bytes())["payload"])
    assert b"PRIVATE" not in payload

    code, out = cli(capsys, server, "device", "revoke", "--id", "dev-1")
    assert code == 0, out
    revoked, _ = export(capsys, server, tmp_path)
    assert revoked.device("dev-1") is not None
    assert revoked.device("dev-1").revoked is True  # type: ignore[union-attr]
    enrolled_again = server.request(
        "POST", "/v1/enroll/start", token=operator, body=tpm.start_body("dev-1")
    )
    assert enrolled_again.status == 403

    entries = server.request("GET", "/api/v1/audit", token=server.admin_token).json()
    actions = {(e["action"], e["outcome"]) for e in entries}
    assert {("ek-ca.add", "accepted"), ("attest.bundle", "accepted")} <= actions
    assert ("device.revoke", "accepted") in actions


def test_bundle_carries_each_devices_pcr_policy_authority(
    ota_server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The technician's boot-state check accepts a state the device's authority approved:
    the bundle says which authority that is, or null for a device enrolled without one."""
    server = ota_server
    operator = server.token("operator")
    ca = EkCa()
    add_ek_cas(server.data_dir / "ek-ca", ca.pem(), source="test")
    authority = ec.generate_private_key(ec.SECP256R1())
    authority_der = authority.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for device_id in ("dev-1", "dev-2"):
        add_device(server, operator, device_id)
    with_authority = SoftTpm(ca, policy_authority=authority.public_key())
    enroll(server, operator, with_authority, "dev-1")
    enroll(server, operator, SoftTpm(ca), "dev-2")

    bundle, path = export(capsys, server, tmp_path)
    first, second = bundle.device("dev-1"), bundle.device("dev-2")
    assert first is not None and first.pcr_policy_authority == authority_der
    assert second is not None and second.pcr_policy_authority is None
    payload = json.loads(base64.b64decode(json.loads(path.read_bytes())["payload"]))
    entries = {d["device_id"]: d for d in payload["devices"]}
    assert entries["dev-1"]["pcr_policy_authority"] == base64.b64encode(authority_der).decode()
    assert entries["dev-2"]["pcr_policy_authority"] is None  # present, null

    with_authority.policy_authority = None  # enrolled again without one: the next bundle says so
    enroll(server, operator, with_authority, "dev-1")
    again, _ = export(capsys, server, tmp_path)
    assert again.device("dev-1").pcr_policy_authority is None  # type: ignore[union-attr]


def test_bundle_does_not_load_with_another_key(
    ota_server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _bundle, path = export(capsys, ota_server, tmp_path)
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(AttestationError, match="not by the pinned bundle key"):
        load_trust_bundle(path.read_bytes(), other)


def test_bundle_key_is_private_and_created_on_first_use(
    ota_server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = ota_server.data_dir / "keys" / "bundle-key.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600  # made by init
    key_file.unlink()  # a data directory from before attestation existed
    bundle, _ = export(capsys, ota_server, tmp_path)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert bundle.devices == ()
    again, _ = export(capsys, ota_server, tmp_path)  # the same key, not a new one
    assert again.key_id == bundle.key_id


def test_ek_ca_add_refuses_what_is_not_a_ca(
    ota_server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = EkCa()
    leaf = tmp_path / "ek.pem"
    from cryptography import x509

    ek = x509.load_der_x509_certificate(SoftTpm(ca).ek_certificate)
    leaf.write_bytes(ek.public_bytes(serialization.Encoding.PEM))
    code, out = cli(capsys, ota_server, "ek-ca", "add", str(leaf))
    assert code == 1 and "is not a CA certificate" in out
    junk = tmp_path / "junk.pem"
    junk.write_text("hello\n")
    code, out = cli(capsys, ota_server, "ek-ca", "add", str(junk))
    assert code == 1 and "no PEM certificate" in out
    assert not list((ota_server.data_dir / "ek-ca").glob("*.pem"))


def test_revoke_of_unknown_and_never_enrolled_devices(
    ota_server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = cli(capsys, ota_server, "device", "revoke", "--id", "ghost")
    assert code == 1 and "unknown device" in out
    add_device(ota_server, ota_server.admin_token, "dev-9")  # added, never enrolled
    code, out = cli(capsys, ota_server, "device", "revoke", "--id", "dev-9")
    assert code == 0, out
    assert "dev-9 revoked" in out and "already" not in out
    code, out = cli(capsys, ota_server, "device", "revoke", "--id", "dev-9", "--json")
    assert code == 0, out
    answer = json.loads(out)
    assert answer["revoked"] is True and answer["already_revoked"] is True
    assert answer["enrolled"] is False
    # it has no AK to attest against: the bundle leaves it out (an unknown device fails)
    bundle, _ = export(capsys, ota_server, tmp_path)
    assert bundle.device("dev-9") is None
    tpm = SoftTpm(EkCa())
    refused = ota_server.request(
        "POST", "/v1/enroll/start", token=ota_server.admin_token, body=tpm.start_body("dev-9")
    )
    assert refused.status == 403 and "revoked" in refused.json()["error"]["message"]
    entries = ota_server.request("GET", "/api/v1/audit", token=ota_server.admin_token).json()
    revokes = [(e["target"], e["outcome"]) for e in entries if e["action"] == "device.revoke"]
    assert revokes == [
        ("devices/ghost", "refused"),
        ("devices/dev-9", "accepted"),
        ("devices/dev-9", "accepted"),
    ]
