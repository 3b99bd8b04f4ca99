"""KeyBackend behaviour, run against a real swtpm and against the software backend.

Both backends must enforce the same policy semantics so that tests of higher
layers behave the same on either.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeseal.hardware.backend import KeyBackend, open_backend
from edgeseal.hardware.errors import (
    HardwareError,
    KeyExistsError,
    KeyNotFoundError,
    PolicyCheckError,
    PolicyFormatError,
)
from edgeseal.hardware.policy import sign_pcr_policy
from edgeseal.hardware.software import SoftwareBackend
from edgeseal.hardware.swtpm import SwtpmProcess
from edgeseal.hardware.tpm import TPMBackend
from edgeseal.hardware.tpm_blob import SealedBlob

KERNEL = hashlib.sha256(b"kernel 6.1").digest()
ROOTFS = hashlib.sha256(b"rootfs v1").digest()
ROOTFS_V2 = hashlib.sha256(b"rootfs v2").digest()
COUNTER = 0x01500010
CONTENT_KEY = bytes(range(32))


class Device:
    """One device's key backend that the test can power-cycle (PCRs reset, state kept)."""

    def __init__(self, kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        self.kind = kind
        self.state = tmp_path / "software-state"
        self.swtpm: SwtpmProcess | None = None
        if kind == "tpm":
            self.swtpm = request.getfixturevalue("swtpm")
        self.backend = self._open()

    def _open(self) -> KeyBackend:
        if self.swtpm is not None:
            return open_backend(self.swtpm.start())
        return open_backend(f"software:{self.state}")

    def reboot(self) -> KeyBackend:
        self.backend.close()
        if self.swtpm is not None:
            self.swtpm.stop()
            self.swtpm.start()
        else:
            SoftwareBackend(self.state).simulate_reboot()
        self.backend = self._open()
        return self.backend

    def boot(self, rootfs: bytes = ROOTFS) -> None:
        """Measure a boot: kernel into PCR 4 ... 9, rootfs into PCR 9."""
        self.backend.pcr_extend(4, KERNEL)
        self.backend.pcr_extend(9, rootfs)


@pytest.fixture(params=["tpm", "software"])
def device(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Device]:
    dev = Device(request.param, tmp_path, request)
    try:
        yield dev
    finally:
        dev.backend.close()


@pytest.fixture(scope="module")
def authority() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def test_open_backend_dispatches_by_spec(device: Device) -> None:
    backend = device.backend
    assert isinstance(backend, KeyBackend)
    expected = TPMBackend if device.kind == "tpm" else SoftwareBackend
    assert isinstance(backend, expected)
    assert backend.kind == device.kind
    assert backend.insecure is (device.kind == "software")


def test_seal_unseal_round_trip(device: Device, authority: ec.EllipticCurvePrivateKey) -> None:
    b = device.backend
    device.boot()
    assert b.unseal(b.seal(CONTENT_KEY)) == CONTENT_KEY
    assert b.unseal(b.seal(CONTENT_KEY, pcrs=[4, 9])) == CONTENT_KEY
    blob = b.seal(b"x" * 128, authority=authority.public_key())
    assert b.unseal(blob, approved=sign_pcr_policy(authority, b.pcr_read([4, 9]))) == b"x" * 128


def test_seal_unseal_across_restart(device: Device, authority: ec.EllipticCurvePrivateKey) -> None:
    device.boot()
    literal = device.backend.seal(CONTENT_KEY, pcrs=[9])
    signed = device.backend.seal(CONTENT_KEY, authority=authority.public_key())
    policy = sign_pcr_policy(authority, device.backend.pcr_read([4, 9]))

    b = device.reboot()
    assert b.pcr_read([9]).digests[9] == bytes(32), "PCRs reset on restart"
    with pytest.raises(PolicyCheckError, match="PCR 9 changed since sealing"):
        b.unseal(literal)
    device.boot()
    assert b.unseal(literal) == CONTENT_KEY
    assert b.unseal(signed, approved=policy) == CONTENT_KEY


def test_unseal_refused_after_pcr_extend_then_allowed_under_new_policy(
    device: Device, authority: ec.EllipticCurvePrivateKey
) -> None:
    b = device.backend
    device.boot()
    literal = b.seal(CONTENT_KEY, pcrs=[4, 9])
    signed = b.seal(CONTENT_KEY, authority=authority.public_key())
    old_policy = sign_pcr_policy(authority, b.pcr_read([4, 9]))

    b.pcr_extend(9, ROOTFS_V2)  # an OS update
    with pytest.raises(PolicyCheckError, match="PCR 9 changed since sealing") as literal_err:
        b.unseal(literal)
    assert "PCR 4" not in literal_err.value.message
    with pytest.raises(PolicyCheckError, match="PCR 9 changed since the policy was signed"):
        b.unseal(signed, approved=old_policy)

    new_policy = sign_pcr_policy(authority, b.pcr_read([4, 9]))
    assert b.unseal(signed, approved=new_policy) == CONTENT_KEY
    with pytest.raises(PolicyCheckError, match="PCR 9 changed since sealing"):
        b.unseal(literal)  # a literal PCR binding cannot be re-approved


def test_policy_of_another_authority_or_tampered_signature_refused(
    device: Device, authority: ec.EllipticCurvePrivateKey
) -> None:
    b = device.backend
    device.boot()
    signed = b.seal(CONTENT_KEY, authority=authority.public_key())
    current = b.pcr_read([4, 9])
    rogue = sign_pcr_policy(ec.generate_private_key(ec.SECP256R1()), current)
    with pytest.raises(PolicyCheckError, match=r"signed by authority \w+, not by the one"):
        b.unseal(signed, approved=rogue)

    good = sign_pcr_policy(authority, current)
    doc = json.loads(good.to_bytes())
    doc["signature"] = json.loads(rogue.to_bytes())["signature"]
    tampered = type(good).from_bytes(json.dumps(doc).encode())
    with pytest.raises(PolicyCheckError, match="does not verify"):
        b.unseal(signed, approved=tampered)
    with pytest.raises(PolicyCheckError, match="pass the approved policy"):
        b.unseal(signed)


def test_ecdh_zgen_matches_cryptography(device: Device) -> None:
    b = device.backend
    with pytest.raises(KeyNotFoundError):
        b.device_key_public()
    public = b.create_device_key(None)
    assert b.device_key_public() == public
    peer = ec.generate_private_key(ec.SECP256R1())
    shared = b.ecdh_zgen(peer.public_key())
    assert len(shared) == 32
    assert shared == peer.exchange(ec.ECDH(), public)


def test_ecdh_zgen_follows_the_signed_pcr_policy(
    device: Device, authority: ec.EllipticCurvePrivateKey
) -> None:
    b = device.backend
    device.boot()
    public = b.create_device_key(authority.public_key())
    peer = ec.generate_private_key(ec.SECP256R1())
    expected = peer.exchange(ec.ECDH(), public)
    policy = sign_pcr_policy(authority, b.pcr_read([4, 9]))
    assert b.ecdh_zgen(peer.public_key(), approved=policy) == expected
    with pytest.raises(PolicyCheckError):
        b.ecdh_zgen(peer.public_key())

    b.pcr_extend(9, ROOTFS_V2)
    with pytest.raises(PolicyCheckError, match="PCR 9 changed since the policy was signed"):
        b.ecdh_zgen(peer.public_key(), approved=policy)
    resigned = sign_pcr_policy(authority, b.pcr_read([4, 9]))
    assert b.ecdh_zgen(peer.public_key(), approved=resigned) == expected
    rogue = sign_pcr_policy(ec.generate_private_key(ec.SECP256R1()), b.pcr_read([4, 9]))
    with pytest.raises(PolicyCheckError, match="not by the one"):
        b.ecdh_zgen(peer.public_key(), approved=rogue)


def test_device_key_is_not_replaced_by_accident(device: Device) -> None:
    b = device.backend
    first = b.create_device_key(None)
    with pytest.raises(KeyExistsError):
        b.create_device_key(None)
    assert b.device_key_public() == first
    second = b.create_device_key(None, replace=True)
    assert second != first
    assert b.device_key_public() == second


def test_nv_counter_monotonic_across_restart(device: Device) -> None:
    b = device.backend
    with pytest.raises(KeyNotFoundError):
        b.nv_counter_read(COUNTER)
    b.nv_counter_define(COUNTER)
    start = b.nv_counter_read(COUNTER)
    assert start >= 1
    assert b.nv_counter_increment(COUNTER) == start + 1
    b.nv_counter_define(COUNTER)  # idempotent: neither resets nor increments
    assert b.nv_counter_read(COUNTER) == start + 1
    b = device.reboot()
    assert b.nv_counter_read(COUNTER) == start + 1
    assert b.nv_counter_increment(COUNTER) == start + 2
    with pytest.raises(HardwareError, match="outside the owner range"):
        b.nv_counter_define(0x01C00002)


def test_secret_size_is_bounded(device: Device, authority: ec.EllipticCurvePrivateKey) -> None:
    b = device.backend
    with pytest.raises(ValueError, match=r"1\.\.128 bytes"):
        b.seal(b"x" * 129)
    with pytest.raises(ValueError, match=r"1\.\.128 bytes"):
        b.seal(b"")
    with pytest.raises(ValueError, match="not both"):
        b.seal(b"k", pcrs=[9], authority=authority.public_key())
    with pytest.raises(ValueError, match=r"0\.\.23"):
        b.seal(b"k", pcrs=[24])


def test_malformed_or_foreign_blobs_are_rejected(device: Device) -> None:
    b = device.backend
    blob = b.seal(CONTENT_KEY)
    with pytest.raises(PolicyFormatError, match="not valid JSON"):
        b.unseal(blob[:-10])
    with pytest.raises(PolicyFormatError, match="more than"):
        b.unseal(b" " * 9000)
    doc = json.loads(blob)
    doc["version"] = 99
    with pytest.raises(PolicyFormatError, match="unsupported sealed blob version 99"):
        b.unseal(json.dumps(doc).encode())
    doc["version"] = 1
    doc["backend"] = "software" if device.kind == "tpm" else "tpm"
    with pytest.raises(PolicyFormatError, match="sealed by the"):
        b.unseal(json.dumps(doc).encode())


def test_pcr_read_and_extend(device: Device) -> None:
    b = device.backend
    before = b.pcr_read(list(range(24)))
    assert before.indices == list(range(24)), "more than 8 PCRs need several TPM2_PCR_Read"
    b.pcr_extend(9, ROOTFS)
    assert b.pcr_read([9]).digests[9] == hashlib.sha256(bytes(32) + ROOTFS).digest()
    assert b.pcr_read([4]).digests[4] == before.digests[4]
    with pytest.raises(ValueError, match="32-byte"):
        b.pcr_extend(9, b"short")


@settings(max_examples=150, deadline=None)
@given(
    st.binary(max_size=400)
    | st.dictionaries(
        st.sampled_from(["format", "version", "backend", "binding", "pcrs", "authority", "parts"]),
        st.none() | st.integers() | st.text(max_size=20) | st.dictionaries(st.text(), st.text()),
    ).map(lambda d: json.dumps(d).encode())
)
def test_blob_parser_raises_only_policy_format_error(data: bytes) -> None:
    with contextlib.suppress(PolicyFormatError):
        SealedBlob.from_bytes(data, backend="tpm", part_names=("private", "public"))
