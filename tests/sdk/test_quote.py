"""Quote verification: every check, and the order the checks run in.

Quotes are TPMS_ATTEST structures marshaled by tpm2-pytss and signed with a
``cryptography`` P-256 key standing in for the AK (a real TPM2_Quote is tested
against swtpm in tests/hardware and tests/integration).
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from tpm2_pytss.constants import TPM2_ST
from tpm_structures import (
    ak_public_bytes,
    digest_of,
    ek_public,
    pcr_values,
    quote_attest,
    sign,
)

from edgeseal.sdk.errors import AttestationError, EdgesealError
from edgeseal.sdk.quote import pcr_digest, verify_quote
from edgeseal.sdk.tpm_wire import ALG_SHA256, QuoteAttest

AK_KEY = ec.generate_private_key(ec.SECP256R1())
AK = ak_public_bytes(AK_KEY.public_key())
NONCE = bytes(range(32))
PCRS = pcr_values((0, 1, 7))
NOT_SIGNED = "^the quote is not signed by the enrolled attestation key$"


def _quote(**overrides: object) -> tuple[bytes, bytes]:
    fields: dict[str, object] = {
        "extra_data": NONCE,
        "selection": "sha256:0,1,7",
        "pcr_digest": digest_of(PCRS),
    }
    fields.update(overrides)
    attest = quote_attest(**fields)  # type: ignore[arg-type]
    return attest, sign(AK_KEY, attest)


def _verify(
    attest: bytes,
    signature: bytes,
    *,
    ak: bytes = AK,
    nonce: bytes = NONCE,
    pcrs: dict[int, bytes] | None = None,
) -> QuoteAttest:
    return verify_quote(
        attest, signature, ak, qualifying_data=nonce, pcrs=PCRS if pcrs is None else pcrs
    )


def _refused(match: str, attest: bytes, signature: bytes, **kwargs: object) -> AttestationError:
    with pytest.raises(AttestationError, match=match) as info:
        _verify(attest, signature, **kwargs)  # type: ignore[arg-type]
    return info.value


# -- pcr_digest -----------------------------------------------------------------------------


def test_pcr_digest_is_sha256_of_values_in_ascending_index_order() -> None:
    shuffled = {7: PCRS[7], 0: PCRS[0], 1: PCRS[1]}
    assert pcr_digest(shuffled) == digest_of(PCRS) == pcr_digest(PCRS)
    assert pcr_digest({10: PCRS[0], 2: PCRS[1]}) != pcr_digest({2: PCRS[0], 10: PCRS[1]})


def test_pcr_digest_refuses_bad_values() -> None:
    with pytest.raises(ValueError, match="PCR 3 is 20 bytes, not 32"):
        pcr_digest({3: bytes(20)})
    with pytest.raises(ValueError, match=r"PCR index 64 is outside 0\.\.63"):
        pcr_digest({64: bytes(32)})
    with pytest.raises(ValueError, match="PCR index -1"):
        pcr_digest({-1: bytes(32)})


# -- the good path --------------------------------------------------------------------------


def test_a_good_quote_verifies_and_is_returned_parsed() -> None:
    attest, signature = _quote()
    quote = _verify(attest, signature)
    assert quote.extra_data == NONCE
    assert quote.pcr_selection == [(ALG_SHA256, (0, 1, 7))]
    assert quote.pcr_digest == digest_of(PCRS)
    assert quote.raw == attest


def test_shorter_qualifying_data_and_one_pcr() -> None:
    pcrs = pcr_values((16,))
    attest, signature = _quote(extra_data=b"n", selection="sha256:16", pcr_digest=digest_of(pcrs))
    assert _verify(attest, signature, nonce=b"n", pcrs=pcrs).pcr_selection == [(ALG_SHA256, (16,))]


@pytest.mark.parametrize("size", [0, 33])
def test_qualifying_data_outside_1_to_32_bytes_is_the_verifiers_bug(size: int) -> None:
    attest, signature = _quote()
    with pytest.raises(ValueError, match=f"1 to 32 bytes, not {size}"):
        _verify(attest, signature, nonce=bytes(size))


# -- the attestation key --------------------------------------------------------------------


def test_an_rsa_key_is_not_an_attestation_key() -> None:
    ek = bytes(ek_public(rsa.generate_private_key(65537, 2048).public_key()).marshal())
    attest, signature = _quote()
    error = _refused(
        "the attestation key is RSA; it must be an ECC P-256 key", attest, signature, ak=ek
    )
    assert error.field == "ak_public"


@pytest.mark.parametrize(
    "attributes",
    [
        0x00040472,  # sign, not restricted: would sign a forged TPMS_ATTEST
        0x00030472,  # restricted decrypt (a storage key)
        0x00070472,  # restricted, sign and decrypt
    ],
)
def test_only_a_restricted_signing_key_attests(attributes: int) -> None:
    template = "ecc256:null:aes128cfb" if attributes == 0x00030472 else "ecc256:ecdsa-sha256:null"
    area = ak_public_bytes(AK_KEY.public_key(), template=template, attributes=0x00040472)
    ak = area[:4] + attributes.to_bytes(4, "big") + area[8:]
    attest, signature = _quote()
    _refused("is not a restricted signing key", attest, signature, ak=ak)


def test_the_ak_scheme_must_be_ecdsa_sha256() -> None:
    ak = ak_public_bytes(AK_KEY.public_key(), template="ecc256:ecdsa-sha384:null")
    attest, signature = _quote()
    _refused("scheme is 0x0018/sha384; it must be ECDSA with sha256", attest, signature, ak=ak)


def test_a_malformed_or_other_curve_ak_is_refused_with_the_detail() -> None:
    attest, signature = _quote()
    error = _refused(
        "the attestation key is malformed: .* trailing", attest, signature, ak=AK + b"x"
    )
    assert error.field == "trailing"
    area = bytearray(AK)
    area[16:18] = b"\x00\x04"  # curveID NIST P-384
    error = _refused("curveID 0x0004 is not supported", attest, signature, ak=bytes(area))
    assert error.field == "curveID"


# -- the signature, checked before anything is parsed ---------------------------------------


def test_a_quote_signed_by_another_key_is_refused() -> None:
    attest, _ = _quote()
    other = sign(ec.generate_private_key(ec.SECP256R1()), attest)
    assert _refused(NOT_SIGNED, attest, other).field == "signature"


@pytest.mark.parametrize("signature", [b"", b"\x30\x00", b"garbage", bytes(70), b"\x30" * 73])
def test_malformed_signatures_are_not_signatures(signature: bytes) -> None:
    attest, _ = _quote()
    _refused("not signed by the enrolled attestation key", attest, signature)


def test_every_attest_byte_is_covered_by_the_signature() -> None:
    attest, signature = _quote()
    for offset in range(len(attest)):
        tampered = bytearray(attest)
        tampered[offset] ^= 0x01
        _refused(NOT_SIGNED, bytes(tampered), signature)


def test_unsigned_garbage_fails_on_the_signature_not_the_parser() -> None:
    garbage = b"\x00" * 7
    _refused(NOT_SIGNED, garbage, sign(ec.generate_private_key(ec.SECP256R1()), garbage))


def test_signed_garbage_is_a_malformed_quote() -> None:
    garbage = b"\xffTCG\x80\x18\xff\xff"
    error = _refused("the quote is malformed: .*qualifiedSigner", garbage, sign(AK_KEY, garbage))
    assert isinstance(error, EdgesealError)


def test_a_signed_certify_is_not_a_quote() -> None:
    attest, signature = _quote(attest_type=TPM2_ST.ATTEST_CERTIFY)
    error = _refused("the quote is malformed: .*type 0x8017 is not a quote", attest, signature)
    assert error.field == "type"


def test_oversized_attest_is_refused_before_hashing() -> None:
    attest = b"\xffTCG" + bytes(2000)
    _refused("the quote is 2004 bytes; the maximum is 1024", attest, sign(AK_KEY, attest))


# -- freshness ------------------------------------------------------------------------------


def test_a_replayed_quote_for_another_nonce_is_refused() -> None:
    attest, signature = _quote()
    error = _refused(
        r"^the quote's qualifying data does not match \(stale or replayed quote\)$",
        attest,
        signature,
        nonce=bytes(32),
    )
    assert error.field == "extraData"
    _refused("qualifying data does not match", attest, signature, nonce=NONCE[:31])


# -- the PCR selection and digest -----------------------------------------------------------


@pytest.mark.parametrize(
    ("selection", "match"),
    [
        ("sha256:0,1,7+sha1:0", r"selects 2 PCR banks \(sha256, sha1\); expected exactly one"),
        ("sha1:0,1,7", "over the sha1 PCR bank; expected sha256"),
        ("sha256:0,1", "covers PCRs 0, 1 but PCRs 0, 1, 7 were reported"),
        ("sha256:0,1,7,8", "covers PCRs 0, 1, 7, 8 but PCRs 0, 1, 7 were reported"),
        ("sha256:0,2,7", "covers PCRs 0, 2, 7 but PCRs 0, 1, 7 were reported"),
    ],
)
def test_the_selection_must_be_exactly_the_reported_sha256_pcrs(selection: str, match: str) -> None:
    attest, signature = _quote(selection=selection)
    assert _refused(match, attest, signature).field == "pcrSelect"


def test_an_empty_selection_covers_nothing() -> None:
    attest = quote_attest(extra_data=NONCE, selection="sha256:0", pcr_digest=digest_of(PCRS))
    selection = b"\x00\x00\x00\x01\x00\x0b\x03\x01\x00\x00"  # count 1, sha256, PCR 0
    assert selection in attest
    attest = attest.replace(selection, selection[:-3] + bytes(3))
    _refused("covers PCRs none but PCRs 0, 1, 7 were reported", attest, sign(AK_KEY, attest))


def test_reported_pcr_values_that_do_not_match_the_digest_are_named() -> None:
    attest, signature = _quote()
    changed = dict(PCRS)
    changed[7] = bytes(32)
    error = _refused(
        r"^PCRs 0, 1, 7 reported by the device do not match the quoted digest",
        attest,
        signature,
        pcrs=changed,
    )
    assert error.field == "pcrDigest"


def test_a_digest_over_other_values_is_refused() -> None:
    attest, signature = _quote(pcr_digest=digest_of(pcr_values((0, 1, 8))))
    _refused("do not match the quoted digest", attest, signature)


def test_reported_values_must_be_32_bytes_and_some() -> None:
    attest, signature = _quote()
    short = dict(PCRS)
    short[1] = bytes(20)
    error = _refused(
        "the value reported for PCR 1 is 20 bytes, not 32", attest, signature, pcrs=short
    )
    assert error.field == "pcrs"
    _refused("no PCR values were reported", attest, signature, pcrs={})
    _refused("PCR index 99 is outside 0..63", attest, signature, pcrs={**PCRS, 99: bytes(32)})
