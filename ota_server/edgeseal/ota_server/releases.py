"""The release workflow: create, upload and check, propose, collect signatures, publish, yank.

States (docs/dev/ota-contracts.md)::

    awaiting-upload -> awaiting-signatures -> published
                       -> yank-awaiting-signatures -> yanked
    published -> rollout-awaiting-signatures -> published (new rollout_percent)

The server never holds a release manager's key. It builds the *unsigned* next
version of the family's targets metadata (the proposal), release managers
sign its canonical bytes on their own machines and post signatures; each is
verified against the family's current delegation as it arrives, and when the
threshold is met the server publishes the family metadata with a new snapshot
and timestamp, then the device envelopes (:mod:`edgeseal.ota_server.publication`).

Checks on upload, in order (verify before parse): exact size and SHA-256 as
declared at creation, *then* parse the sealed header and compare it with the
signed custom metadata (family, version, hardware, plaintext digest and size),
then open the KEK envelope and check the content key against the header's key
commitment - so a release whose key the server cannot deliver never reaches
the signers. Content keys rest only as KEK envelopes.

Every function here runs inside one database transaction given by the caller
(:meth:`ServerContext.mutate`) and returns ``(answer, audit details)``.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hmac
import json
import re
from pathlib import Path
from typing import Any

from securesystemslib.exceptions import FormatError as SecureSystemsLibFormatError
from securesystemslib.formats import encode_canonical
from sqlalchemy import select
from sqlalchemy.orm import Session
from tuf.api.metadata import (
    Metadata,
    Signature,
    TargetFile,
    Targets,
)

from edgeseal.ota_server import db
from edgeseal.ota_server.auth import Principal, require_release_manager
from edgeseal.ota_server.context import ServerContext
from edgeseal.ota_server.db import ReleaseRow, isotime
from edgeseal.ota_server.publication import publish_release, upload_file_for
from edgeseal.ota_server.service_errors import (
    BadRequestError,
    ConflictError,
    NotFoundError,
    TooLargeError,
)
from edgeseal.sdk.envelope import parse_envelope
from edgeseal.sdk.errors import EdgesealError
from edgeseal.sdk.hazmat.format import SealedModelHeader, is_valid_name
from edgeseal.sdk.hazmat.stream import key_commitment
from edgeseal.sdk.releases import ReleaseMetadata
from edgeseal.sdk.sealed import inspect_sealed_model

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_ROLLOUT_KEYS = frozenset({"percent"})
_CREATE_KEYS = frozenset(
    {"family", "version", "custom", "kek_envelope_b64", "sealed_size", "sealed_sha256"}
)


def check_keys(body: Any, required: frozenset[str], optional: frozenset[str] = frozenset()) -> None:
    if not isinstance(body, dict):
        raise BadRequestError("the request body must be a JSON object")
    missing = sorted(required - set(body))
    unknown = sorted(set(body) - required - optional)
    if missing:
        raise BadRequestError(f"missing field(s): {', '.join(missing)}")
    if unknown:
        raise BadRequestError(f"unknown field(s): {', '.join(u[:40] for u in unknown)}")


def get_release(session: Session, release_id: str) -> ReleaseRow:
    row = session.get(ReleaseRow, release_id) if len(release_id) <= 96 else None
    if row is None:
        raise NotFoundError(f"no release {release_id[:96]!r}")
    return row


def release_json(row: ReleaseRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "family": row.family,
        "version": row.version,
        "state": row.state,
        "channel": row.channel,
        "hardware": list(row.hardware),
        "target_path": row.target_path,
        "signatures": len(row.signatures or {}),
        "threshold": row.threshold,
        "proposal_version": row.proposal_version,
        "created": row.created,
        "created_by": row.created_by,
        "published": row.published,
        "sealed_size": row.sealed_size,
        "sealed_sha256": row.sealed_sha256,
        "key_release": row.custom.get("key_release"),
        "rollout_percent": row.custom.get("rollout_percent"),
        "pending_rollout_percent": pending_rollout_percent(row),
    }


def pending_rollout_percent(row: ReleaseRow) -> int | None:
    """The ``rollout_percent`` a pending rollout proposal would publish, else None.

    Read from the proposal itself (the bytes the release managers sign), so what
    the API shows is what a signature would publish.
    """
    if row.state != db.ROLLOUT_AWAITING_SIGNATURES or row.proposal is None:
        return None
    try:
        targets = json.loads(row.proposal)["signed"]["targets"]
        percent = targets[row.target_path]["custom"]["edgeseal"]["rollout_percent"]
    except (ValueError, KeyError, TypeError):
        return None
    return percent if type(percent) is int else None


def list_releases(session: Session, family: str | None = None) -> list[dict[str, Any]]:
    query = select(ReleaseRow).order_by(ReleaseRow.family, ReleaseRow.version)
    if family is not None:
        query = query.where(ReleaseRow.family == family)
    return [release_json(row) for row in session.scalars(query)]


def _parse_custom(custom: Any) -> tuple[ReleaseMetadata, dict[str, Any]]:
    """The release custom metadata, given whole (``{"edgeseal": {...}}``) or as its body.

    Returns the parsed metadata and the body exactly as given (after the strict
    parse accepted it): that is what the release managers sign, byte for byte.
    """
    if isinstance(custom, dict) and set(custom) == {"edgeseal"}:
        custom = custom["edgeseal"]
    return ReleaseMetadata.from_json(custom), dict(custom)


def create_release(
    ctx: ServerContext, session: Session, principal: Principal, body: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    check_keys(body, _CREATE_KEYS)
    family, version = body["family"], body["version"]
    if not is_valid_name(family):
        raise BadRequestError("family is not a valid family name", field="family")
    require_release_manager(principal, family)
    if type(version) is not int or version < 0:
        raise BadRequestError("version must be a non-negative integer", field="version")
    try:
        meta, custom_body = _parse_custom(body["custom"])
    except EdgesealError as exc:
        raise BadRequestError(
            f"custom metadata refused: {exc.diagnostics()}", field="custom"
        ) from None
    _require_canonical(custom_body)
    if meta.family != family or meta.version != version:
        raise BadRequestError("custom metadata names another family or version", field="custom")
    if family not in ctx.repository.families():
        raise NotFoundError(f"family {family!r} has no delegation; an admin adds it first")
    size, sha256 = body["sealed_size"], body["sealed_sha256"]
    if type(size) is not int or size < 1:
        raise BadRequestError("sealed_size must be a positive integer", field="sealed_size")
    if size > ctx.config.max_upload:
        raise TooLargeError(
            f"sealed_size exceeds the upload limit of {ctx.config.max_upload} bytes"
        )
    if not isinstance(sha256, str) or not _SHA256_RE.match(sha256):
        raise BadRequestError(
            "sealed_sha256 must be 64 lowercase hex digits", field="sealed_sha256"
        )
    kek_envelope = _decode_b64(body["kek_envelope_b64"], "kek_envelope_b64")
    try:
        parse_envelope(kek_envelope)
    except EdgesealError as exc:
        raise BadRequestError(f"kek envelope refused: {exc.diagnostics()}") from None
    newest = session.scalars(
        select(ReleaseRow.version)
        .where(ReleaseRow.family == family)
        .order_by(ReleaseRow.version.desc())
        .limit(1)
    ).first()
    if newest is not None and version <= newest:
        raise ConflictError(f"family {family!r} already has version {newest}; use a higher version")
    row = ReleaseRow(
        id=f"{family}-{version}",
        family=family,
        version=version,
        state=db.AWAITING_UPLOAD,
        channel=meta.channel,
        hardware=list(meta.hardware),
        custom=custom_body,
        target_path=meta.target_path,
        kek_envelope=kek_envelope,
        sealed_size=size,
        sealed_sha256=sha256,
        signatures={},
        created=isotime(ctx.now()),
        created_by=principal.name,
    )
    session.add(row)
    session.flush()
    return {"id": row.id, "state": row.state}, {"release": row.id, "sealed_sha256": sha256}


def _require_canonical(custom: dict[str, Any]) -> None:
    """TUF signs canonical JSON (OLPC), which has no floats: refuse what cannot be signed."""
    try:
        encode_canonical(custom)
    except SecureSystemsLibFormatError:
        raise BadRequestError(
            "custom metadata cannot be signed: TUF's canonical JSON has no floating-point "
            "numbers (write e.g. the tolerance as an integer)",
            field="custom",
        ) from None


def _decode_b64(value: Any, field: str) -> bytes:
    if not isinstance(value, str) or len(value) > 8192:
        raise BadRequestError(f"{field} must be a base64 string", field=field)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequestError(f"{field} is not valid base64", field=field) from None


def _pending_in_family(session: Session, family: str, except_id: str) -> ReleaseRow | None:
    return session.scalars(
        select(ReleaseRow).where(
            ReleaseRow.family == family,
            ReleaseRow.state.in_(db.PENDING_STATES),
            ReleaseRow.id != except_id,
        )
    ).first()


def accept_upload(
    ctx: ServerContext,
    session: Session,
    principal: Principal,
    release_id: str,
    *,
    upload: Path,
    size: int,
    sha256: str,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check a streamed upload (already hashed while it was written) and propose it."""
    row = get_release(session, release_id)
    require_release_manager(principal, row.family)
    if row.state != db.AWAITING_UPLOAD:
        raise ConflictError(f"release {row.id} is {row.state}, not awaiting an upload")
    if size != row.sealed_size or not hmac.compare_digest(sha256, row.sealed_sha256):
        raise BadRequestError(
            f"the upload ({size} bytes, sha256 {sha256}) is not the declared sealed model "
            f"({row.sealed_size} bytes, sha256 {row.sealed_sha256})"
        )
    pending = _pending_in_family(session, row.family, row.id)
    if pending is not None:
        raise ConflictError(f"family {row.family} already has a pending proposal ({pending.id})")
    with upload.open("rb") as handle:
        try:
            header = inspect_sealed_model(handle)
        except EdgesealError as exc:
            raise BadRequestError(f"sealed model refused: {exc.diagnostics()}") from None
    _check_header(row, header, size)
    try:
        content_key = ctx.kek.open(row.kek_envelope, header)
    except EdgesealError:
        raise BadRequestError(
            "the KEK envelope does not open for this sealed model with the server's KEK"
        ) from None
    if not hmac.compare_digest(
        key_commitment(content_key, header.nonce_prefix), header.key_commitment
    ):
        raise BadRequestError(
            "the content key in the KEK envelope does not unlock this sealed model"
        )
    target = TargetFile(
        length=size,
        hashes={"sha256": sha256},
        path=row.target_path,
        unrecognized_fields={"custom": {"edgeseal": dict(row.custom)}},
    )
    proposal = ctx.repository.propose_family(
        row.family, add={row.target_path: target}, now=ctx.now()
    )
    _set_proposal(ctx, row, proposal, db.AWAITING_SIGNATURES)
    row.header = header.encoded
    upload.replace(upload_file_for(ctx, row.id))
    answer = {"id": row.id, "state": row.state, "proposal_version": row.proposal_version}
    return answer, {"release": row.id, "proposal_version": row.proposal_version}


def _check_header(row: ReleaseRow, header: SealedModelHeader, size: int) -> None:
    plaintext = row.custom["plaintext"]
    problems = []
    if header.family != row.family:
        problems.append(f"family {header.family!r} != {row.family!r}")
    if header.version != row.version:
        problems.append(f"version {header.version} != {row.version}")
    if sorted(header.hardware) != sorted(row.hardware):
        problems.append(f"hardware {list(header.hardware)} != {row.hardware}")
    if (
        header.digest_alg != plaintext["digest_alg"]
        or header.plaintext_digest.hex() != plaintext["digest"]
    ):
        problems.append("plaintext digest differs")
    if header.plaintext_size != plaintext["size"]:
        problems.append(f"plaintext size {header.plaintext_size} != {plaintext['size']}")
    if header.sealed_size != size:
        problems.append(f"the header describes {header.sealed_size} bytes, the file has {size}")
    if problems:
        raise BadRequestError(
            "the sealed model's header does not match the release metadata: " + "; ".join(problems)
        )


def _set_proposal(
    ctx: ServerContext, row: ReleaseRow, proposal: Metadata[Targets], state: str
) -> None:
    row.proposal = canonical_bytes(proposal)
    row.proposal_version = proposal.signed.version
    row.signatures = {}
    row.threshold = ctx.repository.families()[row.family].threshold
    row.state = state


def canonical_bytes(md: Metadata[Targets]) -> bytes:
    """Canonical JSON (OLPC) of a whole metadata object, as served to the signers."""
    text = encode_canonical(md.to_dict())
    assert isinstance(text, str)
    return text.encode("utf-8")


def proposal_bytes(session: Session, release_id: str) -> bytes:
    row = get_release(session, release_id)
    if row.state not in db.PENDING_STATES or row.proposal is None:
        raise ConflictError(f"release {row.id} is {row.state}: there is no pending proposal")
    return row.proposal


def add_signature(
    ctx: ServerContext, session: Session, principal: Principal, release_id: str, body: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    row = get_release(session, release_id)
    require_release_manager(principal, row.family)
    if row.state not in db.PENDING_STATES or row.proposal is None:
        raise ConflictError(f"release {row.id} is {row.state}: there is nothing to sign")
    check_keys(body, frozenset({"keyid", "sig"}))
    try:
        signature = Signature.from_dict(dict(body))
    except (KeyError, TypeError, ValueError):
        raise BadRequestError("not a TUF signature {keyid, sig}") from None
    if not isinstance(signature.keyid, str) or not isinstance(signature.signature, str):
        raise BadRequestError("keyid and sig must be strings")
    proposal: Metadata[Targets] = Metadata.from_bytes(row.proposal)
    ctx.repository.check_signature(row.family, proposal, signature)
    signatures = dict(row.signatures or {})
    signatures[signature.keyid] = signature.signature
    row.signatures = signatures
    delegation = ctx.repository.families()[row.family]
    valid = [keyid for keyid in signatures if keyid in set(delegation.keyids)]
    row.threshold = delegation.threshold
    details: dict[str, Any] = {"release": row.id, "keyid": signature.keyid}
    if len(valid) >= delegation.threshold:
        for keyid in valid:
            proposal.signatures[keyid] = Signature(keyid, signatures[keyid])
        details.update(publish_release(ctx, session, row, proposal))
    answer = {"signatures": len(valid), "threshold": delegation.threshold, "state": row.state}
    details["state"] = row.state
    return answer, details


def yank_release(
    ctx: ServerContext, session: Session, principal: Principal, release_id: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    row = get_release(session, release_id)
    require_release_manager(principal, row.family)
    if row.state != db.PUBLISHED:
        raise ConflictError(f"release {row.id} is {row.state}; only a published release is yanked")
    pending = _pending_in_family(session, row.family, row.id)
    if pending is not None:
        raise ConflictError(f"family {row.family} already has a pending proposal ({pending.id})")
    proposal = ctx.repository.propose_family(row.family, remove=[row.target_path], now=ctx.now())
    _set_proposal(ctx, row, proposal, db.YANK_AWAITING_SIGNATURES)
    answer = {"id": row.id, "state": row.state, "proposal_version": row.proposal_version}
    return answer, {"release": row.id, "proposal_version": row.proposal_version}


def rollout_release(
    ctx: ServerContext, session: Session, principal: Principal, release_id: str, body: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Propose the family metadata with only this release's ``rollout_percent`` changed.

    Raising widens the cohort range (devices already in stay in); lowering is a
    legitimate pause or shrink, but devices that already installed keep the release
    (a yank is what takes it away).
    """
    row = get_release(session, release_id)
    require_release_manager(principal, row.family)
    check_keys(body, _ROLLOUT_KEYS)
    percent = body["percent"]
    if type(percent) is not int or not 1 <= percent <= 100:
        raise BadRequestError("percent must be an integer from 1 to 100", field="percent")
    if row.state != db.PUBLISHED:
        raise ConflictError(
            f"release {row.id} is {row.state}; only a published release changes its rollout"
        )
    current = row.custom.get("rollout_percent")
    if percent == current:
        raise BadRequestError(f"release {row.id} is already at {percent}%", field="percent")
    pending = _pending_in_family(session, row.family, row.id)
    if pending is not None:
        raise ConflictError(f"family {row.family} already has a pending proposal ({pending.id})")
    published = ctx.repository.family_targets(row.family).signed.targets.get(row.target_path)
    if published is None:
        raise ConflictError(f"release {row.id} is not in the published {row.family} metadata")
    # Everything of the published target but the one field, byte for byte (what
    # ``edgeseal release sign`` checks before signing).
    fields = copy.deepcopy(published.unrecognized_fields)
    fields["custom"]["edgeseal"]["rollout_percent"] = percent
    target = TargetFile(
        length=published.length,
        hashes=dict(published.hashes),
        path=published.path,
        unrecognized_fields=fields,
    )
    proposal = ctx.repository.propose_family(
        row.family, add={row.target_path: target}, now=ctx.now()
    )
    _set_proposal(ctx, row, proposal, db.ROLLOUT_AWAITING_SIGNATURES)
    answer = {
        "id": row.id,
        "state": row.state,
        "proposal_version": row.proposal_version,
        "rollout_percent": current,
        "pending_rollout_percent": percent,
    }
    details = {
        "release": row.id,
        "proposal_version": row.proposal_version,
        "from_percent": current,
        "to_percent": percent,
    }
    return answer, details
