"""The attested key release's binding and bodies (edgeseal.sdk.key_release): pure, strict."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeseal.sdk.errors import FormatError
from edgeseal.sdk.key_release import (
    BINDING_LABEL,
    MAX_BODY_BYTES,
    NONCE_SIZE,
    KeyChallenge,
    KeyChallengeRequest,
    KeyReleaseRequest,
    KeyReleaseResponse,
    key_release_binding,
)
from edgeseal.sdk.pcr_policy import MAX_POLICY_BYTES

NONCE = bytes(range(32))
PCRS = {0: b"\x00" * 32, 4: b"\x44" * 32, 9: b"\x99" * 32, 15: b"\xff" * 32}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- the binding -----------------------------------------------------------------------------


def test_binding_is_the_contracts_formula() -> None:
    status = b'{"device_id":"cam-1","family":"detector","version":7}'
    want = hashlib.sha256(b"edgeseal-key-release-v1\x00" + NONCE + status).digest()
    assert BINDING_LABEL == b"edgeseal-key-release-v1\x00"
    assert key_release_binding(NONCE, "cam-1", "detector", 7) == want


def test_binding_separates_every_input() -> None:
    base = key_release_binding(NONCE, "cam-1", "detector", 7)
    others = {
        key_release_binding(bytes(32), "cam-1", "detector", 7),
        key_release_binding(NONCE, "cam-2", "detector", 7),
        key_release_binding(NONCE, "cam-1", "detector2", 7),
        key_release_binding(NONCE, "cam-1", "detector", 8),
    }
    assert base not in others and len(others) == 4


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ((NONCE[:31], "cam-1", "d", 1), "nonce"),
        ((NONCE + b"x", "cam-1", "d", 1), "nonce"),
        ((NONCE.hex(), "cam-1", "d", 1), "nonce"),
        ((NONCE, "../x", "d", 1), "device_id"),
        ((NONCE, "cam-1", "Detector", 1), "family"),
        ((NONCE, "cam-1", "d", -1), "version"),
        ((NONCE, "cam-1", "d", True), "version"),
        ((NONCE, "cam-1", "d", 2**63), "version"),
    ],
)
def test_binding_refuses_bad_inputs(args: tuple[Any, ...], field: str) -> None:
    with pytest.raises(FormatError) as err:
        key_release_binding(*args)
    assert err.value.field == field


# --- round trips -----------------------------------------------------------------------------


def test_round_trips_and_wire_form() -> None:
    request = KeyChallengeRequest("cam-1", "detector", 7)
    assert KeyChallengeRequest.parse(request.encode()) == request
    assert json.loads(request.encode()) == {
        "device_id": "cam-1",
        "family": "detector",
        "version": 7,
    }

    challenge = KeyChallenge("c-1", NONCE, (15, 0, 9, 4))
    assert challenge.pcrs == (0, 4, 9, 15)  # kept sorted
    assert KeyChallenge.parse(challenge.encode()) == challenge
    assert json.loads(challenge.encode()) == {
        "challenge_id": "c-1",
        "nonce": NONCE.hex(),
        "pcrs": [0, 4, 9, 15],
    }

    release = KeyReleaseRequest("c-1", PCRS, b"\xff\x54\x43\x47attest", b"0E" + bytes(69))
    assert KeyReleaseRequest.parse(release.encode()) == release
    doc = json.loads(release.encode())
    assert doc["pcrs"] == {str(i): v.hex() for i, v in PCRS.items()}
    assert doc["quote"] == {"attest": b64(release.attest), "signature": b64(release.signature)}
    assert list(release.pcrs) == [0, 4, 9, 15]
    assert release.pcr_policy is None and doc["pcr_policy"] is None

    response = KeyReleaseResponse(b"E" * 129)
    assert KeyReleaseResponse.parse(response.encode()) == response
    assert json.loads(response.encode()) == {"envelope": b64(b"E" * 129)}


def test_parse_accepts_unsorted_pcr_lists_and_keys() -> None:
    doc = {"challenge_id": "c", "nonce": NONCE.hex(), "pcrs": [9, 0]}
    assert KeyChallenge.parse(json.dumps(doc).encode()).pcrs == (0, 9)
    rel = KeyReleaseRequest("c", {9: PCRS[9], 0: PCRS[0]}, b"a", b"s").to_json()
    rel["pcrs"] = dict(reversed(list(rel["pcrs"].items())))
    assert list(KeyReleaseRequest.parse(json.dumps(rel).encode()).pcrs) == [0, 9]


# --- refusals --------------------------------------------------------------------------------

GOOD_CHALLENGE_REQUEST = {"device_id": "cam-1", "family": "detector", "version": 7}
GOOD_CHALLENGE = {"challenge_id": "c-1", "nonce": NONCE.hex(), "pcrs": [0, 4, 9, 15]}
GOOD_RELEASE = KeyReleaseRequest("c-1", PCRS, b"attest", b"sig").to_json()
GOOD_RESPONSE = {"envelope": b64(b"E" * 129)}


def refused(cls: Any, doc: Any, field: str) -> None:
    data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    with pytest.raises(FormatError) as err:
        cls.parse(data)
    assert err.value.field == field, err.value.diagnostics()


def test_good_documents_parse() -> None:
    for cls, doc in (
        (KeyChallengeRequest, GOOD_CHALLENGE_REQUEST),
        (KeyChallenge, GOOD_CHALLENGE),
        (KeyReleaseRequest, GOOD_RELEASE),
        (KeyReleaseResponse, GOOD_RESPONSE),
    ):
        cls.parse(json.dumps(doc).encode())


@pytest.mark.parametrize("cls", [KeyChallengeRequest, KeyChallenge, KeyReleaseRequest])
@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"[]",
        b"null",
        b"\xff\xfe{}",
        b'{"a": 1, "a": 2}',
        b'{"version": 1.0}',
        b'{"version": NaN}',
        b" " * (MAX_BODY_BYTES + 1),
    ],
)
def test_not_strict_json_objects_are_refused(cls: Any, data: bytes) -> None:
    with pytest.raises(FormatError) as err:
        cls.parse(data)
    assert err.value.field == "body"


def test_bodies_must_be_bytes() -> None:
    with pytest.raises(FormatError, match="bytes"):
        KeyChallenge.parse("{}")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"extra": 1}, "body"),
        ({"device_id": None}, "device_id"),
        ({"device_id": "-x"}, "device_id"),
        ({"device_id": "a" * 65}, "device_id"),
        ({"family": "UPPER"}, "family"),
        ({"family": 3}, "family"),
        ({"version": "7"}, "version"),
        ({"version": True}, "version"),
        ({"version": -1}, "version"),
        ({"version": 2**63}, "version"),
    ],
)
def test_challenge_request_refusals(change: dict[str, Any], field: str) -> None:
    refused(KeyChallengeRequest, {**GOOD_CHALLENGE_REQUEST, **change}, field)


def test_missing_keys_are_named() -> None:
    with pytest.raises(FormatError, match="lacks version"):
        KeyChallengeRequest.parse(b'{"device_id": "cam-1", "family": "d"}')


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"more": True}, "body"),
        ({"challenge_id": ""}, "challenge_id"),
        ({"challenge_id": "a b"}, "challenge_id"),
        ({"challenge_id": "x" * 129}, "challenge_id"),
        ({"challenge_id": 5}, "challenge_id"),
        ({"nonce": NONCE.hex().upper()}, "nonce"),
        ({"nonce": NONCE.hex()[:-2]}, "nonce"),
        ({"nonce": NONCE.hex() + "00"}, "nonce"),
        ({"nonce": "zz" * 32}, "nonce"),
        ({"nonce": list(NONCE)}, "nonce"),
        ({"pcrs": []}, "pcrs"),
        ({"pcrs": [0, 0]}, "pcrs"),
        ({"pcrs": [24]}, "pcrs"),
        ({"pcrs": [-1]}, "pcrs"),
        ({"pcrs": [True]}, "pcrs"),
        ({"pcrs": ["0"]}, "pcrs"),
        ({"pcrs": [[0]]}, "pcrs"),
        ({"pcrs": [*range(24), 0]}, "pcrs"),
        ({"pcrs": {"0": 1}}, "pcrs"),
    ],
)
def test_challenge_refusals(change: dict[str, Any], field: str) -> None:
    refused(KeyChallenge, {**GOOD_CHALLENGE, **change}, field)


def test_all_24_pcrs_are_a_valid_challenge() -> None:
    doc = {**GOOD_CHALLENGE, "pcrs": list(range(24))}
    assert KeyChallenge.parse(json.dumps(doc).encode()).pcrs == tuple(range(24))


def _release(**change: Any) -> dict[str, Any]:
    doc = json.loads(json.dumps(GOOD_RELEASE))
    for key, value in change.items():
        if key.startswith("quote_"):
            doc["quote"][key[len("quote_") :]] = value
        else:
            doc[key] = value
    return doc


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        (_release(challenge_id="../"), "challenge_id"),
        (_release(pcrs={}), "pcrs"),
        (_release(pcrs=[0]), "pcrs"),
        (_release(pcrs={"24": "00" * 32}), "pcrs"),
        (_release(pcrs={"04": "00" * 32}), "pcrs"),
        (_release(pcrs={"+4": "00" * 32}), "pcrs"),
        (_release(pcrs={" 4": "00" * 32}), "pcrs"),
        (_release(pcrs={"4": "00" * 31}), "pcrs.4"),
        (_release(pcrs={"4": "AA" * 32}), "pcrs.4"),
        (_release(pcrs={"4": None}), "pcrs.4"),
        (_release(quote=None), "quote"),
        (_release(quote={"attest": b64(b"a")}), "quote"),
        (_release(quote_extra="x"), "quote"),
        (_release(quote_attest=""), "quote.attest"),
        (_release(quote_attest="%%%%"), "quote.attest"),
        (_release(quote_attest="YQ"), "quote.attest"),  # unpadded
        (_release(quote_attest="YR=="), "quote.attest"),  # non-canonical padding bits
        (_release(quote_attest="YQ==\n"), "quote.attest"),
        (_release(quote_attest=b64(b"a" * 1025)), "quote.attest"),
        (_release(quote_signature=b64(b"s" * 73)), "quote.signature"),
        (_release(quote_signature=7), "quote.signature"),
        (_release(extra=1), "body"),
        (_release(pcr_policy=""), "pcr_policy"),
        (_release(pcr_policy=5), "pcr_policy"),
        (_release(pcr_policy={}), "pcr_policy"),
        (_release(pcr_policy="not base64!"), "pcr_policy"),
        (_release(pcr_policy="YR=="), "pcr_policy"),  # non-canonical padding bits
        (_release(pcr_policy=b64(b"p" * (MAX_POLICY_BYTES + 1))), "pcr_policy"),
    ],
)
def test_release_request_refusals(doc: dict[str, Any], field: str) -> None:
    refused(KeyReleaseRequest, doc, field)


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({}, "body"),
        ({"envelope": b64(b"E"), "key": "x"}, "body"),
        ({"envelope": ""}, "envelope"),
        ({"envelope": b64(b"E" * 4097)}, "envelope"),
        ({"envelope": "not base64!"}, "envelope"),
        ({"envelope": None}, "envelope"),
    ],
)
def test_release_response_refusals(doc: dict[str, Any], field: str) -> None:
    refused(KeyReleaseResponse, doc, field)


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: KeyChallenge("c", NONCE[:16], (0,)), "nonce"),
        (lambda: KeyChallenge("c", NONCE, ()), "pcrs"),
        (lambda: KeyReleaseRequest("c", {0: b"x"}, b"a", b"s"), "pcrs.0"),
        (lambda: KeyReleaseRequest("c", {25: bytes(32)}, b"a", b"s"), "pcrs"),
        (lambda: KeyReleaseRequest("c", [(0, bytes(32))], b"a", b"s"), "pcrs"),  # type: ignore[arg-type]
        (lambda: KeyReleaseRequest("c", PCRS, b"", b"s"), "quote.attest"),
        (lambda: KeyReleaseResponse(b""), "envelope"),
        (lambda: KeyReleaseRequest("c", PCRS, b"a", b"s", b""), "pcr_policy"),
        (lambda: KeyReleaseRequest("c", PCRS, b"a", b"s", "{}"), "pcr_policy"),  # type: ignore[arg-type]
        (
            lambda: KeyReleaseRequest("c", PCRS, b"a", b"s", b"p" * (MAX_POLICY_BYTES + 1)),
            "pcr_policy",
        ),
        (lambda: KeyChallengeRequest("cam-1", "d", 1.0), "version"),  # type: ignore[arg-type]
    ],
)
def test_constructors_validate(build: Any, field: str) -> None:
    with pytest.raises(FormatError) as err:
        build()
    assert err.value.field == field


def test_the_largest_valid_bodies_are_far_under_the_bound() -> None:
    release = KeyReleaseRequest(
        "x" * 128, {i: bytes(32) for i in range(24)}, b"a" * 1024, b"s" * 72
    )
    assert len(release.encode()) < MAX_BODY_BYTES // 8
    assert len(KeyReleaseResponse(b"E" * 4096).encode()) < MAX_BODY_BYTES // 8
    with_policy = KeyReleaseRequest(
        "x" * 128,
        {i: bytes(32) for i in range(24)},
        b"a" * 1024,
        b"s" * 72,
        b"p" * MAX_POLICY_BYTES,
    )
    assert len(with_policy.encode()) < MAX_BODY_BYTES // 2
    assert KeyReleaseRequest.parse(with_policy.encode()) == with_policy


# --- the signed PCR policy (boot states approved after enrollment) ---------------------------


def test_a_release_request_carries_the_signed_pcr_policy() -> None:
    policy = b'{"format":"edgeseal-signed-pcr-policy"}'
    release = KeyReleaseRequest("c-1", PCRS, b"attest", b"sig", policy)
    doc = json.loads(release.encode())
    assert doc["pcr_policy"] == b64(policy)
    parsed = KeyReleaseRequest.parse(release.encode())
    assert parsed == release and parsed.pcr_policy == policy
    assert parsed != KeyReleaseRequest("c-1", PCRS, b"attest", b"sig")


def test_a_release_request_without_pcr_policy_is_an_older_agents() -> None:
    doc = dict(GOOD_RELEASE)
    del doc["pcr_policy"]
    parsed = KeyReleaseRequest.parse(json.dumps(doc).encode())
    assert parsed.pcr_policy is None
    assert json.loads(parsed.encode())["pcr_policy"] is None  # sent explicitly from now on
    null = KeyReleaseRequest.parse(json.dumps({**doc, "pcr_policy": None}).encode())
    assert null == parsed


# --- property tests --------------------------------------------------------------------------

PARSERS = (KeyChallengeRequest, KeyChallenge, KeyReleaseRequest, KeyReleaseResponse)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=12,
)


@given(st.sampled_from(PARSERS), st.binary(max_size=300))
def test_parsers_refuse_arbitrary_bytes_with_format_error(cls: Any, data: bytes) -> None:
    with contextlib.suppress(FormatError):
        cls.parse(data)


@given(st.sampled_from(PARSERS), json_values)
def test_parsers_refuse_arbitrary_json_with_format_error(cls: Any, doc: Any) -> None:
    try:
        parsed = cls.parse(json.dumps(doc).encode())
    except FormatError:
        return
    assert cls.parse(parsed.encode()) == parsed


@given(
    st.sampled_from([GOOD_CHALLENGE_REQUEST, GOOD_CHALLENGE, GOOD_RELEASE, GOOD_RESPONSE]),
    st.text(min_size=1, max_size=20),
    json_values,
)
def test_one_changed_key_is_refused_or_still_valid(
    doc: dict[str, Any], key: str, value: Any
) -> None:
    cls = {
        id(GOOD_CHALLENGE_REQUEST): KeyChallengeRequest,
        id(GOOD_CHALLENGE): KeyChallenge,
        id(GOOD_RELEASE): KeyReleaseRequest,
        id(GOOD_RESPONSE): KeyReleaseResponse,
    }[id(doc)]
    changed = {**doc, key: value}
    try:
        parsed = cls.parse(json.dumps(changed).encode())
    except FormatError:
        return
    assert key in doc  # an unknown key is never accepted
    assert cls.parse(parsed.encode()) == parsed


@given(
    device_id=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", fullmatch=True),
    family=st.from_regex(r"[a-z0-9][a-z0-9._-]{0,63}", fullmatch=True),
    version=st.integers(0, 2**63 - 1),
    nonce=st.binary(min_size=NONCE_SIZE, max_size=NONCE_SIZE),
    pcrs=st.sets(st.integers(0, 23), min_size=1),
    attest=st.binary(min_size=1, max_size=1024),
    signature=st.binary(min_size=1, max_size=72),
    envelope=st.binary(min_size=1, max_size=4096),
    pcr_policy=st.none() | st.binary(min_size=1, max_size=600),
    challenge_id=st.from_regex(r"[A-Za-z0-9._:-]{1,128}", fullmatch=True),
)
def test_every_valid_body_round_trips(
    device_id: str,
    family: str,
    version: int,
    nonce: bytes,
    pcrs: set[int],
    attest: bytes,
    signature: bytes,
    envelope: bytes,
    pcr_policy: bytes | None,
    challenge_id: str,
) -> None:
    bodies = [
        KeyChallengeRequest(device_id, family, version),
        KeyChallenge(challenge_id, nonce, tuple(pcrs)),
        KeyReleaseRequest(challenge_id, dict.fromkeys(pcrs, nonce), attest, signature, pcr_policy),
        KeyReleaseResponse(envelope),
    ]
    for body in bodies:
        assert type(body).parse(body.encode()) == body
    assert len(key_release_binding(nonce, device_id, family, version)) == 32
