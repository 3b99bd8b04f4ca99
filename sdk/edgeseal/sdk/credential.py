"""TPM2_MakeCredential in software: a secret only the TPM holding both EK and AK can recover.

The server encrypts a fresh secret to the device's endorsement key (EK) and
binds it to the Name of the attestation key (AK) the device claims to have.
The TPM's ActivateCredential releases the secret only if the EK's private key
is in that TPM *and* an object with that Name is loaded there, so a device that
returns the secret has proved that AK and EK live in one TPM (TPM 2.0 Part 1
section 24, "Credential Protection"; Part 3 section 12.6).

RSA 2048 EKs only (the TCG EK Credential Profile template L-1). ECC EKs need
the KDFe seed of Part 1 section 11.4.10.3 and are refused by name for now.

Pure: the seed and OAEP padding come from the operating system's CSPRNG; no
I/O and nothing stored.
"""

from __future__ import annotations

import hmac
import os

from cryptography.hazmat.decrepit.ciphers.modes import CFB
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from edgeseal.sdk.tpm_wire import ALG_SHA256, tpm2b, u16, u32

__all__ = ["IDENTITY_LABEL", "MAX_SECRET_SIZE", "kdfa", "make_credential"]

#: OAEP label of the seed, with its terminating NUL (Part 1 section 24.4).
IDENTITY_LABEL = b"IDENTITY\0"
MAX_SECRET_SIZE = 32  # a TPM2B_DIGEST of the EK's nameAlg, SHA-256
_SEED_SIZE = 32  # the digest size of the EK's nameAlg
_AES_128_KEY_BITS = 128  # the EK template's symmetric definition: AES-128-CFB
_SHA256_NAME_SIZE = 2 + 32
_KDFA_MAX_BITS = 1 << 16  # bits is a UINT16 in the TPM's KDFa


def kdfa(key: bytes, label: bytes, context_u: bytes, context_v: bytes, bits: int) -> bytes:
    """KDFa with HMAC-SHA-256 (Part 1 section 11.4.10.2; SP 800-108 counter mode).

    ``label`` is a string without or with its terminating NUL (one is appended
    when missing, as the TPM does). ``bits`` must be a positive multiple of 8.
    """
    if not 0 < bits < _KDFA_MAX_BITS or bits % 8:
        raise ValueError(f"KDFa bits must be a positive multiple of 8 under 65536, not {bits}")
    if not label.endswith(b"\0"):
        label += b"\0"
    fixed = label + context_u + context_v + u32(bits)
    out = b""
    counter = 1
    while len(out) * 8 < bits:
        out += hmac.digest(key, u32(counter) + fixed, "sha256")
        counter += 1
    return out[: bits // 8]


def _check_inputs(ek_public: rsa.RSAPublicKey, ak_name: bytes, secret: bytes) -> None:
    if not isinstance(ek_public, rsa.RSAPublicKey):
        # ValueError, not TypeError: an ECC EK is a valid key this version cannot use yet.
        raise ValueError(  # noqa: TRY004
            f"the endorsement key is a {type(ek_public).__name__}; only RSA 2048 EKs are "
            "supported (ECC EKs are not supported yet)"
        )
    if ek_public.key_size != 2048:
        raise ValueError(
            f"the endorsement key is RSA {ek_public.key_size}; only RSA 2048 EKs are supported"
        )
    if len(ak_name) != _SHA256_NAME_SIZE or ak_name[:2] != u16(ALG_SHA256):
        raise ValueError(
            f"ak_name is not a SHA-256 TPM Name (34 bytes starting 000b): {ak_name[:4].hex()}..., "
            f"{len(ak_name)} bytes"
        )
    if not 0 < len(secret) <= MAX_SECRET_SIZE:
        raise ValueError(f"the secret must be 1 to {MAX_SECRET_SIZE} bytes, not {len(secret)}")


def make_credential(
    ek_public: rsa.RSAPublicKey, ak_name: bytes, secret: bytes
) -> tuple[bytes, bytes]:
    """Protect ``secret`` for the TPM with ``ek_public`` and the object named ``ak_name``.

    Returns ``(credential_blob, encrypted_secret)``: the marshaled
    TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET, both with their size prefixes,
    as TPM2_ActivateCredential takes them. Raises ValueError for an EK that is
    not RSA 2048, an ``ak_name`` that is not a SHA-256 Name, or a secret that
    is not 1 to 32 bytes.
    """
    _check_inputs(ek_public, ak_name, secret)
    seed = os.urandom(_SEED_SIZE)
    # Part 1 section 24.4 / Annex B.10.3: the seed is OAEP-encrypted under the EK.
    encrypted_seed = ek_public.encrypt(
        seed,
        padding.OAEP(
            mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=IDENTITY_LABEL
        ),
    )
    # Part 1 section 24.4: the credential is a TPM2B_DIGEST encrypted with a key derived
    # from the seed and the AK's Name; section 24.5: an outer HMAC covers it and the Name.
    sym_key = kdfa(seed, b"STORAGE", ak_name, b"", _AES_128_KEY_BITS)
    # CFB sits in cryptography's "decrepit" namespace; the TPM mandates it for credentials.
    encryptor = Cipher(algorithms.AES(sym_key), CFB(bytes(16))).encryptor()
    enc_identity = encryptor.update(tpm2b(secret)) + encryptor.finalize()
    hmac_key = kdfa(seed, b"INTEGRITY", b"", b"", 256)
    outer_hmac = hmac.digest(hmac_key, enc_identity + ak_name, "sha256")
    credential_blob = tpm2b(tpm2b(outer_hmac) + enc_identity)
    return credential_blob, tpm2b(encrypted_seed)
