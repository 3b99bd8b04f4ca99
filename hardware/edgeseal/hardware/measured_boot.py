"""Measured boot for the emulated device: a boot manifest replayed into PCRs.

On a real board, each boot stage hashes the next one and extends the digest
into a PCR before running it, so PCR values say what booted. swtpm starts with
every PCR at zero, so the emulated device does the same from a *boot
manifest*: the SHA-256 of each component that "booted" (firmware, boot loader,
kernel, root file system). :func:`measure` extends them into the TPM in boot
order; :func:`expected_pcrs` predicts the resulting values in software, which
is how a PCR policy is signed for an OS image before any device boots it.

Manifest format (versioned JSON, at most :data:`MAX_MANIFEST_BYTES`)::

    {"format": "edgeseal-boot-manifest", "version": 1,
     "components": {"firmware": "<64 hex>", "bootloader": "...",
                    "kernel": "...", "rootfs": "..."}}
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

from edgeseal.hardware.errors import EmulatorError
from edgeseal.hardware.policy import PCRValues
from edgeseal.hardware.profiles import BOOT_COMPONENTS, BoardProfile

log = logging.getLogger(__name__)

MANIFEST_FORMAT = "edgeseal-boot-manifest"
MANIFEST_VERSION = 1
#: Four 64-character digests and a little JSON: 16 KiB is generous.
MAX_MANIFEST_BYTES = 16 * 1024
DIGEST_SIZE = 32

__all__ = [
    "BOOT_COMPONENTS",
    "BootManifest",
    "ManifestError",
    "expected_pcrs",
    "measure",
]


class ManifestError(EmulatorError):
    """A boot manifest is malformed or names an unknown component."""


class _PCRExtender(Protocol):
    """The part of a KeyBackend that measured boot uses."""

    def pcr_extend(self, index: int, digest: bytes) -> None: ...


@dataclass(frozen=True)
class BootManifest:
    """SHA-256 digest of each boot component, keyed by BOOT_COMPONENTS names."""

    components: Mapping[str, bytes] = field(hash=False)

    def __post_init__(self) -> None:
        names = set(self.components)
        if names != set(BOOT_COMPONENTS):
            raise ManifestError(
                "a boot manifest names exactly the components "
                f"{', '.join(BOOT_COMPONENTS)}; got {', '.join(sorted(names)) or 'none'}"
            )
        copied: dict[str, bytes] = {}
        for name in BOOT_COMPONENTS:
            digest = bytes(self.components[name])
            if len(digest) != DIGEST_SIZE:
                raise ManifestError(f"{name}: a SHA-256 digest is 32 bytes, got {len(digest)}")
            copied[name] = digest
        object.__setattr__(self, "components", MappingProxyType(copied))

    @classmethod
    def default(cls) -> BootManifest:
        """The manifest of the emulated "factory image".

        Deterministic, so every freshly created emulated device boots the same
        image and one signed PCR policy fits them all, as on a real fleet.
        """
        return cls(
            {
                name: hashlib.sha256(f"edgeseal emulated {name} 1.0".encode()).digest()
                for name in BOOT_COMPONENTS
            }
        )

    def with_component(self, name: str, digest: bytes) -> BootManifest:
        """A copy with ``name``'s digest replaced (an updated or tampered component)."""
        if name not in BOOT_COMPONENTS:
            raise ManifestError(
                f"unknown boot component {name!r}; known: {', '.join(BOOT_COMPONENTS)}"
            )
        return BootManifest({**self.components, name: digest})

    def to_json(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "components": {name: self.components[name].hex() for name in BOOT_COMPONENTS},
        }

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), indent=2).encode("utf-8") + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes) -> BootManifest:
        """Parse strictly: bounded size, no duplicate or unknown keys, lower-case hex."""
        if len(data) > MAX_MANIFEST_BYTES:
            raise ManifestError(
                f"boot manifest is {len(data)} bytes, more than the {MAX_MANIFEST_BYTES} allowed"
            )
        try:
            doc = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates)
        except (UnicodeDecodeError, ValueError) as exc:
            raise ManifestError(f"boot manifest is not valid JSON: {exc}") from exc
        if not isinstance(doc, dict) or set(doc) != {"format", "version", "components"}:
            raise ManifestError(
                "boot manifest must be an object with exactly format, version and components"
            )
        if doc["format"] != MANIFEST_FORMAT:
            raise ManifestError(f"not a boot manifest (format {doc['format']!r})")
        version = doc["version"]
        if type(version) is not int or version != MANIFEST_VERSION:
            raise ManifestError(
                f"unsupported boot manifest version {version!r} "
                f"(this reader supports version {MANIFEST_VERSION})"
            )
        components = doc["components"]
        if not isinstance(components, dict):
            raise ManifestError("boot manifest components must be an object")
        digests: dict[str, bytes] = {}
        for name, value in components.items():
            if name not in BOOT_COMPONENTS:
                raise ManifestError(
                    f"unknown boot component {name!r}; known: {', '.join(BOOT_COMPONENTS)}"
                )
            digests[name] = parse_digest(value, name)
        return cls(digests)


def parse_digest(value: object, what: str) -> bytes:
    """A SHA-256 digest from 64 lower-case hex characters, or ManifestError."""
    if (
        not isinstance(value, str)
        or len(value) != 2 * DIGEST_SIZE
        or value.strip("0123456789abcdef")
    ):
        raise ManifestError(f"{what}: a SHA-256 digest is 64 lower-case hex characters")
    return bytes.fromhex(value)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for key, value in pairs:
        if key in doc:
            raise ManifestError(f"boot manifest repeats the key {key!r}")
        doc[key] = value
    return doc


def _extends(manifest: BootManifest, profile: BoardProfile) -> dict[int, list[bytes]]:
    """PCR -> digests extended into it, in boot order."""
    extends: dict[int, list[bytes]] = {}
    for name in BOOT_COMPONENTS:
        extends.setdefault(profile.pcr_for(name), []).append(manifest.components[name])
    return extends


def expected_pcrs(
    manifest: BootManifest, profile: BoardProfile, indices: tuple[int, ...] | None = None
) -> PCRValues:
    """The PCR values after :func:`measure` from reset, computed without a TPM.

    ``indices`` defaults to the PCRs the profile's key policy binds; a PCR
    that measured boot does not touch stays at zero.
    """
    wanted = profile.policy_pcrs if indices is None else indices
    extends = _extends(manifest, profile)
    return PCRValues.from_extends({i: extends.get(i, []) for i in wanted})


def measure(backend: _PCRExtender, manifest: BootManifest, profile: BoardProfile) -> None:
    """Extend each component's digest into its PCR, in boot order.

    Run once per TPM reset: extending twice gives different PCR values (that
    is the point of a PCR), so the caller must know the PCRs start at zero.
    """
    for name in BOOT_COMPONENTS:
        index = profile.pcr_for(name)
        backend.pcr_extend(index, manifest.components[name])
        log.debug("measured %s into PCR %d", name, index)
    log.info("measured boot: %d components extended", len(BOOT_COMPONENTS))
