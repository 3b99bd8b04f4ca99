"""Enrollment routes: ``POST /v1/enroll/start`` and ``POST /v1/enroll/finish``.

Called by ``edgeseal-agent enroll`` with an operator (or admin) token; the
JSON of docs/dev/attestation-contracts.md, bytes as base64, the nonce and PCR
values as hex. Bodies are bounded by :data:`MAX_ENROLL_BODY` (an EK
certificate is the largest field) before they are read. Every attempt,
accepted or refused, is audited as ``enroll.start`` / ``enroll.finish``.

``finish`` takes the challenge out of the database (committed) once the
token, body and role are checked and before anything else: a refused
attempt consumes the challenge like an accepted one. When the server runs a
broker, an accepted ``finish`` also answers the device's MQTT credentials,
``"mqtt": {"url", "username", "password"}`` (the password is in this answer
only: not in the audit log, not in any log); the URL's host is the one the
request was sent to when ``mqtt_bind`` is a wildcard and no ``mqtt_public_url``
is set.

``finish`` may carry ``"pcr_policy_authority"``: base64 of the DER
SubjectPublicKeyInfo of the device's PCR policy authority (an ECC P-256 key;
400 otherwise), or null - as a missing key is, from an agent older than it.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from edgeseal.ota_server.auth import Principal, require_operator
from edgeseal.ota_server.boot_state import MAX_POLICY_AUTHORITY_BYTES
from edgeseal.ota_server.context import ServerContext
from edgeseal.ota_server.ek_ca import MAX_EK_CERTIFICATE
from edgeseal.ota_server.enrollment import (
    SECRET_BYTES,
    Challenge,
    PendingChallenge,
    consume,
    finish_audited,
    start_audited,
)
from edgeseal.ota_server.releases import check_keys
from edgeseal.ota_server.routes_common import Prepare, read_json_body, state_change
from edgeseal.ota_server.service_errors import BadRequestError
from edgeseal.sdk.tpm_wire import MAX_ATTEST_SIZE, MAX_PUBLIC_SIZE

#: Largest enrollment request body: base64 of a maximal EK certificate, AK and quote.
MAX_ENROLL_BODY = 64 * 1024
#: Largest DER ECDSA P-256 signature (two 33-byte integers and their headers).
MAX_SIGNATURE = 80
MAX_PCRS = 24
_START_KEYS = frozenset({"device_id", "ek_certificate", "ak_public"})
_FINISH_KEYS = frozenset({"challenge_id", "secret", "pcrs", "quote"})
_FINISH_OPTIONAL = frozenset({"pcr_policy_authority"})
_QUOTE_KEYS = frozenset({"attest", "signature"})
_PCR_INDEX_RE = re.compile(r"^(0|[1-9][0-9]?)$")
_PCR_VALUE_RE = re.compile(r"^[0-9a-f]{64}$")


def register_enroll(app: FastAPI, ctx: ServerContext) -> None:
    @app.post("/v1/enroll/start")
    async def enroll_start(request: Request) -> JSONResponse:
        def work(s: Session, p: Principal, body: Any) -> tuple[Any, dict[str, Any]]:
            require_operator(p)
            check_keys(body, _START_KEYS)
            device_id = body["device_id"]
            if not isinstance(device_id, str):
                raise BadRequestError("device_id must be a string", field="device_id")
            ek_der = b64_field(body, "ek_certificate", MAX_EK_CERTIFICATE)
            ak_public = b64_field(body, "ak_public", MAX_PUBLIC_SIZE)
            challenge, details = start_audited(ctx, s, device_id, ek_der, ak_public)
            return challenge_json(challenge), details

        return await state_change(ctx, request, "enroll.start", enroll_body(ctx), work)

    @app.post("/v1/enroll/finish")
    async def enroll_finish(request: Request) -> JSONResponse:
        async def prepare(req: Request, principal: Principal) -> tuple[Any, PendingChallenge]:
            body = await read_json_body(req, min(MAX_ENROLL_BODY, ctx.config.max_json_body))
            require_operator(principal)
            check_keys(body, _FINISH_KEYS, _FINISH_OPTIONAL)
            challenge_id = body["challenge_id"]
            if not isinstance(challenge_id, str):
                raise BadRequestError("challenge_id must be a string", field="challenge_id")
            return body, await run_in_threadpool(consume, ctx, challenge_id)

        def work(s: Session, _p: Principal, prepared: Any) -> tuple[Any, dict[str, Any]]:
            body, pending = prepared
            evidence = parse_evidence(body)
            enrolled, details = finish_audited(
                ctx,
                s,
                pending,
                secret=evidence.secret,
                pcrs=evidence.pcrs,
                attest=evidence.attest,
                signature=evidence.signature,
                pcr_policy_authority=evidence.pcr_policy_authority,
                request_host=request_host(request),
            )
            answer: dict[str, Any] = {"device_id": enrolled.record.device_id, "enrolled": True}
            if enrolled.mqtt is not None:
                answer["mqtt"] = enrolled.mqtt.to_json()
            return answer, details

        return await state_change(ctx, request, "enroll.finish", prepare, work)


def request_host(request: Request) -> str | None:
    """The host name the client sent this request to (the ``Host`` header), if usable."""
    try:
        return request.url.hostname
    except ValueError:
        return None


def enroll_body(ctx: ServerContext) -> Prepare:
    async def prepare(request: Request, _principal: Principal) -> Any:
        return await read_json_body(request, min(MAX_ENROLL_BODY, ctx.config.max_json_body))

    return prepare


def challenge_json(challenge: Challenge) -> dict[str, Any]:
    return {
        "challenge_id": challenge.challenge_id,
        "credential_blob": base64.b64encode(challenge.credential_blob).decode("ascii"),
        "encrypted_secret": base64.b64encode(challenge.encrypted_secret).decode("ascii"),
        "nonce": challenge.nonce.hex(),
        "pcrs": list(challenge.pcrs),
    }


@dataclass(frozen=True)
class Evidence:
    """The parsed body of ``finish``."""

    secret: bytes
    pcrs: dict[int, bytes]
    attest: bytes
    signature: bytes
    pcr_policy_authority: bytes | None = None

    def __repr__(self) -> str:
        return "Evidence(<secret>, ...)"


def parse_evidence(body: dict[str, Any]) -> Evidence:
    secret = b64_field(body, "secret", SECRET_BYTES)
    if len(secret) != SECRET_BYTES:
        raise BadRequestError(f"secret must be {SECRET_BYTES} bytes", field="secret")
    quote = body["quote"]
    check_keys(quote, _QUOTE_KEYS)
    authority = (
        b64_field(body, "pcr_policy_authority", MAX_POLICY_AUTHORITY_BYTES)
        if body.get("pcr_policy_authority") is not None
        else None
    )
    return Evidence(
        secret=secret,
        pcrs=pcr_values(body["pcrs"]),
        attest=b64_field(quote, "attest", MAX_ATTEST_SIZE, name="quote.attest"),
        signature=b64_field(quote, "signature", MAX_SIGNATURE, name="quote.signature"),
        pcr_policy_authority=authority,
    )


def pcr_values(value: Any) -> dict[int, bytes]:
    """``{"0": hex, ...}``: decimal indices, SHA-256 values in lowercase hex."""
    if not isinstance(value, dict) or not 1 <= len(value) <= MAX_PCRS:
        raise BadRequestError(f"pcrs must be an object of 1 to {MAX_PCRS} PCRs", field="pcrs")
    out: dict[int, bytes] = {}
    for index, digest in value.items():
        if not _PCR_INDEX_RE.match(index) or int(index) >= MAX_PCRS:
            raise BadRequestError(f"PCR index {index[:8]!r} is not 0..23", field="pcrs")
        if not isinstance(digest, str) or not _PCR_VALUE_RE.match(digest):
            raise BadRequestError(
                f"PCR {index} must be a SHA-256 value in lowercase hex", field="pcrs"
            )
        out[int(index)] = bytes.fromhex(digest)
    return out


def b64_field(body: dict[str, Any], key: str, max_bytes: int, *, name: str | None = None) -> bytes:
    """Base64 (standard, padded) of at most ``max_bytes`` bytes, bounded before decoding."""
    value = body[key]
    name = name or key
    if not isinstance(value, str) or len(value) > 4 * (-(-max_bytes // 3)):
        raise BadRequestError(f"{name} must be base64 of at most {max_bytes} bytes", field=name)
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequestError(f"{name} is not valid base64", field=name) from None
    if not data:
        raise BadRequestError(f"{name} is empty", field=name)
    return data
