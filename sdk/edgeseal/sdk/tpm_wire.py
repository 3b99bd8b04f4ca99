"""TPM 2.0 wire structures the verifier reads: public areas, names and quotes.

Everything here follows TPM 2.0 Library Part 2 (Structures) marshaling: integers
big-endian, a ``TPM2B_*`` is ``u16 size || size bytes``, a union is selected by
the algorithm id that precedes it. Section numbers below are Part 2's.

What is parsed, and what is refused:

* :func:`parse_public` reads a ``TPMT_PUBLIC`` (section 12.2.4) of type ECC on
  NIST P-256 or RSA 2048, with every parameter of ``TPMS_ECC_PARMS`` /
  ``TPMS_RSA_PARMS`` (symmetric definition, scheme, curve or key size and
  exponent, KDF), and returns the key as a ``cryptography`` public key. Other
  types, curves and key sizes are refused by name.
* :func:`tpm_name` computes an object's Name (section 10.5.3 / Part 1
  section 16): ``u16(nameAlg) || H_nameAlg(TPMT_PUBLIC)``, SHA-256 only.
* :func:`parse_attest` reads a ``TPMS_ATTEST`` (section 10.12.12) of type
  ``TPM_ST_ATTEST_QUOTE`` with its ``TPMS_QUOTE_INFO``.

The bytes come from a device and are not trusted, so :class:`Reader` checks
every length against the bytes that remain *and* against the spec's maximum for
that field before it slices, unknown union selectors are refused (their layout
is unknown), and trailing bytes are refused. Every refusal is a
:class:`~edgeseal.sdk.errors.FormatError` naming the field. Parsing proves
nothing about who made the bytes: :mod:`edgeseal.sdk.quote` checks the
signature before it parses a quote.
"""

from __future__ import annotations

import enum
import hashlib
import struct
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from edgeseal.sdk.errors import FormatError

__all__ = [
    "ALG_AES",
    "ALG_CFB",
    "ALG_ECC",
    "ALG_ECDSA",
    "ALG_NULL",
    "ALG_RSA",
    "ALG_SHA256",
    "ECC_NIST_P256",
    "MAX_ATTEST_SIZE",
    "MAX_PCR_SELECT",
    "MAX_PUBLIC_SIZE",
    "ST_ATTEST_QUOTE",
    "TPM_GENERATED_VALUE",
    "ObjectAttribute",
    "QuoteAttest",
    "Reader",
    "Scheme",
    "SymmetricDef",
    "TPMPublic",
    "hash_alg_name",
    "parse_attest",
    "parse_public",
    "tpm2b",
    "tpm_name",
    "u16",
    "u32",
]

# -- constants: TPM_ALG_ID (Part 2 section 6.3), TPM_ECC_CURVE (6.4), TPM_ST (6.9) ----------

ALG_RSA = 0x0001
ALG_SHA1 = 0x0004
ALG_AES = 0x0006
ALG_MGF1 = 0x0007
ALG_KEYEDHASH = 0x0008
ALG_SHA256 = 0x000B
ALG_SHA384 = 0x000C
ALG_SHA512 = 0x000D
ALG_NULL = 0x0010
ALG_SM3_256 = 0x0012
ALG_SM4 = 0x0013
ALG_RSASSA = 0x0014
ALG_RSAES = 0x0015
ALG_RSAPSS = 0x0016
ALG_OAEP = 0x0017
ALG_ECDSA = 0x0018
ALG_ECDH = 0x0019
ALG_ECDAA = 0x001A
ALG_SM2 = 0x001B
ALG_ECSCHNORR = 0x001C
ALG_ECMQV = 0x001D
ALG_KDF1_SP800_56A = 0x0020
ALG_KDF2 = 0x0021
ALG_KDF1_SP800_108 = 0x0022
ALG_ECC = 0x0023
ALG_SYMCIPHER = 0x0025
ALG_CAMELLIA = 0x0026
ALG_SHA3_256 = 0x0027
ALG_SHA3_384 = 0x0028
ALG_SHA3_512 = 0x0029
ALG_CTR = 0x0040
ALG_OFB = 0x0041
ALG_CBC = 0x0042
ALG_CFB = 0x0043
ALG_ECB = 0x0044

ECC_NIST_P256 = 0x0003
TPM_GENERATED_VALUE = 0xFF544347  # "\xffTCG", section 6.2
ST_ATTEST_QUOTE = 0x8018

#: Digest sizes of the hash algorithms a TPM may name (TPMI_ALG_HASH, section 9.27).
_HASH_SIZES: dict[int, int] = {
    ALG_SHA1: 20,
    ALG_SHA256: 32,
    ALG_SHA384: 48,
    ALG_SHA512: 64,
    ALG_SM3_256: 32,
    ALG_SHA3_256: 32,
    ALG_SHA3_384: 48,
    ALG_SHA3_512: 64,
}
_HASH_NAMES: dict[int, str] = {
    ALG_SHA1: "sha1",
    ALG_SHA256: "sha256",
    ALG_SHA384: "sha384",
    ALG_SHA512: "sha512",
    ALG_SM3_256: "sm3_256",
    ALG_SHA3_256: "sha3_256",
    ALG_SHA3_384: "sha3_384",
    ALG_SHA3_512: "sha3_512",
}
_SYM_OBJECT_ALGS = frozenset({ALG_AES, ALG_SM4, ALG_CAMELLIA})  # TPMI_ALG_SYM_OBJECT, 9.30
_SYM_MODES = frozenset({ALG_CTR, ALG_OFB, ALG_CBC, ALG_CFB, ALG_ECB})  # TPMI_ALG_SYM_MODE, 9.31
_RSA_SCHEMES = frozenset({ALG_RSASSA, ALG_RSAES, ALG_RSAPSS, ALG_OAEP})  # 11.2.4.1
_ECC_SCHEMES = frozenset(  # TPMI_ALG_ECC_SCHEME, 11.2.5.4
    {ALG_ECDSA, ALG_ECDH, ALG_ECDAA, ALG_SM2, ALG_ECSCHNORR, ALG_ECMQV}
)
_KDFS = frozenset({ALG_MGF1, ALG_KDF1_SP800_56A, ALG_KDF2, ALG_KDF1_SP800_108})  # 11.2.3.3

# -- bounds (section 10 and the reference implementation's sizes) ---------------------------

MAX_PUBLIC_SIZE = 1024  # a marshaled TPMT_PUBLIC; RSA 4096 would still fit
MAX_ATTEST_SIZE = 1024  # a marshaled TPMS_ATTEST of a quote
MAX_DIGEST_SIZE = 64  # sizeof(TPMU_HA): TPM2B_DIGEST, TPM2B_DATA payload
MAX_NAME_SIZE = 2 + MAX_DIGEST_SIZE  # sizeof(TPMU_NAME)
MAX_DATA_SIZE = 2 + MAX_DIGEST_SIZE  # sizeof(TPMT_HA): TPM2B_DATA
MAX_RSA_KEY_BYTES = 512  # TPM2B_PUBLIC_KEY_RSA
MAX_ECC_KEY_BYTES = 66  # TPM2B_ECC_PARAMETER (P-521)
MAX_PCR_BANKS = 16  # TPML_PCR_SELECTION count (HASH_COUNT)
MAX_PCR_SELECT = 8  # sizeofSelect: up to 64 PCRs
RSA_DEFAULT_EXPONENT = 65537  # exponent 0 in TPMS_RSA_PARMS, section 12.2.3.5
_P256_BYTES = 32
_RSA_2048_BYTES = 256


class ObjectAttribute(enum.IntFlag):
    """TPMA_OBJECT bits, section 8.3."""

    FIXED_TPM = 1 << 1
    ST_CLEAR = 1 << 2
    FIXED_PARENT = 1 << 4
    SENSITIVE_DATA_ORIGIN = 1 << 5
    USER_WITH_AUTH = 1 << 6
    ADMIN_WITH_POLICY = 1 << 7
    NO_DA = 1 << 10
    ENCRYPTED_DUPLICATION = 1 << 11
    RESTRICTED = 1 << 16
    DECRYPT = 1 << 17
    SIGN_ENCRYPT = 1 << 18
    X509_SIGN = 1 << 19


_DEFINED_ATTRIBUTES = sum(flag.value for flag in ObjectAttribute)  # distinct bits


def hash_alg_name(alg: int) -> str:
    """``"sha256"`` for 0x000B and so on; ``"0x1234"`` for an id this module does not know."""
    return _HASH_NAMES.get(alg, f"0x{alg:04x}")


# -- marshaling helpers ---------------------------------------------------------------------


def u16(value: int) -> bytes:
    """A UINT16, big-endian."""
    return struct.pack(">H", value)


def u32(value: int) -> bytes:
    """A UINT32, big-endian."""
    return struct.pack(">I", value)


def tpm2b(data: bytes) -> bytes:
    """``u16(len(data)) || data``: the marshaling of any TPM2B_* structure."""
    if len(data) > 0xFFFF:
        raise ValueError(f"a TPM2B holds at most 65535 bytes, not {len(data)}")
    return u16(len(data)) + bytes(data)


class Reader:
    """Bounded big-endian reads over untrusted bytes; every refusal names the field."""

    def __init__(self, data: bytes, *, what: str) -> None:
        self._view = memoryview(data)
        self._offset = 0
        self._what = what

    @property
    def remaining(self) -> int:
        return len(self._view) - self._offset

    def _take(self, size: int, name: str) -> memoryview:
        if size > self.remaining:
            raise FormatError(
                f"{self._what} is truncated: {name} needs {size} bytes at offset "
                f"{self._offset}, {self.remaining} remain",
                field=name,
            )
        chunk = self._view[self._offset : self._offset + size]
        self._offset += size
        return chunk

    def u8(self, name: str) -> int:
        return self._take(1, name)[0]

    def u16(self, name: str) -> int:
        return int.from_bytes(self._take(2, name), "big")

    def u32(self, name: str) -> int:
        return int.from_bytes(self._take(4, name), "big")

    def u64(self, name: str) -> int:
        return int.from_bytes(self._take(8, name), "big")

    def raw(self, size: int, name: str) -> bytes:
        return bytes(self._take(size, name))

    def tpm2b(self, name: str, max_size: int) -> bytes:
        """A TPM2B: its size is checked against ``max_size`` and the remaining bytes."""
        size = self.u16(f"{name}.size")
        if size > max_size:
            raise FormatError(
                f"{self._what}: {name} is {size} bytes; the maximum is {max_size}", field=name
            )
        return self.raw(size, name)

    def end(self) -> None:
        """Refuse trailing bytes."""
        if self.remaining:
            raise FormatError(
                f"{self._what} has {self.remaining} trailing bytes after offset {self._offset}",
                field="trailing",
            )


def _check_size(data: bytes, limit: int, what: str) -> None:
    if len(data) > limit:
        raise FormatError(f"{what} is {len(data)} bytes; the maximum is {limit}", field=what)


def _hash_alg(reader: Reader, name: str, *, what: str) -> int:
    alg = reader.u16(name)
    if alg not in _HASH_SIZES:
        raise FormatError(f"{what}: {name} 0x{alg:04x} is not a TPM hash algorithm", field=name)
    return alg


# -- TPMT_PUBLIC ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SymmetricDef:
    """TPMT_SYM_DEF_OBJECT (section 11.1.7): ``algorithm`` is ALG_NULL for none."""

    algorithm: int
    key_bits: int = 0
    mode: int = ALG_NULL


@dataclass(frozen=True)
class Scheme:
    """A TPMT_*_SCHEME or TPMT_KDF_SCHEME: ``scheme`` is ALG_NULL for none.

    ``hash_alg`` is ALG_NULL when the scheme has no hash (NULL, RSAES);
    ``count`` is used by ECDAA only.
    """

    scheme: int
    hash_alg: int = ALG_NULL
    count: int = 0


@dataclass(frozen=True)
class TPMPublic:
    """A parsed TPMT_PUBLIC of an ECC P-256 or RSA 2048 key."""

    type: str  # "ecc" | "rsa"
    name_alg: int
    attributes: int
    auth_policy: bytes
    symmetric: SymmetricDef
    scheme: Scheme
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey = field(repr=False)
    raw: bytes = field(repr=False)
    curve: int | None = None  # ECC only: TPM_ECC_CURVE
    kdf: Scheme | None = None  # ECC only
    key_bits: int | None = None  # RSA only
    exponent: int | None = None  # RSA only, as marshaled (0 means 65537)

    def has(self, attribute: ObjectAttribute) -> bool:
        return bool(self.attributes & attribute)

    @property
    def restricted(self) -> bool:
        return self.has(ObjectAttribute.RESTRICTED)

    @property
    def sign(self) -> bool:
        return self.has(ObjectAttribute.SIGN_ENCRYPT)

    @property
    def decrypt(self) -> bool:
        return self.has(ObjectAttribute.DECRYPT)

    @property
    def fixed_tpm(self) -> bool:
        return self.has(ObjectAttribute.FIXED_TPM)

    @property
    def name(self) -> bytes:
        """The object's TPM Name (see :func:`tpm_name`)."""
        return tpm_name(self.raw)


def _symmetric(reader: Reader) -> SymmetricDef:
    """TPMT_SYM_DEF_OBJECT, section 11.1.7."""
    algorithm = reader.u16("symmetric.algorithm")
    if algorithm == ALG_NULL:
        return SymmetricDef(ALG_NULL)
    if algorithm not in _SYM_OBJECT_ALGS:
        raise FormatError(
            f"TPMT_PUBLIC: symmetric.algorithm 0x{algorithm:04x} is not a TPM symmetric "
            "object algorithm",
            field="symmetric.algorithm",
        )
    key_bits = reader.u16("symmetric.keyBits")
    mode = reader.u16("symmetric.mode")
    if mode not in _SYM_MODES:
        raise FormatError(
            f"TPMT_PUBLIC: symmetric.mode 0x{mode:04x} is not a TPM block cipher mode",
            field="symmetric.mode",
        )
    return SymmetricDef(algorithm, key_bits, mode)


def _scheme(reader: Reader, name: str, allowed: frozenset[int], *, empty: int = -1) -> Scheme:
    """A TPMT_*_SCHEME whose details are TPMS_SCHEME_HASH (TPMS_EMPTY for ``empty``)."""
    scheme = reader.u16(f"{name}.scheme")
    if scheme in (ALG_NULL, empty):
        return Scheme(scheme)
    if scheme not in allowed:
        raise FormatError(
            f"TPMT_PUBLIC: {name}.scheme 0x{scheme:04x} is not allowed here",
            field=f"{name}.scheme",
        )
    hash_alg = _hash_alg(reader, f"{name}.hashAlg", what="TPMT_PUBLIC")
    count = reader.u16(f"{name}.count") if scheme == ALG_ECDAA else 0
    return Scheme(scheme, hash_alg, count)


def _ecc_coordinate(reader: Reader, name: str) -> int:
    value = reader.tpm2b(name, MAX_ECC_KEY_BYTES)
    if not 0 < len(value) <= _P256_BYTES:
        raise FormatError(
            f"TPMT_PUBLIC: {name} is {len(value)} bytes; a P-256 coordinate is 1 to {_P256_BYTES}",
            field=name,
        )
    return int.from_bytes(value, "big")


@dataclass(frozen=True)
class _Parms:
    scheme: Scheme
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey
    curve: int | None = None
    kdf: Scheme | None = None
    key_bits: int | None = None
    exponent: int | None = None


def _ecc_parms(reader: Reader) -> _Parms:
    """TPMS_ECC_PARMS after the symmetric definition (12.2.3.6), then TPMS_ECC_POINT (11.2.5.2)."""
    scheme = _scheme(reader, "scheme", _ECC_SCHEMES)
    curve = reader.u16("curveID")
    if curve != ECC_NIST_P256:
        raise FormatError(
            f"TPMT_PUBLIC: curveID 0x{curve:04x} is not supported (only NIST P-256, 0x0003)",
            field="curveID",
        )
    kdf = _scheme(reader, "kdf", _KDFS)
    x = _ecc_coordinate(reader, "unique.x")
    y = _ecc_coordinate(reader, "unique.y")
    try:
        key = ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
    except ValueError:
        raise FormatError("TPMT_PUBLIC: unique is not a point on P-256", field="unique") from None
    return _Parms(scheme, key, curve=curve, kdf=kdf)


def _rsa_parms(reader: Reader) -> _Parms:
    """TPMS_RSA_PARMS after the symmetric definition (12.2.3.5), then TPM2B_PUBLIC_KEY_RSA."""
    scheme = _scheme(reader, "scheme", _RSA_SCHEMES, empty=ALG_RSAES)
    key_bits = reader.u16("keyBits")
    if key_bits != 2048:
        raise FormatError(
            f"TPMT_PUBLIC: RSA keyBits {key_bits} is not supported (only 2048)", field="keyBits"
        )
    exponent = reader.u32("exponent")
    modulus = reader.tpm2b("unique.rsa", MAX_RSA_KEY_BYTES)
    n = int.from_bytes(modulus, "big")
    if len(modulus) != _RSA_2048_BYTES or n.bit_length() != 2048:
        raise FormatError(
            f"TPMT_PUBLIC: unique.rsa is not a 2048-bit modulus ({len(modulus)} bytes)",
            field="unique.rsa",
        )
    try:
        key = rsa.RSAPublicNumbers(exponent or RSA_DEFAULT_EXPONENT, n).public_key()
    except ValueError:
        raise FormatError(
            f"TPMT_PUBLIC: exponent {exponent} is not a valid RSA public exponent",
            field="exponent",
        ) from None
    return _Parms(scheme, key, key_bits=key_bits, exponent=exponent)


def parse_public(data: bytes) -> TPMPublic:
    """Parse a marshaled TPMT_PUBLIC (no TPM2B size prefix) of an ECC P-256 or RSA 2048 key."""
    _check_size(data, MAX_PUBLIC_SIZE, "TPMT_PUBLIC")
    reader = Reader(data, what="TPMT_PUBLIC")
    alg = reader.u16("type")
    if alg not in (ALG_ECC, ALG_RSA):
        raise FormatError(
            f"TPMT_PUBLIC: type 0x{alg:04x} is not supported (only ECC and RSA keys)",
            field="type",
        )
    name_alg = _hash_alg(reader, "nameAlg", what="TPMT_PUBLIC")
    attributes = reader.u32("objectAttributes")
    if attributes & ~_DEFINED_ATTRIBUTES:
        raise FormatError(
            f"TPMT_PUBLIC: objectAttributes 0x{attributes:08x} sets reserved bits",
            field="objectAttributes",
        )
    auth_policy = reader.tpm2b("authPolicy", MAX_DIGEST_SIZE)
    if auth_policy and len(auth_policy) != _HASH_SIZES[name_alg]:
        raise FormatError(
            f"TPMT_PUBLIC: authPolicy is {len(auth_policy)} bytes; a "
            f"{hash_alg_name(name_alg)} policy digest is {_HASH_SIZES[name_alg]}",
            field="authPolicy",
        )
    symmetric = _symmetric(reader)
    parms = _ecc_parms(reader) if alg == ALG_ECC else _rsa_parms(reader)
    reader.end()
    return TPMPublic(
        type="ecc" if alg == ALG_ECC else "rsa",
        name_alg=name_alg,
        attributes=attributes,
        auth_policy=auth_policy,
        symmetric=symmetric,
        scheme=parms.scheme,
        public_key=parms.public_key,
        raw=bytes(data),
        curve=parms.curve,
        kdf=parms.kdf,
        key_bits=parms.key_bits,
        exponent=parms.exponent,
    )


def tpm_name(public_bytes: bytes) -> bytes:
    """The Name of a marshaled TPMT_PUBLIC: ``u16(nameAlg) || SHA-256(public_bytes)``.

    Only nameAlg SHA-256 is supported. Only ``type`` and ``nameAlg`` are read
    (the Name covers the bytes as they are); use :func:`parse_public` to
    validate the rest.
    """
    _check_size(public_bytes, MAX_PUBLIC_SIZE, "TPMT_PUBLIC")
    reader = Reader(public_bytes, what="TPMT_PUBLIC")
    reader.u16("type")
    name_alg = reader.u16("nameAlg")
    if name_alg != ALG_SHA256:
        raise FormatError(
            f"TPMT_PUBLIC: nameAlg {hash_alg_name(name_alg)} is not supported (only sha256)",
            field="nameAlg",
        )
    return u16(ALG_SHA256) + hashlib.sha256(public_bytes).digest()


# -- TPMS_ATTEST ----------------------------------------------------------------------------


@dataclass(frozen=True)
class QuoteAttest:
    """A parsed TPMS_ATTEST of type TPM_ST_ATTEST_QUOTE (sections 10.12.12, 10.12.4)."""

    qualified_signer: bytes
    extra_data: bytes
    clock: int
    reset_count: int
    restart_count: int
    safe: bool
    firmware_version: int
    #: (hash alg id, selected PCR indices ascending), one entry per TPMS_PCR_SELECTION
    pcr_selection: list[tuple[int, tuple[int, ...]]]
    pcr_digest: bytes
    raw: bytes = field(repr=False, default=b"")


def _pcr_selection(reader: Reader) -> list[tuple[int, tuple[int, ...]]]:
    """TPML_PCR_SELECTION (10.9.7) of TPMS_PCR_SELECTION (10.6.2)."""
    count = reader.u32("pcrSelect.count")
    if count > MAX_PCR_BANKS:
        raise FormatError(
            f"TPMS_ATTEST: pcrSelect.count {count} is over the maximum of {MAX_PCR_BANKS}",
            field="pcrSelect.count",
        )
    banks = []
    for i in range(count):
        name = f"pcrSelect[{i}]"
        hash_alg = _hash_alg(reader, f"{name}.hash", what="TPMS_ATTEST")
        size = reader.u8(f"{name}.sizeofSelect")
        if size > MAX_PCR_SELECT:
            raise FormatError(
                f"TPMS_ATTEST: {name}.sizeofSelect {size} is over the maximum of {MAX_PCR_SELECT}",
                field=f"{name}.sizeofSelect",
            )
        bitmap = reader.raw(size, f"{name}.pcrSelect")
        indices = tuple(
            8 * octet + bit
            for octet, value in enumerate(bitmap)
            for bit in range(8)
            if value & (1 << bit)
        )
        banks.append((hash_alg, indices))
    return banks


def parse_attest(data: bytes) -> QuoteAttest:
    """Parse a marshaled TPMS_ATTEST (the contents of a TPM2B_ATTEST) of a quote."""
    _check_size(data, MAX_ATTEST_SIZE, "TPMS_ATTEST")
    reader = Reader(data, what="TPMS_ATTEST")
    magic = reader.u32("magic")
    if magic != TPM_GENERATED_VALUE:
        raise FormatError(
            f"TPMS_ATTEST: magic 0x{magic:08x} is not TPM_GENERATED_VALUE (0xff544347)",
            field="magic",
        )
    attest_type = reader.u16("type")
    if attest_type != ST_ATTEST_QUOTE:
        raise FormatError(
            f"TPMS_ATTEST: type 0x{attest_type:04x} is not a quote (TPM_ST_ATTEST_QUOTE, 0x8018)",
            field="type",
        )
    qualified_signer = reader.tpm2b("qualifiedSigner", MAX_NAME_SIZE)
    extra_data = reader.tpm2b("extraData", MAX_DATA_SIZE)
    clock = reader.u64("clockInfo.clock")
    reset_count = reader.u32("clockInfo.resetCount")
    restart_count = reader.u32("clockInfo.restartCount")
    safe = reader.u8("clockInfo.safe")
    if safe not in (0, 1):
        raise FormatError(
            f"TPMS_ATTEST: clockInfo.safe is {safe}, not YES (1) or NO (0)",
            field="clockInfo.safe",
        )
    firmware_version = reader.u64("firmwareVersion")
    selection = _pcr_selection(reader)
    digest = reader.tpm2b("pcrDigest", MAX_DIGEST_SIZE)
    reader.end()
    return QuoteAttest(
        qualified_signer=qualified_signer,
        extra_data=extra_data,
        clock=clock,
        reset_count=reset_count,
        restart_count=restart_count,
        safe=bool(safe),
        firmware_version=firmware_version,
        pcr_selection=selection,
        pcr_digest=digest,
        raw=bytes(data),
    )
