"""MakeCredential in software, checked by a Python ActivateCredential and against tpm2-pytss.

The real TPM2_ActivateCredential (swtpm) is exercised by the hardware and
end-to-end tests; here a test-only ``activate`` does what the TPM does (TPM 2.0
Part 1 section 24, Part 3 section 12.5) with the EK's private key and an
independent KDFa (``cryptography``'s SP 800-108 KBKDF), and both our
``make_credential`` and tpm2-pytss's must activate to the same secret.
"""

from __future__ import annotations

import hmac
import os

import pytest
from cryptography.hazmat.decrepit.ciphers.modes import CFB
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.kbkdf import KBKDFHMAC, CounterLocation, Mode
from tpm2_pytss.types import TPM2B_NAME
from tpm2_pytss.utils import make_credential as pytss_make_credential
from tpm_structures import ak_public_bytes, ek_public

from edgeseal.sdk.credential import IDENTITY_LABEL, kdfa, make_credential
from edgeseal.sdk.tpm_wire import Reader, tpm_name

EK_KEY = rsa.generate_private_key(65537, 2048)
AK_NAME = tpm_name(ak_public_bytes(ec.generate_private_key(ec.SECP256R1()).public_key()))


class ActivationError(Exception):
    pass


def _kbkdf(key: bytes, label: bytes, context: bytes, bits: int) -> bytes:
    return KBKDFHMAC(
        algorithm=hashes.SHA256(),
        mode=Mode.CounterMode,
        length=bits // 8,
        rlen=4,
        llen=4,
        location=CounterLocation.BeforeFixed,
        label=label,
        context=context,
        fixed=None,
    ).derive(key)


def activate(
    ek: rsa.RSAPrivateKey, ak_name: bytes, credential_blob: bytes, encrypted_secret: bytes
) -> bytes:
    """What TPM2_ActivateCredential does with an RSA EK and SHA-256 nameAlg."""
    secret_reader = Reader(encrypted_secret, what="TPM2B_ENCRYPTED_SECRET")
    encrypted_seed = secret_reader.tpm2b("secret", 256)
    secret_reader.end()
    seed = ek.decrypt(
        encrypted_seed,
        padding.OAEP(
            mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=b"IDENTITY\0"
        ),
    )
    blob = Reader(credential_blob, what="TPM2B_ID_OBJECT")
    body = Reader(blob.tpm2b("credential", 1024), what="id object")
    blob.end()
    outer_hmac = body.tpm2b("integrityHMAC", 32)
    enc_identity = body.raw(body.remaining, "encIdentity")
    hmac_key = _kbkdf(seed, b"INTEGRITY", b"", 256)
    if not hmac.compare_digest(hmac.digest(hmac_key, enc_identity + ak_name, "sha256"), outer_hmac):
        raise ActivationError("integrity HMAC")
    sym_key = _kbkdf(seed, b"STORAGE", ak_name, 128)
    decryptor = Cipher(algorithms.AES(sym_key), CFB(bytes(16))).decryptor()
    identity = Reader(decryptor.update(enc_identity) + decryptor.finalize(), what="identity")
    secret = identity.tpm2b("credential", 32)
    identity.end()
    return secret


# -- KDFa -----------------------------------------------------------------------------------


def test_kdfa_tcg_reference_self_test_vector() -> None:
    """The TPM reference implementation's KDFa self-test for SHA-256.

    Provenance: TCG TPM 2.0 reference code, ``KdfTestData.h`` (as shipped in
    libtpms 0.9.6, ``src/tpm2/KdfTestData.h``), ``c_kdfTestKeyIn``,
    ``c_kdfTestLabel`` ("KDFSELFTESTLABEL" with its NUL), ``c_kdfTestContextU``,
    ``c_kdfTestContextV`` and the ``ALG_SHA256`` ``c_kdfTestKeyOut`` (160 bits).
    """
    key = bytes.fromhex("271fa08bbdc5060ec3dfa928ff9b73123a12da0c")
    context_u = bytes.fromhex("ce244f395dca7391")
    context_v = bytes.fromhex("da504031ddf12e83")
    expected = bytes.fromhex("bb0259e1c8ba607e6a2cd704b69a902e9ade84c4")
    assert kdfa(key, b"KDFSELFTESTLABEL\0", context_u, context_v, 160) == expected
    assert kdfa(key, b"KDFSELFTESTLABEL", context_u, context_v, 160) == expected


@pytest.mark.parametrize("bits", [8, 128, 256, 264, 1024])
def test_kdfa_matches_sp800_108_counter_mode(bits: int) -> None:
    key, u, v = os.urandom(32), os.urandom(34), os.urandom(5)
    assert kdfa(key, b"STORAGE", u, v, bits) == _kbkdf(key, b"STORAGE", u + v, bits)


@pytest.mark.parametrize("bits", [0, 12, 65536, -8])
def test_kdfa_refuses_bit_lengths_it_cannot_produce(bits: int) -> None:
    with pytest.raises(ValueError, match="multiple of 8"):
        kdfa(b"k", b"L", b"", b"", bits)


# -- make_credential ------------------------------------------------------------------------


def test_round_trip_and_wire_layout() -> None:
    secret = os.urandom(32)
    credential_blob, encrypted_secret = make_credential(EK_KEY.public_key(), AK_NAME, secret)
    # TPM2B_ID_OBJECT: u16(2 + 32 + 34) || u16(32) || HMAC || encIdentity(2 + 32)
    assert len(credential_blob) == 2 + 2 + 32 + 2 + 32
    assert credential_blob[:4] == bytes.fromhex("0044 0020")
    # TPM2B_ENCRYPTED_SECRET: u16(256) || RSA-OAEP ciphertext
    assert len(encrypted_secret) == 2 + 256
    assert encrypted_secret[:2] == bytes.fromhex("0100")
    assert activate(EK_KEY, AK_NAME, credential_blob, encrypted_secret) == secret


def test_same_layout_and_semantics_as_tpm2_pytss() -> None:
    secret = os.urandom(32)
    ours = make_credential(EK_KEY.public_key(), AK_NAME, secret)
    blob, enc = pytss_make_credential(ek_public(EK_KEY.public_key()), secret, TPM2B_NAME(AK_NAME))
    theirs = (bytes(blob.marshal()), bytes(enc.marshal()))
    assert [len(x) for x in ours] == [len(x) for x in theirs]
    assert ours[0][:4] == theirs[0][:4]
    assert ours != theirs  # a fresh seed and OAEP randomness every time
    assert activate(EK_KEY, AK_NAME, *theirs) == secret
    assert activate(EK_KEY, AK_NAME, *ours) == secret


@pytest.mark.parametrize("size", [1, 16, 31, 32])
def test_secret_sizes(size: int) -> None:
    secret = os.urandom(size)
    blob, enc = make_credential(EK_KEY.public_key(), AK_NAME, secret)
    assert len(blob) == 2 + 2 + 32 + 2 + size
    assert activate(EK_KEY, AK_NAME, blob, enc) == secret


def test_credential_is_bound_to_the_ak_name_and_the_ek() -> None:
    blob, enc = make_credential(EK_KEY.public_key(), AK_NAME, b"s" * 32)
    other_name = AK_NAME[:-1] + bytes([AK_NAME[-1] ^ 1])
    with pytest.raises(ActivationError):
        activate(EK_KEY, other_name, blob, enc)
    with pytest.raises(ValueError, match="Decryption failed"):
        activate(rsa.generate_private_key(65537, 2048), AK_NAME, blob, enc)
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(ActivationError):
        activate(EK_KEY, AK_NAME, tampered, enc)


def test_identity_label_is_the_specs() -> None:
    assert IDENTITY_LABEL == b"IDENTITY\x00"


def test_ecc_and_other_size_eks_are_refused_by_name() -> None:
    ecc_ek = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(ValueError, match="ECC EKs are not supported yet"):
        make_credential(ecc_ek, AK_NAME, b"s" * 32)  # type: ignore[arg-type]
    rsa_3072 = rsa.generate_private_key(65537, 3072).public_key()
    with pytest.raises(ValueError, match="RSA 3072; only RSA 2048"):
        make_credential(rsa_3072, AK_NAME, b"s" * 32)


@pytest.mark.parametrize(
    "name",
    [b"", AK_NAME[:-1], AK_NAME + b"\x00", b"\x00\x04" + AK_NAME[2:], b"\x40\x00\x00\x07"],
)
def test_ak_name_must_be_a_sha256_name(name: bytes) -> None:
    with pytest.raises(ValueError, match="ak_name is not a SHA-256 TPM Name"):
        make_credential(EK_KEY.public_key(), name, b"s" * 32)


@pytest.mark.parametrize("size", [0, 33, 64])
def test_secret_must_be_1_to_32_bytes(size: int) -> None:
    with pytest.raises(ValueError, match=f"1 to 32 bytes, not {size}"):
        make_credential(EK_KEY.public_key(), AK_NAME, bytes(size))
