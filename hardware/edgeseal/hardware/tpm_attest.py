"""Attestation on the TPM: the attestation key (AK), quotes and ActivateCredential.

Functions over an open ESAPI context; :class:`~edgeseal.hardware.tpm.TPMBackend`
exposes them through the KeyBackend interface. The byte formats and the
enrollment flow are in ``docs/dev/attestation-contracts.md``.

The AK is an ECC P-256 restricted signing key, a *primary* key in the
endorsement hierarchy persisted at :data:`~edgeseal.hardware.tpm_objects.AK_HANDLE`:
a TPM obfuscates the reset and restart counts and the firmware version in what
keys outside the endorsement and platform hierarchies sign (Part 3, 18.1), and
a verifier needs those counts.

ActivateCredential (Part 1, 24) shows a server that the AK lives in the TPM its
EK certificate names. The EK (RSA 2048, TCG template L-1) is recreated from the
endorsement seed for each call and flushed afterwards. Its policy,
PolicySecret(TPM_RH_ENDORSEMENT), is satisfied in a policy session salted to
the EK itself, which also encrypts the recovered secret on the bus.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import Iterator, Sequence
from typing import Any

from tpm2_pytss import ESAPI, TSS2_Exception
from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_SE, TPMA_SESSION
from tpm2_pytss.types import (
    TPM2B_DATA,
    TPM2B_ENCRYPTED_SECRET,
    TPM2B_ID_OBJECT,
    TPM2B_PUBLIC,
    TPMT_PUBLIC,
    TPMT_SIG_SCHEME,
    TPMT_SYM_DEF,
)
from tpm2_pytss.utils import NoSuchIndex, create_ek_template

from edgeseal.hardware import tpm_nv
from edgeseal.hardware import tpm_objects as obj
from edgeseal.hardware.backend import check_pcr_indices
from edgeseal.hardware.errors import (
    AttestationUnsupportedError,
    CredentialError,
    KeyNotFoundError,
    TPMCommandError,
)
from edgeseal.hardware.tpm_errors import (
    RC_INTEGRITY,
    RC_SIZE,
    RC_VALUE,
    Context,
    tpm_call,
    tpm_error_code,
    translate,
)

log = logging.getLogger(__name__)

#: TPM2_Quote qualifying data: at most one SHA-256 digest (the contract's bound).
MAX_QUALIFYING_DATA = 32
# Marshaled TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET are far smaller (70 and 258 bytes
# for an RSA 2048 EK); anything larger is refused before it is parsed.
MAX_CREDENTIAL_BYTES = 1024
_SIZE_PREFIX = 2  # the u16 size of a marshaled TPM2B
_AK_UNIQUE_BYTES = 32
# The EK template and nonce indices hold a few hundred bytes: read them in small chunks,
# well below the TPM2_PT_NV_BUFFER_MAX of the TPMs we know (swtpm, fTPMs, dTPMs).
_NV_CHUNK = 512

_RC_INSUFFICIENT = 0x09A
# Older libtpms (0.9.2 in Debian 12) answers a secret that does not decrypt with
# TPM_RC_FAILURE, not TPM_RC_VALUE (fixed in stefanberger/libtpms#445). A TPM really in
# failure mode would already have refused the commands before ActivateCredential.
_RC_FAILURE = 0x101
_SECRET_REFUSALS = frozenset({RC_VALUE, RC_SIZE, _RC_INSUFFICIENT, _RC_FAILURE})


def _flush(esapi: ESAPI, handle: ESYS_TR) -> None:
    try:
        esapi.flush_context(handle)
    except TSS2_Exception as exc:
        log.warning("could not flush a TPM handle: %s", exc)


def _close(esapi: ESAPI, handle: ESYS_TR) -> None:
    """Forget an ESYS_TR of a persistent object (the object stays in the TPM)."""
    with contextlib.suppress(TSS2_Exception):
        esapi.tr_close(handle)


# -- the attestation key ---------------------------------------------------------------


def _lookup(esapi: ESAPI, handle: int) -> tuple[ESYS_TR, TPMT_PUBLIC] | None:
    """The ESYS_TR and public area of the key at ``handle``, or None if there is none."""
    try:
        with tpm_call(f"find the attestation key at 0x{handle:08x}", Context.KEY):
            tr = esapi.tr_from_tpmpublic(handle)
    except KeyNotFoundError:
        return None
    try:
        with tpm_call("read the attestation key"):
            public, _, _ = esapi.read_public(tr)
    except BaseException:
        _close(esapi, tr)
        raise
    return tr, public.publicArea


def _not_an_ak(handle: int) -> TPMCommandError:
    return TPMCommandError(
        f"persistent handle 0x{handle:08x} holds a key that is not an attestation key "
        "(ECC P-256 restricted ECDSA signing key); create_attestation_key(replace=True) "
        "replaces it"
    )


@contextlib.contextmanager
def _attestation_key(esapi: ESAPI, handle: int) -> Iterator[ESYS_TR]:
    """The persistent AK, checked to be one; KeyNotFoundError if there is none."""
    found = _lookup(esapi, handle)
    if found is None:
        raise KeyNotFoundError(
            f"no attestation key at 0x{handle:08x}: create one first (edgeseal-agent enroll)"
        )
    tr, area = found
    try:
        if not obj.is_attestation_key(area):
            raise _not_an_ak(handle)
        yield tr
    finally:
        _close(esapi, tr)


def create_attestation_key(esapi: ESAPI, handle: int, *, replace: bool = False) -> bytes:
    """Create the AK at ``handle`` (or return the existing one); its marshaled TPMT_PUBLIC.

    With ``replace`` the new AK is created before the old one is evicted, so a
    TPM that cannot create it keeps the old one.
    """
    existing = _lookup(esapi, handle)
    if existing is not None and not replace:
        tr, area = existing
        _close(esapi, tr)
        if not obj.is_attestation_key(area):
            raise _not_an_ak(handle)
        return bytes(area.marshal())
    old = existing[0] if existing is not None else None
    template = obj.ak_template(secrets.token_bytes(_AK_UNIQUE_BYTES))
    try:
        with tpm_call("create the attestation key (TPM2_CreatePrimary, endorsement)"):
            transient, public, _, _, _ = esapi.create_primary(None, template, ESYS_TR.ENDORSEMENT)
        try:
            if old is not None:
                log.warning("replacing the attestation key at 0x%08x", handle)
                with tpm_call("evict the old attestation key"):
                    esapi.evict_control(ESYS_TR.OWNER, old, handle)
            with tpm_call("persist the attestation key"):
                _close(esapi, esapi.evict_control(ESYS_TR.OWNER, transient, handle))
        finally:
            _flush(esapi, transient)
    finally:
        if old is not None:
            _close(esapi, old)  # ESAPI keeps an evicted object's ESYS_TR until closed
    log.info("created the attestation key at 0x%08x", handle)
    return bytes(public.publicArea.marshal())


def attestation_key_public(esapi: ESAPI, handle: int) -> bytes:
    """The AK's marshaled TPMT_PUBLIC; KeyNotFoundError if there is no AK."""
    found = _lookup(esapi, handle)
    if found is None:
        raise KeyNotFoundError(f"no attestation key at 0x{handle:08x}")
    tr, area = found
    _close(esapi, tr)
    if not obj.is_attestation_key(area):
        raise _not_an_ak(handle)
    return bytes(area.marshal())


# -- quotes ----------------------------------------------------------------------------


def quote(
    esapi: ESAPI, handle: int, qualifying_data: bytes, pcrs: Sequence[int]
) -> tuple[bytes, bytes]:
    """TPM2_Quote of the SHA-256 PCRs ``pcrs`` with the AK: (TPMS_ATTEST bytes, DER signature).

    The AK's own scheme (ECDSA/SHA-256) signs: SHA-256 over the returned attest bytes.
    """
    indices = check_pcr_indices(pcrs)
    if not indices:
        raise ValueError("a quote needs at least one PCR index")
    data = bytes(qualifying_data)
    if not 1 <= len(data) <= MAX_QUALIFYING_DATA:
        raise ValueError(
            f"qualifying data is 1..{MAX_QUALIFYING_DATA} bytes (a nonce or a digest), "
            f"got {len(data)}"
        )
    with (
        _attestation_key(esapi, handle) as ak,
        tpm_call(f"quote PCRs {', '.join(map(str, indices))}"),
    ):
        attest, signature = esapi.quote(
            ak,
            obj.pcr_selection(indices),
            TPM2B_DATA(data),
            TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL),
        )
    return bytes(attest), obj.ecdsa_der(signature)


# -- the endorsement key and ActivateCredential ----------------------------------------


def ek_template(esapi: ESAPI) -> TPM2B_PUBLIC:
    """The RSA 2048 EK's template: TCG EK Credential Profile template L-1, or what the
    manufacturer stored for it (template at 0x01C00004, nonce at 0x01C00003)."""

    def read(index: int) -> bytes:
        if int(index) == obj.EK_RSA2048_CERT_INDEX:
            raise NoSuchIndex(index)  # the certificate is not needed to recreate the key
        try:
            return tpm_nv.read_nv(esapi, int(index), _NV_CHUNK)
        except KeyNotFoundError as exc:
            raise NoSuchIndex(index) from exc

    _, template = create_ek_template("EK-RSA2048", read)
    area = template.publicArea
    if area.type != TPM2_ALG.RSA:
        raise AttestationUnsupportedError(
            "the TPM's stored EK template is not RSA: ECC EKs are not supported yet"
        )
    if bytes(area.authPolicy) != obj.EK_POLICY_SECRET_ENDORSEMENT:
        raise AttestationUnsupportedError(
            "the TPM's stored EK template has a policy other than "
            "PolicySecret(TPM_RH_ENDORSEMENT): not supported"
        )
    return template


@contextlib.contextmanager
def _endorsement_key(esapi: ESAPI) -> Iterator[ESYS_TR]:
    """The RSA 2048 EK as a transient object, flushed afterwards."""
    template = ek_template(esapi)
    with tpm_call("recreate the endorsement key (RSA 2048, template L-1)"):
        ek, _, _, _, _ = esapi.create_primary(None, template, ESYS_TR.ENDORSEMENT)
    try:
        yield ek
    finally:
        _flush(esapi, ek)


@contextlib.contextmanager
def _ek_policy_session(esapi: ESAPI, ek: ESYS_TR) -> Iterator[ESYS_TR]:
    """A policy session, salted to the EK, that satisfies PolicySecret(TPM_RH_ENDORSEMENT).

    Its ENCRYPT attribute has the TPM encrypt the first response parameter
    (ActivateCredential's certInfo) with AES-128-CFB.
    """
    with tpm_call("start a policy session salted to the EK"):
        session = esapi.start_auth_session(
            tpm_key=ek,
            bind=ESYS_TR.NONE,
            session_type=TPM2_SE.POLICY,
            symmetric=TPMT_SYM_DEF.parse("aes128cfb"),
            auth_hash=TPM2_ALG.SHA256,
        )
    try:
        with tpm_call("PolicySecret(TPM_RH_ENDORSEMENT) for the EK", Context.POLICY):
            esapi.trsess_set_attributes(
                session, TPMA_SESSION.CONTINUESESSION | TPMA_SESSION.ENCRYPT
            )
            esapi.policy_secret(ESYS_TR.ENDORSEMENT, session)
        yield session
    finally:
        _flush(esapi, session)


def _parse_exact(kind: Any, data: bytes, what: str) -> Any:
    """Unmarshal one TPM2B (size prefix included) that spans all of ``data``."""
    if len(data) > MAX_CREDENTIAL_BYTES:
        raise CredentialError(
            f"{what} is {len(data)} bytes; a marshaled credential is at most {MAX_CREDENTIAL_BYTES}"
        )
    try:
        value, used = kind.unmarshal(bytes(data))
    except (TSS2_Exception, ValueError, TypeError) as exc:
        raise CredentialError(f"{what} is not a marshaled {kind.__name__}") from exc
    if used != len(data) or len(data) <= _SIZE_PREFIX:
        raise CredentialError(
            f"{what} is not one non-empty marshaled {kind.__name__} "
            f"({len(data)} bytes, the structure spans {used})"
        )
    return value


@contextlib.contextmanager
def _activation_call() -> Iterator[None]:
    """TPM2_ActivateCredential: the TPM's refusals of the credential become CredentialError."""
    try:
        yield
    except TSS2_Exception as exc:
        code = tpm_error_code(exc)
        rc = int(exc.rc)
        log.debug("ActivateCredential failed with rc 0x%x: %s", rc, exc)
        if code == RC_INTEGRITY:
            raise CredentialError(
                "ActivateCredential: the credential was not made for this TPM's EK and AK "
                "(integrity check failed)",
                rc=rc,
            ) from exc
        if code in _SECRET_REFUSALS:
            raise CredentialError(
                "ActivateCredential: the encrypted secret does not decrypt with this TPM's EK "
                "(the credential was made for another TPM, or corrupted)",
                rc=rc,
            ) from exc
        raise translate(exc, "ActivateCredential", Context.GENERAL) from exc


def activate_credential(
    esapi: ESAPI, handle: int, credential_blob: bytes, encrypted_secret: bytes
) -> bytes:
    """TPM2_ActivateCredential with the AK and the RSA EK: the secret the credential holds.

    ``credential_blob`` is a marshaled TPM2B_ID_OBJECT and ``encrypted_secret`` a
    marshaled TPM2B_ENCRYPTED_SECRET, both with their u16 size prefixes.
    """
    blob = _parse_exact(TPM2B_ID_OBJECT, credential_blob, "credential_blob")
    seed = _parse_exact(TPM2B_ENCRYPTED_SECRET, encrypted_secret, "encrypted_secret")
    with (
        _attestation_key(esapi, handle) as ak,
        _endorsement_key(esapi) as ek,
        _ek_policy_session(esapi, ek) as session,
        _activation_call(),
    ):
        # activateHandle (the AK, ADMIN role: password, adminWithPolicy is clear) and
        # keyHandle (the EK, USER role: its policy) (Part 3, 12.5).
        cert_info = esapi.activate_credential(
            ak, ek, blob, seed, session1=ESYS_TR.PASSWORD, session2=session
        )
    log.info("ActivateCredential with the attestation key at 0x%08x succeeded", handle)
    return bytes(cert_info)
