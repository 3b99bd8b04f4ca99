"""What the update cycle checks against the signed (TUF-verified) release metadata.

Pure checks, no I/O; each raises. The sealed model's header is not
authenticated until decryption, so :func:`check_header` compares it with the
*signed* metadata before the TPM is asked to unwrap anything;
:func:`check_decrypted` checks the model actually loaded from the slot in the
trial; :func:`check_envelope_target` checks the device's envelope target
before it is downloaded.
"""

from __future__ import annotations

import hashlib
import hmac

from edgeseal.device_agent.errors import AgentError
from edgeseal.device_agent.slot_state import LoadedModel
from edgeseal.sdk.errors import FormatError
from edgeseal.sdk.hazmat.format import SealedModelHeader
from edgeseal.sdk.releases import EnvelopeMetadata, ReleaseMetadata

#: An HPKE envelope is 129 bytes; anything much larger is not one.
MAX_ENVELOPE_BYTES = 4096


class HeaderMismatchError(AgentError):
    """The downloaded model's header does not say what the signed release metadata says."""


def plaintext_digest(alg: str, data: bytes) -> bytes:
    """The digest the sealed header names (``blake3`` or ``sha256``) of the plaintext."""
    if alg == "sha256":
        return hashlib.sha256(data).digest()
    if alg == "blake3":
        import blake3

        return bytes(blake3.blake3(data).digest())
    raise FormatError(f"unknown plaintext digest algorithm {alg!r}", field="digest_alg")


def check_header(header: SealedModelHeader, meta: ReleaseMetadata, hardware_class: str) -> None:
    """The (not yet authenticated) header must say what the signed metadata says."""
    problems = []
    if header.family != meta.family:
        problems.append(f"family {header.family!r} is not {meta.family!r}")
    if header.version != meta.version:
        problems.append(f"version {header.version} is not {meta.version}")
    if hardware_class not in header.hardware:
        problems.append(f"it is not for this device's hardware class {hardware_class!r}")
    if header.digest_alg != meta.plaintext.digest_alg:
        problems.append(f"digest algorithm {header.digest_alg} is not {meta.plaintext.digest_alg}")
    if not hmac.compare_digest(header.plaintext_digest, meta.plaintext.digest):
        problems.append("plaintext digest differs from the signed one")
    if header.plaintext_size != meta.plaintext.size:
        problems.append(f"plaintext size {header.plaintext_size} is not {meta.plaintext.size}")
    if problems:
        raise HeaderMismatchError(
            f"the downloaded {meta.target_path} disagrees with its signed metadata: "
            + "; ".join(problems)
        )


def check_decrypted(loaded: LoadedModel, meta: ReleaseMetadata) -> None:
    """The model loaded from the slot must have the size and digest the release signs.

    :meth:`~edgeseal.device_agent.slot_state.SlotState.load_slot` authenticated
    every chunk, hashed the plaintext and matched it with the now-authenticated
    header, and matched that header's digest and algorithm with slot.json; so
    comparing slot.json with the signed release here proves the plaintext
    digest without hashing the plaintext a second time.
    """
    if (
        len(loaded.plaintext) != meta.plaintext.size
        or loaded.slot.digest_alg != meta.plaintext.digest_alg
        or not hmac.compare_digest(loaded.slot.plaintext_digest or "", meta.plaintext.digest.hex())
    ):
        raise HeaderMismatchError(
            "the decrypted model's digest or size is not the one the release signs"
        )


def check_envelope_target(
    path: str, custom: object, length: int, device_id: str, meta: ReleaseMetadata
) -> None:
    """The envelope target ``path`` must name this device and release and be small.

    Raises :class:`~edgeseal.device_agent.tuf_errors.TargetVerificationError`.
    """
    from edgeseal.device_agent.tuf_errors import TargetVerificationError

    try:
        env_meta = EnvelopeMetadata.from_custom(custom)
    except FormatError as exc:
        raise TargetVerificationError(
            f"envelope metadata is malformed: {exc.message}", target=path
        ) from exc
    want = (device_id, meta.family, meta.version)
    if (env_meta.device, env_meta.family, env_meta.version) != want:
        raise TargetVerificationError("envelope metadata names another release", target=path)
    if length > MAX_ENVELOPE_BYTES:
        raise TargetVerificationError(
            f"envelope is {length} bytes, over {MAX_ENVELOPE_BYTES}", target=path
        )


__all__ = [
    "MAX_ENVELOPE_BYTES",
    "HeaderMismatchError",
    "check_decrypted",
    "check_envelope_target",
    "check_header",
    "plaintext_digest",
]
