"""The emulated device on a real swtpm: creation, EK chain, measured boot, tamper, approve."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification
from cryptography.x509.oid import NameOID

from components import require_executable, require_module
from edgeseal.hardware.emulated import (
    AUTHORITY_KEY_FILE,
    DEVICE_KEY_PUB_FILE,
    TPM_DIR,
    EmulatedDevice,
)
from edgeseal.hardware.errors import EmulatorError, PolicyCheckError
from edgeseal.hardware.localca import LocalCA, ensure_local_ca
from edgeseal.hardware.measured_boot import expected_pcrs
from edgeseal.hardware.policy import SignedPCRPolicy
from edgeseal.hardware.swtpm import SwtpmProcess

pytestmark = pytest.mark.swtpm

#: TCG EK Credential Profile: the ECC NIST P-384 EK certificate's NV index (swtpm's ECC EK).
EK_ECC_CURVE = ec.SECP384R1


@pytest.fixture(scope="session")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One swtpm local CA for every device of the session (its keys are made once)."""
    require_executable("swtpm", "swtpm")
    require_executable("swtpm_setup", "swtpm-tools")
    require_module("tpm2_pytss", "tpm2-pytss")
    return ensure_local_ca(tmp_path_factory.mktemp("swtpm-ca")).ca_dir


@pytest.fixture
def device(tmp_path: Path, ca_dir: Path) -> Iterator[EmulatedDevice]:
    created = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    dev = EmulatedDevice.create(tmp_path / "dev", device_id="dev-1", ca_dir=ca_dir, now=created)
    try:
        yield dev
    finally:
        dev.stop()


def _peer() -> ec.EllipticCurvePublicKey:
    return ec.generate_private_key(ec.SECP256R1()).public_key()


def test_create_writes_a_stopped_device(device: EmulatedDevice, ca_dir: Path) -> None:
    assert not device.running()
    info = json.loads((device.state_dir / "device.json").read_text())
    assert info["id"] == "dev-1"
    assert info["profile"] == "emulated"
    assert info["created"] == "2026-01-02T03:04:05+00:00"
    key_mode = stat.S_IMODE((device.state_dir / AUTHORITY_KEY_FILE).stat().st_mode)
    assert key_mode == 0o600
    policy = device.signed_policy()
    policy.verify()
    assert policy.values == expected_pcrs(device.manifest(), device.profile)
    with pytest.raises(EmulatorError, match="not running"):
        device.backend()
    with pytest.raises(EmulatorError, match="already holds an emulated device"):
        EmulatedDevice.create(device.state_dir, ca_dir=ca_dir)


def test_not_a_device_dir(tmp_path: Path) -> None:
    with pytest.raises(EmulatorError, match="is not an emulated device"):
        EmulatedDevice(tmp_path)


def test_start_then_status_matches_the_signed_policy(device: EmulatedDevice) -> None:
    tcti = device.start()
    assert tcti.startswith("swtpm:host=127.0.0.1,port=")
    status = device.status()
    assert status["running"] is True
    assert status["tcti"] == tcti
    assert status["id"] == "dev-1"
    assert status["profile"] == "emulated"
    assert status["policy_matches"] is True
    assert status["changed_pcrs"] == []
    assert status["pending_reboot"] is False
    expected = expected_pcrs(device.manifest(), device.profile)
    assert status["pcrs"] == {str(i): d.hex() for i, d in expected.digests.items()}
    json.dumps(status)  # JSON-ready
    with device.backend() as backend:
        assert _der(backend.device_key_public()) == _der(device.device_key_public())
        assert len(backend.ecdh_zgen(_peer(), approved=device.signed_policy())) == 32


def _der(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _verify_ek_chain(
    ek_der: bytes, root: x509.Certificate, intermediates: list[x509.Certificate]
) -> x509.Certificate:
    """Verify an EK certificate chain as an enrolling server would.

    EK certificates carry the TCG EK EKU (2.23.133.8.1), not clientAuth, and a
    critical SAN with TPM manufacturer attributes: the end-entity extension
    policy must be permissive; CA certificates keep the WebPKI checks.
    """
    ek = x509.load_der_x509_certificate(ek_der)
    verifier = (
        verification.PolicyBuilder()
        .store(verification.Store([root]))
        .extension_policies(
            ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(),
            ee_policy=verification.ExtensionPolicy.permit_all(),
        )
        .build_client_verifier()
    )
    verifier.verify(ek, intermediates)
    return ek


def _other_root() -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "swtpm-localca-rootca")])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )


def test_ek_certificate_chains_to_the_local_ca(device: EmulatedDevice, ca_dir: Path) -> None:
    ca = LocalCA(ca_dir)
    assert device.local_ca() == ca
    assert ca.exists()
    device.start()
    with device.backend() as backend:
        certs = backend.ek_certificates()
    assert certs, "swtpm_setup --create-ek-cert left no EK certificate in NV"
    root, issuer = ca.root_certificate(), ca.issuer_certificate()
    eks = [_verify_ek_chain(der, root, [issuer]) for der in certs]
    keys = [ek.public_key() for ek in eks]
    curves = {type(k.curve) for k in keys if isinstance(k, ec.EllipticCurvePublicKey)}
    assert EK_ECC_CURVE in curves
    assert any("dev-1" in ek.subject.rfc4514_string() for ek in eks)
    assert b"BEGIN CERTIFICATE" in ca.certificates_pem()
    # Another CA with the same name is not our trust anchor.
    with pytest.raises(verification.VerificationError):
        _verify_ek_chain(certs[0], _other_root(), [issuer])
    # The default (WebPKI client) policy refuses EK certificates: no clientAuth EKU.
    ek = x509.load_der_x509_certificate(certs[0])
    default = verification.PolicyBuilder().store(verification.Store([root])).build_client_verifier()
    with pytest.raises(verification.VerificationError, match="EKU"):
        default.verify(ek, [issuer])


def test_start_is_idempotent_and_restart_remeasures(device: EmulatedDevice) -> None:
    expected = expected_pcrs(device.manifest(), device.profile)
    tcti = device.start()
    assert device.start() == tcti  # no second measurement
    with device.backend() as backend:
        assert backend.pcr_read(expected.indices) == expected
    public = _der(device.device_key_public())
    device.restart()
    assert device.running()
    with device.backend() as backend:
        assert backend.pcr_read(expected.indices) == expected  # re-measured, not doubled
        assert _der(backend.device_key_public()) == public  # TPM state survived
    assert device.status()["policy_matches"] is True


def test_start_after_an_interrupted_boot_measures_once(device: EmulatedDevice) -> None:
    """swtpm up but measured boot never completed (start() killed): reset, then measure."""
    # What a start() killed right after launching swtpm leaves behind. (The
    # device's own launcher, so that this process can reap the swtpm it stops.)
    device._swtpm.start(detach=True)
    first_pid = device._swtpm.pid()
    assert device.running()
    device.start()
    assert device._swtpm.pid() != first_pid
    with device.backend() as backend:
        expected = expected_pcrs(device.manifest(), device.profile)
        assert backend.pcr_read(expected.indices) == expected


def test_tamper_locks_the_key_until_an_update_is_approved(device: EmulatedDevice) -> None:
    old_policy = device.signed_policy()
    peer = _peer()
    device.start()
    with device.backend() as backend:
        shared = backend.ecdh_zgen(peer, approved=old_policy)
        blob = backend.seal(b"content key", authority=old_policy.authority)
        assert backend.unseal(blob, approved=old_policy) == b"content key"

    new_kernel = device.tamper("kernel")
    assert device.manifest().components["kernel"] == new_kernel
    status = device.status()
    assert status["pending_reboot"] is True  # measured only at the next boot
    assert status["policy_matches"] is True

    device.restart()
    status = device.status()
    assert status["policy_matches"] is False
    assert status["changed_pcrs"] == [9]
    assert status["changed_components"] == ["kernel"]
    assert status["pending_reboot"] is False
    with device.backend() as backend:
        with pytest.raises(PolicyCheckError, match=r"\b9\b"):
            backend.ecdh_zgen(peer, approved=old_policy)
        with pytest.raises(PolicyCheckError, match=r"\b9\b"):
            backend.unseal(blob, approved=old_policy)

    new_policy = device.approve()
    assert SignedPCRPolicy.from_bytes(new_policy.to_bytes()) == new_policy
    assert device.signed_policy().changed_pcrs(old_policy.values) == [9]
    assert device.status()["policy_matches"] is True
    with device.backend() as backend:
        assert backend.ecdh_zgen(peer, approved=device.signed_policy()) == shared
        assert backend.unseal(blob, approved=device.signed_policy()) == b"content key"


def test_tamper_with_a_given_digest_and_unknown_component(device: EmulatedDevice) -> None:
    digest = bytes(range(32))
    assert device.tamper("rootfs", digest) == digest
    assert device.manifest().components["rootfs"] == digest
    with pytest.raises(EmulatorError, match="unknown boot component"):
        device.tamper("initrd")


def test_stop_kills_swtpm(device: EmulatedDevice) -> None:
    device.start()
    pid = SwtpmProcess(device.state_dir / TPM_DIR).pid()
    assert pid is not None
    device.stop()
    assert not device.running()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    status = device.status()
    assert status["running"] is False
    assert status["tcti"] is None
    assert status["policy_matches"] is None
    device.stop()  # stopping a stopped device is harmless


def test_other_board_profile(tmp_path: Path, ca_dir: Path) -> None:
    """An emulated x86 box: its policy also binds PCR 7, which no component extends."""
    dev = EmulatedDevice.create(tmp_path / "x86", profile="x86-dtpm", ca_dir=ca_dir, running=True)
    try:
        assert dev.device_id.startswith("emu-")
        assert (dev.state_dir / DEVICE_KEY_PUB_FILE).exists()
        status = dev.status()
        assert status["profile"] == "x86-dtpm"
        assert status["hardware_class"] == "x86_64"
        assert sorted(int(i) for i in status["pcrs"]) == [0, 4, 7, 9, 15]
        assert status["policy_matches"] is True
        dev.tamper("firmware")
        dev.restart()
        assert dev.status()["changed_components"] == ["firmware"]
        assert dev.status()["changed_pcrs"] == [0]
    finally:
        dev.stop()
