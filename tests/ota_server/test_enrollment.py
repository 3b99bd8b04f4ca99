"""Enrollment: EK chain, credential activation, quote, baseline - the service and the HTTP API.

The device is :class:`enroll_helpers.SoftTpm`, built from the contract's byte
formats (not from the sdk code under test): a real RSA 2048 EK certified by
a test vendor CA, a real P-256 AK, ActivateCredential and quotes computed in
software. Service-level tests travel in time with an injected clock; the
HTTP tests go through the real uvicorn server.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from enroll_helpers import EkCa, SoftTpm, b64, pcr_values, pcrs_json
from hypothesis import given, settings
from hypothesis import strategies as st
from release_helpers import device_key_pem
from server_fixture import RunningServer, new_signer
from sqlalchemy.orm import Session

from edgeseal.hardware.policy import authority_fingerprint
from edgeseal.ota_server.audit import AuditEntry, AuditLog
from edgeseal.ota_server.config import DEFAULT_ATTESTATION_PCRS, ServerConfig
from edgeseal.ota_server.context import ServerContext
from edgeseal.ota_server.db import Database, DeviceAttestationRow, EnrollmentChallengeRow
from edgeseal.ota_server.devices import add_device
from edgeseal.ota_server.ek_ca import UntrustedEkError, add_ek_cas
from edgeseal.ota_server.enrollment import (
    Challenge,
    ChallengeExpiredError,
    Enrollment,
    EnrollmentRefusedError,
)
from edgeseal.ota_server.initialize import Officers, initialize
from edgeseal.ota_server.revocation import mark_revoked
from edgeseal.ota_server.routes_enroll import parse_evidence
from edgeseal.ota_server.service_errors import (
    BadRequestError,
    ConfigError,
    ConflictError,
    NotFoundError,
)
from edgeseal.sdk.errors import FormatError

BASELINE = pcr_values()


@dataclass
class Clock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Env:
    ctx: ServerContext
    clock: Clock
    ca: EkCa
    enrollment: Enrollment

    def entries(self) -> list[AuditEntry]:
        with self.ctx.db.session() as session:
            return AuditLog.entries(session)


def _officers() -> Officers:
    root, targets = [new_signer() for _ in range(1)], [new_signer() for _ in range(1)]
    return Officers(
        root_keys=[s.public_key for s in root],
        root_threshold=1,
        root_signers=root,
        targets_keys=[s.public_key for s in targets],
        targets_threshold=1,
        targets_signers=targets,
    )


def _add_device(ctx: ServerContext, device_id: str, hardware_class: str) -> None:
    body = {
        "id": device_id,
        "public_key_pem": device_key_pem()[1],
        "hardware_class": hardware_class,
        "channel": "stable",
    }

    def work(session: Session) -> tuple[Any, dict[str, Any]]:
        return add_device(ctx, session, None, body)

    ctx.mutate(actor="test", action="device.add", target=device_id, work=work)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    data = tmp_path / "server"
    initialize(data, _officers(), config=ServerConfig(bin_bits=2))
    clock = Clock(datetime.now(UTC).replace(microsecond=0))
    ctx = ServerContext.open(data, now=clock)
    try:
        _add_device(ctx, "dev-1", "rpi5")
        ca = EkCa()
        add_ek_cas(ctx.data.ek_ca, ca.pem(), source="test")
        yield Env(ctx, clock, ca, Enrollment(ctx, actor="test-operator"))
    finally:
        ctx.close()


def answer(tpm: SoftTpm, challenge: Challenge, pcrs: dict[int, bytes] = BASELINE) -> Any:
    secret = tpm.activate_credential(challenge.credential_blob, challenge.encrypted_secret)
    return secret, pcrs, tpm.quote(challenge.nonce, pcrs)


def enroll(
    env: Env, tpm: SoftTpm, device_id: str = "dev-1", *, authority: bytes | None = None
) -> Any:
    challenge = env.enrollment.start(device_id, tpm.ek_certificate, tpm.ak_public)
    return env.enrollment.finish(
        challenge.challenge_id, *answer(tpm, challenge), pcr_policy_authority=authority
    )


def spki(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def compressed_spki(key: ec.EllipticCurvePrivateKey) -> bytes:
    """The same P-256 key as a SubjectPublicKeyInfo with a compressed point (RFC 5480, 2.2)."""
    point = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
    )
    # SEQUENCE { SEQUENCE { id-ecPublicKey, secp256r1 }, BIT STRING (0 unused bits, point) }
    return bytes.fromhex("3039301306072a8648ce3d020106082a8648ce3d030107032200") + point


# --- the service ------------------------------------------------------------------------------


def test_enrollment_records_ak_ek_hash_and_baseline(env: Env) -> None:
    tpm = SoftTpm(env.ca)
    challenge = env.enrollment.start("dev-1", tpm.ek_certificate, tpm.ak_public)
    assert challenge.pcrs == (0, 4, 9, 15)
    assert len(challenge.nonce) == 32
    secret, pcrs, quote = answer(tpm, challenge)
    enrolled = env.enrollment.finish(challenge.challenge_id, secret, pcrs, quote)
    assert enrolled.mqtt is None  # this server runs no broker
    record = enrolled.record
    assert record.device_id == "dev-1"
    assert record.ak_public == tpm.ak_public
    assert record.pcrs == BASELINE and record.pcr_bank == "sha256"
    assert record.ek_certificate_sha256 == hashlib.sha256(tpm.ek_certificate).hexdigest()
    assert not record.revoked
    assert record.pcr_policy_authority is None  # it named no PCR policy authority
    with env.ctx.db.session() as session:
        row = session.get(DeviceAttestationRow, "dev-1")
        assert row is not None and row.pcrs == pcrs_json(BASELINE)
        assert session.query(EnrollmentChallengeRow).count() == 0  # consumed
    start, finish = env.entries()[-2:]
    assert (start.action, start.outcome) == ("enroll.start", "accepted")
    assert (finish.action, finish.outcome) == ("enroll.finish", "accepted")
    assert finish.details["device"] == "dev-1" and finish.details["re_enrolled"] is False
    assert finish.details["pcr_policy_authority"] is None
    dump = json.dumps([e.as_json() for e in env.entries()])
    for spelling in (secret.hex(), b64(secret), base64.urlsafe_b64encode(secret).decode()):
        assert spelling not in dump


def test_unknown_device(env: Env) -> None:
    tpm = SoftTpm(env.ca)
    with pytest.raises(NotFoundError, match="unknown device 'ghost'"):
        env.enrollment.start("ghost", tpm.ek_certificate, tpm.ak_public)
    assert env.entries()[-1].outcome == "refused"


def test_ek_from_an_untrusted_ca(env: Env) -> None:
    tpm = SoftTpm(EkCa(name=env.ca.name))  # same names, other keys
    with pytest.raises(UntrustedEkError, match="EK certificate does not chain"):
        env.enrollment.start("dev-1", tpm.ek_certificate, tpm.ak_public)
    for pem in env.ctx.data.ek_ca.glob("*.pem"):
        pem.unlink()
    with pytest.raises(UntrustedEkError, match="trusts no EK CA"):
        env.enrollment.start("dev-1", SoftTpm(env.ca).ek_certificate, tpm.ak_public)
    assert "EK" in env.entries()[-1].details["reason"]


def test_only_the_root_and_the_intermediate_together_make_a_chain(env: Env) -> None:
    tpm = SoftTpm(env.ca)
    for pem in env.ctx.data.ek_ca.glob("*.pem"):
        pem.unlink()
    add_ek_cas(env.ctx.data.ek_ca, env.ca.root_pem(), source="root")
    with pytest.raises(UntrustedEkError):  # the device sends only its EK certificate
        env.enrollment.start("dev-1", tpm.ek_certificate, tpm.ak_public)
    add_ek_cas(env.ctx.data.ek_ca, env.ca.issuer_pem(), source="issuer")
    assert enroll(env, tpm).record.device_id == "dev-1"


def test_ecc_and_malformed_ek_certificates(env: Env) -> None:
    tpm = SoftTpm(env.ca)
    ecc_cert = env.ca.issue_ek(ec.generate_private_key(ec.SECP384R1()).public_key())
    with pytest.raises(BadRequestError, match="ECC EKs are not supported"):
        env.enrollment.start("dev-1", ecc_cert, tpm.ak_public)
    with pytest.raises(BadRequestError, match="not a DER X"):
        env.enrollment.start("dev-1", b"\x30\x03junk", tpm.ak_public)


def test_ak_must_be_a_restricted_signing_key(env: Env) -> None:
    tpm = SoftTpm(env.ca, ak_attributes=0x2 | 0x10 | 0x20 | 0x40 | 0x40000)  # not restricted
    with pytest.raises(BadRequestError, match="restricted signing key; it lacks RESTRICTED"):
        env.enrollment.start("dev-1", tpm.ek_certificate, tpm.ak_public)
    with pytest.raises(FormatError):
        env.enrollment.start("dev-1", tpm.ek_certificate, b"\x00\x23")


def test_wrong_secret_is_refused_and_burns_the_challenge(env: Env) -> None:
    tpm = SoftTpm(env.ca)
    challenge = env.enrollment.start("dev-1", tpm.ek_certificate, tpm.ak_public)
    secret, pcrs, quote = answer(tpm, challenge)
    with pytest.raises(EnrollmentRefusedError, match="credential secret is wrong"):
        env.enrollment.finish(challenge.challenge_id, bytes(32), pcrs, quote)
    with pytest.raises(NotFoundError, match="already used"):
        env.enrollment.finish(challenge.challenge_id, secret, pcrs, quote)
    refused = env.entries()[-2:]
    assert [e.outcome for e in refused] == ["refused", "refused"]
    assert refused[0].details["status"] == 403
    assert secret.hex() not in json.dumps([e.as_json() for e in env.entries()])


def test_another_tpm_cannot_activate_the_credential(env: Env) -> None:
    """The EK certificate of one TPM with the AK of another: the credential does not open."""
    honest, thief = SoftTpm(env.ca), SoftTpm(env.ca)
    challenge = env.enrollment.start("dev-1", honest.ek_certificate, thief.ak_public)
    with pytest.raises(ValueError, match="Decryption failed"):  # RSA-OAEP under another EK
        thief.activate_credential(challenge.credential_blob, challenge.encrypted_secret)


def test_expired_challenge(env: Env) -> None:
    tpm = SoftTpm(env.ca)
    challenge = env.enrollment.start("dev-1", tpm.ek_certificate, tpm.ak_public)
    env.clock.now += timedelta(minutes=5)
    with pytest.raises(ChallengeExpiredError, match="expired"):
        env.enrollment.finish(challenge.challenge_id, *answer(tpm, challenge))
    with pytest.raises(NotFoundError):  # and gone
        env.enrollment.finish(challenge.challenge_id, *answer(tpm, challenge))


def test_a_reused_challenge_is_refused_even_after_success(env: Env) -> None:
    tpm = SoftTpm(env.ca)
    challenge = env.enrollment.start("dev-1", tpm.ek_certificate, tpm.ak_public)
    response = answer(tpm, challenge)
    env.enrollment.finish(challenge.challenge_id, *response)
    with pytest.raises(NotFoundError):
        env.enrollment.finish(challenge.challenge_id, *response)


def test_a_new_start_replaces_the_open_challenge(env: Env) -> None:
    tpm = SoftTpm(env.ca)
    first = env.enrollment.start("dev-1", tpm.ek_certificate, tpm.ak_public)
    second = env.enrollment.start("dev-1", tpm.ek_certificate, tpm.ak_public)
    with pytest.raises(NotFoundError):
        env.enrollment.finish(first.challenge_id, *answer(tpm, first))
    enrolled = env.enrollment.finish(second.challenge_id, *answer(tpm, second))
    assert enrolled.record.device_id == "dev-1"


def test_quote_with_the_wrong_nonce(env: Env) -> None:
    tpm = SoftTpm(env.ca)
    challenge = env.enrollment.start("dev-1", tpm.ek_certificate, tpm.ak_public)
    secret = tpm.activate_credential(challenge.credential_blob, challenge.encrypted_secret)
    stale = tpm.quote(b"\x01" * 32, BASELINE)
    with pytest.raises(EnrollmentRefusedError, match="quote does not check out"):
        env.enrollment.finish(challenge.challenge_id, secret, BASELINE, stale)


def test_quote_signed_by_another_key(env: Env) -> None:
    tpm, other = SoftTpm(env.ca), SoftTpm(env.ca)
    challenge = env.enrollment.start("dev-1", tpm.ek_certificate, tpm.ak_public)
    secret = tpm.activate_credential(challenge.credential_blob, challenge.encrypted_secret)
    with pytest.raises(EnrollmentRefusedError, match="quote"):
        env.enrollment.finish(
            challenge.challenge_id, secret, BASELINE, other.quote(challenge.nonce, BASELINE)
        )


@pytest.mark.parametrize("indices", [(0, 4, 9), (0, 4, 9, 15, 16), (0, 1, 2, 3)])
def test_pcr_set_must_be_the_requested_one(env: Env, indices: tuple[int, ...]) -> None:
    tpm = SoftTpm(env.ca)
    challenge = env.enrollment.start("dev-1", tpm.ek_certificate, tpm.ak_public)
    pcrs = pcr_values(indices)  # a quote that is valid over the device's own choice
    with pytest.raises(EnrollmentRefusedError, match="exactly PCRs 0, 4, 9, 15"):
        env.enrollment.finish(challenge.challenge_id, *answer(tpm, challenge, pcrs))


def test_reported_pcr_values_must_match_the_quote(env: Env) -> None:
    tpm = SoftTpm(env.ca)
    challenge = env.enrollment.start("dev-1", tpm.ek_certificate, tpm.ak_public)
    secret, _pcrs, quote = answer(tpm, challenge)
    with pytest.raises(EnrollmentRefusedError, match="quote"):
        env.enrollment.finish(challenge.challenge_id, secret, pcr_values(tag=b"tampered"), quote)


def test_re_enroll_same_ak_refreshes_baseline_another_ak_conflicts(env: Env) -> None:
    tpm = SoftTpm(env.ca)
    enroll(env, tpm)
    challenge = env.enrollment.start("dev-1", tpm.ek_certificate, tpm.ak_public)
    new_baseline = pcr_values(tag=b"firmware 2")
    record = env.enrollment.finish(
        challenge.challenge_id, *answer(tpm, challenge, new_baseline)
    ).record
    assert record.pcrs == new_baseline
    assert env.entries()[-1].details["re_enrolled"] is True
    other = SoftTpm(env.ca)
    with pytest.raises(ConflictError, match="another attestation key"):
        env.enrollment.start("dev-1", other.ek_certificate, other.ak_public)


def test_pcr_policy_authority_is_recorded_and_re_enrollment_replaces_it(env: Env) -> None:
    """The key whose signed PCR policies approve later boot states: each enrollment says
    which one the device has now - another after a key rotation, none after a reset."""
    tpm = SoftTpm(env.ca)
    first, second = (ec.generate_private_key(ec.SECP256R1()) for _ in range(2))
    assert enroll(env, tpm, authority=spki(first)).record.pcr_policy_authority == spki(first)
    assert env.entries()[-1].details["pcr_policy_authority"] == authority_fingerprint(
        first.public_key()
    )
    record = enroll(env, tpm, authority=spki(second)).record
    assert record.pcr_policy_authority == spki(second)
    assert env.entries()[-1].details["re_enrolled"] is True
    with env.ctx.db.session() as session:
        row = session.get(DeviceAttestationRow, "dev-1")
        assert row is not None and row.pcr_policy_authority == spki(second)
    assert enroll(env, tpm).record.pcr_policy_authority is None
    assert env.entries()[-1].details["pcr_policy_authority"] is None
    with env.ctx.db.session() as session:
        row = session.get(DeviceAttestationRow, "dev-1")
        assert row is not None and row.pcr_policy_authority is None


def test_pcr_policy_authority_is_stored_in_one_spelling(env: Env) -> None:
    """A compressed point is the same key: stored as the uncompressed SubjectPublicKeyInfo
    that signed PCR policies carry, so the two compare equal at key release."""
    key = ec.generate_private_key(ec.SECP256R1())
    record = enroll(env, SoftTpm(env.ca), authority=compressed_spki(key)).record
    assert record.pcr_policy_authority == spki(key)


@pytest.mark.parametrize(
    ("authority", "why"),
    [
        (b"\x30\x03junk", "not a DER SubjectPublicKeyInfo"),
        (spki(rsa.generate_private_key(65537, 2048)), "must be an ECDSA P-256 public key"),
        (spki(ec.generate_private_key(ec.SECP384R1())), "must be an ECDSA P-256 public key"),
        (bytes(600), "1 to 512 bytes"),
    ],
    ids=["junk", "rsa", "p384", "too long"],
)
def test_pcr_policy_authority_must_be_a_p256_public_key(
    env: Env, authority: bytes, why: str
) -> None:
    tpm = SoftTpm(env.ca)
    with pytest.raises(BadRequestError, match=why) as refused:
        enroll(env, tpm, authority=authority)
    assert refused.value.field == "pcr_policy_authority"
    with env.ctx.db.session() as session:
        assert session.get(DeviceAttestationRow, "dev-1") is None  # nothing recorded
    last = env.entries()[-1]
    assert (last.action, last.outcome, last.details["status"]) == ("enroll.finish", "refused", 400)


def test_revoked_device_cannot_enroll_again(env: Env) -> None:
    tpm = SoftTpm(env.ca)
    enroll(env, tpm)
    with env.ctx.db.session() as session:
        record = mark_revoked(session, "dev-1")
    assert record.enrolled and not record.already_revoked
    with pytest.raises(EnrollmentRefusedError, match="revoked"):
        env.enrollment.start("dev-1", tpm.ek_certificate, tpm.ak_public)
    with env.ctx.db.session() as session, pytest.raises(NotFoundError, match="unknown device"):
        mark_revoked(session, "ghost")


def test_device_revoked_before_it_enrolled_cannot_enroll(env: Env) -> None:
    """A stolen device may never have enrolled: its revocation holds all the same."""
    _add_device(env.ctx, "dev-2", "rpi5")
    tpm = SoftTpm(env.ca)
    challenge = env.enrollment.start("dev-2", tpm.ek_certificate, tpm.ak_public)
    with env.ctx.db.session() as session:
        record = mark_revoked(session, "dev-2")
        row = session.get(DeviceAttestationRow, "dev-2")
        assert row is not None and row.revoked and row.ak_public == b""
    assert not record.enrolled and not record.already_revoked
    # the challenge it had open went with the revocation
    with pytest.raises(NotFoundError, match="unknown enrollment challenge"):
        env.enrollment.finish(challenge.challenge_id, *answer(tpm, challenge))
    with pytest.raises(EnrollmentRefusedError, match="revoked"):
        env.enrollment.start("dev-2", tpm.ek_certificate, tpm.ak_public)
    with env.ctx.db.session() as session:
        assert mark_revoked(session, "dev-2").already_revoked  # idempotent
    assert [(e.action, e.outcome) for e in env.entries()[-2:]] == [
        ("enroll.finish", "refused"),
        ("enroll.start", "refused"),
    ]


def test_pcrs_come_from_the_hardware_class(env: Env) -> None:
    _add_device(env.ctx, "pc-1", "x86_64")
    tpm = SoftTpm(env.ca)
    challenge = env.enrollment.start("pc-1", tpm.ek_certificate, tpm.ak_public)
    assert challenge.pcrs == (0, 4, 7, 9, 15)
    pcrs = pcr_values(challenge.pcrs)
    enrolled = env.enrollment.finish(challenge.challenge_id, *answer(tpm, challenge, pcrs))
    assert enrolled.record.pcrs == pcrs


def test_default_pcr_table_matches_the_board_profiles() -> None:
    """server.toml repeats the profiles' PCR policy (the server may not import hardware)."""
    from edgeseal.hardware.profiles import list_profiles, load_profile

    config = ServerConfig()
    for name in list_profiles():
        profile = load_profile(name)
        assert config.pcrs_for(profile.hardware_class) == profile.policy_pcrs, name
    assert DEFAULT_ATTESTATION_PCRS["default"] == (0, 4, 9, 15)


def test_pcr_table_in_server_toml() -> None:
    text = ServerConfig().to_toml().replace('"default" = [0, 4, 9, 15]', '"default" = [15, 0]')
    config = ServerConfig.from_toml(text)
    assert config.pcrs_for("rpi5") == (0, 15)
    assert config.pcrs_for("x86_64") == (0, 4, 7, 9, 15)
    assert ServerConfig.from_toml(config.to_toml()) == config
    for bad in ('"extra" = [24]', '"extra" = [1, 1]', '"Bad Class" = [0]', '"extra" = []'):
        with pytest.raises(ConfigError, match="attestation_pcrs"):
            ServerConfig.from_toml(text + bad + "\n")
    no_default = ServerConfig().to_toml().replace('"default" = [0, 4, 9, 15]\n', "")
    with pytest.raises(ConfigError, match="'default'"):
        ServerConfig.from_toml(no_default)


# --- through the real server -------------------------------------------------------------------


def _server_setup(server: RunningServer) -> tuple[EkCa, str]:
    ca = EkCa()
    add_ek_cas(server.data_dir / "ek-ca", ca.pem(), source="test")
    operator = server.token("operator")
    added = server.request(
        "POST",
        "/api/v1/devices",
        token=operator,
        body={
            "id": "dev-1",
            "public_key_pem": device_key_pem()[1],
            "hardware_class": "rpi5",
            "channel": "stable",
        },
    )
    assert added.status == 201, added.body
    return ca, operator


def _audit(server: RunningServer, action: str) -> list[dict[str, Any]]:
    answer = server.request("GET", "/api/v1/audit", token=server.admin_token)
    assert answer.status == 200, answer.body
    body = answer.json()
    entries = body["entries"] if isinstance(body, dict) else body
    return [e for e in entries if e["action"] == action]


def test_enrollment_over_http(ota_server: RunningServer) -> None:
    server = ota_server
    ca, operator = _server_setup(server)
    tpm = SoftTpm(ca)
    started = server.request(
        "POST", "/v1/enroll/start", token=operator, body=tpm.start_body("dev-1")
    )
    assert started.status == 200, started.body
    challenge = started.json()
    assert set(challenge) == {
        "challenge_id",
        "credential_blob",
        "encrypted_secret",
        "nonce",
        "pcrs",
    }
    assert challenge["pcrs"] == [0, 4, 9, 15] and len(bytes.fromhex(challenge["nonce"])) == 32
    body = tpm.finish_body(challenge, BASELINE)
    finished = server.request("POST", "/v1/enroll/finish", token=operator, body=body)
    assert finished.status == 200, finished.body
    assert finished.json() == {"device_id": "dev-1", "enrolled": True}
    again = server.request("POST", "/v1/enroll/finish", token=operator, body=body)
    assert again.status == 404 and again.json()["error"]["code"] == "not-found"
    # an admin may enroll too; the same AK re-enrolls
    restart = server.request(
        "POST", "/v1/enroll/start", token=server.admin_token, body=tpm.start_body("dev-1")
    )
    assert restart.status == 200, restart.body
    starts, finishes = _audit(server, "enroll.start"), _audit(server, "enroll.finish")
    assert [e["outcome"] for e in starts] == ["accepted", "accepted"]
    assert [e["outcome"] for e in finishes] == ["accepted", "refused"]
    assert body["secret"] not in json.dumps(starts + finishes)


def test_refusals_over_http(ota_server: RunningServer) -> None:
    server = ota_server
    ca, operator = _server_setup(server)
    tpm = SoftTpm(ca)

    def start(body: Any, token: str | None = operator) -> Any:
        return server.request("POST", "/v1/enroll/start", token=token, body=body)

    unknown = start(tpm.start_body("ghost"))
    assert unknown.status == 404 and "unknown device" in unknown.json()["error"]["message"]
    untrusted = start(SoftTpm(EkCa()).start_body("dev-1"))
    assert untrusted.status == 403 and "EK" in untrusted.json()["error"]["message"]
    bad_b64 = start(tpm.start_body("dev-1") | {"ak_public": "***"})
    assert bad_b64.status == 400 and "ak_public" in bad_b64.json()["error"]["message"]
    extra = start(tpm.start_body("dev-1") | {"extra": 1})
    assert extra.status == 400
    huge = start({"device_id": "dev-1", "ek_certificate": "A" * 70_000, "ak_public": "AA=="})
    assert huge.status == 413

    challenge = start(tpm.start_body("dev-1")).json()
    wrong = tpm.finish_body(challenge, BASELINE) | {"secret": b64(bytes(32))}
    refused = server.request("POST", "/v1/enroll/finish", token=operator, body=wrong)
    assert refused.status == 403, refused.body
    assert "secret is wrong" in refused.json()["error"]["message"]
    honest = tpm.finish_body(challenge, BASELINE)
    burnt = server.request("POST", "/v1/enroll/finish", token=operator, body=honest)
    assert burnt.status == 404  # the refused attempt consumed the challenge

    challenge = start(tpm.start_body("dev-1")).json()
    mismatch = tpm.finish_body(challenge, pcr_values((0, 4, 9)))
    answer = server.request("POST", "/v1/enroll/finish", token=operator, body=mismatch)
    assert answer.status == 403 and "exactly PCRs" in answer.json()["error"]["message"]

    reasons = [e["details"].get("reason", "") for e in _audit(server, "enroll.start")]
    assert any("unknown device" in r for r in reasons)
    assert any("EK certificate" in r for r in reasons)
    finishes = _audit(server, "enroll.finish")
    assert [e["outcome"] for e in finishes] == ["refused"] * 3
    assert wrong["secret"] not in json.dumps(finishes) and honest["secret"] not in json.dumps(
        finishes
    )


def test_enrollment_role_matrix(ota_server: RunningServer) -> None:
    server = ota_server
    ca, operator = _server_setup(server)
    tpm = SoftTpm(ca)
    tokens: dict[str, str | None] = {
        "none": None,
        "viewer": server.token("viewer"),
        "release-manager": server.token("release-manager", "detector"),
    }
    for who, token in tokens.items():
        for path in ("/v1/enroll/start", "/v1/enroll/finish"):
            answer = server.request("POST", path, token=token, body=tpm.start_body("dev-1"))
            assert answer.status == (401 if token is None else 403), (who, path, answer.body)
    # a viewer's finish does not burn an operator's challenge
    challenge = server.request(
        "POST", "/v1/enroll/start", token=operator, body=tpm.start_body("dev-1")
    ).json()
    body = tpm.finish_body(challenge, BASELINE)
    viewer = server.request("POST", "/v1/enroll/finish", token=tokens["viewer"], body=body)
    assert viewer.status == 403
    ok = server.request("POST", "/v1/enroll/finish", token=operator, body=body)
    assert ok.status == 200, ok.body
    refused = [e for e in _audit(server, "enroll.start") if e["outcome"] == "refused"]
    assert len(refused) == 3


def _stored_authority(server: RunningServer, device_id: str) -> bytes | None:
    db = Database.open(server.data_dir / "server.db")
    try:
        with db.session() as session:
            row = session.get(DeviceAttestationRow, device_id)
            assert row is not None
            return row.pcr_policy_authority
    finally:
        db.close()


def test_pcr_policy_authority_over_http(ota_server: RunningServer) -> None:
    server = ota_server
    ca, operator = _server_setup(server)
    authority = ec.generate_private_key(ec.SECP256R1())
    tpm = SoftTpm(ca, policy_authority=authority.public_key())

    def finish(edit: Any = None) -> Any:
        started = server.request(
            "POST", "/v1/enroll/start", token=operator, body=tpm.start_body("dev-1")
        )
        assert started.status == 200, started.body
        body = tpm.finish_body(started.json(), BASELINE)
        if edit is not None:
            edit(body)
        return server.request("POST", "/v1/enroll/finish", token=operator, body=body)

    answer = finish()
    assert answer.status == 200, answer.body
    assert _stored_authority(server, "dev-1") == spki(authority)
    # an agent from before signed PCR policies sends no key: read as null
    answer = finish(lambda body: body.pop("pcr_policy_authority"))
    assert answer.status == 200, answer.body
    assert _stored_authority(server, "dev-1") is None
    for bad, why in (
        ("***", "not valid base64"),
        (b64(spki(rsa.generate_private_key(65537, 2048))), "ECDSA P-256"),
        (7, "base64"),
    ):
        answer = finish(lambda body, bad=bad: body.update(pcr_policy_authority=bad))
        assert answer.status == 400, answer.body
        assert why in answer.json()["error"]["message"]
    finishes = _audit(server, "enroll.finish")
    assert [e["outcome"] for e in finishes] == ["accepted"] * 2 + ["refused"] * 3
    assert finishes[0]["details"]["pcr_policy_authority"] == authority_fingerprint(
        authority.public_key()
    )
    assert finishes[1]["details"]["pcr_policy_authority"] is None


# --- untrusted request bodies ------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=80),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@settings(max_examples=300)
@given(
    secret=_json | st.binary(max_size=40).map(b64),
    pcrs=_json | st.dictionaries(st.text(max_size=3), st.text(max_size=70), max_size=5),
    quote=_json | st.fixed_dictionaries({"attest": _json, "signature": _json}),
    authority=_json | st.binary(max_size=600).map(b64),
)
def test_finish_body_parser_refuses_garbage_with_400(
    secret: Any, pcrs: Any, quote: Any, authority: Any
) -> None:
    body = {"challenge_id": "x", "secret": secret, "pcrs": pcrs, "quote": quote}
    body["pcr_policy_authority"] = authority
    try:
        evidence = parse_evidence(body)
    except BadRequestError:
        return
    assert len(evidence.secret) == 32 and all(len(v) == 32 for v in evidence.pcrs.values())
    assert authority is None or 1 <= len(evidence.pcr_policy_authority or b"") <= 512
