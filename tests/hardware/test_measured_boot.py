"""Boot manifests and measured boot: strict parsing; predicted PCRs equal the TPM's."""

from __future__ import annotations

import contextlib
import hashlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeseal.hardware.backend import open_backend
from edgeseal.hardware.measured_boot import (
    BOOT_COMPONENTS,
    MAX_MANIFEST_BYTES,
    BootManifest,
    ManifestError,
    expected_pcrs,
    measure,
)
from edgeseal.hardware.profiles import load_profile, parse_profile
from edgeseal.hardware.swtpm import SwtpmProcess


def _manifest(**overrides: bytes) -> BootManifest:
    return BootManifest(
        {
            name: overrides.get(name, hashlib.sha256(name.encode()).digest())
            for name in BOOT_COMPONENTS
        }
    )


def _doc(manifest: BootManifest) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(manifest.to_bytes())
    return doc


def test_round_trip() -> None:
    manifest = _manifest()
    assert BootManifest.from_bytes(manifest.to_bytes()) == manifest
    assert _doc(manifest)["version"] == 1


def test_default_manifest_is_the_same_for_every_device() -> None:
    assert BootManifest.default() == BootManifest.default()


def test_with_component_changes_only_that_component() -> None:
    manifest = _manifest()
    changed = manifest.with_component("kernel", bytes(32))
    assert changed.components["kernel"] == bytes(32)
    for name in ("firmware", "bootloader", "rootfs"):
        assert changed.components[name] == manifest.components[name]
    with pytest.raises(ManifestError, match="unknown boot component 'initrd'"):
        manifest.with_component("initrd", bytes(32))


def _bad(mutate: object) -> bytes:
    doc = _doc(_manifest())
    assert callable(mutate)
    mutate(doc)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_bad(lambda d: d.update(version=2)), "unsupported boot manifest version 2"),
        (_bad(lambda d: d.update(version=True)), "unsupported boot manifest version True"),
        (_bad(lambda d: d.update(format="other")), "not a boot manifest"),
        (_bad(lambda d: d.update(extra=1)), "exactly format, version and components"),
        (_bad(lambda d: d["components"].pop("rootfs")), "exactly the components"),
        (_bad(lambda d: d["components"].update(initrd="00" * 32)), "unknown boot component"),
        (_bad(lambda d: d["components"].update(kernel="AB" * 32)), "lower-case hex"),
        (_bad(lambda d: d["components"].update(kernel="ab" * 31)), "64 lower-case hex"),
        (_bad(lambda d: d["components"].update(kernel=7)), "64 lower-case hex"),
        (_bad(lambda d: d.update(components=[])), "components must be an object"),
        (b'{"format": 1, "format": 2}', "repeats the key 'format'"),
        (b"[]", "must be an object"),
        (b"\xff", "not valid JSON"),
        (b" " * (MAX_MANIFEST_BYTES + 1), "more than the"),
    ],
)
def test_bad_manifest_refused(data: bytes, message: str) -> None:
    with pytest.raises(ManifestError) as info:
        BootManifest.from_bytes(data)
    assert message in info.value.diagnostics()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_parser_raises_only_manifest_error(data: bytes) -> None:
    with contextlib.suppress(ManifestError):
        BootManifest.from_bytes(data)


def test_expected_pcrs_is_the_tcg_extend_chain() -> None:
    """Independent re-computation: PCR_new = SHA256(PCR_old || digest), from zero."""
    profile = load_profile("x86-dtpm")
    manifest = _manifest()
    values = expected_pcrs(manifest, profile)
    assert values.indices == [0, 4, 7, 9, 15]
    for name in BOOT_COMPONENTS:
        index = profile.pcr_for(name)
        assert (
            values.digests[index] == hashlib.sha256(bytes(32) + manifest.components[name]).digest()
        )
    assert values.digests[7] == bytes(32)  # bound but not measured: stays at reset value
    assert expected_pcrs(manifest, profile, (9,)).indices == [9]


def test_components_sharing_a_pcr_extend_in_boot_order() -> None:
    text = """
version = 1
id = "shared"
description = "kernel and rootfs share PCR 9"
hardware_class = "x86_64"
tpm = "discrete"
tcti = "device:/dev/tpmrm0"
aead = "aes-256-gcm"
serial_console = "/dev/ttyS0"
[pcr]
bank = "sha256"
policy = [0, 4, 9]
[measured_boot]
firmware = 0
bootloader = 4
kernel = 9
rootfs = 9
"""
    profile = parse_profile(text.encode())
    manifest = _manifest()
    after_kernel = hashlib.sha256(bytes(32) + manifest.components["kernel"]).digest()
    after_rootfs = hashlib.sha256(after_kernel + manifest.components["rootfs"]).digest()
    assert expected_pcrs(manifest, profile).digests[9] == after_rootfs


@pytest.mark.swtpm
def test_expected_pcrs_equal_what_the_tpm_reads_after_measure(swtpm: SwtpmProcess) -> None:
    profile = load_profile("x86-dtpm")
    manifest = _manifest(kernel=hashlib.sha256(b"a kernel").digest())
    with open_backend(swtpm.tcti) as backend:
        before = backend.pcr_read(list(profile.policy_pcrs))
        assert set(before.digests.values()) == {bytes(32)}
        measure(backend, manifest, profile)
        after = backend.pcr_read(list(profile.policy_pcrs))
    assert after == expected_pcrs(manifest, profile)
    assert after != expected_pcrs(manifest.with_component("kernel", bytes(32)), profile)
