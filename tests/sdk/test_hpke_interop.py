"""Interop of the hazmat HPKE with pyca/cryptography's own HPKE, both directions.

cryptography's single-shot ``Suite.encrypt`` emits ``enc || ct`` (65 + len(pt) + 16
bytes for P-256) with empty AAD; these tests pin that wire format too.
"""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives import hpke as crypto_hpke
from cryptography.hazmat.primitives.asymmetric import ec

from edgeseal.sdk.errors import EnvelopeError
from edgeseal.sdk.hazmat import hpke

AEADS = [
    (crypto_hpke.AEAD.AES_128_GCM, hpke.AEAD_AES_128_GCM),
    (crypto_hpke.AEAD.AES_256_GCM, hpke.AEAD_AES_256_GCM),
    (crypto_hpke.AEAD.CHACHA20_POLY1305, hpke.AEAD_CHACHA20_POLY1305),
]


def _suite(aead: crypto_hpke.AEAD) -> crypto_hpke.Suite:
    return crypto_hpke.Suite(crypto_hpke.KEM.P256, crypto_hpke.KDF.HKDF_SHA256, aead)


@pytest.mark.parametrize(("crypto_aead", "aead_id"), AEADS)
@pytest.mark.parametrize("info", [b"", b"edgeseal envelope v1\x00" + bytes(range(32))])
@pytest.mark.parametrize("size", [0, 32, 1000])
def test_cryptography_seals_we_open(
    crypto_aead: crypto_hpke.AEAD, aead_id: int, info: bytes, size: int
) -> None:
    sk_r = ec.generate_private_key(ec.SECP256R1())
    plaintext = os.urandom(size)
    sealed = _suite(crypto_aead).encrypt(plaintext, sk_r.public_key(), info)
    assert len(sealed) == hpke.N_ENC + size + hpke.N_T
    opened = hpke.single_shot_open(
        sealed,
        sk_r.public_key(),
        lambda peer: sk_r.exchange(ec.ECDH(), peer),
        info=info,
        aead_id=aead_id,
    )
    assert opened == plaintext


@pytest.mark.parametrize(("crypto_aead", "aead_id"), AEADS)
def test_we_seal_cryptography_opens(crypto_aead: crypto_hpke.AEAD, aead_id: int) -> None:
    sk_r = ec.generate_private_key(ec.SECP256R1())
    info = b"interop"
    plaintext = os.urandom(48)
    enc, context = hpke.setup_base_s(
        sk_r.public_key(), info, aead_id, ec.generate_private_key(ec.SECP256R1())
    )
    sealed = enc + context.seal(b"", plaintext)
    assert _suite(crypto_aead).decrypt(sealed, sk_r, info) == plaintext


def test_cryptography_ciphertext_does_not_open_under_another_suite() -> None:
    sk_r = ec.generate_private_key(ec.SECP256R1())
    sealed = _suite(crypto_hpke.AEAD.AES_256_GCM).encrypt(b"k" * 32, sk_r.public_key(), b"i")
    with pytest.raises(EnvelopeError, match="envelope failed authentication"):
        hpke.single_shot_open(
            sealed,
            sk_r.public_key(),
            lambda peer: sk_r.exchange(ec.ECDH(), peer),
            info=b"i",
            aead_id=hpke.AEAD_CHACHA20_POLY1305,
        )
