"""A software stand-in for a device's TPM in the enrollment handshake, built from the contract.

Everything is computed here from docs/dev/attestation-contracts.md with
``struct`` and ``cryptography`` - not with the sdk's marshaling code under
test - so the server is checked against the contract's byte formats:

* :class:`EkCa` - a root and an intermediate CA that issue EK certificates
  shaped like swtpm's and TPM vendors' (empty subject, critical SAN of TPM
  manufacturer attributes, TCG EK EKU, no clientAuth);
* :class:`SoftTpm` - an RSA 2048 EK with its certificate and a P-256 AK:
  the AK's TPMT_PUBLIC, ActivateCredential (RSA-OAEP, KDFa, AES-128-CFB,
  outer HMAC) and quotes (TPMS_ATTEST signed with ECDSA/SHA-256); and, like
  an agent of this version, the PCR policy authority its finish names (none
  by default: ``"pcr_policy_authority": null``).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.decrepit.ciphers.modes import CFB
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.x509.oid import NameOID, ObjectIdentifier

#: fixedTPM | fixedParent | sensitiveDataOrigin | userWithAuth | noDA | restricted | sign
AK_ATTRIBUTES = 0x2 | 0x10 | 0x20 | 0x40 | 0x400 | 0x10000 | 0x40000
ALG_SHA256, ALG_ECC, ALG_NULL, ALG_ECDSA, NIST_P256 = 0x000B, 0x0023, 0x0010, 0x0018, 0x0003
TCG_EK_EKU = ObjectIdentifier("2.23.133.8.1")
TPM_MANUFACTURER = ObjectIdentifier("2.23.133.2.1")
TPM_MODEL = ObjectIdentifier("2.23.133.2.2")
TPM_VERSION = ObjectIdentifier("2.23.133.2.3")


def tpm2b(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


def pcr_values(indices: tuple[int, ...] = (0, 4, 9, 15), tag: bytes = b"boot") -> dict[int, bytes]:
    return {i: hashlib.sha256(tag + b" %d" % i).digest() for i in indices}


def pcrs_json(pcrs: Mapping[int, bytes]) -> dict[str, str]:
    return {str(i): v.hex() for i, v in sorted(pcrs.items())}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# --- certificates ---------------------------------------------------------------------------


def _ca_cert(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name = issuer[0].subject if issuer else subject
    issuer_key = issuer[1] if issuer else key
    usage = x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
        .sign(issuer_key, hashes.SHA256())
    )


@dataclass
class EkCa:
    """A TPM vendor's CA: a root and the intermediate that signs EK certificates."""

    name: str = "Test TPM Vendor"
    root_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    issuer_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )

    def __post_init__(self) -> None:
        self.root = _ca_cert(f"{self.name} Root CA", self.root_key, None)
        self.issuer = _ca_cert(f"{self.name} EK CA", self.issuer_key, (self.root, self.root_key))

    def pem(self) -> bytes:
        """Root then intermediate, as ``edgeseal-server ek-ca add`` takes them."""
        return b"".join(
            c.public_bytes(serialization.Encoding.PEM) for c in (self.root, self.issuer)
        )

    def root_pem(self) -> bytes:
        return self.root.public_bytes(serialization.Encoding.PEM)

    def issuer_pem(self) -> bytes:
        return self.issuer.public_bytes(serialization.Encoding.PEM)

    def issue_ek(self, public: rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> bytes:
        """A DER EK certificate shaped like the TCG EK Credential Profile's."""
        now = dt.datetime.now(dt.UTC)
        san = x509.DirectoryName(
            x509.Name(
                [
                    x509.NameAttribute(TPM_MANUFACTURER, "id:00001014"),
                    x509.NameAttribute(TPM_MODEL, "swtpm"),
                    x509.NameAttribute(TPM_VERSION, "id:20191023"),
                ]
            )
        )
        usage = x509.KeyUsage(
            digital_signature=False,
            content_commitment=False,
            key_encipherment=True,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=False,
            crl_sign=False,
            encipher_only=False,
            decipher_only=False,
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.issuer.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage, critical=True)
            .add_extension(x509.SubjectAlternativeName([san]), critical=True)
            .add_extension(x509.ExtendedKeyUsage([TCG_EK_EKU]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.issuer_key.public_key()),
                critical=False,
            )
            .sign(self.issuer_key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.DER)


# --- the TPM ----------------------------------------------------------------------------------


def ak_public_bytes(key: ec.EllipticCurvePublicKey, attributes: int = AK_ATTRIBUTES) -> bytes:
    """TPMT_PUBLIC of an ECC P-256 ECDSA/SHA-256 key (TPM 2.0 Part 2, 12.2.4)."""
    numbers = key.public_numbers()
    return (
        struct.pack(">HHI", ALG_ECC, ALG_SHA256, attributes)
        + tpm2b(b"")  # authPolicy
        + struct.pack(">H", ALG_NULL)  # symmetric
        + struct.pack(">HH", ALG_ECDSA, ALG_SHA256)  # scheme
        + struct.pack(">H", NIST_P256)
        + struct.pack(">H", ALG_NULL)  # kdf
        + tpm2b(numbers.x.to_bytes(32, "big"))
        + tpm2b(numbers.y.to_bytes(32, "big"))
    )


def tpm_name(public: bytes) -> bytes:
    return struct.pack(">H", ALG_SHA256) + hashlib.sha256(public).digest()


def kdfa(key: bytes, label: bytes, u: bytes, v: bytes, bits: int) -> bytes:
    out = b""
    i = 1
    while len(out) * 8 < bits:
        out += hmac.digest(
            key, struct.pack(">I", i) + label + b"\0" + u + v + struct.pack(">I", bits), "sha256"
        )
        i += 1
    return out[: bits // 8]


def quote_attest(nonce: bytes, pcrs: Mapping[int, bytes], signer: bytes = b"") -> bytes:
    """A TPMS_ATTEST of a quote over the SHA-256 bank (contract formula)."""
    bitmap = bytearray(3)
    for index in pcrs:
        bitmap[index // 8] |= 1 << (index % 8)
    digest = hashlib.sha256(b"".join(pcrs[i] for i in sorted(pcrs))).digest()
    return (
        struct.pack(">IH", 0xFF544347, 0x8018)
        + tpm2b(signer or tpm_name(b"signer"))
        + tpm2b(nonce)
        + struct.pack(">QIIB", 1234567, 5, 0, 1)
        + struct.pack(">Q", 0x20191023)
        + struct.pack(">IHB", 1, ALG_SHA256, 3)
        + bytes(bitmap)
        + tpm2b(digest)
    )


class CredentialRefusedError(Exception):
    """ActivateCredential's integrity check failed (TPM_RC_INTEGRITY)."""


@dataclass
class SoftTpm:
    """An EK (RSA 2048, certified by ``ca``) and an AK (P-256), in software."""

    ca: EkCa
    ek_key: rsa.RSAPrivateKey = field(default_factory=lambda: rsa.generate_private_key(65537, 2048))
    ak_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    ak_attributes: int = AK_ATTRIBUTES
    #: The public key of the authority that signs this device's PCR policies, if it has one.
    policy_authority: ec.EllipticCurvePublicKey | None = None

    def __post_init__(self) -> None:
        self.ek_certificate = self.ca.issue_ek(self.ek_key.public_key())

    @property
    def policy_authority_der(self) -> bytes | None:
        if self.policy_authority is None:
            return None
        return self.policy_authority.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @property
    def ak_public(self) -> bytes:
        return ak_public_bytes(self.ak_key.public_key(), self.ak_attributes)

    def activate_credential(self, credential_blob: bytes, encrypted_secret: bytes) -> bytes:
        """TPM2_ActivateCredential (Part 1, 24) with the EK's private key and the AK's Name."""
        (size,) = struct.unpack(">H", encrypted_secret[:2])
        seed = self.ek_key.decrypt(
            encrypted_secret[2 : 2 + size],
            padding.OAEP(
                mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=b"IDENTITY\0"
            ),
        )
        name = tpm_name(self.ak_public)
        (total,) = struct.unpack(">H", credential_blob[:2])
        body = credential_blob[2 : 2 + total]
        (hmac_size,) = struct.unpack(">H", body[:2])
        outer_hmac, enc_identity = body[2 : 2 + hmac_size], body[2 + hmac_size :]
        expected = hmac.digest(
            kdfa(seed, b"INTEGRITY", b"", b"", 256), enc_identity + name, "sha256"
        )
        if not hmac.compare_digest(expected, outer_hmac):
            raise CredentialRefusedError
        sym = kdfa(seed, b"STORAGE", name, b"", 128)
        plain = Cipher(algorithms.AES(sym), CFB(bytes(16))).decryptor().update(enc_identity)
        (secret_size,) = struct.unpack(">H", plain[:2])
        return plain[2 : 2 + secret_size]

    def quote(self, nonce: bytes, pcrs: Mapping[int, bytes]) -> tuple[bytes, bytes]:
        attest = quote_attest(nonce, pcrs, tpm_name(self.ak_public))
        return attest, self.ak_key.sign(attest, ec.ECDSA(hashes.SHA256()))

    def start_body(self, device_id: str) -> dict[str, Any]:
        return {
            "device_id": device_id,
            "ek_certificate": b64(self.ek_certificate),
            "ak_public": b64(self.ak_public),
        }

    def finish_body(
        self, challenge: Mapping[str, Any], pcrs: Mapping[int, bytes]
    ) -> dict[str, Any]:
        """What an honest device answers to a ``start`` answer (JSON in, JSON out)."""
        secret = self.activate_credential(
            base64.b64decode(challenge["credential_blob"]),
            base64.b64decode(challenge["encrypted_secret"]),
        )
        attest, signature = self.quote(bytes.fromhex(challenge["nonce"]), pcrs)
        authority = self.policy_authority_der
        return {
            "challenge_id": challenge["challenge_id"],
            "secret": b64(secret),
            "pcrs": pcrs_json(pcrs),
            "quote": {"attest": b64(attest), "signature": b64(signature)},
            "pcr_policy_authority": None if authority is None else b64(authority),
        }
