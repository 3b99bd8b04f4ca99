"""Key envelopes: a release's content key sealed to one device with RFC 9180 HPKE.

Suite: base mode, DHKEM(P-256, HKDF-SHA256) (0x0010), HKDF-SHA256 (0x0001),
AES-256-GCM (0x0002). The server seals with ``cryptography``'s HPKE; the
device opens with :mod:`edgeseal.sdk.hazmat.hpke`, whose Diffie-Hellman is
done by a :class:`Recipient` - on a device, the TPM's ECDH_ZGen, so the
device's private key never leaves the TPM.

Wire format v1 (integers big-endian), exactly ``ENVELOPE_SIZE`` = 129 bytes::

    offset  size  field
    0       8     magic b"ESEALENV"
    8       2     envelope format version (1)
    10      2     kem_id  0x0010
    12      2     kdf_id  0x0001
    14      2     aead_id 0x0002
    16      65    enc: the ephemeral public key, uncompressed SEC1
    81      48    ct: the 32-byte content key + 16-byte tag

The HPKE ``info`` is ``b"edgeseal envelope v1\\x00" || SHA-256(authenticated
header of the sealed model)``, so an envelope opens only for the one sealed
model it was made for: an envelope of release 7 cannot unlock release 8, and
a relabelled header changes the digest. (The suite ids are bound by HPKE's own
key schedule; the recipient's public key by DHKEM's kem_context.)
"""

from __future__ import annotations

import logging
import struct
from typing import Protocol, runtime_checkable

from cryptography.hazmat.primitives import hpke as crypto_hpke
from cryptography.hazmat.primitives.asymmetric import ec

from edgeseal.sdk.errors import EnvelopeError
from edgeseal.sdk.hazmat import hpke
from edgeseal.sdk.hazmat.format import SealedModelHeader
from edgeseal.sdk.hazmat.keys import CONTENT_KEY_SIZE, ContentKey

logger = logging.getLogger(__name__)

ENVELOPE_MAGIC = b"ESEALENV"
ENVELOPE_VERSION = 1
SUITE = (hpke.KEM_P256_HKDF_SHA256, hpke.KDF_HKDF_SHA256, hpke.AEAD_AES_256_GCM)
_PREFIX = struct.Struct(">8sHHHH")
ENVELOPE_SIZE = _PREFIX.size + hpke.N_ENC + CONTENT_KEY_SIZE + hpke.N_T  # 129
#: Largest input even looked at; anything bigger is refused unread.
MAX_ENVELOPE_SIZE = 4096
INFO_LABEL = b"edgeseal envelope v1\x00"

_SUITE_TEXT = (
    "kem 0x0010 DHKEM(P-256, HKDF-SHA256), kdf 0x0001 HKDF-SHA256, aead 0x0002 AES-256-GCM"
)


@runtime_checkable
class Recipient(Protocol):
    """A holder of a P-256 private key that can do one thing with it: ECDH.

    On a device this is the TPM decryption key (TPM2_ECDH_ZGen); the
    private key never leaves the TPM. :class:`SoftwareRecipient` is the
    software stand-in for the server and tests.
    """

    def public_key(self) -> ec.EllipticCurvePublicKey:
        """The recipient's P-256 public key (pkR)."""
        ...

    def ecdh(self, peer: ec.EllipticCurvePublicKey) -> bytes:
        """DH(skR, peer): the 32-byte X coordinate of skR * peer."""
        ...


class SoftwareRecipient:
    """A :class:`Recipient` whose private key is in process memory. Not for devices."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey) -> None:
        if not isinstance(private_key.curve, ec.SECP256R1):
            raise EnvelopeError("a recipient key must be on P-256", field="recipient")
        self._private_key = private_key

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._private_key.public_key()

    def ecdh(self, peer: ec.EllipticCurvePublicKey) -> bytes:
        return self._private_key.exchange(ec.ECDH(), peer)

    def __repr__(self) -> str:
        return "SoftwareRecipient(<private key>)"


def envelope_info(header: SealedModelHeader) -> bytes:
    """The HPKE ``info`` binding an envelope to one sealed model."""
    return INFO_LABEL + header.digest


def seal_envelope(
    content_key: ContentKey,
    recipient_public_key: ec.EllipticCurvePublicKey,
    header: SealedModelHeader,
) -> bytes:
    """Seal ``content_key`` to one device's P-256 key, bound to ``header``'s sealed model."""
    if not isinstance(recipient_public_key, ec.EllipticCurvePublicKey) or not isinstance(
        recipient_public_key.curve, ec.SECP256R1
    ):
        raise EnvelopeError("the recipient key must be a P-256 public key", field="recipient")
    suite = crypto_hpke.Suite(
        crypto_hpke.KEM.P256, crypto_hpke.KDF.HKDF_SHA256, crypto_hpke.AEAD.AES_256_GCM
    )
    enc_and_ct = suite.encrypt(
        content_key.secret_bytes(), recipient_public_key, envelope_info(header)
    )
    envelope = _PREFIX.pack(ENVELOPE_MAGIC, ENVELOPE_VERSION, *SUITE) + enc_and_ct
    if len(envelope) != ENVELOPE_SIZE:  # pragma: no cover - would mean cryptography changed
        raise EnvelopeError(f"sealed envelope is {len(envelope)} bytes, not {ENVELOPE_SIZE}")
    return envelope


def parse_envelope(envelope: bytes) -> tuple[bytes, bytes]:
    """Validate an envelope's framing; return ``(enc, ct)``. No key involved."""
    size = len(envelope)
    if size > MAX_ENVELOPE_SIZE:
        raise EnvelopeError(
            f"envelope is {size} bytes; the maximum is {MAX_ENVELOPE_SIZE}", field="size"
        )
    data = bytes(envelope)
    if data[: len(ENVELOPE_MAGIC)] != ENVELOPE_MAGIC[:size]:
        raise EnvelopeError(
            f"not an edgeseal envelope: it does not start with {ENVELOPE_MAGIC!r}", field="magic"
        )
    if size < _PREFIX.size:
        raise EnvelopeError(f"envelope is truncated: {size} of {ENVELOPE_SIZE} bytes", field="size")
    _magic, version, kem_id, kdf_id, aead_id = _PREFIX.unpack_from(data)
    if version != ENVELOPE_VERSION:
        raise EnvelopeError(
            f"unsupported envelope format version {version}; "
            f"this edgeseal reads version {ENVELOPE_VERSION}",
            field="version",
        )
    if (kem_id, kdf_id, aead_id) != SUITE:
        raise EnvelopeError(
            f"unsupported HPKE suite kem 0x{kem_id:04x}, kdf 0x{kdf_id:04x}, "
            f"aead 0x{aead_id:04x}; this edgeseal reads {_SUITE_TEXT}",
            field="suite",
        )
    if size != ENVELOPE_SIZE:
        raise EnvelopeError(
            f"envelope is {size} bytes; a version {ENVELOPE_VERSION} envelope is exactly "
            f"{ENVELOPE_SIZE} bytes",
            field="size",
        )
    body = data[_PREFIX.size :]
    return body[: hpke.N_ENC], body[hpke.N_ENC :]


def open_envelope(envelope: bytes, recipient: Recipient, header: SealedModelHeader) -> ContentKey:
    """Open an envelope with ``recipient``'s key; return the content key of ``header``'s model.

    Raises :class:`EnvelopeError`: with a specific message for framing
    problems, and with one opaque message ("envelope failed authentication")
    whether the envelope was tampered with, made for another device, or made
    for another sealed model. Errors raised by ``recipient.ecdh`` (a TPM
    refusing, for example) propagate unchanged.
    """
    enc, ciphertext = parse_envelope(envelope)
    pk_r = recipient.public_key()
    if not isinstance(pk_r.curve, ec.SECP256R1):
        raise EnvelopeError("the recipient's key is not on P-256", field="recipient")
    context = hpke.setup_base_r(
        enc, pk_r, recipient.ecdh, envelope_info(header), hpke.AEAD_AES_256_GCM
    )
    try:
        key = context.open(b"", ciphertext)
    except EnvelopeError:
        # Still one opaque message: which of the three it was is not knowable.
        raise EnvelopeError(
            "envelope failed authentication: it was made for another device or for "
            "another sealed model, or it was modified"
        ) from None
    logger.debug("opened envelope for sealed model %s v%d", header.family, header.version)
    return ContentKey(key)
