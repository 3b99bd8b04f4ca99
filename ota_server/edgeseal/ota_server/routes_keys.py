"""Attested key release routes: ``POST /v1/keys/challenge`` and ``POST /v1/keys/release``.

Called by the device agent for a release whose metadata says ``key_release =
"attested"`` (:mod:`edgeseal.ota_server.key_release`). **No token**: the quote
is the device's credential, and an ``Authorization`` header is ignored.
Bodies are bounded before they are read (the sdk's
:data:`~edgeseal.sdk.key_release.MAX_BODY_BYTES`, or the server's
``max_json_body`` if smaller; 413 over it) and parsed with the sdk's strict
codecs (exact keys, canonical encodings; 400 otherwise), so the routes accept
exactly what :mod:`edgeseal.device_agent.key_release` sends. Every call,
accepted or refused - a malformed body too - is audited as ``key.challenge``
or ``key.release``.

Not here: rate limiting. Anyone who can reach the server can ask for
challenges and fill the audit log with refusals; put the routes behind a
reverse proxy that limits requests per client until the server does.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from edgeseal.ota_server.auth import ANONYMOUS
from edgeseal.ota_server.context import ServerContext
from edgeseal.ota_server.key_release import CHALLENGE_ACTION, RELEASE_ACTION, KeyRelease
from edgeseal.ota_server.routes_common import exception_response, read_limited
from edgeseal.ota_server.service_errors import BadRequestError
from edgeseal.sdk.errors import FormatError
from edgeseal.sdk.key_release import (
    CHALLENGE_PATH,
    MAX_BODY_BYTES,
    RELEASE_PATH,
    KeyChallengeRequest,
    KeyReleaseRequest,
    KeyReleaseResponse,
)

Body = TypeVar("Body", KeyChallengeRequest, KeyReleaseRequest)


def register_keys(app: FastAPI, ctx: ServerContext) -> None:
    service = KeyRelease(ctx)

    @app.post(CHALLENGE_PATH)
    async def key_challenge(request: Request) -> JSONResponse:
        body = await _read(ctx, request, CHALLENGE_ACTION, KeyChallengeRequest.parse)
        if isinstance(body, JSONResponse):
            return body
        try:
            challenge = await run_in_threadpool(
                service.challenge, body.device_id, body.family, body.version
            )
        except Exception as exc:  # noqa: BLE001 - audited by the service; answered here
            return exception_response(exc)
        return JSONResponse(challenge.to_json())

    @app.post(RELEASE_PATH)
    async def key_release(request: Request) -> JSONResponse:
        body = await _read(ctx, request, RELEASE_ACTION, KeyReleaseRequest.parse)
        if isinstance(body, JSONResponse):
            return body
        try:
            envelope = await run_in_threadpool(
                functools.partial(
                    service.release,
                    body.challenge_id,
                    body.pcrs,
                    (body.attest, body.signature),
                    pcr_policy=body.pcr_policy,
                )
            )
        except Exception as exc:  # noqa: BLE001 - audited by the service; answered here
            return exception_response(exc)
        return JSONResponse(KeyReleaseResponse(envelope).to_json())


async def _read(
    ctx: ServerContext, request: Request, action: str, parse: Callable[[bytes], Body]
) -> Body | JSONResponse:
    """The bounded, strictly parsed body, or the (audited) refusal to answer."""
    try:
        raw = await read_limited(request, min(MAX_BODY_BYTES, ctx.config.max_json_body))
        try:
            return parse(raw)
        except FormatError as exc:
            raise BadRequestError(exc.message, field=exc.field) from None
    except Exception as exc:  # noqa: BLE001 - every refusal is audited and answered
        await run_in_threadpool(
            functools.partial(
                ctx.record_refusal, actor=ANONYMOUS, action=action, target=request.url.path, exc=exc
            )
        )
        return exception_response(exc)
