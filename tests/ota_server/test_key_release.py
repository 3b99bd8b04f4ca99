"""Attested key release through the real server: ``POST /v1/keys/challenge`` and ``/release``.

A device is enrolled over HTTP with :class:`enroll_helpers.SoftTpm` (the
contract's byte formats in software) and a P-256 decryption key of its own; a
release with ``key_release = "attested"`` is sealed, uploaded and signed with
the real release flow. The device's requests are the sdk's bodies
(:mod:`edgeseal.sdk.key_release`), sent as bytes; one test drives the device
agent's own client against the server. The server's clock is injected, so the
expiry test travels in time instead of sleeping. Boot states approved after
enrollment are signed with the hardware layer's own
:func:`~edgeseal.hardware.policy.sign_pcr_policy`, the embedded team's tool.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from enroll_helpers import EkCa, SoftTpm, pcr_values
from release_helpers import BuiltRelease, build_release, device_key_pem, publish, sign
from server_fixture import Response, RunningServer, running_server

import edgeseal.ota_server.app as app_module
from edgeseal.hardware.policy import PCRValues, authority_fingerprint, sign_pcr_policy
from edgeseal.ota_server.ek_ca import add_ek_cas
from edgeseal.sdk.envelope import SoftwareRecipient, open_envelope
from edgeseal.sdk.key_release import (
    CHALLENGE_PATH,
    RELEASE_PATH,
    KeyChallenge,
    KeyChallengeRequest,
    KeyReleaseRequest,
    KeyReleaseResponse,
    key_release_binding,
)

BASELINE = pcr_values()
FAMILY = "detector"
#: The boot state after an approved OS update: a new kernel measured into PCR 9.
UPDATED = {**BASELINE, 9: hashlib.sha256(b"kernel 6.12").digest()}


@dataclass
class Clock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Device:
    id: str
    key: ec.EllipticCurvePrivateKey
    tpm: SoftTpm
    hardware_class: str = "rpi5"


@dataclass
class Env:
    server: RunningServer
    clock: Clock
    ca: EkCa
    operator: str
    rm: str

    # -- fleet ----------------------------------------------------------------------------------

    def add_device(
        self,
        device_id: str,
        *,
        hardware_class: str = "rpi5",
        channel: str = "stable",
        authority: ec.EllipticCurvePrivateKey | None = None,
    ) -> Device:
        """A device whose agent enrolls with ``authority`` as its PCR policy authority."""
        key, pem = device_key_pem()
        added = self.server.request(
            "POST",
            "/api/v1/devices",
            token=self.operator,
            body={
                "id": device_id,
                "public_key_pem": pem,
                "hardware_class": hardware_class,
                "channel": channel,
            },
        )
        assert added.status == 201, added.body
        tpm = SoftTpm(self.ca, policy_authority=authority.public_key() if authority else None)
        return Device(device_id, key, tpm, hardware_class)

    def enroll(self, device: Device, pcrs: dict[int, bytes] = BASELINE) -> None:
        started = self.server.request(
            "POST", "/v1/enroll/start", token=self.operator, body=device.tpm.start_body(device.id)
        )
        assert started.status == 200, started.body
        body = device.tpm.finish_body(started.json(), pcrs)
        finished = self.server.request("POST", "/v1/enroll/finish", token=self.operator, body=body)
        assert finished.status == 200, finished.body

    def enrolled_device(self, device_id: str = "dev-1", **kwargs: Any) -> Device:
        device = self.add_device(device_id, **kwargs)
        self.enroll(device)
        return device

    def revoke(self, device_id: str) -> None:
        answer = self.server.request(
            "POST", f"/api/v1/devices/{device_id}/revoke", token=self.operator
        )
        assert answer.status == 200, answer.body

    def publish(
        self, version: int, *, key_release: str = "attested", hardware: tuple[str, ...] = ("rpi5",)
    ) -> BuiltRelease:
        release = build_release(self.server, FAMILY, version, hardware=hardware)
        release.meta = dataclasses.replace(release.meta, key_release=key_release)
        release.body["custom"] = release.meta.to_custom()
        publish(self.server, release, self.rm)
        return release

    def yank(self, version: int) -> None:
        release_id = f"{FAMILY}-{version}"
        answer = self.server.request(
            "POST", f"/api/v1/releases/{release_id}/yank", token=self.rm, body={}
        )
        assert answer.status == 200, answer.body
        sign(self.server, release_id, self.rm, 0)
        assert sign(self.server, release_id, self.rm, 1)["state"] == "yanked"

    # -- the device's side ---------------------------------------------------------------------

    def ask(self, device_id: str, version: int, family: str = FAMILY) -> Response:
        body = KeyChallengeRequest(device_id, family, version).encode()
        return self.server.request("POST", CHALLENGE_PATH, body=body)

    def challenge(self, device: Device, version: int) -> KeyChallenge:
        answer = self.ask(device.id, version)
        assert answer.status == 200, answer.body
        assert set(answer.json()) == {"challenge_id", "nonce", "pcrs"}
        return KeyChallenge.parse(answer.body)

    def release(self, body: bytes) -> Response:
        return self.server.request("POST", RELEASE_PATH, body=body)

    def audit(self, action: str) -> list[dict[str, Any]]:
        answer = self.server.request("GET", "/api/v1/audit", token=self.server.admin_token)
        assert answer.status == 200, answer.body
        body = answer.json()
        entries = body["entries"] if isinstance(body, dict) else body
        return [e for e in entries if e["action"] == action]


def quote_answer(
    device: Device,
    challenge: KeyChallenge,
    version: int,
    *,
    pcrs: dict[int, bytes] | None = None,
    nonce: bytes | None = None,
    bound_to: tuple[str, str, int] | None = None,
    tpm: SoftTpm | None = None,
    pcr_policy: bytes | None = None,
) -> bytes:
    """What an honest device sends (each keyword bends one part of it)."""
    values = BASELINE if pcrs is None else pcrs
    device_id, family, bound_version = bound_to or (device.id, FAMILY, version)
    binding = key_release_binding(nonce or challenge.nonce, device_id, family, bound_version)
    attest, signature = (tpm or device.tpm).quote(binding, values)
    return KeyReleaseRequest(
        challenge.challenge_id, values, attest, signature, pcr_policy=pcr_policy
    ).encode()


def signed_policy(authority: ec.EllipticCurvePrivateKey, values: Mapping[int, bytes]) -> bytes:
    """The embedded team approves ``values``: a SignedPCRPolicy as the agent holds it."""
    return sign_pcr_policy(authority, PCRValues("sha256", values)).to_bytes()


def refusal(answer: Response) -> tuple[int, str, str]:
    error = answer.json()["error"]
    return answer.status, error["code"], error["message"]


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    clock = Clock(datetime.now(UTC).replace(microsecond=0))
    real_create_app = app_module.create_app

    def create_app(data_dir: Path, **kwargs: Any) -> Any:
        return real_create_app(data_dir, now=clock, **kwargs)

    monkeypatch.setattr(app_module, "create_app", create_app)  # running_server imports it late
    with running_server(tmp_path / "server") as server:
        ca = EkCa()
        add_ek_cas(server.data_dir / "ek-ca", ca.pem(), source="test")
        server.add_family(FAMILY)
        yield Env(
            server, clock, ca, server.token("operator"), server.token("release-manager", FAMILY)
        )


# --- released -------------------------------------------------------------------------------------


def test_enrolled_device_gets_the_content_key(env: Env) -> None:
    device = env.enrolled_device()
    release = env.publish(1)
    challenge = env.challenge(device, 1)
    assert challenge.pcrs == (0, 4, 9, 15)
    answer = env.release(quote_answer(device, challenge, 1))
    assert answer.status == 200, answer.body
    assert set(answer.json()) == {"envelope"}
    envelope = KeyReleaseResponse.parse(answer.body).envelope
    content_key = open_envelope(envelope, SoftwareRecipient(device.key), release.info.header)
    assert content_key == release.info.content_key
    # audited, without the key or the nonce
    (asked,) = env.audit("key.challenge")
    (released,) = env.audit("key.release")
    assert (asked["outcome"], released["outcome"]) == ("accepted", "accepted")
    assert asked["actor"] == "anonymous" and asked["target"] == "devices/dev-1"
    assert released["details"]["device"] == "dev-1"
    assert released["details"]["release"] == "detector-1"
    assert released["details"]["pcrs"] == [0, 4, 9, 15]
    dump = json.dumps(env.audit("key.challenge") + env.audit("key.release"))
    secret = content_key.secret_bytes()
    for spelling in (secret.hex(), base64.b64encode(secret).decode(), challenge.nonce.hex()):
        assert spelling not in dump
    assert base64.b64encode(envelope).decode() not in dump


def test_the_device_agents_client_against_the_real_server(env: Env) -> None:
    """The agent's transport and codecs, unchanged, get the key from the real routes."""
    from edgeseal.device_agent.key_release import (
        KeyReleaseClient,
        KeyReleaseRefusedError,
        KeyReleaseUnavailableError,
    )

    device = env.enrolled_device()
    release = env.publish(1)
    client = KeyReleaseClient(env.server.base_url)
    challenge = client.challenge(KeyChallengeRequest(device.id, FAMILY, 1))
    request = KeyReleaseRequest.parse(quote_answer(device, challenge, 1))
    envelope = client.release(request)
    assert open_envelope(envelope, SoftwareRecipient(device.key), release.info.header) == (
        release.info.content_key
    )
    with pytest.raises(KeyReleaseRefusedError) as refused:  # replayed: a refusal, not a retry
        client.release(request)
    assert refused.value.status == 404
    challenge = client.challenge(KeyChallengeRequest(device.id, FAMILY, 1))
    env.clock.now += timedelta(minutes=2)
    with pytest.raises(KeyReleaseUnavailableError) as expired:  # expired: ask again
        client.release(KeyReleaseRequest.parse(quote_answer(device, challenge, 1)))
    assert expired.value.status == 409
    with pytest.raises(KeyReleaseRefusedError) as bad_boot:
        challenge = client.challenge(KeyChallengeRequest(device.id, FAMILY, 1))
        changed = {**BASELINE, 9: bytes(32)}
        client.release(KeyReleaseRequest.parse(quote_answer(device, challenge, 1, pcrs=changed)))
    assert (bad_boot.value.status, bad_boot.value.code) == (403, "attestation-failed")


# --- the quote ------------------------------------------------------------------------------------


def test_pcrs_that_differ_from_the_baseline_are_named(env: Env) -> None:
    device = env.enrolled_device()
    env.publish(1)
    challenge = env.challenge(device, 1)
    changed = {**BASELINE, 4: bytes(32), 15: b"\x01" * 32}
    answer = env.release(quote_answer(device, challenge, 1, pcrs=changed))
    status, code, message = refusal(answer)
    assert (status, code) == (403, "attestation-failed")
    assert "PCRs 4, 15 differ from the enrollment baseline" in message
    assert "the device sent no signed PCR policy" not in message  # it enrolled no authority
    assert "no PCR policy authority is enrolled" in message
    # the challenge is used up by the refusal
    again = env.release(quote_answer(device, challenge, 1))
    assert refusal(again)[:2] == (404, "not-found")
    entries = env.audit("key.release")
    assert [e["outcome"] for e in entries] == ["refused", "refused"]
    assert "PCRs 4, 15 differ" in entries[0]["details"]["reason"]
    assert entries[0]["details"]["status"] == 403


def test_quote_over_other_pcrs_than_the_challenge(env: Env) -> None:
    device = env.enrolled_device()
    env.publish(1)
    challenge = env.challenge(device, 1)
    fewer = {i: BASELINE[i] for i in (0, 4, 9)}
    answer = env.release(quote_answer(device, challenge, 1, pcrs=fewer))
    status, code, message = refusal(answer)
    assert (status, code) == (403, "attestation-failed")
    assert "exactly PCRs 0, 4, 9, 15, not 0, 4, 9" in message


@pytest.mark.parametrize(
    "bend",
    ["other nonce", "other device", "other version", "other family"],
)
def test_quote_bound_to_something_else(env: Env, bend: str) -> None:
    device = env.enrolled_device()
    env.add_device("dev-2")
    env.publish(1)
    challenge = env.challenge(device, 1)
    bound_to = {
        "other device": ("dev-2", FAMILY, 1),
        "other version": (device.id, FAMILY, 2),
        "other family": (device.id, "classifier", 1),
    }.get(bend)
    nonce = bytes(32) if bend == "other nonce" else None
    answer = env.release(quote_answer(device, challenge, 1, nonce=nonce, bound_to=bound_to))
    status, code, message = refusal(answer)
    assert (status, code) == (403, "attestation-failed")
    assert "qualifying data does not match" in message and "extraData" in message


def test_quote_signed_by_another_tpm(env: Env) -> None:
    device = env.enrolled_device()
    env.publish(1)
    challenge = env.challenge(device, 1)
    answer = env.release(quote_answer(device, challenge, 1, tpm=SoftTpm(env.ca)))
    status, code, message = refusal(answer)
    assert (status, code) == (403, "attestation-failed")
    assert "not signed by the enrolled attestation key" in message


def test_replayed_and_replaced_challenges(env: Env) -> None:
    device = env.enrolled_device()
    env.publish(1)
    challenge = env.challenge(device, 1)
    body = quote_answer(device, challenge, 1)
    assert env.release(body).status == 200
    replay = env.release(body)
    status, code, message = refusal(replay)
    assert (status, code) == (404, "not-found") and "already used" in message
    # at most one open challenge per device: a new one replaces the old
    first = env.challenge(device, 1)
    second = env.challenge(device, 1)
    assert refusal(env.release(quote_answer(device, first, 1)))[0] == 404
    assert env.release(quote_answer(device, second, 1)).status == 200


def test_expired_challenge(env: Env) -> None:
    device = env.enrolled_device()
    env.publish(1)
    challenge = env.challenge(device, 1)
    env.clock.now += timedelta(minutes=1, seconds=59)
    assert env.release(quote_answer(device, challenge, 1)).status == 200
    challenge = env.challenge(device, 1)
    env.clock.now += timedelta(minutes=2)
    status, code, message = refusal(env.release(quote_answer(device, challenge, 1)))
    assert (status, code) == (409, "challenge-expired") and "expired" in message
    assert refusal(env.release(quote_answer(device, challenge, 1)))[0] == 404  # and gone


# --- boot states approved after enrollment (signed PCR policies) ----------------------------------


def test_baseline_needs_no_policy_whatever_is_sent(env: Env) -> None:
    authority = ec.generate_private_key(ec.SECP256R1())
    device = env.add_device("dev-1", authority=authority)
    env.enroll(device)
    env.publish(1)
    for policy in (None, signed_policy(authority, UPDATED), b"not a policy"):
        challenge = env.challenge(device, 1)
        answer = env.release(quote_answer(device, challenge, 1, pcr_policy=policy))
        assert answer.status == 200, answer.body
    details = [e["details"] for e in env.audit("key.release")]
    assert [d["boot_state"] for d in details] == ["baseline"] * 3
    assert all("policy_authority" not in d for d in details)


@pytest.mark.parametrize("extra", [False, True], ids=["same PCRs", "more PCRs"])
def test_state_approved_by_the_enrolled_authority_gets_the_key(env: Env, extra: bool) -> None:
    """An approved OS update changed PCR 9: the policy the embedded team signed for the new
    values unlocks the key, as it unlocks the TPM's (it may name more PCRs than quoted)."""
    authority = ec.generate_private_key(ec.SECP256R1())
    device = env.add_device("dev-1", authority=authority)
    env.enroll(device)
    release = env.publish(1)
    approved = {**UPDATED, 7: bytes(32)} if extra else UPDATED
    challenge = env.challenge(device, 1)
    answer = env.release(
        quote_answer(
            device, challenge, 1, pcrs=UPDATED, pcr_policy=signed_policy(authority, approved)
        )
    )
    assert answer.status == 200, answer.body
    envelope = KeyReleaseResponse.parse(answer.body).envelope
    assert open_envelope(envelope, SoftwareRecipient(device.key), release.info.header) == (
        release.info.content_key
    )
    (released,) = env.audit("key.release")
    assert released["outcome"] == "accepted"
    assert released["details"]["boot_state"] == "approved"
    assert released["details"]["changed_pcrs"] == [9]
    assert released["details"]["policy_authority"] == authority_fingerprint(authority.public_key())


def _refused_with_policy(env: Env, case: str) -> str:
    """Enroll (with or without an authority), quote a changed state with the policy ``case``
    describes, and return the refusal's message (asserting 403 and an audited refusal)."""
    authority = ec.generate_private_key(ec.SECP256R1())
    other = ec.generate_private_key(ec.SECP256R1())
    device = env.add_device("dev-1", authority=None if case == "no authority" else authority)
    env.enroll(device)
    env.publish(1)
    quoted = UPDATED
    policy: bytes | None = {
        "no policy": None,
        "no authority": signed_policy(authority, UPDATED),
        "another authority": signed_policy(other, UPDATED),
        "other values": signed_policy(authority, {**UPDATED, 9: bytes(32)}),
        "not every PCR": signed_policy(authority, {i: UPDATED[i] for i in (0, 9)}),
        "garbage": b"{}",
    }.get(case)
    if case == "also PCR 4":  # the update was approved, but PCR 4 changed too
        quoted = {**UPDATED, 4: b"\x04" * 32}
        policy = signed_policy(authority, UPDATED)
    challenge = env.challenge(device, 1)
    answer = env.release(quote_answer(device, challenge, 1, pcrs=quoted, pcr_policy=policy))
    status, code, message = refusal(answer)
    assert (status, code) == (403, "attestation-failed"), message
    (entry,) = env.audit("key.release")
    assert entry["outcome"] == "refused" and entry["details"]["reason"] == message
    return message


@pytest.mark.parametrize(
    ("case", "why"),
    [
        ("no policy", "the device sent no signed PCR policy"),
        ("no authority", "no PCR policy authority is enrolled for the device"),
        ("another authority", "not by the device's enrolled policy authority"),
        ("other values", "PCR 9 reported by the device differ from the values"),
        ("not every PCR", "PCRs 4, 15 reported by the device differ"),
        ("garbage", "the signed PCR policy needs exactly the keys"),
    ],
)
def test_changed_state_without_an_approval_is_refused(env: Env, case: str, why: str) -> None:
    message = _refused_with_policy(env, case)
    assert "PCR 9 differs from the enrollment baseline" in message
    assert why in message


def test_approval_of_some_changes_does_not_cover_others(env: Env) -> None:
    message = _refused_with_policy(env, "also PCR 4")
    assert "PCRs 4, 9 differ from the enrollment baseline" in message
    assert "PCR 4 approved" in message  # the policy approves PCR 9's new value, not PCR 4's


def test_quote_is_checked_before_the_policy(env: Env) -> None:
    """A caller without the device's AK learns nothing about its baseline or its authority."""
    authority = ec.generate_private_key(ec.SECP256R1())
    device = env.add_device("dev-1", authority=authority)
    env.enroll(device)
    env.publish(1)
    challenge = env.challenge(device, 1)
    forged = quote_answer(
        device,
        challenge,
        1,
        pcrs=UPDATED,
        pcr_policy=signed_policy(authority, UPDATED),
        tpm=SoftTpm(env.ca),
    )
    status, code, message = refusal(env.release(forged))
    assert (status, code) == (403, "attestation-failed")
    assert "not signed by the enrolled attestation key" in message
    assert "policy" not in message and "baseline" not in message


def test_re_enrolling_without_an_authority_withdraws_approvals(env: Env) -> None:
    authority = ec.generate_private_key(ec.SECP256R1())
    device = env.add_device("dev-1", authority=authority)
    env.enroll(device)
    env.publish(1)
    policy = signed_policy(authority, UPDATED)
    challenge = env.challenge(device, 1)
    answer = env.release(quote_answer(device, challenge, 1, pcrs=UPDATED, pcr_policy=policy))
    assert answer.status == 200, answer.body
    device.tpm.policy_authority = None
    env.enroll(device)  # same boot as before (its baseline), no authority any more
    challenge = env.challenge(device, 1)
    status, _code, message = refusal(
        env.release(quote_answer(device, challenge, 1, pcrs=UPDATED, pcr_policy=policy))
    )
    assert status == 403 and "no PCR policy authority is enrolled" in message
    challenge = env.challenge(device, 1)
    assert env.release(quote_answer(device, challenge, 1)).status == 200


def test_request_without_the_policy_key_reads_as_none(env: Env) -> None:
    """An agent from before signed PCR policies sends no ``pcr_policy``: the baseline only."""
    authority = ec.generate_private_key(ec.SECP256R1())
    device = env.add_device("dev-1", authority=authority)
    env.enroll(device)
    env.publish(1)
    for pcrs, status in ((BASELINE, 200), (UPDATED, 403)):
        challenge = env.challenge(device, 1)
        body = json.loads(quote_answer(device, challenge, 1, pcrs=pcrs))
        body.pop("pcr_policy", None)
        answer = env.server.request("POST", RELEASE_PATH, body=body)
        assert answer.status == status, answer.body
    assert "the device sent no signed PCR policy" in refusal(answer)[2]


# --- the device -----------------------------------------------------------------------------------


def test_revoked_device(env: Env) -> None:
    device = env.enrolled_device()
    env.publish(1)
    open_challenge = env.challenge(device, 1)
    env.revoke(device.id)
    # an open challenge does not survive the revocation (revocation deletes it)
    status, code, message = refusal(env.release(quote_answer(device, open_challenge, 1)))
    assert (status, code) == (404, "not-found") and "unknown key-release challenge" in message
    status, code, message = refusal(env.ask(device.id, 1))
    assert (status, code) == (403, "attestation-failed")
    assert "device dev-1 is revoked" in message


def test_device_revoked_before_it_ever_enrolled(env: Env) -> None:
    """Its device_attestation row has no AK: it is refused as revoked (403), not as unknown."""
    env.add_device("dev-stolen")
    env.publish(1)
    env.revoke("dev-stolen")
    status, code, message = refusal(env.ask("dev-stolen", 1))
    assert (status, code) == (403, "attestation-failed") and "revoked" in message


def test_device_not_enrolled_and_unknown_device(env: Env) -> None:
    env.add_device("dev-new")
    env.publish(1)
    status, code, message = refusal(env.ask("dev-new", 1))
    assert (status, code) == (404, "not-found") and "not enrolled" in message
    status, code, message = refusal(env.ask("ghost", 1))
    assert (status, code) == (404, "not-found") and "unknown device 'ghost'" in message
    reasons = [e["details"]["reason"] for e in env.audit("key.challenge")]
    assert len(reasons) == 2 and "not enrolled" in reasons[0] and "ghost" in reasons[1]


# --- the release ----------------------------------------------------------------------------------


def test_release_must_be_published_and_attested(env: Env) -> None:
    device = env.enrolled_device()
    env.publish(1, key_release="envelope")
    status, code, message = refusal(env.ask(device.id, 1))
    assert (status, code) == (404, "not-found") and "not attested" in message
    status, code, message = refusal(env.ask(device.id, 7))
    assert (status, code) == (404, "not-found") and "does not exist" in message
    unsealed = build_release(env.server, FAMILY, 3)  # created, not uploaded nor signed
    created = env.server.request("POST", "/api/v1/releases", token=env.rm, body=unsealed.body)
    assert created.status == 201, created.body
    status, _code, message = refusal(env.ask(device.id, 3))
    assert status == 404 and "awaiting-upload, not published" in message


def test_yanked_release(env: Env) -> None:
    device = env.enrolled_device()
    env.publish(1)
    open_challenge = env.challenge(device, 1)
    env.yank(1)
    status, _code, message = refusal(env.release(quote_answer(device, open_challenge, 1)))
    assert status == 404 and "yanked, not published" in message
    status, _code, message = refusal(env.ask(device.id, 1))
    assert status == 404 and "yanked" in message


def test_release_for_another_hardware_class_or_channel(env: Env) -> None:
    orin = env.enrolled_device("dev-orin", hardware_class="jetson-orin")
    beta = env.enrolled_device("dev-beta", channel="beta")
    env.publish(1)
    status, _code, message = refusal(env.ask(orin.id, 1))
    assert status == 404 and "not for hardware class jetson-orin" in message
    status, _code, message = refusal(env.ask(beta.id, 1))
    assert status == 404 and "on channel stable" in message


# --- bodies ---------------------------------------------------------------------------------------


def test_malformed_and_oversize_bodies(env: Env) -> None:
    device = env.enrolled_device()
    env.publish(1)
    bad_challenges = [
        b"{",
        b'{"device_id": "dev-1", "family": "detector"}',
        b'{"device_id": "dev-1", "family": "detector", "version": 1, "token": "x"}',
        b'{"device_id": "dev-1", "device_id": "dev-1", "family": "detector", "version": 1}',
        b'{"device_id": "dev-1", "family": "detector", "version": 1.0}',
        b'{"device_id": "../etc", "family": "detector", "version": 1}',
    ]
    for raw in bad_challenges:
        assert refusal(env.server.request("POST", CHALLENGE_PATH, body=raw))[:2] == (
            400,
            "bad-request",
        ), raw
    challenge = env.challenge(device, 1)
    good = json.loads(quote_answer(device, challenge, 1))
    bad_releases = [
        {**good, "pcrs": {"00": "00" * 32}},
        {**good, "pcrs": {"0": "AB" * 32}},
        {**good, "quote": {"attest": "not base64!", "signature": good["quote"]["signature"]}},
        {**good, "quote": {"attest": good["quote"]["attest"]}},
        {**good, "challenge_id": ""},
    ]
    for body in bad_releases:
        answer = env.server.request("POST", RELEASE_PATH, body=body)
        assert refusal(answer)[:2] == (400, "bad-request"), body
    # a malformed body does not use the challenge up
    assert env.release(quote_answer(device, challenge, 1)).status == 200
    huge = env.server.request("POST", RELEASE_PATH, body=b" " * (64 * 1024 + 1))
    assert refusal(huge)[:2] == (413, "too-large")
    # no token is needed, and one sent is ignored
    answer = env.server.request(
        "POST",
        CHALLENGE_PATH,
        body=KeyChallengeRequest(device.id, FAMILY, 1).encode(),
        token="est1.0000000000000000.nonsense",
    )
    assert answer.status == 200, answer.body
    refused = [e for e in env.audit("key.challenge") if e["outcome"] == "refused"]
    assert len(refused) == len(bad_challenges)
    assert all(e["details"]["status"] == 400 for e in refused)
    refused_releases = [e for e in env.audit("key.release") if e["outcome"] == "refused"]
    assert [e["details"]["status"] for e in refused_releases] == [400] * len(bad_releases) + [413]
