"""The trust bundle: pinned signer, signature before parsing, a strict schema, bounds."""

from __future__ import annotations

import base64
import copy
import datetime as dt
import hashlib
import json
from typing import Any

import pytest
from attest_fixtures import NOW, SimulatedDevice, bundle_payload, release_entry, spki
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgeseal.sdk.console_wire import canonical_json
from edgeseal.sdk.errors import AttestationError
from edgeseal.sdk.trust_bundle import (
    MAX_BUNDLE_BYTES,
    key_id,
    load_trust_bundle,
    sign_trust_bundle,
)

KEY = ec.generate_private_key(ec.SECP256R1())
DEVICE = SimulatedDevice()


def _payload() -> dict[str, Any]:
    return bundle_payload([DEVICE.bundle_entry(), DEVICE.bundle_entry(device_id="cam-0043")])


def _file(payload_bytes: bytes, key: ec.EllipticCurvePrivateKey = KEY) -> bytes:
    """A bundle file around arbitrary payload bytes (sign_trust_bundle would refuse them)."""
    signature = key.sign(payload_bytes, ec.ECDSA(hashes.SHA256()))
    return json.dumps(
        {
            "payload": base64.b64encode(payload_bytes).decode(),
            "signature": base64.b64encode(signature).decode(),
            "key_id": key_id(key.public_key()),
        }
    ).encode()


def test_round_trip() -> None:
    bundle = load_trust_bundle(sign_trust_bundle(_payload(), KEY), KEY.public_key())
    assert bundle.issuer == "ota.example.com"
    assert bundle.key_id == key_id(KEY.public_key())
    assert bundle.issued == NOW - dt.timedelta(days=1)
    device = bundle.device("cam-0042")
    assert device is not None and device.ak_public == DEVICE.ak_public
    assert device.pcrs[7] == DEVICE.pcrs[7] and list(device.pcrs) == [0, 1, 2, 3, 4, 7]
    assert not device.revoked and device.hardware_class == "rpi5-tpm"
    assert bundle.device("cam-9999") is None
    release = bundle.release("detector", 3)
    assert release is not None and not release.yanked
    assert release.plaintext_digest.hex() == release_entry()["plaintext_digest"]
    assert bundle.release("detector", 4) is None


def test_key_id_is_the_sha256_of_the_spki_der() -> None:
    der = KEY.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert key_id(KEY.public_key()) == hashlib.sha256(der).hexdigest()
    outer = json.loads(sign_trust_bundle(_payload(), KEY))
    assert outer["key_id"] == hashlib.sha256(der).hexdigest()
    assert base64.b64decode(outer["payload"]) == canonical_json(_payload())


def test_expiry_is_judged_at_the_time_given() -> None:
    bundle = load_trust_bundle(sign_trust_bundle(_payload(), KEY), KEY.public_key())
    assert not bundle.expired(NOW)
    assert bundle.expired(NOW + dt.timedelta(days=29))
    assert bundle.expired(NOW + dt.timedelta(days=400))
    with pytest.raises(ValueError, match="aware"):
        bundle.expired(dt.datetime(2025, 6, 1))


def test_a_bundle_signed_by_another_key_is_refused_by_key_id() -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(AttestationError, match="not by the pinned bundle key"):
        load_trust_bundle(sign_trust_bundle(_payload(), other), KEY.public_key())


def test_a_forged_key_id_does_not_help_another_key() -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    outer = json.loads(sign_trust_bundle(_payload(), other))
    outer["key_id"] = key_id(KEY.public_key())
    with pytest.raises(AttestationError, match="signature does not verify"):
        load_trust_bundle(json.dumps(outer).encode(), KEY.public_key())


def test_a_modified_payload_is_refused() -> None:
    outer = json.loads(sign_trust_bundle(_payload(), KEY))
    payload = json.loads(base64.b64decode(outer["payload"]))
    payload["devices"][0]["revoked"] = False
    payload["devices"][1]["pcrs"]["7"] = "00" * 32
    outer["payload"] = base64.b64encode(canonical_json(payload)).decode()
    with pytest.raises(AttestationError, match="signature does not verify"):
        load_trust_bundle(json.dumps(outer).encode(), KEY.public_key())


def test_the_signature_is_checked_before_the_payload_is_parsed() -> None:
    """Unsigned bytes never reach the JSON parser: the refusal names the signature."""
    outer = json.loads(_file(b"[" * 100_000))
    outer["signature"] = json.loads(_file(b"{}"))["signature"]
    with pytest.raises(AttestationError, match="signature") as caught:
        load_trust_bundle(json.dumps(outer).encode(), KEY.public_key())
    assert "JSON" not in caught.value.message
    # The same bytes, properly signed, reach the parser and are refused there.
    with pytest.raises(AttestationError, match="not strict UTF-8 JSON"):
        load_trust_bundle(_file(b"[" * 100_000), KEY.public_key())


def test_size_is_bounded_before_parsing() -> None:
    with pytest.raises(AttestationError, match="over the limit"):
        load_trust_bundle(b" " * (MAX_BUNDLE_BYTES + 1), KEY.public_key())


@pytest.mark.parametrize(
    "outer",
    [
        b"not json",
        b"[]",
        b'{"payload": "", "signature": ""}',
        b'{"payload": "", "signature": "", "key_id": "", "extra": 1}',
    ],
)
def test_malformed_outer_documents(outer: bytes) -> None:
    with pytest.raises(AttestationError):
        load_trust_bundle(outer, KEY.public_key())


def test_bad_base64_and_key_id_are_refused() -> None:
    good = json.loads(sign_trust_bundle(_payload(), KEY))
    for field, value in (
        ("payload", "***"),
        ("signature", "***"),
        ("key_id", "AB" * 32),
        ("key_id", 5),
        ("payload", 5),
    ):
        outer = {**good, field: value}
        with pytest.raises(AttestationError):
            load_trust_bundle(json.dumps(outer).encode(), KEY.public_key())


def test_the_pinned_key_must_be_p256() -> None:
    data = sign_trust_bundle(_payload(), KEY)
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(AttestationError, match="P-256"):
        load_trust_bundle(data, p384.public_key())
    with pytest.raises(AttestationError, match="P-256"):
        sign_trust_bundle(_payload(), p384)


def _set(path: str, value: Any) -> dict[str, Any]:
    payload = _payload()
    target: Any = payload
    *parents, last = path.split(".")
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target[part]
    if value is _DELETE:
        del target[last]
    else:
        target[last] = value
    return payload


_DELETE = object()

SCHEMA_VIOLATIONS = [
    ("type", "edgeseal-trust-bundle-v2", "type"),
    ("version", 2, "version 2"),
    ("version", True, "version"),
    ("issued", "2025-06-01 12:00:00", "issued"),
    ("expires", "2025-06-01T12:00:00+01:00", "expires"),
    ("expires", "2025-02-30T12:00:00Z", "calendar"),
    ("expires", "2025-05-01T12:00:00Z", "before it was issued"),
    ("issuer", "", "issuer"),
    ("issuer", "ota\n", "issuer"),
    ("devices", {}, "devices must be a list"),
    ("extra", 1, "unknown: extra"),
    ("releases", _DELETE, "missing: releases"),
    ("devices.0.device_id", "-bad", "device id"),
    ("devices.0.device_id", "x" * 65, "device id"),
    ("devices.0.hardware_class", "RPI5", "hardware_class"),
    ("devices.0.ak_public", "not base64!", "base64"),
    ("devices.0.ak_public", "", "ak_public"),
    ("devices.0.ek_certificate_sha256", "ab" * 31, "ek_certificate_sha256"),
    ("devices.0.pcr_bank", "sha1", "pcr_bank"),
    ("devices.0.pcrs", {}, "must not be empty"),
    ("devices.0.pcrs", {"24": "00" * 32}, "PCR 24 does not exist"),
    ("devices.0.pcrs", {"07": "00" * 32}, "PCR indices"),
    ("devices.0.pcrs", {"0": "00" * 31}, "64 lowercase hex"),
    ("devices.0.pcrs", {"0": "AA" * 32}, "64 lowercase hex"),
    ("devices.0.pcrs", [], "object of PCR index"),
    ("devices.0.revoked", 0, "revoked"),
    ("devices.0.pcr_policy_authority", "not base64!", "pcr_policy_authority is not valid base64"),
    ("devices.0.pcr_policy_authority", "", "pcr_policy_authority must be null or base64"),
    ("devices.0.pcr_policy_authority", 5, "pcr_policy_authority must be null or base64"),
    ("devices.0.pcr_policy_authority", "QUFBQQ==", "not a DER SubjectPublicKeyInfo"),
    ("devices.0.pcr_policy_authority", "QQ==" * 200, "must be null or base64"),
    (
        "devices.0.pcr_policy_authority",
        # An EC SubjectPublicKeyInfo with an unknown algorithm OID (1.2.648.10045.2.1).
        "MFkwEwYHKoUIzj0CAQYIKoZIzj0DAQcDQgAE" + "A" * 86 + "==",
        "not a DER SubjectPublicKeyInfo",
    ),
    ("devices.0.colour", "red", "unknown: colour"),
    ("devices.1.device_id", "cam-0042", "listed twice"),
    ("releases.0.family", "Detector", "family"),
    ("releases.0.version", -1, "version"),
    ("releases.0.version", "3", "version"),
    ("releases.0.digest_alg", "md5", "digest_alg"),
    ("releases.0.plaintext_digest", "00" * 31, "plaintext_digest"),
    ("releases.0.yanked", "no", "yanked"),
    ("releases.0.version", 3, "listed twice"),
]


@pytest.mark.parametrize(("path", "value", "message"), SCHEMA_VIOLATIONS)
def test_schema_violations_are_refused_by_name(path: str, value: Any, message: str) -> None:
    payload = _set(path, value)
    # Signed as they are (sign_trust_bundle refuses them too, tested below).
    with pytest.raises(AttestationError, match=message):
        load_trust_bundle(_file(canonical_json(payload)), KEY.public_key())
    with pytest.raises(AttestationError, match=message):
        sign_trust_bundle(copy.deepcopy(payload), KEY)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"version": 1.0}',
        b'{"version": NaN}',
        b'{"type": "a", "type": "b"}',
        b"\xff\xfe",
    ],
)
def test_payload_json_is_strict(raw: bytes) -> None:
    with pytest.raises(AttestationError, match="strict UTF-8 JSON"):
        load_trust_bundle(_file(raw), KEY.public_key())


def test_fractional_seconds_are_read() -> None:
    payload = _payload()
    payload["issued"] = "2025-05-31T12:00:00.250Z"
    bundle = load_trust_bundle(sign_trust_bundle(payload, KEY), KEY.public_key())
    assert bundle.issued.microsecond == 250_000


def test_an_empty_fleet_is_a_valid_bundle() -> None:
    bundle = load_trust_bundle(sign_trust_bundle(bundle_payload([], []), KEY), KEY.public_key())
    assert bundle.devices == () and bundle.releases == ()


# --- the PCR policy authority (boot states approved after enrollment) ------------------------


def test_the_pcr_policy_authority_is_read_as_der() -> None:
    authority = ec.generate_private_key(ec.SECP256R1())
    device = SimulatedDevice(policy_authority=authority)
    payload = bundle_payload([device.bundle_entry(), DEVICE.bundle_entry(device_id="cam-0043")])
    bundle = load_trust_bundle(sign_trust_bundle(payload, KEY), KEY.public_key())
    with_authority, without = bundle.device("cam-0042"), bundle.device("cam-0043")
    assert with_authority is not None and without is not None
    assert with_authority.pcr_policy_authority == spki(authority.public_key())
    assert without.pcr_policy_authority is None


def test_a_bundle_of_the_previous_version_has_no_pcr_policy_authority() -> None:
    """A device entry without the key (exported before signed PCR policies) reads as null."""
    entry = DEVICE.bundle_entry()
    del entry["pcr_policy_authority"]
    bundle = load_trust_bundle(sign_trust_bundle(bundle_payload([entry]), KEY), KEY.public_key())
    device = bundle.device("cam-0042")
    assert device is not None and device.pcr_policy_authority is None


def test_a_compressed_point_authority_is_normalized() -> None:
    """Any encoding of the P-256 key is read; the DER kept is the uncompressed SPKI."""
    authority = ec.generate_private_key(ec.SECP256R1()).public_key()
    compressed = authority.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
    )
    # SubjectPublicKeyInfo prefix of a P-256 key with a 33-byte compressed point.
    der = bytes.fromhex("3039301306072a8648ce3d020106082a8648ce3d030107032200") + compressed
    assert serialization.load_der_public_key(der) is not None
    entry = DEVICE.bundle_entry(pcr_policy_authority=base64.b64encode(der).decode())
    bundle = load_trust_bundle(sign_trust_bundle(bundle_payload([entry]), KEY), KEY.public_key())
    device = bundle.device("cam-0042")
    assert device is not None and device.pcr_policy_authority == spki(authority)


@pytest.mark.parametrize("curve", [ec.SECP384R1(), ec.SECP256K1()])
def test_a_pcr_policy_authority_that_is_not_p256_is_refused(curve: ec.EllipticCurve) -> None:
    other = spki(ec.generate_private_key(curve).public_key())
    entry = DEVICE.bundle_entry(pcr_policy_authority=base64.b64encode(other).decode())
    payload = bundle_payload([entry])
    with pytest.raises(AttestationError, match="P-256") as info:
        load_trust_bundle(_file(canonical_json(payload)), KEY.public_key())
    assert info.value.field == "pcr_policy_authority"
    with pytest.raises(AttestationError, match="P-256"):
        sign_trust_bundle(payload, KEY)
