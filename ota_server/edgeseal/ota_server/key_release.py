"""Attested key release: a device gets a release's content key by proving its boot state.

For a release whose signed metadata says ``key_release = "attested"`` the
server publishes no envelopes (:mod:`edgeseal.ota_server.publication` skips
them). The device asks for the key instead, in two calls
(docs/dev/attestation-contracts.md, "Attested key release"; the bodies are
:mod:`edgeseal.sdk.key_release`):

1. :func:`issue_challenge` - the device names itself and the release. It must
   be known, not revoked and enrolled (an AK and a baseline in
   ``device_attestation``); the release must be published (a yank not yet
   signed leaves it published, as for envelopes), attested, and for the
   device's hardware class and channel. The answer is a fresh 32-byte nonce
   and the PCRs of the device's enrollment baseline. The challenge is stored
   (``key_release_challenges``) for :data:`CHALLENGE_LIFETIME`; a device has at
   most one open: a new one replaces it.
2. :func:`release_key` - the device sends the PCR values and a quote over them
   with qualifying data :func:`~edgeseal.sdk.key_release.key_release_binding`
   ``(nonce, device_id, family, version)``. The challenge was consumed before,
   in a transaction of its own (:func:`take_challenge`), so a refused attempt
   burns it too. Then, in order: not expired (409); the device and the
   release still qualify (403 revoked, 404 otherwise - either may have
   changed since the challenge); the quoted PCRs are exactly the challenge's;
   :func:`edgeseal.sdk.quote.verify_quote` with the enrolled AK (signature,
   binding, PCR digest); the values equal the enrollment baseline, or the
   request's signed PCR policy (``pcr_policy``), signed by the device's
   enrolled PCR policy authority, approves exactly these values
   (:func:`edgeseal.ota_server.boot_state.check_boot_state`; the refusal
   names the PCRs that differ and why the policy did not count). The content
   key is then opened from the release's KEK envelope and sealed to the
   device's decryption key, bound to the release's sealed header, by the very
   function publication uses
   (:func:`~edgeseal.ota_server.publication.seal_content_key`).

The quote is checked before the PCR values are compared with the baseline or a
policy, so a caller without a valid quote learns nothing about a baseline or
the device's authority from a refusal. The audit entry of a release says which
boot state it was: ``boot_state`` ``"baseline"``, or ``"approved"`` with the
``changed_pcrs`` and the approving ``policy_authority``'s fingerprint.
Refusals: :class:`AttestationFailedError` (403 ``attestation-failed``, the
check that failed in the message), :class:`~edgeseal.ota_server.service_errors.
NotFoundError` (404), :class:`KeyChallengeExpiredError` (409
``challenge-expired``). :class:`KeyRelease` wraps both steps with the audit log
(``key.challenge``, ``key.release``; never the key, never the nonce).
The functions run inside the caller's transaction and take the clock and the
randomness as arguments.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from edgeseal.ota_server import db
from edgeseal.ota_server.auth import ANONYMOUS
from edgeseal.ota_server.boot_state import check_boot_state
from edgeseal.ota_server.context import ServerContext
from edgeseal.ota_server.db import (
    NOT_ENROLLED,
    DeviceAttestationRow,
    DeviceRow,
    KeyReleaseChallengeRow,
    ReleaseRow,
    isotime,
)
from edgeseal.ota_server.publication import seal_content_key
from edgeseal.ota_server.revocation import get_device
from edgeseal.ota_server.service_errors import ConflictError, ForbiddenError, NotFoundError
from edgeseal.sdk.errors import AttestationError
from edgeseal.sdk.key_release import NONCE_SIZE, KeyChallenge, key_release_binding
from edgeseal.sdk.quote import verify_quote
from edgeseal.sdk.tpm_wire import tpm_name

CHALLENGE_LIFETIME = timedelta(minutes=2)
#: ``key_release`` of a release whose key is released on a quote (no envelopes).
ATTESTED = "attested"
#: Audit actions.
CHALLENGE_ACTION = "key.challenge"
RELEASE_ACTION = "key.release"
#: A release is published until its yank is signed (as for envelopes).
_PUBLISHED_STATES = db.LIVE_STATES
_MAX_CHALLENGE_ID = 64

Random = Callable[[int], bytes]


class AttestationFailedError(ForbiddenError):
    """The device may not have the key: revoked, or its quote or boot state does not check out."""

    code = "attestation-failed"


class KeyChallengeExpiredError(ConflictError):
    """The challenge is older than :data:`CHALLENGE_LIFETIME`: ask for a new one."""

    code = "challenge-expired"


@dataclass(frozen=True)
class PendingKeyChallenge:
    """A challenge taken out of the database by :func:`take_challenge`."""

    challenge_id: str
    device_id: str
    release_id: str
    nonce: bytes
    pcrs: tuple[int, ...]
    expires: datetime

    def __repr__(self) -> str:
        return f"PendingKeyChallenge({self.challenge_id}, device={self.device_id})"


@dataclass(frozen=True)
class _Enrolled:
    device: DeviceRow
    ak_public: bytes
    baseline: dict[int, bytes]
    pcr_policy_authority: bytes | None


# --- the checks both steps make -----------------------------------------------------------------


def _enrolled_device(session: Session, device_id: str) -> _Enrolled:
    """Known (404), not revoked (403; checked first: a device revoked before it ever
    enrolled has a row without an AK), enrolled (404)."""
    device = get_device(session, device_id)
    record = session.get(DeviceAttestationRow, device_id)
    if record is not None and record.revoked:
        raise AttestationFailedError(f"device {device_id} is revoked: no key is released to it")
    if record is None or not record.ak_public or record.enrolled == NOT_ENROLLED or not record.pcrs:
        raise NotFoundError(
            f"device {device_id} is not enrolled: run edgeseal-agent enroll before asking "
            "for the key of an attested release"
        )
    baseline = {int(k): bytes.fromhex(v) for k, v in record.pcrs.items()}
    return _Enrolled(device, record.ak_public, baseline, record.pcr_policy_authority)


def _find_release(session: Session, family: str, version: int) -> ReleaseRow:
    row = session.scalars(
        select(ReleaseRow).where(ReleaseRow.family == family, ReleaseRow.version == version)
    ).first()
    if row is None:
        raise NotFoundError(f"release {family} version {version} does not exist")
    return row


def _check_release(row: ReleaseRow, device: DeviceRow) -> None:
    """Published (not yanked), attested, for the device's hardware class and channel (404)."""
    name = f"release {row.family} version {row.version}"
    if row.state not in _PUBLISHED_STATES:
        raise NotFoundError(f"{name} is {row.state}, not published")
    if row.custom.get("key_release") != ATTESTED:
        raise NotFoundError(f"{name} is not attested: its key comes in a TUF envelope")
    if device.hardware_class not in row.hardware:
        raise NotFoundError(
            f"{name} is not for hardware class {device.hardware_class} "
            f"(it is for {', '.join(row.hardware)})"
        )
    if device.channel != row.channel:
        raise NotFoundError(
            f"{name} is on channel {row.channel}; device {device.id} is on {device.channel}"
        )


def _indices(indices: Iterable[int]) -> str:
    return ", ".join(str(i) for i in sorted(indices))


# --- step 1: the challenge ----------------------------------------------------------------------


def issue_challenge(
    session: Session,
    *,
    device_id: str,
    family: str,
    version: int,
    now: datetime,
    random: Random = secrets.token_bytes,
) -> KeyChallenge:
    """Check the device and the release; store and return a fresh challenge."""
    enrolled = _enrolled_device(session, device_id)
    release = _find_release(session, family, version)
    _check_release(release, enrolled.device)
    pcrs = tuple(sorted(enrolled.baseline))
    # At most one open challenge per device (a new one replaces it); expired ones go too.
    session.execute(
        delete(KeyReleaseChallengeRow).where(
            (KeyReleaseChallengeRow.device_id == device_id)
            | (KeyReleaseChallengeRow.expires <= isotime(now))
        )
    )
    challenge = KeyChallenge(secrets.token_hex(16), random(NONCE_SIZE), pcrs)
    session.add(
        KeyReleaseChallengeRow(
            id=challenge.challenge_id,
            device_id=device_id,
            release_id=release.id,
            nonce=challenge.nonce,
            pcrs=list(pcrs),
            expires=isotime(now + CHALLENGE_LIFETIME),
        )
    )
    session.flush()
    return challenge


# --- step 2: the release ------------------------------------------------------------------------


def take_challenge(session: Session, challenge_id: str) -> PendingKeyChallenge:
    """Delete the challenge and return it: call in a transaction of its own (single use)."""
    row = (
        session.get(KeyReleaseChallengeRow, challenge_id)
        if len(challenge_id) <= _MAX_CHALLENGE_ID
        else None
    )
    if row is None:
        raise NotFoundError(
            "unknown key-release challenge (already used, replaced or never issued): "
            "ask for a new one"
        )
    pending = PendingKeyChallenge(
        challenge_id=row.id,
        device_id=row.device_id,
        release_id=row.release_id,
        nonce=row.nonce,
        pcrs=tuple(row.pcrs),
        expires=datetime.fromisoformat(row.expires),
    )
    session.delete(row)
    return pending


def release_key(
    ctx: ServerContext,
    session: Session,
    pending: PendingKeyChallenge,
    *,
    pcrs: Mapping[int, bytes],
    attest: bytes,
    signature: bytes,
    now: datetime,
    pcr_policy: bytes | None = None,
) -> tuple[bytes, dict[str, Any]]:
    """Check the answer to ``pending``: the release's envelope for the device, and audit details
    (never the key, nor the nonce). ``pcr_policy``: the signed PCR policy the device sent
    (``SignedPCRPolicy`` bytes), for PCR values other than its baseline."""
    device_id = pending.device_id
    if now >= pending.expires:
        raise KeyChallengeExpiredError(
            f"the key-release challenge of device {device_id} expired at "
            f"{isotime(pending.expires)}: ask for a new one"
        )
    # The device and the release may have changed since the challenge (revoked, yanked).
    enrolled = _enrolled_device(session, device_id)
    release = session.get(ReleaseRow, pending.release_id)
    if release is None:
        raise NotFoundError(f"release {pending.release_id} does not exist")
    _check_release(release, enrolled.device)
    if sorted(pcrs) != list(pending.pcrs):
        raise AttestationFailedError(
            f"device {device_id}: the quote must cover exactly PCRs {_indices(pending.pcrs)}, "
            f"not {_indices(pcrs)}",
            field="pcrs",
        )
    binding = key_release_binding(pending.nonce, device_id, release.family, release.version)
    try:
        verify_quote(attest, signature, enrolled.ak_public, qualifying_data=binding, pcrs=pcrs)
    except AttestationError as exc:
        raise AttestationFailedError(
            f"device {device_id}: the quote does not check out: {exc.message}",
            field=exc.field,
        ) from None
    # Only now, on values the quote proved: the baseline, or a state the authority approved.
    try:
        boot_state = check_boot_state(
            enrolled.baseline,
            pcrs,
            pcr_policy=pcr_policy,
            authority_der=enrolled.pcr_policy_authority,
        )
    except AttestationError as exc:
        raise AttestationFailedError(
            f"device {device_id}: {exc.message}", field=exc.field
        ) from None
    (envelope,) = seal_content_key(ctx, release, [enrolled.device])
    return envelope, {
        "device": device_id,
        "release": release.id,
        "challenge": pending.challenge_id,
        "ak_name": tpm_name(enrolled.ak_public).hex(),
        "pcrs": sorted(pcrs),
        **boot_state.audit_details(),
    }


# --- audited ------------------------------------------------------------------------------------


class KeyRelease:
    """Both steps against a server context, audited: the routes' path, and the tests'.

    The caller holds no token (the quote is its credential): the audit actor is
    ``anonymous`` and the target the device the request names.
    """

    def __init__(self, ctx: ServerContext, *, random: Random = secrets.token_bytes) -> None:
        self.ctx = ctx
        self.random = random

    def challenge(self, device_id: str, family: str, version: int) -> KeyChallenge:
        ctx = self.ctx

        def work(session: Session) -> tuple[KeyChallenge, dict[str, Any]]:
            challenge = issue_challenge(
                session,
                device_id=device_id,
                family=family,
                version=version,
                now=ctx.now(),
                random=self.random,
            )
            return challenge, {
                "device": device_id,
                "release": f"{family}-{version}",
                "challenge": challenge.challenge_id,
                "pcrs": list(challenge.pcrs),
            }

        return ctx.mutate(
            actor=ANONYMOUS,
            action=CHALLENGE_ACTION,
            target=f"devices/{device_id[:64]}",
            work=work,
        )

    def release(
        self,
        challenge_id: str,
        pcrs: Mapping[int, bytes],
        quote: tuple[bytes, bytes],
        *,
        pcr_policy: bytes | None = None,
    ) -> bytes:
        """The envelope of the challenged release's content key for the challenged device."""
        ctx = self.ctx
        try:
            with ctx.db.session() as session:
                pending = take_challenge(session, challenge_id)
        except Exception as exc:
            ctx.record_refusal(
                actor=ANONYMOUS,
                action=RELEASE_ACTION,
                target=f"key-challenges/{challenge_id[:64]}",
                exc=exc,
            )
            raise
        attest, signature = quote

        def work(session: Session) -> tuple[bytes, dict[str, Any]]:
            return release_key(
                ctx,
                session,
                pending,
                pcrs=pcrs,
                attest=attest,
                signature=signature,
                now=ctx.now(),
                pcr_policy=pcr_policy,
            )

        return ctx.mutate(
            actor=ANONYMOUS,
            action=RELEASE_ACTION,
            target=f"devices/{pending.device_id}",
            work=work,
        )
