"""The EK CAs the server trusts, and the check of a TPM's EK certificate against them.

A TPM's endorsement key (EK) comes with a certificate from its vendor's CA;
checking it is how the server knows that an enrolling device holds a genuine
TPM (for emulated devices: swtpm's local CA of the test fleet, see
``edgeseal.hardware.localca``). The operator puts the CA certificates, roots
and intermediates, in ``DIR/ek-ca/*.pem`` with ``edgeseal-server ek-ca add``;
every certificate there is a trust anchor *and* a candidate intermediate,
because a device sends only its EK certificate.

The chain is checked with ``cryptography.x509.verification``: WebPKI rules
for the CA certificates, a permissive policy for the EK certificate itself.
EK certificates carry the TCG EK EKU (2.23.133.8.1), not clientAuth, an
empty subject and a critical SAN of TPM manufacturer attributes (TCG EK
Credential Profile 2.5, 3.2), all of which the WebPKI end-entity policy
refuses. Only RSA 2048 EKs are supported (template L-1): the credential of
the enrollment handshake is made with RSA-OAEP.

:func:`verify_ek_certificate` is pure (bytes, certificates and a time in,
a key out, or it raises); the directory functions do the I/O.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import verification

from edgeseal.ota_server.service_errors import BadRequestError, ConfigError, ForbiddenError
from edgeseal.sdk.files import atomic_write

logger = logging.getLogger(__name__)

#: Largest EK certificate accepted (DER). Real ones are 1-2 KiB.
MAX_EK_CERTIFICATE = 16 * 1024
#: Largest CA file read, and how many of them ``DIR/ek-ca`` may hold.
MAX_CA_FILE = 256 * 1024
MAX_CA_FILES = 256
EK_RSA_BITS = 2048


class UntrustedEkError(ForbiddenError):
    """The EK certificate does not chain to a trusted EK CA (or none is trusted)."""

    code = "ek-untrusted"


def verify_ek_certificate(
    der: bytes, cas: Sequence[x509.Certificate], *, now: datetime
) -> tuple[x509.Certificate, rsa.RSAPublicKey]:
    """The EK certificate and its RSA 2048 public key, once its chain checks out at ``now``.

    Raises :class:`~edgeseal.ota_server.service_errors.BadRequestError` for a
    certificate that is malformed, too large or not RSA 2048, and
    :class:`UntrustedEkError` when it does not chain to one of ``cas``.
    """
    if len(der) > MAX_EK_CERTIFICATE:
        raise BadRequestError(
            f"the EK certificate is larger than {MAX_EK_CERTIFICATE} bytes", field="ek_certificate"
        )
    try:
        cert = x509.load_der_x509_certificate(der)
        public = cert.public_key()
    except ValueError:
        raise BadRequestError(
            "the EK certificate is not a DER X.509 certificate", field="ek_certificate"
        ) from None
    if isinstance(public, ec.EllipticCurvePublicKey):
        raise BadRequestError(
            f"the EK is ECC {public.curve.name}: ECC EKs are not supported yet; "
            "send the RSA 2048 EK certificate (NV index 0x01C00002)",
            field="ek_certificate",
        )
    if not isinstance(public, rsa.RSAPublicKey) or public.key_size != EK_RSA_BITS:
        raise BadRequestError(
            "the EK must be an RSA 2048 key (TCG EK template L-1)", field="ek_certificate"
        )
    if not cas:
        raise UntrustedEkError(
            "the server trusts no EK CA yet, so it cannot check the EK certificate: add the "
            "TPM vendor's CA certificates with `edgeseal-server ek-ca add`"
        )
    verifier = (
        verification.PolicyBuilder()
        .store(verification.Store(list(cas)))
        .time(now)
        .extension_policies(
            ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(),
            ee_policy=verification.ExtensionPolicy.permit_all(),
        )
        .build_client_verifier()
    )
    try:
        verifier.verify(cert, list(cas))
    except verification.VerificationError as exc:
        raise UntrustedEkError(
            f"the EK certificate does not chain to a trusted EK CA ({str(exc)[:200]})"
        ) from None
    return cert, public


def certificate_sha256(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


# --- the CA directory --------------------------------------------------------------------------


def parse_ca_certificates(pem: bytes, *, source: str) -> list[x509.Certificate]:
    """The certificates of a PEM file, each required to be a CA certificate."""
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise ConfigError(f"{source} holds no PEM certificate") from None
    for cert in certs:
        try:
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        try:
            usage: x509.KeyUsage | None = cert.extensions.get_extension_for_class(
                x509.KeyUsage
            ).value
        except x509.ExtensionNotFound:
            usage = None
        if constraints is None or not constraints.ca or (usage and not usage.key_cert_sign):
            raise ConfigError(
                f"{source}: {cert.subject.rfc4514_string() or '(empty subject)'} is not a CA "
                "certificate (it needs basicConstraints CA:TRUE and keyCertSign)"
            )
    return certs


def add_ek_cas(directory: Path, pem: bytes, *, source: str) -> list[x509.Certificate]:
    """Check the CA certificates in ``pem`` and store each as ``<sha256>.pem`` in ``directory``."""
    certs = parse_ca_certificates(pem, source=source)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    present = len(list(directory.glob("*.pem")))
    for cert in certs:
        der = cert.public_bytes(serialization.Encoding.DER)
        path = directory / f"{certificate_sha256(der)}.pem"
        if not path.exists():
            if present >= MAX_CA_FILES:
                raise ConfigError(f"{directory} already holds {MAX_CA_FILES} EK CA certificates")
            present += 1
        atomic_write(path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
        logger.info("trusting EK CA %s", cert.subject.rfc4514_string())
    return certs


def load_ek_cas(directory: Path) -> list[x509.Certificate]:
    """Every certificate in ``directory/*.pem`` (none when the directory does not exist)."""
    if not directory.is_dir():
        return []
    files = sorted(directory.glob("*.pem"))
    if len(files) > MAX_CA_FILES:
        raise ConfigError(f"{directory} holds more than {MAX_CA_FILES} EK CA files")
    certs: list[x509.Certificate] = []
    for path in files:
        try:
            with path.open("rb") as handle:
                data = handle.read(MAX_CA_FILE + 1)
        except OSError as exc:
            raise ConfigError(f"cannot read EK CA file {path}: {exc.strerror}") from None
        if len(data) > MAX_CA_FILE:
            raise ConfigError(f"EK CA file {path} is larger than {MAX_CA_FILE} bytes")
        try:
            certs.extend(x509.load_pem_x509_certificates(data))
        except ValueError:
            raise ConfigError(f"EK CA file {path} holds no PEM certificate") from None
    return certs
