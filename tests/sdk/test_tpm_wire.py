"""TPM 2.0 wire parsing: public areas, names and quotes, against tpm2-pytss's marshaling."""

from __future__ import annotations

import struct

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from tpm2_pytss.constants import TPM2_ST
from tpm2_pytss.types import TPM2B_DATA, TPM2B_PUBLIC
from tpm_structures import (
    AK_ATTRIBUTES,
    EK_POLICY,
    ak_public_bytes,
    ecc_public,
    ek_public,
    quote_attest,
)

from edgeseal.sdk.errors import FormatError
from edgeseal.sdk.tpm_wire import (
    ALG_AES,
    ALG_CFB,
    ALG_ECDSA,
    ALG_NULL,
    ALG_SHA256,
    ECC_NIST_P256,
    MAX_ATTEST_SIZE,
    MAX_PUBLIC_SIZE,
    ObjectAttribute,
    Reader,
    parse_attest,
    parse_public,
    tpm2b,
    tpm_name,
    u16,
    u32,
)

ECC_KEY = ec.generate_private_key(ec.SECP256R1())
RSA_KEY = rsa.generate_private_key(65537, 2048)
AK = ak_public_bytes(ECC_KEY.public_key())
EK = bytes(ek_public(RSA_KEY.public_key()).marshal())
# Offsets in the AK: type(2) nameAlg(2) attributes(4) authPolicy(2+0) symmetric(2)
# scheme(2+2) curveID(2) kdf(2) unique.x(2+32) unique.y(2+32).

QUOTE = quote_attest()
# Where each field starts: magic 0, type 4, qualifiedSigner 6 (2+34), extraData 42 (2+32),
# clock 76, resetCount 84, restartCount 88, safe 92, firmwareVersion 93, pcrSelect.count 101,
# hash 105, sizeofSelect 107, pcrSelect 108 (3), pcrDigest 111 (2+32); 145 bytes in all.

SIGN = 0x00040072  # sign|userWithAuth|sensitiveDataOrigin|fixedParent|fixedTPM
DECRYPT = 0x00020072


def _patch(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


# -- marshal helpers and the reader ---------------------------------------------------------


def test_marshal_helpers_match_tpm2_pytss() -> None:
    assert u16(0x000B) == b"\x00\x0b"
    assert u32(0xFF544347) == b"\xffTCG"
    assert tpm2b(b"abc") == bytes(TPM2B_DATA(b"abc").marshal())
    assert tpm2b(b"") == b"\x00\x00"
    with pytest.raises(ValueError, match="65535"):
        tpm2b(bytes(0x10000))


def test_reader_reads_big_endian_and_refuses_overruns() -> None:
    reader = Reader(bytes.fromhex("01 0203 04050607 08090a0b0c0d0e0f 0002abcd"), what="thing")
    assert reader.u8("a") == 1
    assert reader.u16("b") == 0x0203
    assert reader.u32("c") == 0x04050607
    assert reader.u64("d") == 0x08090A0B0C0D0E0F
    assert reader.tpm2b("e", 2) == b"\xab\xcd"
    reader.end()
    with pytest.raises(FormatError, match="thing is truncated: f needs 1 bytes") as info:
        reader.u8("f")
    assert info.value.field == "f"


def test_reader_refuses_a_tpm2b_over_its_maximum_before_reading_it() -> None:
    reader = Reader(b"\x00\x03abc", what="thing")
    with pytest.raises(FormatError, match="thing: blob is 3 bytes; the maximum is 2"):
        reader.tpm2b("blob", 2)
    with pytest.raises(FormatError, match="truncated: blob needs 5 bytes"):
        Reader(b"\x00\x05abc", what="thing").tpm2b("blob", 64)


def test_reader_refuses_trailing_bytes() -> None:
    reader = Reader(b"\x00\x01\x02", what="thing")
    reader.u16("a")
    with pytest.raises(FormatError, match="1 trailing bytes") as info:
        reader.end()
    assert info.value.field == "trailing"


# -- TPMT_PUBLIC ----------------------------------------------------------------------------


def test_parse_the_contract_ak() -> None:
    public = parse_public(AK)
    assert public.type == "ecc"
    assert public.name_alg == ALG_SHA256
    assert public.attributes == int(AK_ATTRIBUTES) == 0x00050472
    assert public.restricted and public.sign and public.fixed_tpm and not public.decrypt
    assert public.has(ObjectAttribute.NO_DA)
    assert public.auth_policy == b""
    assert public.symmetric.algorithm == ALG_NULL
    assert (public.scheme.scheme, public.scheme.hash_alg) == (ALG_ECDSA, ALG_SHA256)
    assert public.curve == ECC_NIST_P256
    assert public.kdf is not None and public.kdf.scheme == ALG_NULL
    assert public.key_bits is None and public.exponent is None
    assert public.raw == AK
    assert isinstance(public.public_key, ec.EllipticCurvePublicKey)
    assert public.public_key.public_numbers() == ECC_KEY.public_key().public_numbers()


def test_parse_the_l1_ek() -> None:
    public = parse_public(EK)
    assert public.type == "rsa"
    assert public.restricted and public.decrypt and not public.sign
    assert public.has(ObjectAttribute.ADMIN_WITH_POLICY)
    assert not public.has(ObjectAttribute.USER_WITH_AUTH)
    assert public.auth_policy == EK_POLICY
    assert (public.symmetric.algorithm, public.symmetric.key_bits, public.symmetric.mode) == (
        ALG_AES,
        128,
        ALG_CFB,
    )
    assert public.scheme.scheme == ALG_NULL
    assert public.key_bits == 2048
    assert public.exponent == 0
    assert public.curve is None and public.kdf is None
    assert isinstance(public.public_key, rsa.RSAPublicKey)
    assert public.public_key.public_numbers() == RSA_KEY.public_key().public_numbers()


def test_rsa_explicit_exponent_and_schemes() -> None:
    small_e = rsa.generate_private_key(3, 2048).public_key()
    for template, scheme, hash_alg in (
        ("rsa2048:rsassa-sha256:null", 0x0014, ALG_SHA256),
        ("rsa2048:rsaes:null", 0x0015, ALG_NULL),  # TPMS_EMPTY details
        ("rsa2048:oaep-sha384:null", 0x0017, 0x000C),
    ):
        attributes = SIGN if "rsassa" in template else DECRYPT
        area = TPM2B_PUBLIC.parse(template, objectAttributes=attributes).publicArea
        area.parameters.rsaDetail.exponent = 3
        area.unique.rsa = small_e.public_numbers().n.to_bytes(256, "big")
        public = parse_public(bytes(area.marshal()))
        assert (public.scheme.scheme, public.scheme.hash_alg) == (scheme, hash_alg), template
        assert public.exponent == 3
        assert public.public_key.public_numbers() == small_e.public_numbers()  # type: ignore[union-attr]


def test_ecc_schemes_with_and_without_details() -> None:
    for template, scheme, count in (
        ("ecc256:ecdaa4-sha256:null", 0x001A, 4),
        ("ecc256:ecdh-sha256:null", 0x0019, 0),
        ("ecc256:null:null", ALG_NULL, 0),
        ("ecc256:null:aes128cfb", ALG_NULL, 0),
    ):
        attributes = SIGN
        if "ecdh" in template:
            attributes = DECRYPT
        elif template.endswith("cfb"):
            attributes = DECRYPT | int(ObjectAttribute.RESTRICTED)
        area = ecc_public(ECC_KEY.public_key(), template=template, attributes=attributes)
        public = parse_public(bytes(area.marshal()))
        assert (public.scheme.scheme, public.scheme.count) == (scheme, count), template


def test_tpm_name_matches_tpm2_pytss() -> None:
    for area in (ecc_public(ECC_KEY.public_key()), ek_public(RSA_KEY.public_key())):
        raw = bytes(area.marshal())
        name = tpm_name(raw)
        assert name == bytes(area.get_name().marshal()[2:])  # TPM2B_NAME -> its buffer
        assert len(name) == 34 and name[:2] == b"\x00\x0b"
        assert parse_public(raw).name == name


def test_tpm_name_refuses_other_name_algorithms() -> None:
    area = TPM2B_PUBLIC.parse(
        "ecc256:ecdsa-sha256:null", nameAlg="sha384", objectAttributes=SIGN
    ).publicArea
    with pytest.raises(FormatError, match="nameAlg sha384 is not supported") as info:
        tpm_name(bytes(area.marshal()))
    assert info.value.field == "nameAlg"
    with pytest.raises(FormatError, match="truncated"):
        tpm_name(b"\x00\x23\x00")
    with pytest.raises(FormatError, match="maximum"):
        tpm_name(b"\x00\x23\x00\x0b" + bytes(MAX_PUBLIC_SIZE))


@pytest.mark.parametrize(
    ("template", "match", "field"),
    [
        ("ecc384:ecdsa-sha384:null", "curveID 0x0004 is not supported", "curveID"),
        ("rsa3072:rsassa-sha256:null", "RSA keyBits 3072 is not supported", "keyBits"),
        ("keyedhash", "type 0x0008 is not supported", "type"),
        ("aes128cfb", "type 0x0025 is not supported", "type"),
    ],
)
def test_unsupported_keys_are_refused_by_name(template: str, match: str, field: str) -> None:
    attributes = DECRYPT if template.startswith("aes") else SIGN
    area = TPM2B_PUBLIC.parse(template, objectAttributes=attributes).publicArea
    with pytest.raises(FormatError, match=match) as info:
        parse_public(bytes(area.marshal()))
    assert info.value.field == field


@pytest.mark.parametrize(
    ("data", "match", "field"),
    [
        (_patch(AK, 2, u16(0x0099)), "nameAlg 0x0099 is not a TPM hash", "nameAlg"),
        (_patch(AK, 4, u32(0x00050473)), "sets reserved bits", "objectAttributes"),
        (_patch(AK, 4, u32(0x80050472)), "sets reserved bits", "objectAttributes"),
        (_patch(AK, 10, u16(0x000A)), "symmetric.algorithm 0x000a", "symmetric.algorithm"),
        (_patch(AK, 12, u16(0x0014)), "scheme.scheme 0x0014 is not allowed", "scheme.scheme"),
        (_patch(AK, 14, u16(0x0099)), "scheme.hashAlg 0x0099", "scheme.hashAlg"),
        (_patch(AK, 18, u16(0x0018)), "kdf.scheme 0x0018 is not allowed", "kdf.scheme"),
        (_patch(AK, 20, u16(33)), "unique.x is 33 bytes", "unique.x"),
        (_patch(AK, 20, u16(67)), "unique.x is 67 bytes; the maximum is 66", "unique.x"),
        (_patch(AK, 20, u16(0)), "unique.x is 0 bytes", "unique.x"),
        (AK[:-1] + bytes([AK[-1] ^ 1]), "not a point on P-256", "unique"),
        (AK + b"\x00", "1 trailing bytes", "trailing"),
        (AK[:-1], "truncated", "unique.y"),
        (b"", "truncated", "type"),
        (AK + bytes(MAX_PUBLIC_SIZE), "maximum is 1024", "TPMT_PUBLIC"),
    ],
)
def test_malformed_ak_is_refused_naming_the_field(data: bytes, match: str, field: str) -> None:
    with pytest.raises(FormatError, match=match) as info:
        parse_public(data)
    assert info.value.field == field


def test_auth_policy_must_be_empty_or_a_name_alg_digest() -> None:
    area = TPM2B_PUBLIC.parse(
        "ecc256:ecdsa-sha256:null", objectAttributes=AK_ATTRIBUTES, authPolicy=b"p" * 20
    ).publicArea
    with pytest.raises(FormatError, match="authPolicy is 20 bytes; a sha256 policy") as info:
        parse_public(bytes(area.marshal()))
    assert info.value.field == "authPolicy"
    with pytest.raises(FormatError, match="authPolicy is 65 bytes; the maximum is 64"):
        parse_public(_patch(AK, 8, u16(65)) + bytes(65))


def test_symmetric_mode_and_rsa_modulus_and_exponent_are_checked() -> None:
    # EK offsets: type nameAlg attrs(4) authPolicy(2+32)=42, symmetric alg 42, bits 44, mode 46
    assert EK[42:48] == u16(ALG_AES) + u16(128) + u16(ALG_CFB)
    with pytest.raises(FormatError, match=r"symmetric\.mode 0x0099"):
        parse_public(_patch(EK, 46, u16(0x0099)))
    # scheme 48, keyBits 50, exponent 52, unique.rsa 56
    with pytest.raises(FormatError, match="exponent 2 is not a valid RSA public exponent"):
        parse_public(_patch(EK, 52, u32(2)))
    short = EK[:56] + tpm2b(EK[58:-1])
    with pytest.raises(FormatError, match=r"unique.rsa is not a 2048-bit modulus \(255 bytes\)"):
        parse_public(short)
    with pytest.raises(FormatError, match="not a 2048-bit modulus"):
        parse_public(EK[:58] + b"\x00" + EK[59:])  # 256 bytes but only 2047 bits or fewer


def test_every_truncation_is_a_format_error() -> None:
    for data in (AK, EK):
        for end in range(len(data)):
            with pytest.raises(FormatError):
                parse_public(data[:end])


# -- TPMS_ATTEST ----------------------------------------------------------------------------


def test_parse_a_quote_marshaled_by_tpm2_pytss() -> None:
    raw = quote_attest(
        extra_data=b"fresh",
        selection="sha256:0,7,9,23",
        pcr_digest=b"d" * 32,
        qualified_signer=b"\x00\x0b" + b"q" * 32,
        clock=2**40 + 5,
        reset_count=7,
        restart_count=8,
        safe=0,
        firmware_version=2**63 + 1,
    )
    quote = parse_attest(raw)
    assert quote.qualified_signer == b"\x00\x0b" + b"q" * 32
    assert quote.extra_data == b"fresh"
    assert (quote.clock, quote.reset_count, quote.restart_count) == (2**40 + 5, 7, 8)
    assert quote.safe is False
    assert quote.firmware_version == 2**63 + 1
    assert quote.pcr_selection == [(ALG_SHA256, (0, 7, 9, 23))]
    assert quote.pcr_digest == b"d" * 32
    assert quote.raw == raw


def test_several_banks_and_empty_selections_are_parsed_as_given() -> None:
    quote = parse_attest(quote_attest(selection="sha1:3,4+sha256:all"))
    assert quote.pcr_selection == [(0x0004, (3, 4)), (ALG_SHA256, tuple(range(24)))]
    no_pcrs = _patch(QUOTE, 108, b"\x00\x00\x00")
    assert parse_attest(no_pcrs).pcr_selection == [(ALG_SHA256, ())]
    quote = parse_attest(quote_attest(safe=1))
    assert quote.safe is True


@pytest.mark.parametrize(
    ("data", "match", "field"),
    [
        (_patch(QUOTE, 0, u32(0xFF544348)), "magic 0xff544348 is not TPM_GENERATED", "magic"),
        (_patch(QUOTE, 6, u16(67)), "qualifiedSigner is 67 bytes; the maximum is 66", None),
        (_patch(QUOTE, 42, u16(67)), "extraData is 67 bytes; the maximum is 66", "extraData"),
        (_patch(QUOTE, 92, b"\x02"), "clockInfo.safe is 2", "clockInfo.safe"),
        (_patch(QUOTE, 101, u32(17)), "pcrSelect.count 17 is over", "pcrSelect.count"),
        (_patch(QUOTE, 105, u16(0x0099)), "hash 0x0099 is not a TPM hash", "pcrSelect[0].hash"),
        (_patch(QUOTE, 107, b"\x09"), "sizeofSelect 9 is over", "pcrSelect[0].sizeofSelect"),
        (_patch(QUOTE, 111, u16(65)), "pcrDigest is 65 bytes", "pcrDigest"),
        (QUOTE + b"\x00", "1 trailing bytes", "trailing"),
        (QUOTE[:-1], "truncated", "pcrDigest"),
        (QUOTE + bytes(MAX_ATTEST_SIZE), "maximum is 1024", "TPMS_ATTEST"),
    ],
)
def test_malformed_quote_is_refused_naming_the_field(
    data: bytes, match: str, field: str | None
) -> None:
    with pytest.raises(FormatError, match=match) as info:
        parse_attest(data)
    assert info.value.field == (field or "qualifiedSigner")


def test_other_attestation_types_are_not_quotes() -> None:
    for attest_type in (TPM2_ST.ATTEST_CERTIFY, TPM2_ST.ATTEST_TIME):
        raw = quote_attest(attest_type=attest_type)
        with pytest.raises(FormatError, match=r"type 0x80.. is not a quote") as info:
            parse_attest(raw)
        assert info.value.field == "type"
    # The layout offsets above are what they claim to be.
    assert len(QUOTE) == 145
    assert struct.unpack(">IH", QUOTE[:6]) == (0xFF544347, 0x8018)
    assert QUOTE[105:111] == u16(ALG_SHA256) + b"\x03\x83\x00\x00"  # sha256: 0, 1, 7


def test_every_quote_truncation_is_a_format_error() -> None:
    for end in range(len(QUOTE)):
        with pytest.raises(FormatError):
            parse_attest(QUOTE[:end])
