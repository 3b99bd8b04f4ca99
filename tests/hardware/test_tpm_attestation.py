"""Attestation on a real swtpm: the AK, quotes and ActivateCredential.

tpm2-pytss is the reference here: its TPMT_PUBLIC / TPMS_ATTEST parsers read
what the backend returns, and its ``make_credential`` (the TSS's reference
MakeCredential) builds the credentials the backend activates. The round trip
with an EK certificate runs on an emulated device, whose EK swtpm_setup
certified.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tpm2_pytss.constants import (
    ESYS_TR,
    TPM2_ALG,
    TPM2_CAP,
    TPM2_ECC,
    TPM2_GENERATED,
    TPM2_HT,
    TPM2_ST,
    TPMA_OBJECT,
)
from tpm2_pytss.types import TPM2B_PUBLIC, TPMS_ATTEST, TPMT_PUBLIC
from tpm2_pytss.utils import NoSuchIndex, create_ek_template, make_credential

from edgeseal.hardware import tpm_attest
from edgeseal.hardware.emulated import EmulatedDevice
from edgeseal.hardware.errors import (
    AttestationUnsupportedError,
    CredentialError,
    KeyNotFoundError,
    TPMCommandError,
)
from edgeseal.hardware.software import SoftwareBackend
from edgeseal.hardware.swtpm import SwtpmProcess
from edgeseal.hardware.tpm import TPMBackend
from edgeseal.hardware.tpm_objects import AK_HANDLE, srk_template

pytestmark = pytest.mark.swtpm

NONCE = bytes(range(32))
ROOTFS = hashlib.sha256(b"rootfs v1").digest()
SECRET = bytes(range(100, 132))
# docs/dev/attestation-contracts.md: the TCG L-1 EK's authPolicy, PolicySecret(TPM_RH_ENDORSEMENT).
EK_POLICY = bytes.fromhex("837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa")
AK_ATTRIBUTES = (
    TPMA_OBJECT.FIXEDTPM
    | TPMA_OBJECT.FIXEDPARENT
    | TPMA_OBJECT.SENSITIVEDATAORIGIN
    | TPMA_OBJECT.USERWITHAUTH
    | TPMA_OBJECT.RESTRICTED
    | TPMA_OBJECT.SIGN_ENCRYPT
    | TPMA_OBJECT.NODA
)


@pytest.fixture
def backend(swtpm: SwtpmProcess) -> Iterator[TPMBackend]:
    with TPMBackend(swtpm.start()) as opened:
        yield opened


@pytest.fixture
def device(tmp_path: Path, swtpm_ca: Path) -> Iterator[EmulatedDevice]:
    dev = EmulatedDevice.create(tmp_path / "dev", device_id="attest-1", ca_dir=swtpm_ca)
    try:
        dev.start()
        yield dev
    finally:
        dev.stop()


def _loaded(backend: TPMBackend) -> list[int]:
    """Transient objects and sessions in the TPM (the backend must leave none)."""
    found: list[int] = []
    for kind in (TPM2_HT.TRANSIENT, TPM2_HT.LOADED_SESSION, TPM2_HT.SAVED_SESSION):
        _, data = backend.esapi.get_capability(TPM2_CAP.HANDLES, int(kind) << 24, 64)
        found.extend(int(h) for h in data.data.handles)
    return found


def _parse_public(data: bytes) -> TPMT_PUBLIC:
    public, used = TPMT_PUBLIC.unmarshal(data)
    assert used == len(data), "no TPM2B size prefix, no trailing bytes"
    return public


def _ak_key(ak_public: bytes) -> ec.EllipticCurvePublicKey:
    point = _parse_public(ak_public).unique.ecc
    x = int.from_bytes(bytes(point.x), "big")
    y = int.from_bytes(bytes(point.y), "big")
    return ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()


def _name(ak_public: bytes) -> bytes:
    """The TPM name (contract): u16(nameAlg SHA-256) || SHA-256(marshaled TPMT_PUBLIC)."""
    return TPM2_ALG.SHA256.to_bytes(2, "big") + hashlib.sha256(ak_public).digest()


def _parse_attest(attest: bytes) -> TPMS_ATTEST:
    parsed, used = TPMS_ATTEST.unmarshal(attest)
    assert used == len(attest)
    return parsed


def _l1_template() -> TPM2B_PUBLIC:
    def no_nv(index: int) -> bytes:
        raise NoSuchIndex(index)

    _, template = create_ek_template("EK-RSA2048", no_nv)
    assert bytes(template.publicArea.authPolicy) == EK_POLICY
    return template


def _ek_public_from_certificate(der: bytes) -> TPM2B_PUBLIC:
    """What the server does: the L-1 template with the certificate's modulus as unique."""
    key = x509.load_der_x509_certificate(der).public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    assert key.public_numbers().e == 65537  # exponent 0 in the template means 2^16 + 1
    public = _l1_template()
    public.publicArea.unique.rsa = key.public_numbers().n.to_bytes(256, "big")
    return public


def _ek_public_from_tpm(backend: TPMBackend) -> TPM2B_PUBLIC:
    esapi = backend.esapi
    ek, public, _, _, _ = esapi.create_primary(
        None, tpm_attest.ek_template(esapi), ESYS_TR.ENDORSEMENT
    )
    esapi.flush_context(ek)
    return public


def _credential(
    ek_public: TPM2B_PUBLIC, name: bytes, secret: bytes = SECRET
) -> tuple[bytes, bytes]:
    blob, encrypted = make_credential(ek_public, secret, name)
    return blob.marshal(), encrypted.marshal()


def _flip(data: bytes, index: int) -> bytes:
    out = bytearray(data)
    out[index] ^= 0x01
    return bytes(out)


# -- the attestation key -----------------------------------------------------------------


def test_ak_is_created_once_and_survives_a_restart(
    swtpm: SwtpmProcess, backend: TPMBackend
) -> None:
    with pytest.raises(KeyNotFoundError, match="no attestation key at 0x81010100"):
        backend.attestation_key_public()
    first = backend.create_attestation_key()
    assert backend.create_attestation_key() == first, "idempotent without replace"
    assert backend.attestation_key_public() == first
    assert _loaded(backend) == []
    backend.close()

    swtpm.stop()
    with TPMBackend(swtpm.start()) as reopened:
        assert reopened.attestation_key_public() == first
        assert reopened.create_attestation_key() == first


def test_ak_replace_creates_a_new_key(backend: TPMBackend) -> None:
    first = backend.create_attestation_key()
    second = backend.create_attestation_key(replace=True)
    assert _ak_key(second) != _ak_key(first), "a new key, not the same primary again"
    assert backend.attestation_key_public() == second
    assert backend.create_attestation_key() == second
    assert _loaded(backend) == []


def test_ak_public_is_the_contract_template(backend: TPMBackend) -> None:
    ak_public = backend.create_attestation_key()
    area = _parse_public(ak_public)
    assert area.type == TPM2_ALG.ECC
    assert area.nameAlg == TPM2_ALG.SHA256
    assert int(area.objectAttributes) == int(AK_ATTRIBUTES)
    assert not area.objectAttributes & TPMA_OBJECT.ADMINWITHPOLICY
    assert bytes(area.authPolicy) == b""
    detail = area.parameters.eccDetail
    assert detail.curveID == TPM2_ECC.NIST_P256
    assert detail.symmetric.algorithm == TPM2_ALG.NULL
    assert detail.scheme.scheme == TPM2_ALG.ECDSA
    assert detail.scheme.details.ecdsa.hashAlg == TPM2_ALG.SHA256
    assert detail.kdf.scheme == TPM2_ALG.NULL
    # The TPM's name of the persistent AK is the contract's name of these bytes.
    tr = backend.esapi.tr_from_tpmpublic(AK_HANDLE)
    assert bytes(backend.esapi.tr_get_name(tr)) == _name(ak_public)


def test_a_foreign_key_at_the_ak_handle_is_not_used(backend: TPMBackend) -> None:
    esapi = backend.esapi
    storage, _, _, _, _ = esapi.create_primary(None, srk_template(), ESYS_TR.OWNER)
    esapi.evict_control(ESYS_TR.OWNER, storage, AK_HANDLE)
    esapi.flush_context(storage)
    for call in (
        backend.create_attestation_key,
        backend.attestation_key_public,
        lambda: backend.quote(NONCE, [0]),
    ):
        with pytest.raises(TPMCommandError, match="not an attestation key"):
            call()
    ak_public = backend.create_attestation_key(replace=True)
    assert _parse_public(ak_public).objectAttributes & TPMA_OBJECT.SIGN_ENCRYPT
    assert backend.attestation_key_public() == ak_public


# -- quotes ------------------------------------------------------------------------------


def test_quote_verifies_and_binds_the_nonce_and_pcrs(backend: TPMBackend) -> None:
    ak_public = backend.create_attestation_key()
    backend.pcr_extend(9, ROOTFS)
    attest, signature = backend.quote(NONCE, [9, 4, 0, 9])
    _ak_key(ak_public).verify(signature, attest, ec.ECDSA(hashes.SHA256()))
    with pytest.raises(InvalidSignature):
        _ak_key(ak_public).verify(signature, _flip(attest, 40), ec.ECDSA(hashes.SHA256()))

    parsed = _parse_attest(attest)
    assert parsed.magic == TPM2_GENERATED.VALUE == 0xFF544347
    assert parsed.type == TPM2_ST.ATTEST_QUOTE == 0x8018
    assert bytes(parsed.extraData) == NONCE
    (selection,) = parsed.attested.quote.pcrSelect
    assert selection.hash == TPM2_ALG.SHA256
    bitmap = bytes(selection.pcrSelect)[: selection.sizeofSelect]
    assert [i for i in range(24) if bitmap[i // 8] & (1 << (i % 8))] == [0, 4, 9]
    values = backend.pcr_read([0, 4, 9]).digests
    expected = hashlib.sha256(values[0] + values[4] + values[9]).digest()
    assert bytes(parsed.attested.quote.pcrDigest) == expected
    assert _loaded(backend) == []


def test_quote_of_all_pcrs(backend: TPMBackend) -> None:
    backend.create_attestation_key()
    attest, _ = backend.quote(b"n", range(24))
    values = backend.pcr_read(range(24)).digests
    expected = hashlib.sha256(b"".join(values[i] for i in range(24))).digest()
    assert bytes(_parse_attest(attest).attested.quote.pcrDigest) == expected


def test_quote_follows_pcr_extend(backend: TPMBackend) -> None:
    ak_public = backend.create_attestation_key()
    before, _ = backend.quote(NONCE, [9])
    backend.pcr_extend(9, ROOTFS)
    after, signature = backend.quote(NONCE, [9])
    _ak_key(ak_public).verify(signature, after, ec.ECDSA(hashes.SHA256()))
    digest_before = bytes(_parse_attest(before).attested.quote.pcrDigest)
    digest_after = bytes(_parse_attest(after).attested.quote.pcrDigest)
    assert digest_before == hashlib.sha256(bytes(32)).digest()
    assert digest_after == hashlib.sha256(backend.pcr_read([9]).digests[9]).digest()
    assert digest_after != digest_before


def test_quote_counts_are_not_obfuscated(swtpm: SwtpmProcess, backend: TPMBackend) -> None:
    """An endorsement-hierarchy AK signs the real reset count (Part 3, 18.1)."""
    backend.create_attestation_key()
    first = _parse_attest(backend.quote(NONCE, [0])[0]).clockInfo.resetCount
    backend.close()
    swtpm.stop()
    with TPMBackend(swtpm.start()) as reopened:
        second = _parse_attest(reopened.quote(NONCE, [0])[0]).clockInfo.resetCount
    assert second == first + 1


def test_quote_arguments_are_bounded(backend: TPMBackend) -> None:
    with pytest.raises(KeyNotFoundError, match="create one first"):
        backend.quote(NONCE, [0])
    backend.create_attestation_key()
    for bad in (b"", bytes(33)):
        with pytest.raises(ValueError, match=r"1\.\.32 bytes"):
            backend.quote(bad, [0])
    with pytest.raises(ValueError, match=r"0\.\.23"):
        backend.quote(NONCE, [24])
    with pytest.raises(ValueError, match="at least one PCR"):
        backend.quote(NONCE, [])
    for good in (b"\x00", bytes(32)):
        attest, _ = backend.quote(good, [0])
        assert bytes(_parse_attest(attest).extraData) == good


# -- ActivateCredential ------------------------------------------------------------------


def test_activate_credential_made_from_the_ek_certificate(device: EmulatedDevice) -> None:
    with device.backend() as backend:
        assert isinstance(backend, TPMBackend)
        ak_public = backend.create_attestation_key()
        (rsa_cert,) = [
            der
            for der in backend.ek_certificates()
            if isinstance(x509.load_der_x509_certificate(der).public_key(), rsa.RSAPublicKey)
        ]
        ek_public = _ek_public_from_certificate(rsa_cert)
        assert _ek_public_from_tpm(backend).publicArea.marshal() == ek_public.publicArea.marshal()
        blob, encrypted = _credential(ek_public, _name(ak_public))
        assert backend.activate_credential(blob, encrypted) == SECRET
        assert _loaded(backend) == []


def test_activate_credential_refuses_what_was_not_made_for_this_tpm(
    backend: TPMBackend,
) -> None:
    ak_public = backend.create_attestation_key()
    ek_public = _ek_public_from_tpm(backend)
    blob, encrypted = _credential(ek_public, _name(ak_public))

    other_ak = _name(ak_public[:-1] + bytes([ak_public[-1] ^ 1]))
    for bad_blob, bad_secret, message in [
        (*_credential(ek_public, other_ak), "not made for this TPM's EK and AK"),
        (_flip(blob, 10), encrypted, "not made for this TPM's EK and AK"),
        (_flip(blob, len(blob) - 1), encrypted, "not made for this TPM's EK and AK"),
        (blob, _flip(encrypted, 100), "does not decrypt with this TPM's EK"),
    ]:
        with pytest.raises(CredentialError, match=message) as err:
            backend.activate_credential(bad_blob, bad_secret)
        assert err.value.rc is not None
        assert _loaded(backend) == []

    other_ek = _ek_public_from_tpm(backend)
    stranger = rsa.generate_private_key(65537, 2048).public_key()
    other_ek.publicArea.unique.rsa = stranger.public_numbers().n.to_bytes(256, "big")
    with pytest.raises(CredentialError):
        backend.activate_credential(*_credential(other_ek, _name(ak_public)))

    # A credential for the old AK does not open with its replacement.
    backend.create_attestation_key(replace=True)
    with pytest.raises(CredentialError, match="not made for this TPM's EK and AK"):
        backend.activate_credential(blob, encrypted)
    assert _loaded(backend) == []


def test_activate_credential_refuses_malformed_input(backend: TPMBackend) -> None:
    ak_public = backend.create_attestation_key()
    blob, encrypted = _credential(_ek_public_from_tpm(backend), _name(ak_public))
    for bad_blob, bad_secret in [
        (blob[2:], encrypted),  # no size prefix
        (blob + b"\0", encrypted),
        (blob, encrypted[:-1]),
        (b"", encrypted),
        (b"\0\0", encrypted),
        (blob, bytes(5000)),
    ]:
        with pytest.raises(CredentialError):
            backend.activate_credential(bad_blob, bad_secret)
    assert backend.activate_credential(blob, encrypted) == SECRET


def test_activate_credential_needs_an_ak(backend: TPMBackend) -> None:
    with pytest.raises(KeyNotFoundError, match="no attestation key"):
        backend.activate_credential(*_credential(_ek_public_from_tpm(backend), bytes(34)))
    assert _loaded(backend) == []


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(blob=st.binary(max_size=200), encrypted=st.binary(max_size=300))
def test_activate_credential_raises_only_credential_error(
    backend: TPMBackend, blob: bytes, encrypted: bytes
) -> None:
    backend.create_attestation_key()
    # Well-formed TPM2Bs with arbitrary contents reach the TPM; anything else is refused first.
    for candidate in (
        (blob, encrypted),
        (len(blob).to_bytes(2, "big") + blob, len(encrypted).to_bytes(2, "big") + encrypted),
    ):
        with pytest.raises(CredentialError):
            backend.activate_credential(*candidate)
    assert _loaded(backend) == []


# -- the software backend ----------------------------------------------------------------


def test_software_backend_cannot_attest(tmp_path: Path) -> None:
    with SoftwareBackend(tmp_path / "state") as backend:
        for call in (
            backend.create_attestation_key,
            backend.attestation_key_public,
            lambda: backend.quote(NONCE, [0]),
            lambda: backend.activate_credential(b"\0\x02ab", b"\0\x02cd"),
        ):
            with pytest.raises(AttestationUnsupportedError, match="needs a TPM"):
                call()


def test_random_nonces_give_distinct_verifying_quotes(backend: TPMBackend) -> None:
    key = _ak_key(backend.create_attestation_key())
    quotes = {backend.quote(secrets.token_bytes(32), [0, 9]) for _ in range(3)}
    assert len(quotes) == 3
    for attest, signature in quotes:
        key.verify(signature, attest, ec.ECDSA(hashes.SHA256()))
