"""Release custom metadata (the ``"edgeseal"`` key of a TUF target's ``custom``) and
target selection.

Every field a release manager signs about a sealed model - family, version,
hardware classes, channel, rollout percentage, plaintext digest, minimum agent
version, health check, key-release policy - travels in the signed TUF target
metadata, so a device can decide before downloading a byte. The schema is
versioned (``"schema": 1``) and parsed strictly: unknown keys, wrong types,
out-of-bound values and unknown schema versions are refused by name, because
these bytes come from the network (python-tuf parses its own metadata the same
way).

Selection is pure (no I/O, no clock): :func:`rollout_cohort` places a device in
one of 100 cohorts per release by hashing, so a 10 % rollout reaches the same
10 % of devices on every evaluation and on every device, and widening it to
50 % keeps those devices in; :func:`select_release` picks the newest release a
device may install.

Target paths (contract, docs/dev/ota-contracts.md):
``<family>/<version>/<family>-<version>.esm`` for sealed models and
``envelopes/<device_id>/<family>-<version>.env`` for key envelopes.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from edgeseal.sdk.errors import FormatError
from edgeseal.sdk.golden import GoldenTensor, HealthCheck
from edgeseal.sdk.hazmat.format import (
    DIGEST_SIZES,
    MAX_HARDWARE_CLASSES,
    MAX_MODEL_VERSION,
    MAX_PLAINTEXT_SIZE,
    NAME_RULE,
    is_valid_name,
)

__all__ = [
    "CHANNEL_RULE",
    "CUSTOM_KEY",
    "KEY_RELEASE_POLICIES",
    "SCHEMA_VERSION",
    "EnvelopeMetadata",
    "GoldenTensor",
    "HealthCheck",
    "MetadataError",
    "PlaintextDigest",
    "ReleaseMetadata",
    "envelope_target_path",
    "is_valid_device_id",
    "model_target_path",
    "parse_agent_version",
    "rollout_cohort",
    "select_release",
]

logger = logging.getLogger(__name__)

#: The key under which edgeseal's metadata sits in a TUF target's ``custom``.
CUSTOM_KEY = "edgeseal"
SCHEMA_VERSION = 1
KEY_RELEASE_POLICIES = ("envelope", "attested")
CHANNEL_RULE = "1-32 characters of a-z, 0-9 and '-'"
DEVICE_ID_RULE = "1-64 characters of A-Z, a-z, 0-9, '.', '_', '-', starting with a letter or digit"
AGENT_VERSION_RULE = "1 to 4 dot-separated integers of at most 6 digits, e.g. '0.1.0'"
_CHANNEL_RE = re.compile(r"[a-z0-9-]{1,32}", re.ASCII)
_DEVICE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", re.ASCII)
_AGENT_VERSION_RE = re.compile(r"[0-9]{1,6}(?:\.[0-9]{1,6}){0,3}", re.ASCII)
_HEX_RE = re.compile(r"[0-9a-f]*", re.ASCII)
_COHORT_LABEL = b"edgeseal rollout v1\x00"

MetadataError = FormatError
"""Malformed release metadata is a :class:`~edgeseal.sdk.errors.FormatError`."""


def _fail(message: str, field: str) -> FormatError:
    return FormatError(message, field=field)


def _object(value: object, keys: frozenset[str], where: str) -> Mapping[str, Any]:
    """``value`` as a JSON object with exactly ``keys``."""
    if not isinstance(value, dict):
        raise _fail(f"{where} must be a JSON object", where)
    missing = sorted(keys - value.keys())
    if missing:
        raise _fail(f"{where} lacks {', '.join(missing)}", where)
    unknown = sorted(str(k)[:40] for k in value.keys() - keys)
    if unknown:
        raise _fail(f"{where} has unknown field(s) {', '.join(unknown)}", where)
    return value


def _int(value: object, low: int, high: int, where: str) -> int:
    if type(value) is not int or not low <= value <= high:
        raise _fail(f"{where} must be an integer from {low} to {high}", where)
    return value


def _name(value: object, where: str) -> str:
    if not is_valid_name(value):
        raise _fail(f"{where} {str(value)[:80]!r} is invalid: use {NAME_RULE}", where)
    assert isinstance(value, str)
    return value


def parse_agent_version(text: object, where: str = "agent version") -> tuple[int, ...]:
    """``"0.1.0"`` -> ``(0, 1, 0)``; comparison pads with zeros (``0.1 == 0.1.0``)."""
    if not isinstance(text, str) or _AGENT_VERSION_RE.fullmatch(text) is None:
        raise _fail(f"{where} {str(text)[:40]!r} is invalid: use {AGENT_VERSION_RULE}", where)
    parts = tuple(int(p) for p in text.split("."))
    return parts + (0,) * (4 - len(parts))


def is_valid_device_id(device_id: object) -> bool:
    """True for a device id usable in a target path (see ``DEVICE_ID_RULE``)."""
    return isinstance(device_id, str) and _DEVICE_ID_RE.fullmatch(device_id) is not None


def model_target_path(family: str, version: int) -> str:
    """The TUF target path of a release's sealed model."""
    return f"{family}/{version}/{family}-{version}.esm"


def envelope_target_path(device_id: str, family: str, version: int) -> str:
    """The TUF target path of one device's key envelope for one release."""
    if not is_valid_device_id(device_id):
        raise _fail(f"device id {device_id[:80]!r} is invalid: use {DEVICE_ID_RULE}", "device")
    return f"envelopes/{device_id}/{family}-{version}.env"


@dataclass(frozen=True)
class PlaintextDigest:
    """Digest and size of the plaintext model, as the sealed header states them."""

    digest_alg: str
    digest: bytes
    size: int

    def __post_init__(self) -> None:
        if not isinstance(self.digest_alg, str) or self.digest_alg not in DIGEST_SIZES:
            raise _fail(
                f"plaintext digest_alg {str(self.digest_alg)[:40]!r} is not one of "
                f"{', '.join(DIGEST_SIZES)}",
                "plaintext.digest_alg",
            )
        if not isinstance(self.digest, bytes) or len(self.digest) != DIGEST_SIZES[self.digest_alg]:
            raise _fail(
                f"plaintext digest must be {DIGEST_SIZES[self.digest_alg]} bytes",
                "plaintext.digest",
            )
        _int(self.size, 0, MAX_PLAINTEXT_SIZE, "plaintext.size")

    _KEYS = frozenset({"digest_alg", "digest", "size"})

    @classmethod
    def from_json(cls, value: object) -> PlaintextDigest:
        obj = _object(value, cls._KEYS, "plaintext")
        digest = obj["digest"]
        if (
            not isinstance(digest, str)
            or len(digest) > 128
            or len(digest) % 2
            or not _HEX_RE.fullmatch(digest)
        ):
            raise _fail("plaintext digest must be lowercase hex", "plaintext.digest")
        return cls(
            digest_alg=obj["digest_alg"],
            digest=bytes.fromhex(digest),
            size=obj["size"],
        )

    def to_json(self) -> dict[str, Any]:
        return {"digest_alg": self.digest_alg, "digest": self.digest.hex(), "size": self.size}


@dataclass(frozen=True)
class ReleaseMetadata:
    """What the release managers sign about one sealed model (schema 1).

    Construct it directly (every field is validated) or with :meth:`from_json`
    from untrusted input. :meth:`to_custom` gives the TUF target ``custom``.
    """

    family: str
    version: int
    hardware: tuple[str, ...]
    channel: str
    rollout_percent: int
    plaintext: PlaintextDigest
    min_agent_version: str
    health_check: HealthCheck
    key_release: str = "envelope"

    _KEYS = frozenset(
        {
            "schema",
            "kind",
            "family",
            "version",
            "hardware",
            "channel",
            "rollout_percent",
            "plaintext",
            "min_agent_version",
            "health_check",
            "key_release",
        }
    )

    def __post_init__(self) -> None:
        _name(self.family, "family")
        _int(self.version, 0, MAX_MODEL_VERSION, "version")
        hardware = self.hardware
        if not isinstance(hardware, tuple) or not 1 <= len(hardware) <= MAX_HARDWARE_CLASSES:
            raise _fail(
                f"hardware must be a list of 1 to {MAX_HARDWARE_CLASSES} hardware classes",
                "hardware",
            )
        for item in hardware:
            _name(item, "hardware")
        if len(set(hardware)) != len(hardware):
            raise _fail("hardware lists a hardware class twice", "hardware")
        if not isinstance(self.channel, str) or _CHANNEL_RE.fullmatch(self.channel) is None:
            raise _fail(
                f"channel {str(self.channel)[:40]!r} is invalid: use {CHANNEL_RULE}", "channel"
            )
        _int(self.rollout_percent, 0, 100, "rollout_percent")
        if not isinstance(self.plaintext, PlaintextDigest):
            raise _fail("plaintext must be a PlaintextDigest", "plaintext")
        parse_agent_version(self.min_agent_version, "min_agent_version")
        if not isinstance(self.health_check, HealthCheck):
            raise _fail("health_check must be a HealthCheck", "health_check")
        if self.key_release not in KEY_RELEASE_POLICIES:
            raise _fail(
                f"key_release {str(self.key_release)[:40]!r} is not one of "
                f"{', '.join(KEY_RELEASE_POLICIES)}",
                "key_release",
            )

    @property
    def target_path(self) -> str:
        return model_target_path(self.family, self.version)

    @classmethod
    def from_json(cls, value: object) -> ReleaseMetadata:
        """Parse the object under ``custom["edgeseal"]``; raise :class:`FormatError`."""
        if not isinstance(value, dict):
            raise _fail("release metadata must be a JSON object", "edgeseal")
        schema = value.get("schema")
        if type(schema) is not int:
            raise _fail("release metadata lacks an integer schema version", "schema")
        if schema != SCHEMA_VERSION:
            raise _fail(
                f"unsupported release metadata schema {schema}; this edgeseal reads "
                f"schema {SCHEMA_VERSION}",
                "schema",
            )
        if value.get("kind") != "model":
            raise _fail(
                f"release metadata kind must be 'model', not {str(value.get('kind'))[:40]!r}",
                "kind",
            )
        obj = _object(value, cls._KEYS, "release metadata")
        hardware = obj["hardware"]
        if not isinstance(hardware, list):
            raise _fail("hardware must be a list of hardware classes", "hardware")
        return cls(
            family=obj["family"],
            version=obj["version"],
            hardware=tuple(hardware),
            channel=obj["channel"],
            rollout_percent=obj["rollout_percent"],
            plaintext=PlaintextDigest.from_json(obj["plaintext"]),
            min_agent_version=obj["min_agent_version"],
            health_check=HealthCheck.from_json(obj["health_check"]),
            key_release=obj["key_release"],
        )

    def to_json(self) -> dict[str, Any]:
        """The object that goes under ``custom["edgeseal"]``."""
        return {
            "schema": SCHEMA_VERSION,
            "kind": "model",
            "family": self.family,
            "version": self.version,
            "hardware": list(self.hardware),
            "channel": self.channel,
            "rollout_percent": self.rollout_percent,
            "plaintext": self.plaintext.to_json(),
            "min_agent_version": self.min_agent_version,
            "health_check": self.health_check.to_json(),
            "key_release": self.key_release,
        }

    @classmethod
    def from_custom(cls, custom: object) -> ReleaseMetadata:
        """Parse a TUF target's whole ``custom`` (``{"edgeseal": {...}}``)."""
        return cls.from_json(_custom_body(custom))

    def to_custom(self) -> dict[str, Any]:
        return {CUSTOM_KEY: self.to_json()}


@dataclass(frozen=True)
class EnvelopeMetadata:
    """Custom metadata of a key-envelope target (schema 1, ``kind = "envelope"``)."""

    device: str
    family: str
    version: int

    _KEYS = frozenset({"schema", "kind", "device", "family", "version"})

    def __post_init__(self) -> None:
        if not is_valid_device_id(self.device):
            raise _fail(f"device id is invalid: use {DEVICE_ID_RULE}", "device")
        _name(self.family, "family")
        _int(self.version, 0, MAX_MODEL_VERSION, "version")

    @property
    def target_path(self) -> str:
        return envelope_target_path(self.device, self.family, self.version)

    @classmethod
    def from_json(cls, value: object) -> EnvelopeMetadata:
        obj = _object(value, cls._KEYS, "envelope metadata")
        if type(obj["schema"]) is not int or obj["schema"] != SCHEMA_VERSION:
            raise _fail(
                f"unsupported envelope metadata schema {str(obj['schema'])[:20]}; this edgeseal "
                f"reads schema {SCHEMA_VERSION}",
                "schema",
            )
        if obj["kind"] != "envelope":
            raise _fail("envelope metadata kind must be 'envelope'", "kind")
        return cls(device=obj["device"], family=obj["family"], version=obj["version"])

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "kind": "envelope",
            "device": self.device,
            "family": self.family,
            "version": self.version,
        }

    @classmethod
    def from_custom(cls, custom: object) -> EnvelopeMetadata:
        return cls.from_json(_custom_body(custom))

    def to_custom(self) -> dict[str, Any]:
        return {CUSTOM_KEY: self.to_json()}


def _custom_body(custom: object) -> object:
    if not isinstance(custom, dict) or CUSTOM_KEY not in custom:
        raise _fail(f"target custom metadata has no {CUSTOM_KEY!r} entry", CUSTOM_KEY)
    return custom[CUSTOM_KEY]


def rollout_cohort(device_id: str, family: str, version: int) -> int:
    """The device's cohort in ``[0, 100)`` for release ``family`` ``version``.

    SHA-256 over a label, the device id and the release id, each length-free but
    NUL-separated (none may contain NUL: ids are validated), reduced mod 100.
    The first 8 bytes give a 64-bit integer whose bias mod 100 is below 1e-17.
    A device is in a rollout of ``p`` percent iff its cohort is below ``p``:
    the same devices every time, and widening a rollout only adds devices.
    Different releases draw different cohorts, so the same devices are not
    always the first to try a new model.
    """
    if not is_valid_device_id(device_id):
        raise _fail(f"device id {str(device_id)[:80]!r} is invalid: use {DEVICE_ID_RULE}", "device")
    _name(family, "family")
    _int(version, 0, MAX_MODEL_VERSION, "version")
    material = b"\x00".join(
        [_COHORT_LABEL, device_id.encode(), family.encode(), str(version).encode()]
    )
    return int.from_bytes(hashlib.sha256(material).digest()[:8], "big") % 100


def select_release(
    candidates: Iterable[tuple[str, ReleaseMetadata]],
    *,
    family: str,
    hardware_class: str,
    channel: str,
    device_id: str,
    agent_version: str,
    floor_version: int | None,
) -> tuple[str, ReleaseMetadata] | None:
    """The newest release this device may install, or None.

    ``candidates`` are ``(target_path, metadata)`` pairs from verified TUF
    targets. A release is eligible when its family, one of its hardware
    classes and its channel match the device, the device's cohort is inside
    its rollout, the agent is at least ``min_agent_version``, its version is
    above ``floor_version`` (the highest version the device has run; None for
    a device that has run nothing), and its target path is the contract's path
    for its family and version (a target whose path and metadata disagree is
    ignored: it cannot be trusted to be what it says).
    """
    agent = parse_agent_version(agent_version)
    floor = -1 if floor_version is None else floor_version
    best: tuple[str, ReleaseMetadata] | None = None
    for path, meta in candidates:
        reason = _ineligible(
            path,
            meta,
            family=family,
            hardware_class=hardware_class,
            channel=channel,
            agent=agent,
            floor=floor,
        )
        if reason is None and meta.rollout_percent <= rollout_cohort(
            device_id, meta.family, meta.version
        ):
            reason = f"device outside the {meta.rollout_percent}% rollout"
        if reason is not None:
            logger.debug("skipping target %s: %s", path, reason)
            continue
        if best is None or meta.version > best[1].version:
            best = (path, meta)
    return best


def _ineligible(
    path: str,
    meta: ReleaseMetadata,
    *,
    family: str,
    hardware_class: str,
    channel: str,
    agent: tuple[int, ...],
    floor: int,
) -> str | None:
    if meta.family != family:
        return "other family"
    if path != meta.target_path:
        return f"path does not match its metadata ({meta.target_path})"
    if hardware_class not in meta.hardware:
        return "other hardware class"
    if meta.channel != channel:
        return "other channel"
    if meta.version <= floor:
        return f"version {meta.version} is not above the floor {floor}"
    if agent < parse_agent_version(meta.min_agent_version):
        return f"needs agent {meta.min_agent_version}"
    return None
