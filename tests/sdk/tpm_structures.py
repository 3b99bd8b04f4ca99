"""TPM 2.0 structures built with tpm2-pytss, the oracle the pure sdk parsers are tested against.

tpm2-pytss marshals with tpm2-tss's own MU library, so these bytes are what a
TSS (and a TPM) produces; the sdk never imports it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from tpm2_pytss.constants import TPM2_GENERATED, TPM2_ST, TPMA_OBJECT
from tpm2_pytss.types import (
    TPM2B_DATA,
    TPM2B_DIGEST,
    TPM2B_NAME,
    TPM2B_PUBLIC,
    TPML_PCR_SELECTION,
    TPMS_ATTEST,
    TPMS_CLOCK_INFO,
    TPMT_PUBLIC,
)

A = TPMA_OBJECT
#: The contract's AK attributes: fixedTPM|fixedParent|sensitiveDataOrigin|userWithAuth|
#: restricted|sign|noDA.
AK_ATTRIBUTES = (
    A.FIXEDTPM
    | A.FIXEDPARENT
    | A.SENSITIVEDATAORIGIN
    | A.USERWITHAUTH
    | A.RESTRICTED
    | A.SIGN_ENCRYPT
    | A.NODA
)
#: TCG EK Credential Profile template L-1 (RSA 2048).
EK_ATTRIBUTES = (
    A.FIXEDTPM
    | A.FIXEDPARENT
    | A.SENSITIVEDATAORIGIN
    | A.ADMINWITHPOLICY
    | A.RESTRICTED
    | A.DECRYPT
)
EK_POLICY = bytes.fromhex("837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa")


def ecc_public(
    key: ec.EllipticCurvePublicKey,
    *,
    template: str = "ecc256:ecdsa-sha256:null",
    attributes: int = AK_ATTRIBUTES,
) -> TPMT_PUBLIC:
    """A TPMT_PUBLIC for ``key`` (P-256) with the given tpm2-tools style template."""
    public = TPM2B_PUBLIC.parse(template, objectAttributes=attributes).publicArea
    numbers = key.public_numbers()
    public.unique.ecc.x = numbers.x.to_bytes(32, "big")
    public.unique.ecc.y = numbers.y.to_bytes(32, "big")
    return public


def ak_public_bytes(
    key: ec.EllipticCurvePublicKey,
    *,
    template: str = "ecc256:ecdsa-sha256:null",
    attributes: int = AK_ATTRIBUTES,
) -> bytes:
    """The marshaled TPMT_PUBLIC of an AK (by default exactly as the contract describes it)."""
    return bytes(ecc_public(key, template=template, attributes=attributes).marshal())


def ek_public(key: rsa.RSAPublicKey) -> TPMT_PUBLIC:
    """A TPMT_PUBLIC of an RSA 2048 EK, template L-1 (exponent 0, AES-128-CFB, EK policy)."""
    public = TPM2B_PUBLIC.parse(
        "rsa2048:aes128cfb", objectAttributes=EK_ATTRIBUTES, authPolicy=EK_POLICY
    ).publicArea
    public.unique.rsa = key.public_numbers().n.to_bytes(256, "big")
    return public


def quote_attest(
    *,
    extra_data: bytes = b"n" * 32,
    selection: str = "sha256:0,1,7",
    pcr_digest: bytes = bytes(32),
    qualified_signer: bytes = b"\x00\x0b" + bytes(32),
    clock: int = 123456,
    reset_count: int = 3,
    restart_count: int = 1,
    safe: int = 1,
    firmware_version: int = 0x0001_0002_0003_0004,
    attest_type: int = TPM2_ST.ATTEST_QUOTE,
) -> bytes:
    """A marshaled TPMS_ATTEST of a quote."""
    attest = TPMS_ATTEST()
    attest.magic = TPM2_GENERATED.VALUE
    attest.type = attest_type
    attest.qualifiedSigner = TPM2B_NAME(qualified_signer)
    attest.extraData = TPM2B_DATA(extra_data)
    attest.clockInfo = TPMS_CLOCK_INFO(
        clock=clock, resetCount=reset_count, restartCount=restart_count, safe=safe
    )
    attest.firmwareVersion = firmware_version
    attest.attested.quote.pcrSelect = TPML_PCR_SELECTION.parse(selection)
    attest.attested.quote.pcrDigest = TPM2B_DIGEST(pcr_digest)
    return bytes(attest.marshal())


def pcr_values(indices: tuple[int, ...] = (0, 1, 7)) -> dict[int, bytes]:
    return {i: hashlib.sha256(b"pcr %d" % i).digest() for i in indices}


def digest_of(pcrs: Mapping[int, bytes]) -> bytes:
    """pcrDigest computed here independently: SHA-256 over the values in index order."""
    return hashlib.sha256(b"".join(pcrs[i] for i in sorted(pcrs))).digest()


def sign(key: ec.EllipticCurvePrivateKey, attest: bytes) -> bytes:
    """What TPM2_Quote with an ECDSA/SHA-256 AK returns, as DER."""
    return key.sign(attest, ec.ECDSA(hashes.SHA256()))
