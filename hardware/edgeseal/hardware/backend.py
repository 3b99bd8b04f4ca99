"""The key backend the device agent codes against, and the dispatcher that opens one.

Two implementations: :class:`~edgeseal.hardware.tpm.TPMBackend` (a real TPM,
a firmware TPM or swtpm, through tpm2-pytss) and
:class:`~edgeseal.hardware.software.SoftwareBackend` (files on disk, for
development only, loudly insecure). Higher layers test against both and must
see the same policy behaviour.

Backend specs:

===========================  ===============================================
``device:/dev/tpmrm0``       the kernel resource manager (discrete or fTPM)
``swtpm:host=H,port=P``      a swtpm emulator (no resource manager)
``mssim:host=H,port=P``      the Microsoft / IBM reference simulator
``tabrmd``                   the tpm2-abrmd user-space resource manager
``software:/path/to/dir``    INSECURE software keys in a state directory
===========================  ===============================================
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from cryptography.hazmat.primitives.asymmetric import ec

from edgeseal.hardware.errors import HardwareError, PolicyCheckError
from edgeseal.hardware.policy import (
    PCR_COUNT,
    PCRValues,
    SignedPCRPolicy,
    authority_fingerprint,
    policy_authorize_digest,
)
from edgeseal.hardware.tpm_blob import MAX_SECRET_BYTES

TPM_TCTI_NAMES = ("device", "swtpm", "mssim", "tabrmd")
SOFTWARE_PREFIX = "software:"

# Owner-range NV indices (TCG Registry of Reserved TPM 2.0 Handles: 0x01500000-0x015FFFFF
# is the owner range for "owner-defined" indices).
NV_OWNER_FIRST = 0x01500000
NV_OWNER_LAST = 0x015FFFFF


@runtime_checkable
class KeyBackend(Protocol):
    """Keys rooted in the device's TPM (or a software stand-in).

    Every method raises :class:`~edgeseal.hardware.errors.HardwareError`
    subclasses only.
    """

    @property
    def kind(self) -> str:
        """``"tpm"`` or ``"software"``."""
        ...

    @property
    def insecure(self) -> bool:
        """True when keys are not protected by hardware (the software backend)."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def create_device_key(
        self, authority: ec.EllipticCurvePublicKey | None, *, replace: bool = False
    ) -> ec.EllipticCurvePublicKey:
        """Create the ECC P-256 decryption key; bind it to ``authority``'s signed PCR policies.

        Raises KeyExistsError when a device key exists and ``replace`` is False.
        """
        ...

    def device_key_public(self) -> ec.EllipticCurvePublicKey:
        """The device decryption key's public key (KeyNotFoundError if not provisioned)."""
        ...

    def ecdh_zgen(
        self, peer: ec.EllipticCurvePublicKey, *, approved: SignedPCRPolicy | None = None
    ) -> bytes:
        """The 32-byte X coordinate of d_device * peer (the DHKEM(P-256) DH output)."""
        ...

    def seal(
        self,
        secret: bytes,
        *,
        pcrs: Sequence[int] = (),
        authority: ec.EllipticCurvePublicKey | None = None,
    ) -> bytes:
        """Seal up to 128 bytes to this TPM, optionally bound to PCRs or to an authority."""
        ...

    def unseal(self, blob: bytes, *, approved: SignedPCRPolicy | None = None) -> bytes: ...

    def pcr_read(self, indices: Sequence[int]) -> PCRValues: ...

    def pcr_extend(self, index: int, digest: bytes) -> None: ...

    def nv_counter_define(self, index: int) -> None:
        """Define a monotonic counter (idempotent); a new counter reads >= 1 at once."""
        ...

    def nv_counter_increment(self, index: int) -> int:
        """Increment by one and return the new value."""
        ...

    def nv_counter_read(self, index: int) -> int: ...

    def ek_certificates(self) -> list[bytes]:
        """DER EK certificates found in the standard NV indices (may be empty)."""
        ...

    def flush_transients(self) -> None:
        """Flush transient objects and sessions a crashed process left in the TPM."""
        ...

    # Attestation (docs/dev/attestation-contracts.md). Backends without a TPM raise
    # AttestationUnsupportedError.

    def create_attestation_key(self, *, replace: bool = False) -> bytes:
        """Create the attestation key (AK), or return the existing one unless ``replace``.

        Returns the AK's marshaled TPMT_PUBLIC (no TPM2B size prefix).
        """
        ...

    def attestation_key_public(self) -> bytes:
        """The AK's marshaled TPMT_PUBLIC (KeyNotFoundError if there is no AK)."""
        ...

    def quote(self, qualifying_data: bytes, pcrs: Sequence[int]) -> tuple[bytes, bytes]:
        """Quote the SHA-256 PCRs ``pcrs`` with the AK: (marshaled TPMS_ATTEST, DER ECDSA).

        ``qualifying_data`` (1..32 bytes, else ValueError) becomes the quote's extraData.
        """
        ...

    def activate_credential(self, credential_blob: bytes, encrypted_secret: bytes) -> bytes:
        """TPM2_ActivateCredential with the AK and the RSA EK; the credential's secret.

        Inputs are a marshaled TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET (with
        their size prefixes). CredentialError when the TPM refuses the credential.
        """
        ...


def check_nv_index(index: int) -> None:
    """Refuse NV indices outside the owner range this project defines counters in."""
    if not NV_OWNER_FIRST <= index <= NV_OWNER_LAST:
        raise HardwareError(
            f"NV counter index 0x{index:08x} is outside the owner range "
            f"0x{NV_OWNER_FIRST:08x}..0x{NV_OWNER_LAST:08x}"
        )


def check_pcr_indices(indices: Sequence[int]) -> list[int]:
    """Sorted, de-duplicated PCR indices; ValueError for anything outside 0..23."""
    out = sorted(set(indices))
    for index in out:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < PCR_COUNT:
            raise ValueError(f"PCR index must be an integer in 0..23, got {index!r}")
    return out


def check_seal_args(
    secret: bytes, pcrs: Sequence[int], authority: ec.EllipticCurvePublicKey | None
) -> list[int]:
    """Shared argument rules of ``seal()`` for every backend."""
    if not 1 <= len(secret) <= MAX_SECRET_BYTES:
        raise ValueError(
            f"a sealed secret is 1..{MAX_SECRET_BYTES} bytes (TPM MAX_SYM_DATA), "
            f"got {len(secret)}; seal a key that encrypts larger data instead"
        )
    indices = check_pcr_indices(pcrs)
    if indices and authority is not None:
        raise ValueError("seal to literal PCR values or to an authority's signed policy, not both")
    return indices


def pcr_mismatch_message(changed: Sequence[int], since: str) -> str:
    """The one sentence both backends use to say which PCRs changed."""
    noun = "PCR" if len(changed) == 1 else "PCRs"
    return f"PCR policy check failed: {noun} {', '.join(map(str, changed))} changed {since}"


def check_approved(
    auth_policy: bytes, approved: SignedPCRPolicy | None, what: str
) -> SignedPCRPolicy:
    """Check, before asking the TPM, that ``approved`` is signed by the authority ``what``
    is bound to (its authPolicy); raise PolicyCheckError saying what is wrong."""
    if approved is None:
        raise PolicyCheckError(f"{what} is bound to a signed PCR policy: pass the approved policy")
    if policy_authorize_digest(approved.authority) != auth_policy:
        raise PolicyCheckError(
            "PCR policy check failed: the policy is signed by authority "
            f"{authority_fingerprint(approved.authority)}, not by the one {what} is bound to"
        )
    approved.verify()
    return approved


def open_backend(spec: str, **options: int) -> KeyBackend:
    """Open the key backend named by ``spec`` (see the module docstring).

    ``options`` go to :class:`TPMBackend` (``srk_handle``, ``device_key_handle``,
    ``ak_handle``).
    """
    if spec.startswith(SOFTWARE_PREFIX):
        # Imported here: each backend pulls its own dependencies (tpm2-pytss is optional).
        from edgeseal.hardware.software import SoftwareBackend

        state_dir = spec[len(SOFTWARE_PREFIX) :]
        if not state_dir:
            raise HardwareError("software key backend needs a state directory: software:/path")
        return SoftwareBackend(Path(state_dir))
    name = spec.split(":", 1)[0]
    if name not in TPM_TCTI_NAMES:
        raise HardwareError(
            f"unknown key backend {spec!r}: expected one of "
            "device:/dev/tpmrm0, swtpm:host=H,port=P, mssim:host=H,port=P, tabrmd, "
            "software:/path/to/dir"
        )
    from edgeseal.hardware.tpm import TPMBackend

    return TPMBackend(spec, **options)
