"""The trust bundle: what a technician's laptop knows about the fleet, offline.

The OTA server exports it (``edgeseal-server attest bundle``) and signs it with
its bundle key; the technician pins that key's public half (``--bundle-key``).
File format (docs/dev/attestation-contracts.md)::

    {"payload":   base64(canonical JSON bytes of the payload),
     "signature": base64(DER ECDSA P-256 / SHA-256 over those payload bytes),
     "key_id":    sha256 hex of the signer's SubjectPublicKeyInfo DER}

and the payload::

    {"type": "edgeseal-trust-bundle", "version": 1,
     "issued": RFC 3339 (Z), "expires": RFC 3339 (Z), "issuer": str,
     "devices": [{"device_id", "hardware_class", "ak_public" (base64),
                  "ek_certificate_sha256" (hex), "pcr_bank": "sha256",
                  "pcrs": {"0": hex, ...}, "revoked": bool,
                  "pcr_policy_authority": base64(DER SPKI, P-256) | null}, ...],
     "releases": [{"family", "version", "digest_alg", "plaintext_digest" (hex),
                   "yanked": bool}, ...]}

:func:`load_trust_bundle` bounds the file (:data:`MAX_BUNDLE_BYTES`) before
parsing the small outer object, checks that ``key_id`` names the pinned key,
verifies the signature over the raw payload bytes and only then parses the
payload, strictly: exact keys, types, hex lengths, device ids, family names,
no duplicate devices or releases. A device's ``pcr_policy_authority`` (the key
that signs the PCR policies its model key accepts, see
:mod:`edgeseal.sdk.pcr_policy`) is optional: missing (a bundle of the previous
version) reads as null. Every refusal is an
:class:`~edgeseal.sdk.errors.AttestationError` saying what is wrong.
:func:`sign_trust_bundle` validates a payload with the same rules before
signing it, so a server cannot export a bundle that no laptop accepts.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgeseal.sdk import strict_json
from edgeseal.sdk.console_wire import canonical_json
from edgeseal.sdk.errors import AttestationError
from edgeseal.sdk.hazmat.format import DIGEST_SIZES, MAX_MODEL_VERSION, NAME_RULE, is_valid_name
from edgeseal.sdk.pcr_policy import MAX_AUTHORITY_BYTES, parse_policy_authority
from edgeseal.sdk.releases import DEVICE_ID_RULE, is_valid_device_id

__all__ = [
    "BUNDLE_TYPE",
    "BUNDLE_VERSION",
    "MAX_BUNDLE_BYTES",
    "PCR_BANK",
    "BundleDevice",
    "BundleRelease",
    "TrustBundle",
    "format_time",
    "key_id",
    "load_trust_bundle",
    "parse_time",
    "sign_trust_bundle",
]

BUNDLE_TYPE = "edgeseal-trust-bundle"
BUNDLE_VERSION = 1
#: Largest trust bundle file read; checked before any parsing.
MAX_BUNDLE_BYTES = 16 * 1024 * 1024
PCR_BANK = "sha256"
#: A TPM 2.0 has PCRs 0-23.
PCR_COUNT = 24
PCR_VALUE_SIZE = 32
MAX_ISSUER_CHARS = 256
#: Upper bound of a marshaled TPMT_PUBLIC (an ECC P-256 AK is about 90 bytes).
MAX_AK_PUBLIC_BYTES = 1024
MAX_SIGNATURE_CHARS = 256
TIME_RULE = "RFC 3339 UTC, e.g. 2025-01-31T12:00:00Z"

_TIME_RE = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?Z", re.ASCII
)
_HEX64_RE = re.compile(r"[0-9a-f]{64}", re.ASCII)
_PCR_INDEX_RE = re.compile(r"0|[1-9][0-9]?", re.ASCII)
_OUTER_KEYS = frozenset({"payload", "signature", "key_id"})
_PAYLOAD_KEYS = frozenset({"type", "version", "issued", "expires", "issuer", "devices", "releases"})
_DEVICE_KEYS = frozenset(
    {
        "device_id",
        "hardware_class",
        "ak_public",
        "ek_certificate_sha256",
        "pcr_bank",
        "pcrs",
        "revoked",
        "pcr_policy_authority",
    }
)
# Missing in bundles exported before signed PCR policies: read as null.
_OPTIONAL_DEVICE_KEYS = frozenset({"pcr_policy_authority"})
_RELEASE_KEYS = frozenset({"family", "version", "digest_alg", "plaintext_digest", "yanked"})


@dataclass(frozen=True)
class BundleDevice:
    """An enrolled device as the server recorded it: its AK and its baseline PCR values.

    ``pcr_policy_authority`` is the DER SubjectPublicKeyInfo of the ECDSA P-256 key
    whose signed PCR policies the device's model key accepts (boot states approved
    after enrollment), or None when it has none.
    """

    device_id: str
    hardware_class: str
    ak_public: bytes
    ek_certificate_sha256: str
    pcr_bank: str
    pcrs: Mapping[int, bytes]
    revoked: bool
    pcr_policy_authority: bytes | None = None


@dataclass(frozen=True)
class BundleRelease:
    """A published release of a model family and the digest of its plaintext model."""

    family: str
    version: int
    digest_alg: str
    plaintext_digest: bytes
    yanked: bool


@dataclass(frozen=True)
class TrustBundle:
    """A verified trust bundle (only :func:`load_trust_bundle` should make one)."""

    issued: dt.datetime
    expires: dt.datetime
    issuer: str
    key_id: str
    devices: tuple[BundleDevice, ...]
    releases: tuple[BundleRelease, ...]
    _devices: Mapping[str, BundleDevice] = field(init=False, repr=False, compare=False)
    _releases: Mapping[tuple[str, int], BundleRelease] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "_devices", {d.device_id: d for d in self.devices})
        object.__setattr__(self, "_releases", {(r.family, r.version): r for r in self.releases})

    def device(self, device_id: str) -> BundleDevice | None:
        """The device enrolled as ``device_id``, or None."""
        return self._devices.get(device_id)

    def release(self, family: str, version: int) -> BundleRelease | None:
        """The release ``family`` ``version``, or None when it was never published."""
        return self._releases.get((family, version))

    def expired(self, now: dt.datetime) -> bool:
        """Whether ``now`` (timezone-aware) is at or past the bundle's expiry."""
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        return now >= self.expires


# --- signing and loading ---------------------------------------------------------------------


def key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    """SHA-256 hex of the key's SubjectPublicKeyInfo DER: how a bundle names its signer."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def sign_trust_bundle(payload: dict[str, Any], key: ec.EllipticCurvePrivateKey) -> bytes:
    """The bytes of a trust bundle file for ``payload``, signed with ``key`` (ECDSA P-256).

    ``payload`` is validated exactly as :func:`load_trust_bundle` will read it.
    """
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise AttestationError("a trust bundle is signed with an ECDSA P-256 key", field="key")
    try:
        raw = canonical_json(payload)
    except (TypeError, ValueError) as exc:
        raise AttestationError(f"the payload is not JSON: {exc}", field="payload") from None
    _parse_payload(raw)
    signature = key.sign(raw, ec.ECDSA(hashes.SHA256()))
    document = {
        "payload": base64.b64encode(raw).decode("ascii"),
        "signature": base64.b64encode(signature).decode("ascii"),
        "key_id": key_id(key.public_key()),
    }
    return (json.dumps(document, indent=2) + "\n").encode("ascii")


def load_trust_bundle(data: bytes | bytearray, pinned: ec.EllipticCurvePublicKey) -> TrustBundle:
    """Verify and parse a trust bundle file; :class:`AttestationError` says why it is refused."""
    if not isinstance(pinned, ec.EllipticCurvePublicKey) or not isinstance(
        pinned.curve, ec.SECP256R1
    ):
        raise AttestationError("the pinned bundle key must be an ECDSA P-256 public key")
    if not isinstance(data, bytes | bytearray):
        raise AttestationError("a trust bundle is bytes")
    if len(data) > MAX_BUNDLE_BYTES:
        raise AttestationError(
            f"the trust bundle is {len(data)} bytes, over the limit of {MAX_BUNDLE_BYTES}"
        )
    outer = _object(_json(bytes(data), "trust bundle file"), _OUTER_KEYS, "trust bundle file")
    claimed = outer["key_id"]
    if not isinstance(claimed, str) or _HEX64_RE.fullmatch(claimed) is None:
        raise AttestationError("key_id must be 64 lowercase hex characters", field="key_id")
    pinned_id = key_id(pinned)
    if claimed != pinned_id:
        raise AttestationError(
            f"the trust bundle is signed by key {claimed[:16]}..., not by the pinned bundle key "
            f"{pinned_id[:16]}...: ask the fleet operator for the bundle key of this server",
            field="key_id",
        )
    if not isinstance(outer["signature"], str) or len(outer["signature"]) > MAX_SIGNATURE_CHARS:
        raise AttestationError("signature must be a short base64 string", field="signature")
    signature = _b64(outer["signature"], "signature")
    if not isinstance(outer["payload"], str):
        raise AttestationError("payload must be a base64 string", field="payload")
    raw = _b64(outer["payload"], "payload")
    try:
        pinned.verify(signature, raw, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise AttestationError(
            "the trust bundle's signature does not verify with the pinned bundle key: "
            "the bundle was modified",
            field="signature",
        ) from None
    return _parse_payload(raw, key=pinned_id)


# --- payload schema --------------------------------------------------------------------------


def _parse_payload(raw: bytes, *, key: str = "") -> TrustBundle:
    body = _object(_json(raw, "payload"), _PAYLOAD_KEYS, "payload")
    if body["type"] != BUNDLE_TYPE:
        raise AttestationError(f"payload type must be {BUNDLE_TYPE!r}", field="type")
    if type(body["version"]) is not int or body["version"] != BUNDLE_VERSION:
        raise AttestationError(
            f"trust bundle version {str(body['version'])[:20]} is not {BUNDLE_VERSION}, "
            "the one this edgeseal reads",
            field="version",
        )
    issued = parse_time(body["issued"], "issued")
    expires = parse_time(body["expires"], "expires")
    if expires <= issued:
        raise AttestationError("the bundle expires before it was issued", field="expires")
    issuer = body["issuer"]
    if (
        not isinstance(issuer, str)
        or not 1 <= len(issuer) <= MAX_ISSUER_CHARS
        or not issuer.isprintable()
    ):
        raise AttestationError(
            f"issuer must be 1-{MAX_ISSUER_CHARS} printable characters", field="issuer"
        )
    devices = tuple(
        _device(item, f"devices[{i}]") for i, item in enumerate(_list(body["devices"], "devices"))
    )
    releases = tuple(
        _release(item, f"releases[{i}]")
        for i, item in enumerate(_list(body["releases"], "releases"))
    )
    seen_devices: set[str] = set()
    for device in devices:
        if device.device_id in seen_devices:
            raise AttestationError(f"device {device.device_id} is listed twice", field="devices")
        seen_devices.add(device.device_id)
    seen_releases: set[tuple[str, int]] = set()
    for release in releases:
        if (release.family, release.version) in seen_releases:
            raise AttestationError(
                f"release {release.family} {release.version} is listed twice", field="releases"
            )
        seen_releases.add((release.family, release.version))
    return TrustBundle(
        issued=issued,
        expires=expires,
        issuer=issuer,
        key_id=key,
        devices=devices,
        releases=releases,
    )


def _device(value: object, where: str) -> BundleDevice:
    body = _object(value, _DEVICE_KEYS, where, optional=_OPTIONAL_DEVICE_KEYS)
    device_id = body["device_id"]
    if not is_valid_device_id(device_id):
        raise AttestationError(
            f"{where}.device_id is not a valid device id ({DEVICE_ID_RULE})", field="device_id"
        )
    assert isinstance(device_id, str)
    hardware_class = body["hardware_class"]
    if not is_valid_name(hardware_class):
        raise AttestationError(
            f"{where}.hardware_class is invalid: use {NAME_RULE}", field="hardware_class"
        )
    assert isinstance(hardware_class, str)
    if not isinstance(body["ak_public"], str) or len(body["ak_public"]) > 2 * MAX_AK_PUBLIC_BYTES:
        raise AttestationError(f"{where}.ak_public must be a base64 string", field="ak_public")
    ak_public = _b64(body["ak_public"], f"{where}.ak_public")
    if not 1 <= len(ak_public) <= MAX_AK_PUBLIC_BYTES:
        raise AttestationError(
            f"{where}.ak_public must be 1-{MAX_AK_PUBLIC_BYTES} bytes", field="ak_public"
        )
    ek_hash = body["ek_certificate_sha256"]
    if not isinstance(ek_hash, str) or _HEX64_RE.fullmatch(ek_hash) is None:
        raise AttestationError(
            f"{where}.ek_certificate_sha256 must be 64 lowercase hex characters",
            field="ek_certificate_sha256",
        )
    if body["pcr_bank"] != PCR_BANK:
        raise AttestationError(f"{where}.pcr_bank must be {PCR_BANK!r}", field="pcr_bank")
    pcrs = parse_pcr_values(body["pcrs"], f"{where}.pcrs")
    if not pcrs:
        raise AttestationError(f"{where}.pcrs must not be empty", field="pcrs")
    if type(body["revoked"]) is not bool:
        raise AttestationError(f"{where}.revoked must be true or false", field="revoked")
    authority = _policy_authority(body.get("pcr_policy_authority"), f"{where}.pcr_policy_authority")
    return BundleDevice(
        device_id=device_id,
        hardware_class=hardware_class,
        ak_public=ak_public,
        ek_certificate_sha256=ek_hash,
        pcr_bank=PCR_BANK,
        pcrs=pcrs,
        revoked=body["revoked"],
        pcr_policy_authority=authority,
    )


def _policy_authority(value: object, where: str) -> bytes | None:
    """Null, or base64 of an ECDSA P-256 SubjectPublicKeyInfo (returned as its DER)."""
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= 4 * ((MAX_AUTHORITY_BYTES + 2) // 3):
        raise AttestationError(
            f"{where} must be null or base64 of an ECDSA P-256 public key (DER "
            "SubjectPublicKeyInfo)",
            field="pcr_policy_authority",
        )
    der = _b64(value, where)
    try:
        key = parse_policy_authority(der, where)
    except AttestationError as exc:
        raise AttestationError(exc.message, field="pcr_policy_authority") from None
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _release(value: object, where: str) -> BundleRelease:
    body = _object(value, _RELEASE_KEYS, where)
    family = body["family"]
    if not is_valid_name(family):
        raise AttestationError(f"{where}.family is invalid: use {NAME_RULE}", field="family")
    assert isinstance(family, str)
    version = body["version"]
    if type(version) is not int or not 0 <= version <= MAX_MODEL_VERSION:
        raise AttestationError(
            f"{where}.version must be an integer from 0 to {MAX_MODEL_VERSION}", field="version"
        )
    digest_alg = body["digest_alg"]
    if not isinstance(digest_alg, str) or digest_alg not in DIGEST_SIZES:
        raise AttestationError(
            f"{where}.digest_alg must be one of {', '.join(DIGEST_SIZES)}", field="digest_alg"
        )
    digest = parse_hex(
        body["plaintext_digest"], DIGEST_SIZES[digest_alg], f"{where}.plaintext_digest"
    )
    if type(body["yanked"]) is not bool:
        raise AttestationError(f"{where}.yanked must be true or false", field="yanked")
    return BundleRelease(
        family=family,
        version=version,
        digest_alg=digest_alg,
        plaintext_digest=digest,
        yanked=body["yanked"],
    )


# --- helpers shared with attest_check --------------------------------------------------------


def parse_time(value: object, where: str) -> dt.datetime:
    """An RFC 3339 UTC time (``Z``, optional fraction) as an aware datetime."""
    if not isinstance(value, str) or _TIME_RE.fullmatch(value) is None:
        raise AttestationError(f"{where} must be a time in {TIME_RULE}", field=where)
    try:
        return dt.datetime.fromisoformat(value[:-1]).replace(tzinfo=dt.UTC)
    except ValueError:
        raise AttestationError(f"{where} is not a calendar time", field=where) from None


def format_time(when: dt.datetime) -> str:
    """``when`` in the bundle's time format (UTC, to the second)."""
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_hex(value: object, size: int, where: str) -> bytes:
    """``size`` bytes written as exactly ``2 * size`` lowercase hex characters."""
    if (
        not isinstance(value, str)
        or len(value) != 2 * size
        or value.strip("0123456789abcdef") != ""
    ):
        raise AttestationError(f"{where} must be {2 * size} lowercase hex characters", field=where)
    return bytes.fromhex(value)


def parse_pcr_values(value: object, where: str) -> Mapping[int, bytes]:
    """``{"0": hex, "7": hex, ...}`` (SHA-256 bank) as ``{0: bytes, 7: bytes}``."""
    if not isinstance(value, dict):
        raise AttestationError(f"{where} must be an object of PCR index to hex value", field=where)
    if len(value) > PCR_COUNT:
        raise AttestationError(f"{where} has more than {PCR_COUNT} PCRs", field=where)
    out: dict[int, bytes] = {}
    for index, digest in value.items():
        if not isinstance(index, str) or _PCR_INDEX_RE.fullmatch(index) is None:
            raise AttestationError(
                f"{where} keys must be PCR indices 0-{PCR_COUNT - 1}", field=where
            )
        number = int(index)
        if number >= PCR_COUNT:
            raise AttestationError(
                f"{where}: PCR {number} does not exist (0-{PCR_COUNT - 1})", field=where
            )
        out[number] = parse_hex(digest, PCR_VALUE_SIZE, f"{where}[{index}]")
    return MappingProxyType(dict(sorted(out.items())))


def _b64(value: str, where: str) -> bytes:
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise AttestationError(f"{where} is not valid base64", field=where) from None


def _list(value: object, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise AttestationError(f"{where} must be a list", field=where)
    return value


def _object(
    value: object, keys: frozenset[str], where: str, *, optional: frozenset[str] = frozenset()
) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise AttestationError(f"{where} must be a JSON object", field=where)
    missing = sorted(keys - optional - value.keys())
    unknown = sorted(str(k)[:40] for k in value.keys() - keys)
    if missing or unknown:
        maybe = f" (optional: {', '.join(sorted(optional))})" if optional else ""
        raise AttestationError(
            f"{where} needs exactly the keys {', '.join(sorted(keys - optional))}{maybe} "
            f"(missing: {', '.join(missing) or 'none'}; unknown: {', '.join(unknown) or 'none'})",
            field=where,
        )
    return value


def _json(raw: bytes, what: str) -> Any:
    try:
        return strict_json.loads(raw)
    except strict_json.StrictJSONError as exc:
        text = str(exc)
        raise AttestationError(f"the {what} is not strict UTF-8 JSON: {text[:80]}") from None
