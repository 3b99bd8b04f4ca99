"""Enrollment: a device proves its attestation key (AK) and its boot state to the server.

The handshake of docs/dev/attestation-contracts.md, in two calls:

1. :func:`start` - the device (added by the operator beforehand) sends its EK
   certificate and its AK public area. The server checks the EK certificate
   chain (:mod:`edgeseal.ota_server.ek_ca`) and the AK's attributes, then
   makes a credential (TPM 2.0 Part 1, 24: MakeCredential) that only the TPM
   holding *both* that EK and that AK can open, with a fresh 32-byte secret,
   and answers it with a fresh 32-byte nonce and the PCRs to quote. Only the
   secret's SHA-256 is stored, with the challenge, for five minutes.
2. :func:`finish` - the device returns the secret (ActivateCredential) and a
   quote over those PCRs with the nonce as qualifying data, signed by the AK.
   The challenge is consumed first, in its own transaction (:func:`take_challenge`),
   so a refused attempt burns it too: every challenge is single use. Then the
   secret is compared in constant time, the PCR set must be the one asked for,
   and :func:`edgeseal.sdk.quote.verify_quote` checks signature, nonce and PCR
   digest. The AK, the EK certificate's hash and the quoted PCR values become
   the device's *baseline* (``device_attestation``), which the trust bundle
   carries to technicians. The device may also name its *PCR policy
   authority* (the key whose signed PCR policies approve later boot states,
   :mod:`edgeseal.ota_server.boot_state`); it is stored with the baseline, and
   replaced - or cleared - by every enrollment.

A device already enrolled may enroll again with the *same* AK (a fresh
handshake refreshes its baseline, e.g. after a firmware update); another AK
is refused (409), as is a revoked device (403; also one revoked before it ever
enrolled, :mod:`edgeseal.ota_server.revocation`). The refusals name their cause;
none contains the secret. Each function runs inside the caller's transaction;
:class:`Enrollment` wraps them with the audit log for callers without HTTP.

DESIGN flow 1 ends with the server issuing the device's MQTT credentials: when
this server runs a broker (``mqtt_port`` set), :func:`finish_audited` creates
(or, on re-enrollment, rotates) the device's broker password with
:func:`edgeseal.ota_server.devices.issue_mqtt_credentials` - the mechanism of
``device mqtt-credentials``, so a running broker reloads at once - in the same
audited step, and answers it once with the broker's URL. The audit entry says
that credentials were issued, never the password. A revoked device never gets
that far.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import delete
from sqlalchemy.orm import Session

from edgeseal.ota_server.boot_state import authority_fingerprint, check_policy_authority
from edgeseal.ota_server.context import ServerContext
from edgeseal.ota_server.db import DeviceAttestationRow, EnrollmentChallengeRow, isotime
from edgeseal.ota_server.devices import MQTTCredentials, issue_mqtt_credentials
from edgeseal.ota_server.ek_ca import certificate_sha256, load_ek_cas, verify_ek_certificate
from edgeseal.ota_server.revocation import get_device
from edgeseal.ota_server.service_errors import (
    BadRequestError,
    ConflictError,
    ForbiddenError,
    NotFoundError,
)
from edgeseal.sdk.credential import make_credential
from edgeseal.sdk.errors import AttestationError
from edgeseal.sdk.quote import verify_quote
from edgeseal.sdk.tpm_wire import ALG_ECDSA, ALG_SHA256, ObjectAttribute, parse_public, tpm_name

CHALLENGE_LIFETIME = timedelta(minutes=5)
SECRET_BYTES = 32
NONCE_BYTES = 32
PCR_BANK = "sha256"
PCR_VALUE_BYTES = 32
_CHALLENGE_ID_RE = re.compile(r"^[0-9a-f]{32}$")
#: TPMA_OBJECT bits an AK must have (contract: a non-duplicable restricted signing key).
_AK_REQUIRED = (
    ObjectAttribute.FIXED_TPM
    | ObjectAttribute.FIXED_PARENT
    | ObjectAttribute.SENSITIVE_DATA_ORIGIN
    | ObjectAttribute.RESTRICTED
    | ObjectAttribute.SIGN_ENCRYPT
)

Random = Callable[[int], bytes]


class EnrollmentRefusedError(ForbiddenError):
    """The device's evidence does not check out (secret, quote, revoked device)."""

    code = "enrollment-refused"


class ChallengeExpiredError(ConflictError):
    """The challenge is older than :data:`CHALLENGE_LIFETIME`: start again."""

    code = "challenge-expired"


@dataclass(frozen=True)
class Challenge:
    """What :func:`start` answers the device."""

    challenge_id: str
    device_id: str
    credential_blob: bytes
    encrypted_secret: bytes
    nonce: bytes
    pcrs: tuple[int, ...]
    expires: str


@dataclass(frozen=True)
class PendingChallenge:
    """A challenge taken out of the database by :func:`take_challenge` (no secret in it)."""

    challenge_id: str
    device_id: str
    ak_public: bytes
    ek_certificate_sha256: str
    secret_sha256: str
    nonce: bytes
    pcrs: tuple[int, ...]
    expires: datetime

    def __repr__(self) -> str:
        return f"PendingChallenge({self.challenge_id}, device={self.device_id})"


@dataclass(frozen=True)
class AttestationRecord:
    """A device's enrolled AK and baseline (a ``device_attestation`` row)."""

    device_id: str
    ak_public: bytes
    ek_certificate_sha256: str
    pcr_bank: str
    pcrs: dict[int, bytes]
    enrolled: str
    revoked: bool
    #: DER SubjectPublicKeyInfo of the device's PCR policy authority; None when it has none.
    pcr_policy_authority: bytes | None = None

    @classmethod
    def from_row(cls, row: DeviceAttestationRow) -> AttestationRecord:
        return cls(
            device_id=row.device_id,
            ak_public=row.ak_public,
            ek_certificate_sha256=row.ek_certificate_sha256,
            pcr_bank=row.pcr_bank,
            pcrs={int(k): bytes.fromhex(v) for k, v in row.pcrs.items()},
            enrolled=row.enrolled,
            revoked=row.revoked,
            pcr_policy_authority=row.pcr_policy_authority,
        )


@dataclass(frozen=True)
class Enrolled:
    """An accepted enrollment: the baseline, and the broker login when the server runs one."""

    record: AttestationRecord
    re_enrolled: bool
    mqtt: MQTTCredentials | None

    def __repr__(self) -> str:
        return f"Enrolled({self.record.device_id}, mqtt={self.mqtt is not None})"


def check_attestation_key(ak_public: bytes) -> bytes:
    """The AK's TPM Name, once its public area is a restricted ECC P-256 signing key.

    ``parse_public`` raises :class:`~edgeseal.sdk.errors.FormatError` (400) on
    malformed bytes; the attributes and scheme are checked here.
    """
    public = parse_public(ak_public)
    if public.type != "ecc" or not isinstance(public.public_key, ec.EllipticCurvePublicKey):
        raise BadRequestError("the AK must be an ECC NIST P-256 key", field="ak_public")
    missing = [
        flag.name for flag in ObjectAttribute if flag & _AK_REQUIRED and not public.has(flag)
    ]
    if missing or public.decrypt:
        what = f"lacks {', '.join(str(m) for m in missing)}" if missing else "can decrypt"
        raise BadRequestError(
            f"the AK must be a non-duplicable restricted signing key; it {what}",
            field="ak_public",
        )
    if public.name_alg != ALG_SHA256 or public.scheme.scheme != ALG_ECDSA:
        raise BadRequestError(
            "the AK must have nameAlg SHA-256 and the ECDSA scheme", field="ak_public"
        )
    if public.scheme.hash_alg != ALG_SHA256:
        raise BadRequestError("the AK's ECDSA scheme must hash with SHA-256", field="ak_public")
    return tpm_name(ak_public)


def _check_may_enroll(session: Session, device_id: str, ak_public: bytes) -> bool:
    """Refuse a revoked device or another AK; True when the device is already enrolled."""
    current = session.get(DeviceAttestationRow, device_id)
    if current is None:
        return False
    if current.revoked:
        raise EnrollmentRefusedError(f"device {device_id} is revoked; it cannot enroll again")
    if current.ak_public != ak_public:
        raise ConflictError(
            f"device {device_id} is already enrolled with another attestation key; "
            "revoke it and add it again under a new id to replace its TPM"
        )
    return True


def start(
    session: Session,
    *,
    device_id: str,
    ek_certificate_der: bytes,
    ak_public: bytes,
    ek_cas: Sequence[x509.Certificate],
    pcrs_for: Callable[[str], Sequence[int]],
    now: datetime,
    random: Random = secrets.token_bytes,
) -> Challenge:
    """Check the device, EK certificate and AK; store and return a fresh challenge."""
    device = get_device(session, device_id)
    _check_may_enroll(session, device_id, ak_public)
    _cert, ek_public = verify_ek_certificate(ek_certificate_der, ek_cas, now=now)
    ak_name = check_attestation_key(ak_public)
    secret = random(SECRET_BYTES)
    nonce = random(NONCE_BYTES)
    credential_blob, encrypted_secret = make_credential(ek_public, ak_name, secret)
    pcrs = tuple(sorted(pcrs_for(device.hardware_class)))
    # One open challenge per device (a new start replaces it); expired ones go too.
    session.execute(
        delete(EnrollmentChallengeRow).where(
            (EnrollmentChallengeRow.device_id == device_id)
            | (EnrollmentChallengeRow.expires <= isotime(now))
        )
    )
    challenge_id = secrets.token_hex(16)
    expires = isotime(now + CHALLENGE_LIFETIME)
    session.add(
        EnrollmentChallengeRow(
            id=challenge_id,
            device_id=device_id,
            ak_public=ak_public,
            ek_certificate_sha256=certificate_sha256(ek_certificate_der),
            secret_sha256=hashlib.sha256(secret).hexdigest(),
            nonce=nonce,
            pcrs=list(pcrs),
            created=isotime(now),
            expires=expires,
        )
    )
    return Challenge(
        challenge_id=challenge_id,
        device_id=device_id,
        credential_blob=credential_blob,
        encrypted_secret=encrypted_secret,
        nonce=nonce,
        pcrs=pcrs,
        expires=expires,
    )


def take_challenge(session: Session, challenge_id: str) -> PendingChallenge:
    """Delete the challenge and return it: call in a transaction of its own (single use)."""
    row = (
        session.get(EnrollmentChallengeRow, challenge_id)
        if _CHALLENGE_ID_RE.match(challenge_id)
        else None
    )
    if row is None:
        raise NotFoundError(
            "unknown enrollment challenge (already used, replaced or never issued): start again"
        )
    pending = PendingChallenge(
        challenge_id=row.id,
        device_id=row.device_id,
        ak_public=row.ak_public,
        ek_certificate_sha256=row.ek_certificate_sha256,
        secret_sha256=row.secret_sha256,
        nonce=row.nonce,
        pcrs=tuple(row.pcrs),
        expires=datetime.fromisoformat(row.expires),
    )
    session.delete(row)
    return pending


def finish(
    session: Session,
    pending: PendingChallenge,
    *,
    secret: bytes,
    pcrs: Mapping[int, bytes],
    attest: bytes,
    signature: bytes,
    now: datetime,
    pcr_policy_authority: bytes | None = None,
) -> tuple[AttestationRecord, bool]:
    """Check the activated secret and the quote; record the baseline and the device's
    PCR policy authority (DER SubjectPublicKeyInfo of an ECC P-256 key, or None).

    Returns the record and whether the device was enrolled before (re-enrollment).
    """
    device_id = pending.device_id
    if any(len(value) != PCR_VALUE_BYTES for value in pcrs.values()):
        raise BadRequestError(f"a {PCR_BANK} PCR value is {PCR_VALUE_BYTES} bytes", field="pcrs")
    authority = (
        None if pcr_policy_authority is None else check_policy_authority(pcr_policy_authority)
    )
    if now >= pending.expires:
        raise ChallengeExpiredError(
            f"the enrollment challenge of device {device_id} expired at "
            f"{isotime(pending.expires)}: start again"
        )
    if not hmac.compare_digest(hashlib.sha256(secret).hexdigest(), pending.secret_sha256):
        raise EnrollmentRefusedError(
            f"device {device_id}: the activated credential secret is wrong - the AK and the "
            "EK are not in the same TPM"
        )
    if sorted(pcrs) != list(pending.pcrs):
        raise EnrollmentRefusedError(
            f"device {device_id}: the quote must cover exactly PCRs "
            f"{', '.join(map(str, pending.pcrs))}, not {', '.join(map(str, sorted(pcrs)))}"
        )
    try:
        verify_quote(attest, signature, pending.ak_public, qualifying_data=pending.nonce, pcrs=pcrs)
    except AttestationError as exc:
        raise EnrollmentRefusedError(
            f"device {device_id}: the quote does not check out: {exc.diagnostics()}"
        ) from None
    re_enrolled = _check_may_enroll(session, device_id, pending.ak_public)
    get_device(session, device_id)
    row = session.get(DeviceAttestationRow, device_id)
    if row is None:
        row = DeviceAttestationRow(device_id=device_id, revoked=False)
        session.add(row)
    row.ak_public = pending.ak_public
    row.ek_certificate_sha256 = pending.ek_certificate_sha256
    row.pcr_bank = PCR_BANK
    row.pcrs = {str(i): pcrs[i].hex() for i in sorted(pcrs)}
    row.enrolled = isotime(now)
    row.pcr_policy_authority = authority
    session.flush()
    return AttestationRecord.from_row(row), re_enrolled


class Enrollment:
    """:func:`start` and :func:`finish` against a server context, audited.

    The HTTP routes use the functions above through the routes' audited
    plumbing; this class is the same path for the CLI and for tests.
    """

    def __init__(self, ctx: ServerContext, *, actor: str, random: Random = secrets.token_bytes):
        self.ctx = ctx
        self.actor = actor
        self.random = random

    def start(self, device_id: str, ek_certificate_der: bytes, ak_public: bytes) -> Challenge:
        ctx = self.ctx
        return ctx.mutate(
            actor=self.actor,
            action="enroll.start",
            target=f"devices/{device_id[:64]}",
            work=lambda session: start_audited(
                ctx, session, device_id, ek_certificate_der, ak_public, random=self.random
            ),
        )

    def finish(
        self,
        challenge_id: str,
        secret: bytes,
        pcrs: Mapping[int, bytes],
        quote: tuple[bytes, bytes],
        *,
        pcr_policy_authority: bytes | None = None,
        request_host: str | None = None,
    ) -> Enrolled:
        ctx = self.ctx
        target = f"enroll/{challenge_id[:64]}"
        try:
            pending = consume(ctx, challenge_id)
        except Exception as exc:
            ctx.record_refusal(actor=self.actor, action="enroll.finish", target=target, exc=exc)
            raise
        attest, signature = quote
        return ctx.mutate(
            actor=self.actor,
            action="enroll.finish",
            target=f"devices/{pending.device_id}",
            work=lambda session: finish_audited(
                ctx,
                session,
                pending,
                secret=secret,
                pcrs=pcrs,
                attest=attest,
                signature=signature,
                pcr_policy_authority=pcr_policy_authority,
                request_host=request_host,
            ),
        )


def start_audited(
    ctx: ServerContext,
    session: Session,
    device_id: str,
    ek_certificate_der: bytes,
    ak_public: bytes,
    *,
    random: Random = secrets.token_bytes,
) -> tuple[Challenge, dict[str, object]]:
    """:func:`start` with the server's EK CAs, PCR table and clock; returns audit details."""
    challenge = start(
        session,
        device_id=device_id,
        ek_certificate_der=ek_certificate_der,
        ak_public=ak_public,
        ek_cas=load_ek_cas(ctx.data.ek_ca),
        pcrs_for=ctx.config.pcrs_for,
        now=ctx.now(),
        random=random,
    )
    return challenge, {
        "device": device_id,
        "challenge": challenge.challenge_id,
        "ek_certificate_sha256": certificate_sha256(ek_certificate_der),
        "ak_name": tpm_name(ak_public).hex(),
        "pcrs": list(challenge.pcrs),
    }


def consume(ctx: ServerContext, challenge_id: str) -> PendingChallenge:
    """Take the challenge out of the database, committed at once (see :func:`take_challenge`)."""
    with ctx.db.session() as session:
        return take_challenge(session, challenge_id)


def finish_audited(
    ctx: ServerContext,
    session: Session,
    pending: PendingChallenge,
    *,
    secret: bytes,
    pcrs: Mapping[int, bytes],
    attest: bytes,
    signature: bytes,
    pcr_policy_authority: bytes | None = None,
    request_host: str | None = None,
) -> tuple[Enrolled, dict[str, object]]:
    """:func:`finish` with the server's clock, then the device's MQTT credentials when the
    server runs a broker (``request_host``: the host name the device reached this server
    at, see :meth:`~edgeseal.ota_server.config.ServerConfig.device_mqtt_url`). Returns
    audit details: never the secret, never the password."""
    record, re_enrolled = finish(
        session,
        pending,
        secret=secret,
        pcrs=pcrs,
        attest=attest,
        signature=signature,
        now=ctx.now(),
        pcr_policy_authority=pcr_policy_authority,
    )
    # Last: the broker's password file is not transactional, so change it only once
    # everything else has been accepted (a failure here still rolls the baseline back).
    mqtt = (
        issue_mqtt_credentials(ctx, session, record.device_id, request_host=request_host)
        if ctx.config.mqtt_port
        else None
    )
    return Enrolled(record, re_enrolled, mqtt), {
        "device": record.device_id,
        "challenge": pending.challenge_id,
        "ak_name": tpm_name(record.ak_public).hex(),
        "pcrs": sorted(pcrs),
        "pcr_policy_authority": (
            None
            if record.pcr_policy_authority is None
            else authority_fingerprint(record.pcr_policy_authority)
        ),
        "re_enrolled": re_enrolled,
        "mqtt_credentials_issued": mqtt is not None,
    }
