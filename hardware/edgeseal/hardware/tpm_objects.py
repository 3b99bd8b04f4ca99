"""TPM object templates, handles and conversions between tpm2-pytss and cryptography types.

Kept apart from :mod:`edgeseal.hardware.tpm` so that what the TPM is asked to
create (attributes, policies) can be read and reviewed in one place.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from tpm2_pytss.constants import (
    ESYS_TR,
    TPM2_ALG,
    TPM2_ECC,
    TPM2_NT,
    TPMA_NV,
    TPMA_OBJECT,
)
from tpm2_pytss.types import (
    TPM2B_ECC_POINT,
    TPM2B_NV_PUBLIC,
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE_CREATE,
    TPM2B_SENSITIVE_DATA,
    TPML_PCR_SELECTION,
    TPMS_ECC_POINT,
    TPMS_NV_PUBLIC,
    TPMS_PCR_SELECTION,
    TPMS_SENSITIVE_CREATE,
    TPMS_SIGNATURE_ECC,
    TPMT_PUBLIC,
    TPMT_SIGNATURE,
    TPMU_SIGNATURE,
)

from edgeseal.hardware.errors import TPMCommandError
from edgeseal.hardware.policy import (
    DIGEST_SIZE,
    PCR_SELECT_SIZE,
    authority_tpmt_public,
)

# TCG "Registry of Reserved TPM 2.0 Handles and Localities", 2.3.1: 0x81000002 is the
# ECC NIST P-256 storage root key. The device key sits beside it in the owner range.
SRK_HANDLE = 0x81000002
DEVICE_KEY_HANDLE = 0x81000100
# The same registry, 2.3.1: 0x81010000-0x8101FFFF holds endorsement-hierarchy keys.
AK_HANDLE = 0x81010100

# TCG EK Credential Profile 2.5, 2.2.1.5: EK certificate NV indices.
EK_CERT_INDICES = {
    0x01C00002: "RSA 2048",
    0x01C0000A: "ECC NIST P-256",
    0x01C00016: "ECC NIST P-384",
}
EK_RSA2048_CERT_INDEX = 0x01C00002
# TCG EK Credential Profile 2.5, annex B: PolicySecret(TPM_RH_ENDORSEMENT), the authPolicy of
# the low-range EK templates (L-1 is RSA 2048).
EK_POLICY_SECRET_ENDORSEMENT = bytes.fromhex(
    "837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa"
)

# ESYS_TR of PCR n is ESYS_TR.PCR0 + n.
_ESYS_TR_PCR0 = int(ESYS_TR.PCR0)

_BASE_ATTRS = TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT | TPMA_OBJECT.NODA


def srk_template() -> TPM2B_PUBLIC:
    """The TCG ECC P-256 SRK template (TCG TPM v2.0 Provisioning Guidance, 7.5.1)."""
    attrs = (
        _BASE_ATTRS
        | TPMA_OBJECT.SENSITIVEDATAORIGIN
        | TPMA_OBJECT.USERWITHAUTH
        | TPMA_OBJECT.RESTRICTED
        | TPMA_OBJECT.DECRYPT
    )
    return TPM2B_PUBLIC.parse("ecc256:aes128cfb", objectAttributes=attrs, nameAlg="sha256")


def device_key_template(auth_policy: bytes | None) -> TPM2B_PUBLIC:
    """ECC P-256, unrestricted decrypt-only (ECDH_ZGen), never leaves this TPM.

    With an ``auth_policy`` (PolicyAuthorize of the authority) USERWITHAUTH is
    clear, so the key is usable only through a policy session.
    """
    attrs = _BASE_ATTRS | TPMA_OBJECT.SENSITIVEDATAORIGIN | TPMA_OBJECT.DECRYPT
    if auth_policy is None:
        attrs |= TPMA_OBJECT.USERWITHAUTH
    return TPM2B_PUBLIC.parse(
        "ecc256:null:null", objectAttributes=attrs, nameAlg="sha256", authPolicy=auth_policy
    )


# The attestation key (docs/dev/attestation-contracts.md): a restricted signing key, so the
# TPM signs only digests it computed itself (quotes, certifications), never a caller's
# digest that mimics a TPMS_ATTEST (Part 1, "Restricted Signing Key").
AK_ATTRS = (
    _BASE_ATTRS
    | TPMA_OBJECT.SENSITIVEDATAORIGIN
    | TPMA_OBJECT.USERWITHAUTH
    | TPMA_OBJECT.RESTRICTED
    | TPMA_OBJECT.SIGN_ENCRYPT
)


def ak_template(unique: bytes) -> TPM2B_PUBLIC:
    """ECC P-256 restricted signing key, ECDSA/SHA-256, symmetric and kdf NULL, empty policy.

    The AK is a primary key, derived from the endorsement seed and this template
    (Part 1, "Primary Keys"): ``unique`` (32 random bytes) makes each created AK a
    new key. A signing key must have symmetric NULL (Part 2, 12.2.3.6 TPMS_ECC_PARMS).
    """
    public = TPM2B_PUBLIC.parse(
        "ecc256:ecdsa-sha256:null", objectAttributes=AK_ATTRS, nameAlg="sha256"
    )
    public.publicArea.unique.ecc.x = unique
    return public


def is_attestation_key(area: TPMT_PUBLIC) -> bool:
    """True if a public area has exactly the AK's type, attributes and scheme."""
    if area.type != TPM2_ALG.ECC or area.nameAlg != TPM2_ALG.SHA256:
        return False
    detail = area.parameters.eccDetail
    return bool(
        int(area.objectAttributes) == int(AK_ATTRS)
        and not bytes(area.authPolicy)
        and detail.curveID == TPM2_ECC.NIST_P256
        and detail.symmetric.algorithm == TPM2_ALG.NULL
        and detail.scheme.scheme == TPM2_ALG.ECDSA
        and detail.scheme.details.ecdsa.hashAlg == TPM2_ALG.SHA256
        and detail.kdf.scheme == TPM2_ALG.NULL
    )


def sealed_template(auth_policy: bytes | None) -> TPM2B_PUBLIC:
    """A keyedhash data object (Part 1, 27.2): no SIGN/DECRYPT, caller-provided data.

    NODA: a power cut during unseal must not count toward dictionary-attack lockout.
    """
    attrs = _BASE_ATTRS
    if auth_policy is None:
        attrs |= TPMA_OBJECT.USERWITHAUTH
    return TPM2B_PUBLIC.parse(
        "keyedhash", objectAttributes=attrs, nameAlg="sha256", authPolicy=auth_policy
    )


def sealed_sensitive(secret: bytes) -> TPM2B_SENSITIVE_CREATE:
    return TPM2B_SENSITIVE_CREATE(TPMS_SENSITIVE_CREATE(data=TPM2B_SENSITIVE_DATA(secret)))


def authority_public(key: ec.EllipticCurvePublicKey) -> TPM2B_PUBLIC:
    """The authority key for TPM2_LoadExternal: exactly the bytes its policy name hashes."""
    public, _ = TPMT_PUBLIC.unmarshal(authority_tpmt_public(key))
    return TPM2B_PUBLIC(publicArea=public)


def ecdsa_signature(der: bytes) -> TPMT_SIGNATURE:
    r, s = decode_dss_signature(der)
    return TPMT_SIGNATURE(
        sigAlg=TPM2_ALG.ECDSA,
        signature=TPMU_SIGNATURE(
            ecdsa=TPMS_SIGNATURE_ECC(
                hash=TPM2_ALG.SHA256,
                signatureR=r.to_bytes(DIGEST_SIZE, "big"),
                signatureS=s.to_bytes(DIGEST_SIZE, "big"),
            )
        ),
    )


def ecdsa_der(signature: TPMT_SIGNATURE) -> bytes:
    """DER ECDSA (r, s) from an ECDSA/SHA-256 TPMT_SIGNATURE (the inverse of ecdsa_signature)."""
    if signature.sigAlg != TPM2_ALG.ECDSA or signature.signature.ecdsa.hash != TPM2_ALG.SHA256:
        raise TPMCommandError("the TPM returned a signature that is not ECDSA with SHA-256")
    ecdsa = signature.signature.ecdsa
    r = int.from_bytes(bytes(ecdsa.signatureR), "big")
    s = int.from_bytes(bytes(ecdsa.signatureS), "big")
    return encode_dss_signature(r, s)


def ec_public_from_tpm(public: TPM2B_PUBLIC) -> ec.EllipticCurvePublicKey:
    area = public.publicArea
    if area.type != TPM2_ALG.ECC or area.parameters.eccDetail.curveID != TPM2_ECC.NIST_P256:
        raise TPMCommandError("the device key in the TPM is not an ECC P-256 key")
    x = int.from_bytes(bytes(area.unique.ecc.x), "big")
    y = int.from_bytes(bytes(area.unique.ecc.y), "big")
    return ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()


def ecc_point(key: ec.EllipticCurvePublicKey) -> TPM2B_ECC_POINT:
    if not isinstance(key.curve, ec.SECP256R1):
        raise TypeError(f"the peer key must be ECC P-256, got {key.curve.name}")
    numbers = key.public_numbers()
    return TPM2B_ECC_POINT(
        TPMS_ECC_POINT(
            x=numbers.x.to_bytes(DIGEST_SIZE, "big"), y=numbers.y.to_bytes(DIGEST_SIZE, "big")
        )
    )


def pcr_selection(indices: Sequence[int]) -> TPML_PCR_SELECTION:
    bitmap = bytearray(PCR_SELECT_SIZE)
    for index in indices:
        bitmap[index // 8] |= 1 << (index % 8)
    return TPML_PCR_SELECTION(
        [
            TPMS_PCR_SELECTION(
                hash=TPM2_ALG.SHA256, sizeofSelect=PCR_SELECT_SIZE, pcrSelect=bytes(bitmap)
            )
        ]
    )


def selected_indices(selection: TPML_PCR_SELECTION) -> list[int]:
    """The sha256 PCR indices a TPM says it returned, ascending (the order of its digests)."""
    out: list[int] = []
    for sel in selection:
        if sel.hash != TPM2_ALG.SHA256:
            continue
        bitmap = bytes(sel.pcrSelect)[: sel.sizeofSelect]
        out.extend(i for i in range(len(bitmap) * 8) if bitmap[i // 8] & (1 << (i % 8)))
    return out


def pcr_handle(index: int) -> ESYS_TR:
    return ESYS_TR(_ESYS_TR_PCR0 + index)


def nv_counter_public(index: int) -> TPM2B_NV_PUBLIC:
    """An owner-created NV counter readable/writable with its (empty) auth; NODA."""
    attrs = (
        TPMA_NV.OWNERWRITE
        | TPMA_NV.OWNERREAD
        | TPMA_NV.AUTHWRITE
        | TPMA_NV.AUTHREAD
        | TPMA_NV.NO_DA
        | (TPM2_NT.COUNTER << TPMA_NV.TPM2_NT_SHIFT)
    )
    return TPM2B_NV_PUBLIC(
        nvPublic=TPMS_NV_PUBLIC(
            nvIndex=index, nameAlg=TPM2_ALG.SHA256, attributes=attrs, dataSize=8
        )
    )


def is_nv_counter(public: TPM2B_NV_PUBLIC) -> bool:
    attrs = int(public.nvPublic.attributes)
    return bool((attrs & TPMA_NV.TPM2_NT_MASK) >> TPMA_NV.TPM2_NT_SHIFT == TPM2_NT.COUNTER)


def der_length(data: bytes) -> int:
    """The length of the DER SEQUENCE at the start of ``data`` (0 if it is not one).

    EK certificate NV indices may be larger than the certificate they hold.
    """
    if len(data) < 2 or data[0] != 0x30:
        return 0
    first = data[1]
    if first < 0x80:
        return 2 + first
    count = first & 0x7F
    if count == 0 or count > 4 or len(data) < 2 + count:
        return 0
    return 2 + count + int.from_bytes(data[2 : 2 + count], "big")
