"""Signed PCR policies read by the sdk: cross-checked with the hardware layer's writer.

The sdk re-implements the parse, the TPM2_PolicyPCR digest and the signature
check (it may not import ``edgeseal.hardware``); every policy here is written by
``edgeseal.hardware.policy.sign_pcr_policy(...).to_bytes()``, the code the agent
and the release tooling use, and each attack changes one thing: the values, the
digest, the signature, the authority, the size, the JSON, the bank.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest
from attest_fixtures import signed_policy, spki
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeseal.hardware import policy as hw
from edgeseal.sdk.errors import AttestationError
from edgeseal.sdk.pcr_policy import (
    MAX_POLICY_BYTES,
    ApprovedPCRs,
    PCRPolicyError,
    approval_hash,
    approved_state,
    authority_fingerprint,
    load_signed_pcr_policy,
    parse_policy_authority,
    policy_pcr_digest,
)

AUTHORITY = ec.generate_private_key(ec.SECP256R1())
OTHER = ec.generate_private_key(ec.SECP256R1())
AUTHORITY_DER = spki(AUTHORITY.public_key())
VALUES = {i: hashlib.sha256(f"updated boot pcr {i}".encode()).digest() for i in (0, 4, 9, 15)}
POLICY = signed_policy(AUTHORITY, VALUES)
_DER = bytearray(AUTHORITY_DER)
_DER[_DER.index(bytes.fromhex("2a8648ce3d0201")) + 2] ^= 0x40
UNKNOWN_OID_SPKI = base64.b64encode(bytes(_DER)).decode()


def _doc(data: bytes = POLICY) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(data)
    return doc


def _bytes(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _refused(data: bytes, reason: str, match: str) -> PCRPolicyError:
    with pytest.raises(PCRPolicyError, match=match) as info:
        load_signed_pcr_policy(data)
    assert info.value.reason == reason
    assert isinstance(info.value, AttestationError)
    return info.value


# --- what the hardware writes, the sdk reads -------------------------------------------------


def test_a_policy_signed_by_hardware_loads() -> None:
    approved = load_signed_pcr_policy(POLICY)
    signed = hw.SignedPCRPolicy.from_bytes(POLICY)
    assert isinstance(approved, ApprovedPCRs)
    assert approved.values == VALUES and list(approved.values) == [0, 4, 9, 15]
    assert approved.authority_der == AUTHORITY_DER
    assert approved.fingerprint == hw.authority_fingerprint(AUTHORITY.public_key())
    assert approved.fingerprint == authority_fingerprint(AUTHORITY_DER)
    assert approved.policy_digest == signed.approved_policy
    assert spki(approved.authority) == AUTHORITY_DER


@settings(max_examples=60, deadline=None)
@given(
    values=st.dictionaries(
        st.integers(0, 23), st.binary(min_size=32, max_size=32), min_size=1, max_size=24
    )
)
def test_the_policy_digest_is_the_hardware_one(values: dict[int, bytes]) -> None:
    ours = policy_pcr_digest(values)
    assert ours == hw.policy_pcr_digest(hw.PCRValues(hw.BANK_SHA256, values))
    assert approval_hash(ours) == hw.approval_hash(ours)


def test_the_policy_digest_follows_part_3_section_23_7() -> None:
    """Spelled out from TPM 2.0 Part 3 23.7 for PCRs 0 and 9 (bitmap 01 02 00)."""
    values = {0: bytes(range(32)), 9: bytes(32)}
    selection = bytes.fromhex("00000001000b03010200")
    expected = hashlib.sha256(
        bytes(32)
        + bytes.fromhex("0000017f")
        + selection
        + hashlib.sha256(values[0] + values[9]).digest()
    ).digest()
    assert policy_pcr_digest(values) == expected


def test_the_digest_refuses_what_no_tpm_selects() -> None:
    with pytest.raises(ValueError, match="at least one"):
        policy_pcr_digest({})
    with pytest.raises(ValueError, match=r"0\.\.23"):
        policy_pcr_digest({24: bytes(32)})
    with pytest.raises(ValueError, match="32 bytes"):
        policy_pcr_digest({0: bytes(20)})


def test_whitespace_and_key_order_do_not_matter() -> None:
    pretty = json.dumps(_doc(), indent=2).encode()
    assert load_signed_pcr_policy(pretty).values == VALUES


# --- attacks: each changes one thing ---------------------------------------------------------


def test_tampered_values_fail_the_digest_check() -> None:
    doc = _doc()
    doc["pcrs"]["9"] = hashlib.sha256(b"unapproved kernel").hexdigest()
    error = _refused(_bytes(doc), "digest", "policy_digest is not the TPM2_PolicyPCR digest")
    assert error.field == "pcr_policy.policy_digest"


def test_a_dropped_pcr_fails_the_digest_check() -> None:
    doc = _doc()
    del doc["pcrs"]["15"]
    _refused(_bytes(doc), "digest", "the values or the digest were changed")


def test_tampered_values_with_a_recomputed_digest_fail_the_signature() -> None:
    doc = _doc()
    doc["pcrs"]["9"] = hashlib.sha256(b"unapproved kernel").hexdigest()
    values = {int(k): bytes.fromhex(v) for k, v in doc["pcrs"].items()}
    doc["policy_digest"] = policy_pcr_digest(values).hex()
    error = _refused(_bytes(doc), "signature", "does not verify under the authority")
    assert hw.authority_fingerprint(AUTHORITY.public_key()) in error.message
    with pytest.raises(hw.PolicyCheckError):  # the hardware agrees
        hw.SignedPCRPolicy.from_bytes(_bytes(doc)).verify()


@pytest.mark.parametrize(
    "signature",
    [
        b"\x30\x06\x02\x01\x01\x02\x01\x01",  # valid DER, wrong (r, s)
        b"not a DER signature",
        OTHER.sign(b"x" * 32, ec.ECDSA(hashes.SHA256())),
    ],
)
def test_a_bad_signature_is_refused(signature: bytes) -> None:
    doc = _doc()
    doc["signature"] = base64.b64encode(signature).decode()
    _refused(_bytes(doc), "signature", "modified or re-signed")


def test_a_swapped_authority_fails_the_signature() -> None:
    """The attacker names their key as the authority but keeps the real signature."""
    doc = _doc()
    doc["authority"] = base64.b64encode(spki(OTHER.public_key())).decode()
    _refused(_bytes(doc), "signature", "does not verify")


def test_another_authority_signs_validly_but_does_not_count() -> None:
    forged = signed_policy(OTHER, VALUES)
    assert load_signed_pcr_policy(forged).authority_der == spki(OTHER.public_key())
    with pytest.raises(PCRPolicyError) as info:
        approved_state(forged, AUTHORITY_DER, VALUES)
    assert info.value.reason == "authority"
    theirs = hw.authority_fingerprint(OTHER.public_key())
    ours = hw.authority_fingerprint(AUTHORITY.public_key())
    assert info.value.message == (
        f"the signed PCR policy is signed by authority {theirs}, not by the device's "
        f"enrolled policy authority {ours}"
    )


def test_an_oversize_policy_is_refused_before_parsing() -> None:
    data = POLICY[:-1] + b" " * (MAX_POLICY_BYTES - len(POLICY) + 1) + b"}"
    assert len(data) == MAX_POLICY_BYTES + 1
    _refused(data, "malformed", f"is {MAX_POLICY_BYTES + 1} bytes, over the limit of 16384")
    exactly = POLICY[:-1] + b" " * (MAX_POLICY_BYTES - len(POLICY)) + b"}"
    assert load_signed_pcr_policy(exactly).values == VALUES


@pytest.mark.parametrize(
    ("data", "rule"),
    [
        (POLICY[:-1] + b',"version":1}', "duplicate-key"),
        (POLICY.replace(b'"version":1', b'"version":1.0'), "float"),
        (POLICY.replace(b'"version":1', b'"version":NaN'), "constant"),
        (b"\xef\xbb\xbf" + POLICY, "syntax"),
        (POLICY.replace(b'"bank"', b'"b\xffnk"'), "encoding"),
        (POLICY[:40], "syntax"),
    ],
)
def test_non_strict_json_is_refused(data: bytes, rule: str) -> None:
    _refused(data, "malformed", rf"not strict UTF-8 JSON \({rule}\)")


def test_another_bank_is_refused() -> None:
    doc = _doc()
    doc["bank"] = "sha1"
    error = _refused(_bytes(doc), "malformed", "over the 'sha1' PCR bank; only sha256")
    assert error.field == "pcr_policy.bank"


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"format": "edgeseal-trust-bundle"}, "not a signed PCR policy"),
        ({"version": 2}, "version 2 is not 1"),
        ({"version": True}, "version True is not 1"),
        ({"extra": 1}, "unknown: extra"),
        ({"pcrs": {}}, "1 to 24 PCR index"),
        ({"pcrs": []}, "1 to 24 PCR index"),
        ({"pcrs": {"24": "00" * 32}}, "names PCR '24'"),
        ({"pcrs": {"07": "00" * 32}}, "names PCR '07'"),
        ({"pcrs": {"-1": "00" * 32}}, "names PCR '-1'"),
        ({"pcrs": {"7": "AB" * 32}}, "pcrs.7 must be 64 lowercase hex"),
        ({"pcrs": {"7": "ab" * 31}}, "pcrs.7 must be 64 lowercase hex"),
        ({"policy_digest": 5}, "policy_digest must be 64 lowercase hex"),
        ({"authority": "***"}, "authority is not valid base64"),
        ({"authority": ""}, "authority must be base64 of 1 to 512"),
        ({"authority": base64.b64encode(b"x" * 513).decode()}, "authority must be base64"),
        ({"authority": base64.b64encode(b"junk").decode()}, "not a DER SubjectPublicKeyInfo"),
        # An unknown key algorithm OID (1.2.840.10045.2.1 with one arc changed).
        ({"authority": UNKNOWN_OID_SPKI}, "not a DER SubjectPublicKeyInfo"),
        (
            {"signature": base64.b64encode(b"s" * 73).decode()},
            "signature must be base64 of 1 to 72",
        ),
        ({"signature": None}, "signature must be base64"),
    ],
)
def test_malformed_fields_are_named(change: dict[str, Any], match: str) -> None:
    _refused(_bytes({**_doc(), **change}), "malformed", match)


def test_a_missing_key_is_named() -> None:
    doc = _doc()
    del doc["signature"]
    _refused(_bytes(doc), "malformed", "missing: signature; unknown: none")


@pytest.mark.parametrize(
    "key",
    [
        ec.generate_private_key(ec.SECP384R1()).public_key(),
        rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key(),
    ],
)
def test_an_authority_that_is_not_p256_is_refused(key: Any) -> None:
    doc = _doc()
    doc["authority"] = base64.b64encode(spki(key)).decode()
    _refused(_bytes(doc), "malformed", "must be an ECDSA P-256 public key")
    with pytest.raises(PCRPolicyError, match="P-256"):
        parse_policy_authority(spki(key))


def test_a_prehashed_signature_is_what_counts() -> None:
    """A signature over the policy digest itself (not prehashed aHash) is refused."""
    doc = _doc()
    digest = bytes.fromhex(doc["policy_digest"])
    wrong = AUTHORITY.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    doc["signature"] = base64.b64encode(wrong).decode()
    _refused(_bytes(doc), "signature", "does not verify")


# --- approved_state --------------------------------------------------------------------------


def test_approved_state_accepts_the_reported_values() -> None:
    approved = approved_state(POLICY, AUTHORITY_DER, VALUES)
    assert approved.fingerprint == authority_fingerprint(AUTHORITY_DER)


def test_the_policy_may_name_more_pcrs_than_reported() -> None:
    assert approved_state(POLICY, AUTHORITY_DER, {9: VALUES[9]}).values == VALUES


def test_reported_values_the_policy_does_not_approve_are_named() -> None:
    reported = {**VALUES, 9: hashlib.sha256(b"other kernel").digest(), 7: bytes(32)}
    with pytest.raises(PCRPolicyError) as info:
        approved_state(POLICY, AUTHORITY_DER, reported)
    assert info.value.reason == "values" and info.value.pcrs == (7, 9)
    assert info.value.message.startswith(
        "PCRs 7, 9 reported by the device differ from the values the signed PCR policy of "
        f"authority {authority_fingerprint(AUTHORITY_DER)} approves (PCR 7 is not in the "
        f"policy; PCR 9 approved {VALUES[9].hex()[:12]}..., reported "
    )


def test_nothing_reported_is_not_approved() -> None:
    with pytest.raises(PCRPolicyError, match="no PCR values were reported"):
        approved_state(POLICY, AUTHORITY_DER, {})


def test_no_policy_or_no_authority_is_missing() -> None:
    with pytest.raises(PCRPolicyError, match="sent no signed PCR policy") as info:
        approved_state(None, AUTHORITY_DER, VALUES)
    assert info.value.reason == "missing" and info.value.field == "pcr_policy"
    with pytest.raises(PCRPolicyError, match="no PCR policy authority is enrolled") as info:
        approved_state(POLICY, None, VALUES)
    assert info.value.reason == "missing" and info.value.field == "pcr_policy_authority"


def test_a_malformed_enrolled_authority_is_refused() -> None:
    with pytest.raises(PCRPolicyError, match="pcr_policy_authority is not a DER"):
        approved_state(POLICY, b"junk", VALUES)


def test_a_tampered_policy_is_refused_before_the_values() -> None:
    doc = _doc()
    doc["pcrs"]["9"] = hashlib.sha256(b"unapproved kernel").hexdigest()
    with pytest.raises(PCRPolicyError) as info:
        approved_state(_bytes(doc), AUTHORITY_DER, VALUES)
    assert info.value.reason == "digest"


# --- the parser never raises anything else ---------------------------------------------------

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=70),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=600))
def test_arbitrary_bytes_never_escape_as_another_error(data: bytes) -> None:
    with pytest.raises(PCRPolicyError):
        load_signed_pcr_policy(data)


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from(sorted(_doc())), value=_JSON)
def test_any_value_in_any_field_is_refused_or_changes_nothing(key: str, value: Any) -> None:
    doc = {**_doc(), key: value}
    try:
        approved = load_signed_pcr_policy(_bytes(doc))
    except PCRPolicyError as exc:
        assert exc.message and exc.reason in {"malformed", "digest", "signature"}
        return
    # Anything the sdk accepts, the hardware layer accepts and verifies too.
    hw.SignedPCRPolicy.from_bytes(_bytes(doc)).verify()
    assert approved.values == VALUES


@settings(max_examples=200, deadline=None)
@given(position=st.integers(0, len(POLICY) - 1), byte=st.integers(0, 255))
def test_a_flipped_byte_is_refused_or_harmless(position: int, byte: int) -> None:
    data = bytearray(POLICY)
    data[position] = byte
    try:
        approved = load_signed_pcr_policy(bytes(data))
    except PCRPolicyError:
        return
    assert approved.values == VALUES and approved.authority_der == AUTHORITY_DER
