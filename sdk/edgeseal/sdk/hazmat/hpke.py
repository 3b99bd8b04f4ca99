"""RFC 9180 HPKE, base mode, DHKEM(P-256, HKDF-SHA256) + HKDF-SHA256, with a pluggable DH.

Why our own key schedule when ``cryptography`` has HPKE: on a device the
recipient's private key lives in the TPM, which only offers the raw
Diffie-Hellman (TPM2_ECDH_ZGen). The receiver side therefore takes the DH as
a callable and runs the rest of RFC 9180 here. The sender side takes the
ephemeral key as an argument (randomness injected), which makes the RFC's
known-answer vectors testable; production senders use ``cryptography``.

The AEAD is a parameter so that RFC 9180 Appendix A.3 (AES-128-GCM) and A.5
(ChaCha20-Poly1305) test this exact key schedule; edgeseal envelopes use
AES-256-GCM (0x0002). Section numbers below are RFC 9180's.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from edgeseal.sdk.errors import EnvelopeError

logger = logging.getLogger(__name__)

MODE_BASE = 0x00
KEM_P256_HKDF_SHA256 = 0x0010
KDF_HKDF_SHA256 = 0x0001
AEAD_AES_128_GCM = 0x0001
AEAD_AES_256_GCM = 0x0002
AEAD_CHACHA20_POLY1305 = 0x0003

N_SECRET = 32  # Nsecret of DHKEM(P-256, HKDF-SHA256), section 7.1
N_ENC = 65  # Nenc = Npk: an uncompressed SEC1 point
N_DH = 32  # DH output: the X coordinate
N_H = 32  # Nh of HKDF-SHA256, section 7.2
N_N = 12  # Nn of every AEAD here, section 7.3
N_T = 16  # Nt

_KEM_SUITE_ID = b"KEM" + KEM_P256_HKDF_SHA256.to_bytes(2, "big")
_VERSION_LABEL = b"HPKE-v1"

#: Diffie-Hellman with the recipient's private key: peer public key -> X coordinate.
DiffieHellman = Callable[[ec.EllipticCurvePublicKey], bytes]


@dataclass(frozen=True)
class _Aead:
    key_size: int
    factory: Callable[[bytes], AESGCM | ChaCha20Poly1305]


_AEADS = {
    AEAD_AES_128_GCM: _Aead(16, AESGCM),
    AEAD_AES_256_GCM: _Aead(32, AESGCM),
    AEAD_CHACHA20_POLY1305: _Aead(32, ChaCha20Poly1305),
}


def _hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    return hmac.digest(salt, ikm, "sha256")  # RFC 5869: an empty salt is HMAC's zero key


def _hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    if length > 255 * N_H:
        raise ValueError("HKDF-Expand length too large")
    out = b""
    block = b""
    counter = 1
    while len(out) < length:
        block = hmac.digest(prk, block + info + bytes([counter]), "sha256")
        out += block
        counter += 1
    return out[:length]


def labeled_extract(suite_id: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    """LabeledExtract, section 4."""
    return _hkdf_extract(salt, _VERSION_LABEL + suite_id + label + ikm)


def labeled_expand(suite_id: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    """LabeledExpand, section 4."""
    labeled_info = length.to_bytes(2, "big") + _VERSION_LABEL + suite_id + label + info
    return _hkdf_expand(prk, labeled_info, length)


def hpke_suite_id(aead_id: int) -> bytes:
    """``"HPKE" || kem_id || kdf_id || aead_id``, section 5.1."""
    return (
        b"HPKE"
        + KEM_P256_HKDF_SHA256.to_bytes(2, "big")
        + KDF_HKDF_SHA256.to_bytes(2, "big")
        + aead_id.to_bytes(2, "big")
    )


def serialize_public_key(key: ec.EllipticCurvePublicKey) -> bytes:
    """SerializePublicKey, section 7.1.1: uncompressed SEC1 point."""
    return key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


def deserialize_public_key(data: bytes) -> ec.EllipticCurvePublicKey:
    """DeserializePublicKey, section 7.1.1, with the validation of section 7.1.4."""
    if len(data) != N_ENC or data[0] != 0x04:
        raise EnvelopeError("encapsulated key is not an uncompressed P-256 point", field="enc")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), data)
    except ValueError:
        raise EnvelopeError("encapsulated key is not a point on P-256", field="enc") from None


def _extract_and_expand(dh: bytes, kem_context: bytes) -> bytes:
    """ExtractAndExpand of DHKEM, section 4.1."""
    eae_prk = labeled_extract(_KEM_SUITE_ID, b"", b"eae_prk", dh)
    return labeled_expand(_KEM_SUITE_ID, eae_prk, b"shared_secret", kem_context, N_SECRET)


def encap(
    pk_r: ec.EllipticCurvePublicKey, ephemeral: ec.EllipticCurvePrivateKey
) -> tuple[bytes, bytes]:
    """Encap(pkR) with an injected ephemeral key, section 4.1. Returns (shared_secret, enc)."""
    dh = ephemeral.exchange(ec.ECDH(), pk_r)
    enc = serialize_public_key(ephemeral.public_key())
    return _extract_and_expand(dh, enc + serialize_public_key(pk_r)), enc


def decap(enc: bytes, pk_r: ec.EllipticCurvePublicKey, dh_with_sk_r: DiffieHellman) -> bytes:
    """Decap(enc, skR), section 4.1, with DH(skR, pkE) done by ``dh_with_sk_r``."""
    pk_e = deserialize_public_key(enc)
    dh = dh_with_sk_r(pk_e)
    if len(dh) != N_DH:
        raise EnvelopeError(
            f"the recipient's Diffie-Hellman returned {len(dh)} bytes, not the {N_DH}-byte "
            "X coordinate",
            field="ecdh",
        )
    if dh == bytes(N_DH):
        raise EnvelopeError("the recipient's Diffie-Hellman returned zero", field="ecdh")
    return _extract_and_expand(dh, enc + serialize_public_key(pk_r))


@dataclass(frozen=True)
class KeySchedule:
    """Outputs of KeyScheduleS/R for mode_base (section 5.1). Never printed."""

    aead_id: int
    key_schedule_context: bytes = field(repr=False)
    secret: bytes = field(repr=False)
    key: bytes = field(repr=False)
    base_nonce: bytes = field(repr=False)
    exporter_secret: bytes = field(repr=False)


def key_schedule_base(shared_secret: bytes, info: bytes, aead_id: int) -> KeySchedule:
    """KeySchedule(mode_base, shared_secret, info, psk="", psk_id=""), section 5.1."""
    if aead_id not in _AEADS:
        raise EnvelopeError(f"unsupported HPKE AEAD id 0x{aead_id:04x}", field="aead_id")
    suite_id = hpke_suite_id(aead_id)
    psk_id_hash = labeled_extract(suite_id, b"", b"psk_id_hash", b"")
    info_hash = labeled_extract(suite_id, b"", b"info_hash", info)
    context = bytes([MODE_BASE]) + psk_id_hash + info_hash
    secret = labeled_extract(suite_id, shared_secret, b"secret", b"")
    return KeySchedule(
        aead_id=aead_id,
        key_schedule_context=context,
        secret=secret,
        key=labeled_expand(suite_id, secret, b"key", context, _AEADS[aead_id].key_size),
        base_nonce=labeled_expand(suite_id, secret, b"base_nonce", context, N_N),
        exporter_secret=labeled_expand(suite_id, secret, b"exp", context, N_H),
    )


class Context:
    """An HPKE encryption context (section 5.2): key, base nonce and sequence number."""

    def __init__(self, schedule: KeySchedule) -> None:
        self._aead = _AEADS[schedule.aead_id].factory(schedule.key)
        self._base_nonce = schedule.base_nonce
        self._seq = 0

    def compute_nonce(self, seq: int) -> bytes:
        """``base_nonce XOR I2OSP(seq, Nn)``."""
        if not 0 <= seq < 2 ** (8 * N_N) - 1:
            raise EnvelopeError("HPKE message limit reached", field="seq")
        mask = seq.to_bytes(N_N, "big")
        return bytes(a ^ b for a, b in zip(self._base_nonce, mask, strict=True))

    def seal(self, aad: bytes, plaintext: bytes) -> bytes:
        ciphertext = self._aead.encrypt(self.compute_nonce(self._seq), plaintext, aad)
        self._seq += 1
        return ciphertext

    def open(self, aad: bytes, ciphertext: bytes) -> bytes:
        """Open the next message; raises an opaque EnvelopeError if it does not authenticate."""
        try:
            plaintext = self._aead.decrypt(self.compute_nonce(self._seq), ciphertext, aad)
        except InvalidTag:
            logger.debug("HPKE open failed at sequence number %d", self._seq)
            raise EnvelopeError("envelope failed authentication") from None
        self._seq += 1
        return plaintext


def setup_base_r(
    enc: bytes,
    pk_r: ec.EllipticCurvePublicKey,
    dh_with_sk_r: DiffieHellman,
    info: bytes,
    aead_id: int,
) -> Context:
    """SetupBaseR(enc, skR, info), section 5.1.1, with the DH delegated."""
    return Context(key_schedule_base(decap(enc, pk_r, dh_with_sk_r), info, aead_id))


def setup_base_s(
    pk_r: ec.EllipticCurvePublicKey,
    info: bytes,
    aead_id: int,
    ephemeral: ec.EllipticCurvePrivateKey,
) -> tuple[bytes, Context]:
    """SetupBaseS(pkR, info), section 5.1.1, with the ephemeral key injected. Returns (enc, ctx)."""
    shared_secret, enc = encap(pk_r, ephemeral)
    return enc, Context(key_schedule_base(shared_secret, info, aead_id))


def single_shot_open(
    enc_and_ciphertext: bytes,
    pk_r: ec.EllipticCurvePublicKey,
    dh_with_sk_r: DiffieHellman,
    *,
    info: bytes,
    aead_id: int,
    aad: bytes = b"",
) -> bytes:
    """Open(enc, skR, info, aad, ct), section 6.1, on ``enc || ct`` as ``cryptography`` emits."""
    enc, ciphertext = enc_and_ciphertext[:N_ENC], enc_and_ciphertext[N_ENC:]
    if len(ciphertext) < N_T:
        raise EnvelopeError("HPKE ciphertext is shorter than its tag", field="ciphertext")
    return setup_base_r(enc, pk_r, dh_with_sk_r, info, aead_id).open(aad, ciphertext)
