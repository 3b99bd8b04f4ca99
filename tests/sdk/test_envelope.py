"""Key envelopes: content key sealed to one device, bound to one sealed model."""

from __future__ import annotations

import io
import pickle
import struct

import pytest
from cryptography.hazmat.primitives import hpke as crypto_hpke
from cryptography.hazmat.primitives.asymmetric import ec

from edgeseal.sdk.envelope import (
    ENVELOPE_SIZE,
    MAX_ENVELOPE_SIZE,
    Recipient,
    SoftwareRecipient,
    envelope_info,
    open_envelope,
    seal_envelope,
)
from edgeseal.sdk.errors import EnvelopeError
from edgeseal.sdk.hazmat.format import SealedModelHeader
from edgeseal.sdk.sealed import ContentKey, inspect_sealed_model, seal_model

OPAQUE = (
    "^envelope failed authentication: it was made for another device or for another sealed "
    "model, or it was modified$"
)


def _header(version: int = 1, family: str = "detector") -> SealedModelHeader:
    out = io.BytesIO()
    seal_model(io.BytesIO(b"model"), out, family=family, version=version, hardware=["rpi4"])
    out.seek(0)
    return inspect_sealed_model(out)


@pytest.fixture(scope="module")
def header() -> SealedModelHeader:
    return _header()


@pytest.fixture
def device() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


class ZGenRecipient:
    """Shaped like the TPM backend: ECDH_ZGen gives a point; we hand back its X."""

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        self._key = key
        self.calls = 0

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._key.public_key()

    def ecdh(self, peer: ec.EllipticCurvePublicKey) -> bytes:
        self.calls += 1
        return self._key.exchange(ec.ECDH(), peer)


def test_round_trip(header: SealedModelHeader, device: ec.EllipticCurvePrivateKey) -> None:
    key = ContentKey.generate()
    envelope = seal_envelope(key, device.public_key(), header)
    assert len(envelope) == ENVELOPE_SIZE == 129
    assert envelope[:8] == b"ESEALENV"
    assert struct.unpack(">HHHH", envelope[8:16]) == (1, 0x0010, 0x0001, 0x0002)
    assert open_envelope(envelope, SoftwareRecipient(device), header) == key


def test_recipient_protocol_with_a_tpm_shaped_backend(
    header: SealedModelHeader, device: ec.EllipticCurvePrivateKey
) -> None:
    recipient = ZGenRecipient(device)
    assert isinstance(recipient, Recipient)
    key = ContentKey.generate()
    assert open_envelope(seal_envelope(key, device.public_key(), header), recipient, header) == key
    assert recipient.calls == 1


def test_cryptography_opens_our_envelope_body(
    header: SealedModelHeader, device: ec.EllipticCurvePrivateKey
) -> None:
    key = ContentKey.generate()
    envelope = seal_envelope(key, device.public_key(), header)
    suite = crypto_hpke.Suite(
        crypto_hpke.KEM.P256, crypto_hpke.KDF.HKDF_SHA256, crypto_hpke.AEAD.AES_256_GCM
    )
    assert suite.decrypt(envelope[16:], device, envelope_info(header)) == key.secret_bytes()


def test_other_device_cannot_open(
    header: SealedModelHeader, device: ec.EllipticCurvePrivateKey
) -> None:
    envelope = seal_envelope(ContentKey.generate(), device.public_key(), header)
    other = SoftwareRecipient(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(EnvelopeError, match=OPAQUE):
        open_envelope(envelope, other, header)


def test_envelope_of_one_release_does_not_open_another(
    header: SealedModelHeader, device: ec.EllipticCurvePrivateKey
) -> None:
    envelope = seal_envelope(ContentKey.generate(), device.public_key(), header)
    for other in (_header(version=2), _header(family="classifier")):
        with pytest.raises(EnvelopeError, match=OPAQUE):
            open_envelope(envelope, SoftwareRecipient(device), other)


def test_every_ciphertext_byte_is_authenticated(
    header: SealedModelHeader, device: ec.EllipticCurvePrivateKey
) -> None:
    envelope = seal_envelope(ContentKey.generate(), device.public_key(), header)
    recipient = SoftwareRecipient(device)
    for offset in range(16 + 65, ENVELOPE_SIZE):
        tampered = bytearray(envelope)
        tampered[offset] ^= 0x01
        with pytest.raises(EnvelopeError, match=OPAQUE):
            open_envelope(bytes(tampered), recipient, header)


def test_tampered_enc_is_refused(
    header: SealedModelHeader, device: ec.EllipticCurvePrivateKey
) -> None:
    envelope = seal_envelope(ContentKey.generate(), device.public_key(), header)
    recipient = SoftwareRecipient(device)
    for offset in range(16, 16 + 65):
        tampered = bytearray(envelope)
        tampered[offset] ^= 0x01
        with pytest.raises(EnvelopeError) as caught:
            open_envelope(bytes(tampered), recipient, header)
        assert caught.value.field in {"enc", None}


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda e: b"NOTANENV" + e[8:], "not an edgeseal envelope"),
        (lambda e: e[:8] + struct.pack(">H", 7) + e[10:], "unsupported envelope format version 7"),
        (
            lambda e: e[:10] + struct.pack(">H", 0x0011) + e[12:],
            "unsupported HPKE suite kem 0x0011",
        ),
        (lambda e: e[:12] + struct.pack(">H", 0x0003) + e[14:], "kdf 0x0003"),
        (lambda e: e[:14] + struct.pack(">H", 0x0003) + e[16:], "aead 0x0003"),
        (lambda e: e[:-1], "exactly 129 bytes"),
        (lambda e: e + b"\x00", "exactly 129 bytes"),
        (lambda e: e[:10], "truncated"),
        (lambda e: b"", "truncated"),
        (lambda e: e + bytes(MAX_ENVELOPE_SIZE), "the maximum is 4096"),
    ],
)
def test_malformed_envelopes_are_refused_by_name(
    header: SealedModelHeader, device: ec.EllipticCurvePrivateKey, mutate, message: str
) -> None:
    envelope = seal_envelope(ContentKey.generate(), device.public_key(), header)
    with pytest.raises(EnvelopeError, match=message):
        open_envelope(mutate(envelope), SoftwareRecipient(device), header)


def test_recipient_returning_a_point_instead_of_x_is_refused(
    header: SealedModelHeader, device: ec.EllipticCurvePrivateKey
) -> None:
    class PointRecipient(ZGenRecipient):
        def ecdh(self, peer: ec.EllipticCurvePublicKey) -> bytes:
            return b"\x04" + super().ecdh(peer) + bytes(32)

    envelope = seal_envelope(ContentKey.generate(), device.public_key(), header)
    with pytest.raises(EnvelopeError, match="not the 32-byte X coordinate"):
        open_envelope(envelope, PointRecipient(device), header)


def test_recipient_errors_propagate(
    header: SealedModelHeader, device: ec.EllipticCurvePrivateKey
) -> None:
    class TPMDown(ZGenRecipient):
        def ecdh(self, peer: ec.EllipticCurvePublicKey) -> bytes:
            raise ConnectionError("tpm unreachable")

    envelope = seal_envelope(ContentKey.generate(), device.public_key(), header)
    with pytest.raises(ConnectionError, match="tpm unreachable"):
        open_envelope(envelope, TPMDown(device), header)


def test_seal_refuses_non_p256_keys(header: SealedModelHeader) -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(EnvelopeError, match="P-256"):
        seal_envelope(ContentKey.generate(), p384.public_key(), header)
    with pytest.raises(EnvelopeError, match="P-256"):
        SoftwareRecipient(p384)


def test_secrets_never_repr(device: ec.EllipticCurvePrivateKey) -> None:
    key = ContentKey.generate()
    assert key.secret_bytes().hex() not in repr(key)
    assert repr(key) == str(key) == "ContentKey(<redacted>)"
    assert "private key" in repr(SoftwareRecipient(device))
    with pytest.raises(TypeError):
        pickle.dumps(key)
