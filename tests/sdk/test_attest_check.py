"""The offline attestation check: every check, each attack named, never a crash.

Quotes are real TPM structures (marshaled by tpm2-pytss) signed by a P-256 key
playing the AK; each test forges one thing and asserts which checks fail and
that the detail names what differs.
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import json
import secrets
from typing import Any

import pytest
from attest_fixtures import (
    BASELINE_PCRS,
    NOW,
    SimulatedDevice,
    b64,
    bundle_payload,
    pcr_value,
    quote_attest,
    release_entry,
    signed_policy,
    spki,
)
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeseal.sdk.attest_check import (
    CHECK_NAMES,
    AttestReport,
    check_attestation,
    check_attestation_payload,
)
from edgeseal.sdk.console_wire import attest_binding, canonical_json
from edgeseal.sdk.pcr_policy import authority_fingerprint, policy_pcr_digest
from edgeseal.sdk.trust_bundle import TrustBundle, load_trust_bundle, sign_trust_bundle

BUNDLE_KEY = ec.generate_private_key(ec.SECP256R1())


def _bundle(*devices: dict[str, Any], releases: list[dict[str, Any]] | None = None) -> TrustBundle:
    data = sign_trust_bundle(bundle_payload(list(devices), releases), BUNDLE_KEY)
    return load_trust_bundle(data, BUNDLE_KEY.public_key())


@pytest.fixture
def device() -> SimulatedDevice:
    return SimulatedDevice()


@pytest.fixture
def nonce() -> bytes:
    return secrets.token_bytes(32)


def _failed(report: AttestReport) -> list[str]:
    return [check.name for check in report.failed]


def test_an_honest_device_passes_every_check(device: SimulatedDevice, nonce: bytes) -> None:
    report = check_attestation(
        device.respond(nonce), nonce, _bundle(device.bundle_entry()), now=NOW
    )
    assert report.passed, report.render()
    assert [c.name for c in report.checks] == list(CHECK_NAMES)
    assert report.device_id == "cam-0042"
    assert "PCRs 0, 1, 2, 3, 4, 7 equal the baseline" in report.check("boot-state").detail
    assert "detector version 3 (slot a)" in report.check("model").detail


def test_render_is_one_line_per_check_and_a_verdict(device: SimulatedDevice, nonce: bytes) -> None:
    report = check_attestation(
        device.respond(nonce), nonce, _bundle(device.bundle_entry()), now=NOW
    )
    lines = report.render().splitlines()
    assert len(lines) == len(CHECK_NAMES) + 1
    assert lines[0].startswith("PASS  bundle: issued 2025-05-31T12:00:00Z by ota.example.com")
    assert lines[-1] == "PASS: device cam-0042 is attested (8 checks passed)"
    doc = report.to_json()
    assert doc["verdict"] == "PASS" and doc["checks"][3]["name"] == "signature"


def test_a_changed_boot_state_fails_naming_the_pcrs(device: SimulatedDevice, nonce: bytes) -> None:
    """The device truthfully quotes PCRs that differ from enrollment: a changed boot chain."""
    device.pcrs[4] = pcr_value(4, "tampered")
    device.pcrs[7] = pcr_value(7, "tampered")
    report = check_attestation(
        device.respond(nonce), nonce, _bundle(device.bundle_entry()), now=NOW
    )
    assert _failed(report) == ["boot-state"]
    detail = report.check("boot-state").detail
    assert detail.startswith("PCRs 4, 7 differ from the enrollment baseline")
    assert f"PCR 4 baseline {pcr_value(4).hex()[:12]}..., reported " in detail
    assert pcr_value(4, "tampered").hex()[:12] in detail
    assert "PCR 0" not in detail
    assert report.render().splitlines()[-1] == (
        "FAIL: device cam-0042 is NOT attested (1 of 8 checks failed: boot-state)"
    )


def test_lying_about_pcrs_fails_the_quote_checks(device: SimulatedDevice, nonce: bytes) -> None:
    """The TPM quoted a tampered PCR 4, the agent reports the baseline value: caught."""
    honest = dict(device.pcrs)
    device.pcrs[4] = pcr_value(4, "tampered")
    response = device.respond(nonce)
    device.pcrs = honest
    response["pcrs"] = device.status()["pcrs"]  # the lie (the quote stays over the truth)
    report = check_attestation(response, nonce, _bundle(device.bundle_entry()), now=NOW)
    assert _failed(report) == ["nonce", "pcrs", "boot-state"]
    assert "do not match the quoted digest" in report.check("pcrs").detail
    assert "the quote does not prove them" in report.check("boot-state").detail


def test_a_quote_over_other_pcrs_than_reported(device: SimulatedDevice, nonce: bytes) -> None:
    status = device.status()
    attest = quote_attest(attest_binding(nonce, status), {0: device.pcrs[0], 1: device.pcrs[1]})
    response = device.respond(nonce)
    response["quote"]["attest"] = b64(attest)
    response["quote"]["signature"] = b64(device.ak.sign(attest, ec.ECDSA(hashes.SHA256())))
    report = check_attestation(response, nonce, _bundle(device.bundle_entry()), now=NOW)
    assert _failed(report) == ["pcrs", "boot-state"]
    assert "the quote covers PCRs 0, 1 but PCRs 0, 1, 2, 3, 4, 7 were reported" in (
        report.check("pcrs").detail
    )


def test_a_replayed_answer_fails_the_nonce_check(device: SimulatedDevice, nonce: bytes) -> None:
    old_nonce = secrets.token_bytes(32)
    report = check_attestation(
        device.respond(old_nonce), nonce, _bundle(device.bundle_entry()), now=NOW
    )
    assert _failed(report) == ["nonce"]
    detail = report.check("nonce").detail
    assert attest_binding(old_nonce, device.status()).hex()[:12] in detail
    assert attest_binding(nonce, device.status()).hex()[:12] in detail
    assert nonce.hex()[:12] in detail
    assert "not fresh" in report.check("pcrs").detail


def test_a_status_changed_after_the_quote_fails_the_nonce_check(
    device: SimulatedDevice, nonce: bytes
) -> None:
    """Mix-and-match: a genuine quote with a better-looking model claim."""
    response = device.respond(nonce)
    response["model"]["version"] = 2
    report = check_attestation(response, nonce, _bundle(device.bundle_entry()), now=NOW)
    assert "nonce" in _failed(report)
    assert "(not bound by a valid quote)" in report.check("model").detail


def test_a_quote_with_the_raw_nonce_is_not_bound_to_the_status(
    device: SimulatedDevice, nonce: bytes
) -> None:
    report = check_attestation(
        device.respond(nonce, qualifying_data=nonce), nonce, _bundle(device.bundle_entry()), now=NOW
    )
    assert _failed(report) == ["nonce"]


def test_a_quote_signed_by_another_key(device: SimulatedDevice, nonce: bytes) -> None:
    impostor = ec.generate_private_key(ec.SECP256R1())
    report = check_attestation(
        device.respond(nonce, signer=impostor), nonce, _bundle(device.bundle_entry()), now=NOW
    )
    assert _failed(report) == ["signature", "nonce", "pcrs", "boot-state"]
    assert "not signed by the enrolled attestation key" in report.check("signature").detail
    assert report.check("nonce").detail.startswith("not checked")


def test_another_devices_answer_under_this_id(device: SimulatedDevice, nonce: bytes) -> None:
    """A clone claiming an enrolled device's id cannot sign with that device's AK."""
    clone = SimulatedDevice()
    report = check_attestation(clone.respond(nonce), nonce, _bundle(device.bundle_entry()), now=NOW)
    assert "signature" in _failed(report)


def test_an_unknown_device(device: SimulatedDevice, nonce: bytes) -> None:
    other = SimulatedDevice(device_id="cam-0099")
    report = check_attestation(other.respond(nonce), nonce, _bundle(device.bundle_entry()), now=NOW)
    assert _failed(report) == ["device", "signature", "nonce", "pcrs", "boot-state"]
    assert "device cam-0099 is not in the trust bundle (1 devices)" in report.check("device").detail
    assert report.check("model").passed


def test_a_revoked_device_fails_but_is_still_fully_checked(
    device: SimulatedDevice, nonce: bytes
) -> None:
    bundle = _bundle(device.bundle_entry(revoked=True))
    report = check_attestation(device.respond(nonce), nonce, bundle, now=NOW)
    assert _failed(report) == ["device"]
    assert "is revoked in the trust bundle" in report.check("device").detail


def test_an_expired_bundle(device: SimulatedDevice, nonce: bytes) -> None:
    later = NOW + dt.timedelta(days=30)
    report = check_attestation(
        device.respond(nonce), nonce, _bundle(device.bundle_entry()), now=later
    )
    assert _failed(report) == ["bundle"]
    assert "expired at 2025-06-30T12:00:00Z" in report.check("bundle").detail


@pytest.mark.parametrize(
    ("releases", "expected"),
    [
        ([release_entry(3, yanked=True)], "was yanked"),
        ([release_entry(2)], "is not a published release"),
        (
            [release_entry(3, plaintext_digest="ab" * 32)],
            "the release published sha256 abababababab",
        ),
        (
            [release_entry(3, digest_alg="blake3", plaintext_digest="ab" * 32)],
            "the release published blake3",
        ),
    ],
)
def test_model_must_be_a_published_unyanked_release(
    device: SimulatedDevice, nonce: bytes, releases: list[dict[str, Any]], expected: str
) -> None:
    bundle = _bundle(device.bundle_entry(), releases=releases)
    report = check_attestation(device.respond(nonce), nonce, bundle, now=NOW)
    assert _failed(report) == ["model"]
    assert expected in report.check("model").detail


def test_model_below_the_rollback_floor(device: SimulatedDevice, nonce: bytes) -> None:
    device.floor = 4
    report = check_attestation(
        device.respond(nonce), nonce, _bundle(device.bundle_entry()), now=NOW
    )
    assert _failed(report) == ["model"]
    assert "below the device's rollback floor 4" in report.check("model").detail


def test_no_model_installed_passes(device: SimulatedDevice, nonce: bytes) -> None:
    device.model = None
    device.floor = None
    report = check_attestation(
        device.respond(nonce), nonce, _bundle(device.bundle_entry()), now=NOW
    )
    assert report.passed
    assert report.check("model").detail == "no model installed"


LOCKED = "PCR policy check failed: PCR 9 changed since the policy was signed"


def test_a_model_it_cannot_open_fails_saying_why(device: SimulatedDevice, nonce: bytes) -> None:
    """The TPM keeps the model key locked (a boot outside the signed PCR policy): the
    device has a model but serves none, which is not a healthy device."""
    device.model = None
    device.model_error = LOCKED
    report = check_attestation(
        device.respond(nonce), nonce, _bundle(device.bundle_entry()), now=NOW
    )
    assert _failed(report) == ["model"]
    assert report.check("model").detail == f"no model served: {LOCKED}"
    assert f"FAIL  model: no model served: {LOCKED}" in report.render().splitlines()
    assert report.render().splitlines()[-1] == (
        "FAIL: device cam-0042 is NOT attested (1 of 8 checks failed: model)"
    )


def test_a_model_error_from_an_unknown_device_is_shown_unbound(
    device: SimulatedDevice, nonce: bytes
) -> None:
    other = SimulatedDevice(device_id="cam-0099", model=None, model_error=LOCKED)
    report = check_attestation(other.respond(nonce), nonce, _bundle(device.bundle_entry()), now=NOW)
    assert report.check("model").detail == (
        f"no model served: {LOCKED} (not bound by a valid quote)"
    )


def test_a_model_error_next_to_a_served_model_is_shown_not_judged(
    device: SimulatedDevice, nonce: bytes
) -> None:
    """This version's agent never sends both; a future one may: the model is judged."""
    device.model_error = "a newer release did not open"
    report = check_attestation(
        device.respond(nonce), nonce, _bundle(device.bundle_entry()), now=NOW
    )
    assert report.passed, report.render()
    assert "(the agent also reports: a newer release did not open)" in (
        report.check("model").detail
    )


def test_the_model_error_is_bound_to_the_quote(device: SimulatedDevice, nonce: bytes) -> None:
    """Changing, adding or stripping model_error under a genuine quote breaks the binding."""
    device.model = None
    device.model_error = LOCKED
    bundle = _bundle(device.bundle_entry())
    honest = device.respond(nonce)
    stripped = {k: v for k, v in honest.items() if k != "model_error"}
    for forged in ({**honest, "model_error": None}, {**honest, "model_error": "x"}, stripped):
        report = check_attestation(forged, nonce, bundle, now=NOW)
        assert "nonce" in _failed(report), forged
        assert report.check("model").detail.endswith("(not bound by a valid quote)")
    device.model_error = None
    added = {**device.respond(nonce), "model_error": LOCKED}
    assert "nonce" in _failed(check_attestation(added, nonce, bundle, now=NOW))


@pytest.mark.parametrize("model", [True, False])
def test_an_older_agent_without_model_error_is_read_as_null(
    device: SimulatedDevice, nonce: bytes, model: bool
) -> None:
    device.sends_model_error = False
    if not model:
        device.model = None
    response = device.respond(nonce)
    assert "model_error" not in response
    report = check_attestation(response, nonce, _bundle(device.bundle_entry()), now=NOW)
    assert report.passed, report.render()
    if not model:
        assert report.check("model").detail == "no model installed"


def test_a_missing_baseline_pcr_is_named(device: SimulatedDevice, nonce: bytes) -> None:
    del device.pcrs[7]
    report = check_attestation(
        device.respond(nonce), nonce, _bundle(device.bundle_entry()), now=NOW
    )
    assert _failed(report) == ["boot-state"]
    assert "PCR 7 differs" in report.check("boot-state").detail
    assert "PCR 7 not reported" in report.check("boot-state").detail


def test_a_malformed_ak_in_the_bundle_fails_the_signature_check(
    device: SimulatedDevice, nonce: bytes
) -> None:
    bundle = _bundle(device.bundle_entry(ak_public=b64(b"\x00\x23garbage")))
    report = check_attestation(device.respond(nonce), nonce, bundle, now=NOW)
    assert "signature" in _failed(report)
    assert "attestation key is malformed" in report.check("signature").detail


# --- malformed responses: a failed check, never a crash --------------------------------------


def _mutations(device: SimulatedDevice, nonce: bytes) -> list[tuple[str, Any]]:
    good = device.respond(nonce)

    def change(path: str, value: Any) -> dict[str, Any]:
        response = copy.deepcopy(good)
        target = response
        *parents, last = path.split(".")
        for part in parents:
            target = target[part]
        if value is None and last == "DELETE":
            target.clear()
        else:
            target[last] = value
        return response

    return [
        ("not an object", []),
        ("missing key", {k: v for k, v in good.items() if k != "floor"}),
        ("unknown key", {**good, "extra": 1}),
        ("device id", change("device_id", "../etc")),
        ("agent version", change("agent_version", "1 0")),
        ("time", change("time", "yesterday")),
        ("time zone", change("time", "2025-06-01T12:00:00")),
        ("floor", change("floor", -1)),
        ("floor bool", change("floor", True)),
        ("bank", change("pcr_bank", "sha1")),
        ("pcrs", change("pcrs", {})),
        ("pcr hex", change("pcrs.0", "zz" * 32)),
        ("quote", change("quote", "x")),
        ("attest b64", change("quote.attest", "!!")),
        ("attest huge", change("quote.attest", "A" * 100_000)),
        ("signature type", change("quote.signature", 5)),
        ("model", change("model", [])),
        ("model family", change("model.family", "A B")),
        ("model slot", change("model.slot", "")),
        ("model digest", change("model.plaintext_digest", "ab")),
        ("model alg", change("model.digest_alg", "md5")),
        ("model version", change("model.version", -1)),
        ("model_error type", change("model_error", 5)),
        ("model_error empty", change("model_error", "")),
        ("model_error control", change("model_error", "locked\x1b[2J")),
        ("model_error newline", change("model_error", "locked\nPASS  model")),
        ("model_error long", change("model_error", "x" * 513)),
        ("missing key next to an optional one", {k: v for k, v in good.items() if k != "time"}),
        ("pcr_policy type", change("pcr_policy", 5)),
        ("pcr_policy empty", change("pcr_policy", "")),
        ("pcr_policy base64", change("pcr_policy", "not base64!")),
        ("pcr_policy over 16 KiB", change("pcr_policy", b64(b"p" * (16 * 1024 + 1)))),
    ]


def test_malformed_responses_fail_the_response_check(device: SimulatedDevice, nonce: bytes) -> None:
    bundle = _bundle(device.bundle_entry())
    for what, response in _mutations(device, nonce):
        report = check_attestation(response, nonce, bundle, now=NOW)
        assert _failed(report) == list(CHECK_NAMES[1:]), what
        assert report.check("response").detail.startswith("malformed response: "), what
        assert report.check("signature").detail == "not checked: the response is malformed"


def test_malformed_model_errors_say_what_is_allowed(device: SimulatedDevice, nonce: bytes) -> None:
    bundle = _bundle(device.bundle_entry())
    good = device.respond(nonce)
    report = check_attestation({**good, "model_error": "\x1b[2J"}, nonce, bundle, now=NOW)
    assert report.check("response").detail == (
        "malformed response: model_error must be null or 1-512 printable characters"
    )
    missing = {k: v for k, v in good.items() if k != "floor"}
    detail = check_attestation(missing, nonce, bundle, now=NOW).check("response").detail
    assert "(optional: model_error, pcr_policy) (missing: floor; unknown: none)" in detail


@pytest.mark.parametrize(
    "payload", [b"", b"\xff", b"[1.5]", b'{"a":1,"a":1}', b"[" * 50_000, b"null"]
)
def test_unparsable_payloads_fail_the_response_check(
    device: SimulatedDevice, payload: bytes
) -> None:
    nonce = secrets.token_bytes(32)
    report = check_attestation_payload(payload, nonce, _bundle(device.bundle_entry()), now=NOW)
    assert not report.passed
    assert report.check("response").detail.startswith("malformed response")


def test_the_payload_entry_point_passes_an_honest_answer(
    device: SimulatedDevice, nonce: bytes
) -> None:
    payload = canonical_json(device.respond(nonce))
    report = check_attestation_payload(payload, nonce, _bundle(device.bundle_entry()), now=NOW)
    assert report.passed, report.render()


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=150)
@given(key=st.sampled_from([*sorted(SimulatedDevice().status()), "quote"]), value=_JSON)
def test_any_value_in_any_field_never_raises(key: str, value: Any) -> None:
    good, bundle = _good()
    response = {**good, key: value}
    report = check_attestation(response, bytes(32), bundle, now=NOW)
    assert [c.name for c in report.checks] == list(CHECK_NAMES)
    if response != good:
        assert not report.passed


_DEVICE = SimulatedDevice()


@functools.cache
def _good() -> tuple[dict[str, Any], TrustBundle]:
    """One honest answer (to the nonce 0...0) and its bundle, built once."""
    return _DEVICE.respond(bytes(32)), _bundle(_DEVICE.bundle_entry())


def test_the_nonce_and_now_are_checked_as_arguments(device: SimulatedDevice) -> None:
    bundle = _bundle(device.bundle_entry())
    with pytest.raises(ValueError, match="32 bytes"):
        check_attestation({}, b"short", bundle, now=NOW)
    with pytest.raises(ValueError, match="aware"):
        check_attestation({}, bytes(32), bundle, now=dt.datetime(2025, 1, 1))


def test_baseline_indices_match_the_fixture() -> None:
    assert tuple(_DEVICE.pcrs) == BASELINE_PCRS


# --- boot states approved after enrollment (signed PCR policies) -----------------------------

AUTHORITY = ec.generate_private_key(ec.SECP256R1())
FINGERPRINT = authority_fingerprint(spki(AUTHORITY.public_key()))


@pytest.fixture
def updated() -> SimulatedDevice:
    """A device whose approved OS update changed PCRs 4 and 7 since enrollment."""
    device = SimulatedDevice(policy_authority=AUTHORITY)
    device.pcrs[4] = pcr_value(4, "updated")
    device.pcrs[7] = pcr_value(7, "updated")
    return device


def _boot_state(device: SimulatedDevice, nonce: bytes, **entry: Any) -> AttestReport:
    return check_attestation(
        device.respond(nonce), nonce, _bundle(device.bundle_entry(**entry)), now=NOW
    )


def test_an_approved_update_passes_the_boot_state(updated: SimulatedDevice, nonce: bytes) -> None:
    updated.approve_boot()
    report = _boot_state(updated, nonce)
    assert report.passed, report.render()
    assert report.check("boot-state").detail == (
        f"PCRs 4, 7 changed since enrollment to a state approved by policy authority {FINGERPRINT}"
    )


def test_a_policy_naming_more_pcrs_than_reported_counts(
    updated: SimulatedDevice, nonce: bytes
) -> None:
    updated.pcr_policy = signed_policy(AUTHORITY, {**updated.pcrs, 9: pcr_value(9, "updated")})
    assert _boot_state(updated, nonce).passed


def test_an_unapproved_change_without_a_policy_fails(
    updated: SimulatedDevice, nonce: bytes
) -> None:
    report = _boot_state(updated, nonce)
    assert _failed(report) == ["boot-state"]
    detail = report.check("boot-state").detail
    assert detail.startswith("PCRs 4, 7 differ from the enrollment baseline (PCR 4 baseline ")
    assert detail.endswith(
        "the firmware, bootloader, kernel or boot configuration changed, and the device sent "
        "no signed PCR policy approving the new state"
    )


def test_a_policy_does_not_count_without_an_enrolled_authority(
    updated: SimulatedDevice, nonce: bytes
) -> None:
    updated.approve_boot()
    report = _boot_state(updated, nonce, pcr_policy_authority=None)
    assert _failed(report) == ["boot-state"]
    assert report.check("boot-state").detail.endswith(
        "and no signed PCR policy counts: the trust bundle names no PCR policy authority for "
        "this device"
    )


def test_a_policy_signed_by_another_authority_fails(updated: SimulatedDevice, nonce: bytes) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    updated.approve_boot(other)
    report = _boot_state(updated, nonce)
    assert _failed(report) == ["boot-state"]
    theirs = authority_fingerprint(spki(other.public_key()))
    assert (
        "and the device's signed PCR policy is signed by another authority: the signed PCR "
        f"policy is signed by authority {theirs}, not by the device's enrolled policy authority "
        f"{FINGERPRINT}"
    ) in report.check("boot-state").detail


def test_a_tampered_policy_fails_with_a_bad_signature(
    updated: SimulatedDevice, nonce: bytes
) -> None:
    """The agent reports (and quotes) a policy whose signed values it changed."""
    honest = signed_policy(AUTHORITY, baseline_of(updated))
    doc = json.loads(honest)
    doc["pcrs"] = {str(i): v.hex() for i, v in updated.pcrs.items()}
    doc["policy_digest"] = policy_pcr_digest(updated.pcrs).hex()
    updated.pcr_policy = json.dumps(doc).encode()
    report = _boot_state(updated, nonce)
    assert _failed(report) == ["boot-state"]
    assert "signed PCR policy has a bad signature: " in report.check("boot-state").detail


def test_a_policy_for_other_values_fails_naming_them(
    updated: SimulatedDevice, nonce: bytes
) -> None:
    approved = {**updated.pcrs, 7: pcr_value(7, "release candidate")}
    updated.pcr_policy = signed_policy(AUTHORITY, approved)
    report = _boot_state(updated, nonce)
    assert _failed(report) == ["boot-state"]
    detail = report.check("boot-state").detail
    assert detail.startswith("PCRs 4, 7 differ from the enrollment baseline")
    assert "signed PCR policy does not approve these values: PCR 7 reported by the device" in (
        detail
    )


def test_a_malformed_policy_fails_the_boot_state_not_the_response(
    updated: SimulatedDevice, nonce: bytes
) -> None:
    updated.pcr_policy = b'{"format": "something else"}'
    report = _boot_state(updated, nonce)
    assert _failed(report) == ["boot-state"]
    assert "signed PCR policy is malformed: " in report.check("boot-state").detail


def test_a_baseline_pcr_not_reported_is_not_saved_by_a_policy(
    updated: SimulatedDevice, nonce: bytes
) -> None:
    updated.approve_boot()
    del updated.pcrs[7]  # the policy still approves PCR 7; the device does not report it
    report = _boot_state(updated, nonce)
    assert _failed(report) == ["boot-state"]
    detail = report.check("boot-state").detail
    assert "PCR 7 not reported" in detail and "approved by policy authority" not in detail
    assert detail.endswith("a signed PCR policy cannot approve a PCR that is not reported")


def test_an_approved_state_the_quote_does_not_prove_fails(
    updated: SimulatedDevice, nonce: bytes
) -> None:
    updated.approve_boot()
    response = updated.respond(nonce, quoted_pcrs=baseline_of(updated))
    report = check_attestation(response, nonce, _bundle(updated.bundle_entry()), now=NOW)
    assert "boot-state" in _failed(report) and "pcrs" in _failed(report)
    assert report.check("boot-state").detail == (
        f"PCRs 4, 7 changed since enrollment to a state approved by policy authority "
        f"{FINGERPRINT}, but the quote does not prove them"
    )


def test_the_baseline_passes_whatever_policy_is_sent(nonce: bytes) -> None:
    device = SimulatedDevice(policy_authority=AUTHORITY, pcr_policy=b"not even JSON")
    report = _boot_state(device, nonce)
    assert report.passed, report.render()
    assert "equal the baseline recorded at enrollment" in report.check("boot-state").detail


def test_a_swapped_pcr_policy_breaks_the_nonce(updated: SimulatedDevice, nonce: bytes) -> None:
    """pcr_policy is part of the status the quote binds: changing it afterwards is caught."""
    response = updated.respond(nonce)  # sent with "pcr_policy": null
    assert response["pcr_policy"] is None
    response["pcr_policy"] = b64(signed_policy(AUTHORITY, updated.pcrs))
    report = check_attestation(response, nonce, _bundle(updated.bundle_entry()), now=NOW)
    assert "nonce" in _failed(report)
    assert "the status was changed after it was quoted" in report.check("nonce").detail
    dropped = {k: v for k, v in updated.respond(nonce).items() if k != "pcr_policy"}
    assert "nonce" in _failed(
        check_attestation(dropped, nonce, _bundle(updated.bundle_entry()), now=NOW)
    )


def test_an_agent_before_pcr_policy_is_checked_as_before(nonce: bytes) -> None:
    device = SimulatedDevice(sends_pcr_policy=False)
    response = device.respond(nonce)
    assert "pcr_policy" not in response
    assert _boot_state(device, nonce).passed
    device.pcrs[4] = pcr_value(4, "updated")
    report = _boot_state(device, nonce)
    assert _failed(report) == ["boot-state"]
    assert "the trust bundle names no PCR policy authority" in report.check("boot-state").detail


def baseline_of(device: SimulatedDevice) -> dict[int, bytes]:
    return {i: pcr_value(i) for i in device.pcrs}
