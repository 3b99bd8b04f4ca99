"""Verify a TPM quote: signed by the enrolled AK, fresh, and over the reported PCR values.

A quote (TPM 2.0 Part 3 section 18.4) is a TPMS_ATTEST the TPM signs with a
restricted signing key. "Restricted" is what makes it evidence: such a key
signs outside data only with a ticket proving the TPM hashed it and that it
did not start with TPM_GENERATED_VALUE, so a signed structure that does start
with it was made by the TPM (Part 1 section 25.2.2). The checks, in the order they run:

1. the attestation key is a restricted ECC P-256 signing key with scheme
   ECDSA/SHA-256 (otherwise the signature proves nothing);
2. the DER ECDSA signature over SHA-256(attest) verifies, checked on the raw
   bytes *before* they are parsed;
3. the bytes are a TPMS_ATTEST of type quote;
4. extraData equals the qualifying data the verifier chose (freshness);
5. the selection is exactly one SHA-256 bank selecting exactly the reported
   PCR indices;
6. pcrDigest equals SHA-256 of the reported values in ascending index order.

Checks fail fast and raise :class:`~edgeseal.sdk.errors.AttestationError`
saying which one failed. Comparing the (now authenticated) PCR values with a
baseline is the caller's policy, not this module's.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from edgeseal.sdk.errors import AttestationError, FormatError
from edgeseal.sdk.tpm_wire import (
    ALG_ECDSA,
    ALG_SHA256,
    MAX_ATTEST_SIZE,
    MAX_PCR_SELECT,
    QuoteAttest,
    hash_alg_name,
    parse_attest,
    parse_public,
)

__all__ = ["MAX_QUALIFYING_DATA", "PCR_SIZE", "pcr_digest", "verify_quote"]

PCR_SIZE = 32  # a SHA-256 bank's values
MAX_QUALIFYING_DATA = 32
MAX_PCR_INDEX = 8 * MAX_PCR_SELECT - 1
_MAX_SIGNATURE_SIZE = 72  # DER ECDSA-Sig-Value of two P-256 integers


def _indices(indices: tuple[int, ...]) -> str:
    return ", ".join(str(i) for i in indices) if indices else "none"


def pcr_digest(pcrs: Mapping[int, bytes]) -> bytes:
    """SHA-256 of the PCR values in ascending index order, as TPM2_Quote computes pcrDigest.

    Raises ValueError for an index outside 0..63 or a value that is not 32 bytes.
    """
    digest = hashlib.sha256()
    for index in sorted(pcrs):
        value = pcrs[index]
        if not 0 <= index <= MAX_PCR_INDEX:
            raise ValueError(f"PCR index {index} is outside 0..{MAX_PCR_INDEX}")
        if len(value) != PCR_SIZE:
            raise ValueError(f"PCR {index} is {len(value)} bytes, not {PCR_SIZE} (sha256)")
        digest.update(value)
    return digest.digest()


def _attestation_key(ak_public: bytes) -> ec.EllipticCurvePublicKey:
    try:
        ak = parse_public(ak_public)
    except FormatError as exc:
        raise AttestationError(
            f"the attestation key is malformed: {exc.message}", field=exc.field
        ) from None
    if not isinstance(ak.public_key, ec.EllipticCurvePublicKey):
        raise AttestationError(
            "the attestation key is RSA; it must be an ECC P-256 key", field="ak_public"
        )
    if not (ak.restricted and ak.sign) or ak.decrypt:
        raise AttestationError(
            "the attestation key is not a restricted signing key (restricted and sign set, "
            f"decrypt clear; objectAttributes 0x{ak.attributes:08x}), so its signature does "
            "not prove the TPM made the quote",
            field="ak_public",
        )
    if (ak.scheme.scheme, ak.scheme.hash_alg) != (ALG_ECDSA, ALG_SHA256):
        raise AttestationError(
            f"the attestation key's scheme is 0x{ak.scheme.scheme:04x}/"
            f"{hash_alg_name(ak.scheme.hash_alg)}; it must be ECDSA with sha256",
            field="ak_public",
        )
    return ak.public_key


def _check_pcrs(pcrs: Mapping[int, bytes]) -> None:
    if not pcrs:
        raise AttestationError("no PCR values were reported; a quote must cover some", field="pcrs")
    for index, value in sorted(pcrs.items()):
        if not 0 <= index <= MAX_PCR_INDEX:
            raise AttestationError(f"PCR index {index} is outside 0..{MAX_PCR_INDEX}", field="pcrs")
        if len(value) != PCR_SIZE:
            raise AttestationError(
                f"the value reported for PCR {index} is {len(value)} bytes, not {PCR_SIZE} "
                "(sha256 bank)",
                field="pcrs",
            )


def verify_quote(
    attest: bytes,
    signature: bytes,
    ak_public: bytes,
    *,
    qualifying_data: bytes,
    pcrs: Mapping[int, bytes],
) -> QuoteAttest:
    """Check a quote against the AK, the expected qualifying data and the reported PCRs.

    ``attest`` is the marshaled TPMS_ATTEST, ``signature`` the DER ECDSA
    signature over SHA-256(attest), ``ak_public`` the AK's marshaled
    TPMT_PUBLIC, ``qualifying_data`` the 1 to 32 bytes the verifier asked the
    TPM to include, ``pcrs`` the SHA-256 PCR values the device reported.
    Returns the parsed quote; raises :class:`AttestationError` naming the
    failed check. ValueError for qualifying data outside 1..32 bytes (a
    verifier's bug, not the device's).
    """
    if not 0 < len(qualifying_data) <= MAX_QUALIFYING_DATA:
        raise ValueError(
            f"qualifying data must be 1 to {MAX_QUALIFYING_DATA} bytes, not {len(qualifying_data)}"
        )
    key = _attestation_key(ak_public)
    if len(attest) > MAX_ATTEST_SIZE:
        raise AttestationError(
            f"the quote is {len(attest)} bytes; the maximum is {MAX_ATTEST_SIZE}", field="attest"
        )
    if len(signature) > _MAX_SIGNATURE_SIZE:
        raise AttestationError(
            "the quote is not signed by the enrolled attestation key (the signature is "
            f"{len(signature)} bytes, longer than any P-256 ECDSA signature)",
            field="signature",
        )
    try:
        key.verify(bytes(signature), bytes(attest), ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        raise AttestationError(
            "the quote is not signed by the enrolled attestation key", field="signature"
        ) from None
    try:
        quote = parse_attest(attest)
    except FormatError as exc:
        raise AttestationError(f"the quote is malformed: {exc.message}", field=exc.field) from None
    if not hmac.compare_digest(quote.extra_data, bytes(qualifying_data)):
        raise AttestationError(
            "the quote's qualifying data does not match (stale or replayed quote)",
            field="extraData",
        )
    _check_pcrs(pcrs)
    expected = tuple(sorted(pcrs))
    if len(quote.pcr_selection) != 1:
        banks = ", ".join(hash_alg_name(alg) for alg, _ in quote.pcr_selection) or "none"
        raise AttestationError(
            f"the quote selects {len(quote.pcr_selection)} PCR banks ({banks}); expected "
            "exactly one, sha256",
            field="pcrSelect",
        )
    bank, selected = quote.pcr_selection[0]
    if bank != ALG_SHA256:
        raise AttestationError(
            f"the quote is over the {hash_alg_name(bank)} PCR bank; expected sha256",
            field="pcrSelect",
        )
    if selected != expected:
        raise AttestationError(
            f"the quote covers PCRs {_indices(selected)} but PCRs {_indices(expected)} were "
            "reported",
            field="pcrSelect",
        )
    if not hmac.compare_digest(quote.pcr_digest, pcr_digest(pcrs)):
        raise AttestationError(
            f"PCRs {_indices(expected)} reported by the device do not match the quoted digest "
            "(the values changed or were misreported)",
            field="pcrDigest",
        )
    return quote
