"""PCR policy math (pure) checked against known answers and against a real TPM."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import struct
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeseal.hardware.errors import PolicyCheckError, PolicyFormatError
from edgeseal.hardware.policy import (
    MAX_POLICY_BYTES,
    PCRValues,
    SignedPCRPolicy,
    authority_name,
    authority_tpmt_public,
    pcr_after_extends,
    policy_authorize_digest,
    policy_pcr_digest,
    sign_pcr_policy,
)
from edgeseal.hardware.swtpm import SwtpmProcess

A = hashlib.sha256(b"bootloader").digest()
B = hashlib.sha256(b"kernel").digest()


@pytest.fixture(scope="module")
def authority() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def values_7_9() -> PCRValues:
    return PCRValues.from_extends({7: [A], 9: [A, B]})


# -- PCR values -----------------------------------------------------------------------------


def test_pcr_after_extends_is_the_tpm_extend_chain() -> None:
    assert pcr_after_extends([]) == bytes(32)
    first = hashlib.sha256(bytes(32) + A).digest()
    assert pcr_after_extends([A]) == first
    assert pcr_after_extends([A, B]) == hashlib.sha256(first + B).digest()


def test_pcr_values_are_sorted_copied_and_validated() -> None:
    source = {9: B, 7: A}
    values = PCRValues("sha256", source)
    source[7] = B
    assert values.indices == [7, 9]
    assert values.digests[7] == A
    with pytest.raises(ValueError, match=r"0\.\.23"):
        PCRValues("sha256", {24: A})
    with pytest.raises(ValueError, match="32 bytes"):
        PCRValues("sha256", {1: b"short"})
    with pytest.raises(ValueError, match="sha256"):
        PCRValues("sha1", {1: A})
    with pytest.raises(ValueError, match="at least one"):
        PCRValues("sha256", {})


def test_changed_names_differing_and_missing_pcrs() -> None:
    approved = values_7_9()
    assert approved.changed(approved) == []
    current = PCRValues("sha256", {7: approved.digests[7], 9: A})
    assert approved.changed(current) == [9]
    assert approved.changed(PCRValues("sha256", {9: approved.digests[9]})) == [7]


# -- policy digests (Part 3, 23.7 and 23.16) --------------------------------------------------


def test_policy_pcr_digest_known_answer() -> None:
    values = PCRValues("sha256", {0: bytes(32)})
    selection = struct.pack(">IHB", 1, 0x000B, 3) + b"\x01\x00\x00"
    expected = hashlib.sha256(
        bytes(32) + struct.pack(">I", 0x17F) + selection + hashlib.sha256(bytes(32)).digest()
    ).digest()
    assert policy_pcr_digest(values) == expected


def test_policy_authorize_digest_depends_on_the_authority(
    authority: ec.EllipticCurvePrivateKey,
) -> None:
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    mine = policy_authorize_digest(authority.public_key())
    assert len(mine) == 32
    assert mine != policy_authorize_digest(other)
    assert mine == policy_authorize_digest(authority.public_key())


@pytest.mark.swtpm
def test_policy_digests_match_a_real_tpm_trial_session(
    swtpm: SwtpmProcess, authority: ec.EllipticCurvePrivateKey
) -> None:
    # Imported here so that the pure tests above run without tpm2-pytss.
    from tpm2_pytss import ESAPI
    from tpm2_pytss.constants import (
        ESYS_TR,
        TPM2_ALG,
        TPM2_RH,
        TPM2_SE,
        TPM2_ST,
    )
    from tpm2_pytss.types import (
        TPM2B_PUBLIC,
        TPML_DIGEST_VALUES,
        TPML_PCR_SELECTION,
        TPMT_HA,
        TPMT_PUBLIC,
        TPMT_TK_VERIFIED,
        TPMU_HA,
    )

    with ESAPI(swtpm.start()) as esapi:
        for index, digests in ((7, [A]), (9, [A, B])):
            for digest in digests:
                esapi.pcr_extend(
                    ESYS_TR(int(ESYS_TR.PCR0) + index),
                    TPML_DIGEST_VALUES(
                        [TPMT_HA(hashAlg=TPM2_ALG.SHA256, digest=TPMU_HA(sha256=digest))]
                    ),
                )
        # PolicyPCR with an empty pcrDigest: the TPM hashes its own current values.
        trial = esapi.start_auth_session(
            ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.TRIAL, None, TPM2_ALG.SHA256
        )
        esapi.policy_pcr(trial, b"", TPML_PCR_SELECTION.parse("sha256:7,9"))
        assert bytes(esapi.policy_get_digest(trial)) == policy_pcr_digest(values_7_9())
        esapi.flush_context(trial)

        public, _ = TPMT_PUBLIC.unmarshal(authority_tpmt_public(authority.public_key()))
        key = esapi.load_external(TPM2B_PUBLIC(publicArea=public), None, ESYS_TR.OWNER)
        assert bytes(esapi.tr_get_name(key)) == authority_name(authority.public_key())
        esapi.flush_context(key)

        trial = esapi.start_auth_session(
            ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.TRIAL, None, TPM2_ALG.SHA256
        )
        ticket = TPMT_TK_VERIFIED(tag=TPM2_ST.VERIFIED, hierarchy=TPM2_RH.NULL)
        esapi.policy_authorize(trial, b"", authority_name(authority.public_key()), ticket)
        digest = bytes(esapi.policy_get_digest(trial))
        esapi.flush_context(trial)
    assert digest == policy_authorize_digest(authority.public_key())


# -- signed policies ------------------------------------------------------------------------


def test_signed_policy_round_trip_and_verify(authority: ec.EllipticCurvePrivateKey) -> None:
    policy = sign_pcr_policy(authority, values_7_9())
    policy.verify()
    policy.verify(authority.public_key())
    again = SignedPCRPolicy.from_bytes(policy.to_bytes())
    assert again == policy
    assert again.to_bytes() == policy.to_bytes()
    again.verify()
    assert again.changed_pcrs(values_7_9()) == []
    assert again.changed_pcrs(PCRValues.from_extends({7: [A], 9: [A]})) == [9]


def test_signed_policy_from_another_authority_is_refused(
    authority: ec.EllipticCurvePrivateKey,
) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    policy = sign_pcr_policy(other, values_7_9())
    policy.verify()  # it is a valid signature ...
    with pytest.raises(PolicyCheckError, match="different authority"):
        policy.verify(authority.public_key())  # ... by the wrong key


def test_tampered_signature_or_values_are_refused(authority: ec.EllipticCurvePrivateKey) -> None:
    policy = sign_pcr_policy(authority, values_7_9())
    moved = SignedPCRPolicy(
        values=PCRValues.from_extends({7: [A], 9: [B]}),
        authority=policy.authority,
        signature=policy.signature,
    )
    with pytest.raises(PolicyCheckError, match="does not verify"):
        moved.verify()
    forged = sign_pcr_policy(ec.generate_private_key(ec.SECP256R1()), values_7_9())
    swapped = SignedPCRPolicy(policy.values, policy.authority, forged.signature)
    with pytest.raises(PolicyCheckError, match="does not verify"):
        swapped.verify(authority.public_key())


def test_only_p256_authorities(authority: ec.EllipticCurvePrivateKey) -> None:
    with pytest.raises(TypeError, match="P-256"):
        sign_pcr_policy(ec.generate_private_key(ec.SECP384R1()), values_7_9())


def _doc(authority: ec.EllipticCurvePrivateKey) -> dict[str, Any]:
    loaded = json.loads(sign_pcr_policy(authority, values_7_9()).to_bytes())
    assert isinstance(loaded, dict)
    return loaded


def _p384_spki() -> str:
    key = ec.generate_private_key(ec.SECP384R1()).public_key()
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


MUTATIONS: list[tuple[str, Any, str]] = [
    ("version", 2, "unsupported signed PCR policy version 2"),
    ("version", True, "unsupported"),
    ("format", "something-else", "not a signed PCR policy"),
    ("bank", "sha1", "unsupported PCR bank"),
    ("pcrs", {}, "non-empty"),
    ("pcrs", [], "non-empty"),
    ("pcrs", {"24": "00" * 32}, "out of range"),
    ("pcrs", {"-1": "00" * 32}, "not a decimal"),
    ("pcrs", {"07": "00" * 32}, "not a decimal"),
    ("pcrs", {"7": "00" * 31}, "64 hex"),
    ("pcrs", {"7": "zz" * 32}, "not hex"),
    ("pcrs", {"7": 5}, "must be a string"),
    ("policy_digest", "00" * 32, "does not match"),
    ("authority", "not base64!", "not valid base64"),
    ("authority", base64.b64encode(b"junk").decode(), "SubjectPublicKeyInfo"),
    ("authority", "P384", "P-256"),
    ("signature", "", "1..128 bytes"),
    ("signature", base64.b64encode(bytes(200)).decode(), "1..128 bytes"),
]


@pytest.mark.parametrize(("field", "value", "message"), MUTATIONS)
def test_malformed_policies_are_rejected_by_name(
    authority: ec.EllipticCurvePrivateKey, field: str, value: Any, message: str
) -> None:
    doc = _doc(authority)
    doc[field] = _p384_spki() if value == "P384" else value
    with pytest.raises(PolicyFormatError, match=message):
        SignedPCRPolicy.from_bytes(json.dumps(doc).encode())


def test_missing_and_unknown_fields(authority: ec.EllipticCurvePrivateKey) -> None:
    doc = _doc(authority)
    del doc["signature"]
    doc["extra"] = 1
    with pytest.raises(PolicyFormatError, match=r"missing \['signature'\], unknown \['extra'\]"):
        SignedPCRPolicy.from_bytes(json.dumps(doc).encode())


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b"{" + b" " * MAX_POLICY_BYTES + b"}", "more than the 16384 allowed"),
    ],
)
def test_non_policies_are_rejected(data: bytes, message: str) -> None:
    with pytest.raises(PolicyFormatError, match=message):
        SignedPCRPolicy.from_bytes(data)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=600) | st.text(max_size=300).map(str.encode))
def test_arbitrary_bytes_raise_only_policy_format_error(data: bytes) -> None:
    with contextlib.suppress(PolicyFormatError):
        SignedPCRPolicy.from_bytes(data)
