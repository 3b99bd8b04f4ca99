"""The TPM key backend: device decryption key, sealing, PCRs and NV counters over ESAPI.

One :class:`TPMBackend` holds one ESAPI connection for its lifetime. swtpm
serves one connection at a time and has no resource manager, so the backend
flushes transient objects and sessions that a crashed process left behind as
soon as it connects, and flushes everything it loads before returning.

Secrets cross the bus only inside salted sessions with parameter encryption
(AES-128-CFB, salt encrypted to the SRK): the sealed data on TPM2_Create and
TPM2_Unseal, the peer point and shared secret on TPM2_ECDH_ZGen.

When the TPM refuses a policy, the backend compares the current PCR values
with the ones the policy names and says which PCR changed. The TPM enforces;
the comparison only writes the message.

Attestation (the AK, quotes, ActivateCredential) lives in
:mod:`edgeseal.hardware.tpm_attest`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Self

from cryptography.hazmat.primitives.asymmetric import ec
from tpm2_pytss import ESAPI, TSS2_Exception
from tpm2_pytss.constants import (
    ESYS_TR,
    TPM2_ALG,
    TPM2_CAP,
    TPM2_HT,
    TPM2_SE,
    TPMA_OBJECT,
    TPMA_SESSION,
)
from tpm2_pytss.types import (
    TPM2B_PRIVATE,
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE_CREATE,
    TPML_DIGEST_VALUES,
    TPMT_HA,
    TPMT_SYM_DEF,
    TPMU_HA,
)

from edgeseal.hardware import tpm_attest, tpm_nv
from edgeseal.hardware import tpm_objects as obj
from edgeseal.hardware.backend import (
    check_approved,
    check_nv_index,
    check_pcr_indices,
    check_seal_args,
    pcr_mismatch_message,
)
from edgeseal.hardware.errors import (
    HardwareError,
    KeyExistsError,
    KeyNotFoundError,
    PolicyCheckError,
    TPMCommandError,
    TPMUnavailableError,
)
from edgeseal.hardware.policy import (
    BANK_SHA256,
    DIGEST_SIZE,
    PCRValues,
    SignedPCRPolicy,
    approval_hash,
    policy_authorize_digest,
    policy_pcr_digest,
)
from edgeseal.hardware.tpm_blob import SealedBlob
from edgeseal.hardware.tpm_errors import Context, tpm_call

log = logging.getLogger(__name__)

_BLOB_PARTS = ("private", "public")
_MAX_HANDLES = 64


class TPMBackend:
    """:class:`~edgeseal.hardware.backend.KeyBackend` over a TPM reached by a TCTI string."""

    kind = "tpm"
    insecure = False

    def __init__(
        self,
        tcti: str,
        *,
        srk_handle: int = obj.SRK_HANDLE,
        device_key_handle: int = obj.DEVICE_KEY_HANDLE,
        ak_handle: int = obj.AK_HANDLE,
    ) -> None:
        self.tcti = tcti
        self.srk_handle = srk_handle
        self.device_key_handle = device_key_handle
        self.ak_handle = ak_handle
        self._srk_tr: ESYS_TR | None = None
        try:
            self._esapi: ESAPI | None = ESAPI(tcti)
        except TSS2_Exception as exc:
            raise TPMUnavailableError(
                f"cannot connect to the TPM at {tcti!r}: {exc}", rc=int(exc.rc)
            ) from exc
        try:
            self.flush_transients()
        except HardwareError:
            self.close()
            raise

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def esapi(self) -> ESAPI:
        """The open ESAPI context, for sibling hardware modules that share the connection."""
        if self._esapi is None:
            raise TPMUnavailableError("the TPM backend is closed")
        return self._esapi

    def close(self) -> None:
        if self._esapi is not None:
            self._esapi.close()
            self._esapi = None
            self._srk_tr = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def flush_transients(self) -> None:
        esapi = self.esapi
        flushed = 0
        for kind in (TPM2_HT.TRANSIENT, TPM2_HT.LOADED_SESSION, TPM2_HT.SAVED_SESSION):
            with tpm_call("list TPM handles"):
                _, data = esapi.get_capability(TPM2_CAP.HANDLES, int(kind) << 24, _MAX_HANDLES)
            for handle in data.data.handles:
                try:
                    tr = esapi.tr_from_tpmpublic(handle)
                    esapi.flush_context(tr)
                    flushed += 1
                except TSS2_Exception as exc:
                    log.warning("could not flush TPM handle 0x%08x: %s", handle, exc)
        if flushed:
            log.info("flushed %d transient objects/sessions left in the TPM", flushed)

    # -- storage root key and sessions ----------------------------------------------------

    def _srk(self) -> ESYS_TR:
        """The persistent SRK, created from the TCG ECC P-256 template if missing."""
        if self._srk_tr is not None:
            return self._srk_tr
        esapi = self.esapi
        try:
            with tpm_call("find the storage root key", Context.KEY):
                tr = esapi.tr_from_tpmpublic(self.srk_handle)
        except KeyNotFoundError:
            log.info("creating the storage root key at 0x%08x", self.srk_handle)
            with tpm_call("create the storage root key"):
                transient, _, _, _, _ = esapi.create_primary(
                    TPM2B_SENSITIVE_CREATE(), obj.srk_template(), ESYS_TR.OWNER
                )
                try:
                    tr = esapi.evict_control(ESYS_TR.OWNER, transient, self.srk_handle)
                finally:
                    esapi.flush_context(transient)
        with tpm_call("read the storage root key"):
            public, _, _ = esapi.read_public(tr)
        area = public.publicArea
        if area.type != TPM2_ALG.ECC or not area.objectAttributes & TPMA_OBJECT.RESTRICTED:
            raise TPMCommandError(
                f"persistent handle 0x{self.srk_handle:08x} holds a key that is not an ECC "
                "storage key; pass another srk_handle"
            )
        self._srk_tr = tr
        return tr

    @contextlib.contextmanager
    def _session(self, session_type: TPM2_SE, attrs: int) -> Iterator[ESYS_TR]:
        """A salted session (salt encrypted to the SRK) with AES-128-CFB parameter encryption."""
        esapi = self.esapi
        srk = self._srk()
        with tpm_call("start a salted session"):
            session = esapi.start_auth_session(
                tpm_key=srk,
                bind=ESYS_TR.NONE,
                session_type=session_type,
                symmetric=TPMT_SYM_DEF.parse("aes128cfb"),
                auth_hash=TPM2_ALG.SHA256,
            )
            esapi.trsess_set_attributes(session, TPMA_SESSION.CONTINUESESSION | attrs)
        try:
            yield session
        finally:
            self._flush(session)

    def _flush(self, handle: ESYS_TR) -> None:
        if self._esapi is None:
            return
        try:
            self._esapi.flush_context(handle)
        except TSS2_Exception as exc:
            log.warning("could not flush a TPM handle: %s", exc)

    def _authorize(self, session: ESYS_TR, approved: SignedPCRPolicy) -> None:
        """PolicyPCR on the approved values, then PolicyAuthorize with the authority's ticket."""
        esapi = self.esapi
        values = approved.values
        with tpm_call("PolicyPCR", Context.POLICY):
            esapi.policy_pcr(session, values.composite_digest(), obj.pcr_selection(values.indices))
        with tpm_call("verify the PCR policy signature", Context.POLICY):
            # The owner hierarchy, not NULL: a NULL-hierarchy key yields a NULL ticket that
            # PolicyAuthorize rejects (Part 3, 20.1).
            key = esapi.load_external(obj.authority_public(approved.authority), None, ESYS_TR.OWNER)
            try:
                name = esapi.tr_get_name(key)
                ticket = esapi.verify_signature(
                    key,
                    approval_hash(approved.approved_policy),
                    obj.ecdsa_signature(approved.signature),
                )
            finally:
                self._flush(key)
        with tpm_call("PolicyAuthorize", Context.POLICY):
            esapi.policy_authorize(session, approved.approved_policy, name, ticket)

    def _explain(self, exc: PolicyCheckError, values: PCRValues, since: str) -> PolicyCheckError:
        """A PolicyCheckError naming the changed PCRs, or ``exc`` if none changed."""
        try:
            changed = values.changed(self.pcr_read(values.indices))
        except HardwareError:
            return exc
        if not changed:
            return exc
        return PolicyCheckError(pcr_mismatch_message(changed, since), rc=exc.rc)

    # -- device decryption key ------------------------------------------------------------

    def _device_key(self) -> tuple[ESYS_TR, TPM2B_PUBLIC]:
        esapi = self.esapi
        with tpm_call("find the device key", Context.KEY):
            tr = esapi.tr_from_tpmpublic(self.device_key_handle)
            public, _, _ = esapi.read_public(tr)
        return tr, public

    def create_device_key(
        self, authority: ec.EllipticCurvePublicKey | None, *, replace: bool = False
    ) -> ec.EllipticCurvePublicKey:
        esapi = self.esapi
        try:
            existing, _ = self._device_key()
        except KeyNotFoundError:
            existing = None
        if existing is not None:
            if not replace:
                raise KeyExistsError(
                    f"a device key already exists at 0x{self.device_key_handle:08x}"
                )
            log.warning("replacing the device key at 0x%08x", self.device_key_handle)
            with tpm_call("evict the old device key"):
                esapi.evict_control(ESYS_TR.OWNER, existing, self.device_key_handle)
        srk = self._srk()
        auth_policy = None if authority is None else policy_authorize_digest(authority)
        with tpm_call("create the device key"):
            private, public, _, _, _ = esapi.create(
                srk, TPM2B_SENSITIVE_CREATE(), obj.device_key_template(auth_policy)
            )
            loaded = esapi.load(srk, private, public)
            try:
                esapi.evict_control(ESYS_TR.OWNER, loaded, self.device_key_handle)
            finally:
                self._flush(loaded)
        log.info(
            "created the device key at 0x%08x (%s)",
            self.device_key_handle,
            "auth value only" if authority is None else "signed PCR policy",
        )
        return obj.ec_public_from_tpm(public)

    def device_key_public(self) -> ec.EllipticCurvePublicKey:
        _, public = self._device_key()
        return obj.ec_public_from_tpm(public)

    def ecdh_zgen(
        self, peer: ec.EllipticCurvePublicKey, *, approved: SignedPCRPolicy | None = None
    ) -> bytes:
        esapi = self.esapi
        point = obj.ecc_point(peer)
        key, public = self._device_key()
        auth_policy = bytes(public.publicArea.authPolicy)
        attrs = TPMA_SESSION.DECRYPT | TPMA_SESSION.ENCRYPT
        if not auth_policy:
            with self._session(TPM2_SE.HMAC, attrs) as session, tpm_call("ECDH_ZGen"):
                out = esapi.ecdh_zgen(key, point, session1=session)
        else:
            policy = check_approved(auth_policy, approved, "the device key")
            with self._session(TPM2_SE.POLICY, attrs) as session:
                try:
                    self._authorize(session, policy)
                    with tpm_call("ECDH_ZGen", Context.POLICY):
                        out = esapi.ecdh_zgen(key, point, session1=session)
                except PolicyCheckError as exc:
                    raise self._explain(exc, policy.values, "since the policy was signed") from exc
        x = bytes(out.point.x)
        return x.rjust(DIGEST_SIZE, b"\0")

    # -- sealing --------------------------------------------------------------------------

    def seal(
        self,
        secret: bytes,
        *,
        pcrs: Sequence[int] = (),
        authority: ec.EllipticCurvePublicKey | None = None,
    ) -> bytes:
        indices = check_seal_args(secret, pcrs, authority)
        values: PCRValues | None = None
        if indices:
            values = self.pcr_read(indices)
            binding, auth_policy = "pcr", policy_pcr_digest(values)
        elif authority is not None:
            binding, auth_policy = "authorize", policy_authorize_digest(authority)
        else:
            binding, auth_policy = "auth", None
        srk = self._srk()
        with (
            self._session(TPM2_SE.HMAC, TPMA_SESSION.DECRYPT) as session,
            tpm_call("seal (TPM2_Create)"),
        ):
            private, public, _, _, _ = self.esapi.create(
                srk,
                obj.sealed_sensitive(secret),
                obj.sealed_template(auth_policy),
                session1=session,
            )
        blob = SealedBlob(
            backend="tpm",
            binding=binding,
            pcrs=values,
            authority=authority,
            parts={"public": public.marshal(), "private": private.marshal()},
        )
        return blob.to_bytes()

    def unseal(self, blob: bytes, *, approved: SignedPCRPolicy | None = None) -> bytes:
        esapi = self.esapi
        sealed = SealedBlob.from_bytes(blob, backend="tpm", part_names=_BLOB_PARTS)
        try:
            public, _ = TPM2B_PUBLIC.unmarshal(sealed.parts["public"])
            private, _ = TPM2B_PRIVATE.unmarshal(sealed.parts["private"])
        except (TSS2_Exception, ValueError, TypeError) as exc:
            raise HardwareError("sealed blob holds malformed TPM structures") from exc
        srk = self._srk()
        with tpm_call("load the sealed object (sealed by another TPM, or the SRK changed?)"):
            item = esapi.load(srk, private, public)
        try:
            return self._unseal_loaded(item, sealed, bytes(public.publicArea.authPolicy), approved)
        finally:
            self._flush(item)

    def _unseal_loaded(
        self,
        item: ESYS_TR,
        sealed: SealedBlob,
        auth_policy: bytes,
        approved: SignedPCRPolicy | None,
    ) -> bytes:
        esapi = self.esapi
        if sealed.binding == "auth":
            with (
                self._session(TPM2_SE.HMAC, TPMA_SESSION.ENCRYPT) as session,
                tpm_call("unseal"),
            ):
                return bytes(esapi.unseal(item, session1=session))
        if sealed.pcrs is not None:  # binding "pcr"
            values = sealed.pcrs
            with self._session(TPM2_SE.POLICY, TPMA_SESSION.ENCRYPT) as session:
                try:
                    with tpm_call("unseal", Context.POLICY):
                        esapi.policy_pcr(
                            session, values.composite_digest(), obj.pcr_selection(values.indices)
                        )
                        return bytes(esapi.unseal(item, session1=session))
                except PolicyCheckError as exc:
                    raise self._explain(exc, values, "since sealing") from exc
        policy = check_approved(auth_policy, approved, "the sealed secret")
        with self._session(TPM2_SE.POLICY, TPMA_SESSION.ENCRYPT) as session:
            try:
                self._authorize(session, policy)
                with tpm_call("unseal", Context.POLICY):
                    return bytes(esapi.unseal(item, session1=session))
            except PolicyCheckError as exc:
                raise self._explain(exc, policy.values, "since the policy was signed") from exc

    # -- PCRs -----------------------------------------------------------------------------

    def pcr_read(self, indices: Sequence[int]) -> PCRValues:
        remaining = check_pcr_indices(indices)
        if not remaining:
            raise ValueError("pcr_read needs at least one PCR index")
        result: dict[int, bytes] = {}
        while remaining:
            # A TPM returns at most 8 digests per TPM2_PCR_Read (Part 3, 22.4).
            with tpm_call("read PCRs"):
                _, selection, digests = self.esapi.pcr_read(obj.pcr_selection(remaining))
            got = obj.selected_indices(selection)
            if not got:
                raise TPMCommandError(f"the TPM has no sha256 values for PCRs {remaining}")
            for index, digest in zip(got, digests, strict=False):
                result[index] = bytes(digest)
            remaining = [i for i in remaining if i not in result]
        return PCRValues(BANK_SHA256, result)

    def pcr_extend(self, index: int, digest: bytes) -> None:
        (index,) = check_pcr_indices([index])
        if len(digest) != DIGEST_SIZE:
            raise ValueError(f"a sha256 PCR extend takes a 32-byte digest, got {len(digest)}")
        values = TPML_DIGEST_VALUES(
            [TPMT_HA(hashAlg=TPM2_ALG.SHA256, digest=TPMU_HA(sha256=digest))]
        )
        with tpm_call(f"extend PCR {index}"):
            self.esapi.pcr_extend(obj.pcr_handle(index), values)

    # -- NV counters and EK certificates ---------------------------------------------------

    def nv_counter_define(self, index: int) -> None:
        check_nv_index(index)
        tpm_nv.counter_define(self.esapi, index)

    def nv_counter_increment(self, index: int) -> int:
        check_nv_index(index)
        return tpm_nv.counter_increment(self.esapi, index)

    def nv_counter_read(self, index: int) -> int:
        check_nv_index(index)
        return tpm_nv.counter_read(self.esapi, index)

    def ek_certificates(self) -> list[bytes]:
        return tpm_nv.read_ek_certificates(self.esapi)

    # -- attestation ----------------------------------------------------------------------

    def create_attestation_key(self, *, replace: bool = False) -> bytes:
        return tpm_attest.create_attestation_key(self.esapi, self.ak_handle, replace=replace)

    def attestation_key_public(self) -> bytes:
        return tpm_attest.attestation_key_public(self.esapi, self.ak_handle)

    def quote(self, qualifying_data: bytes, pcrs: Sequence[int]) -> tuple[bytes, bytes]:
        return tpm_attest.quote(self.esapi, self.ak_handle, qualifying_data, pcrs)

    def activate_credential(self, credential_blob: bytes, encrypted_secret: bytes) -> bytes:
        return tpm_attest.activate_credential(
            self.esapi, self.ak_handle, credential_blob, encrypted_secret
        )
