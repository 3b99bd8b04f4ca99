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

Rate limited, in process and on by default (:mod:`edgeseal.ota_server.ratelimit`),
because anyone can call these routes and every refusal costs an audit entry
and perhaps a quote verification. Checks, in order, each before anything
costlier: **per client address** (``request.client.host``, IPv6 per /64; both
routes share one bucket; ``key_release_per_address`` a minute), before a
body byte is read; then, for a challenge, **per device id**
(``key_release_per_device`` a minute), after only the bounded, strict parse
that yields the id and before any database access. A release is limited per
address only: its device is known only from the challenge row (a database
read), and each release consumes a challenge - single use, one open per
device - so the device limit on challenges already bounds the quote
verifications per device. Over a limit: 429 ``rate-limited`` with
``Retry-After`` (whole seconds), which the agent treats as "unavailable,
retry later". The first refusal of an address or device is audited as
``key.rate-limited`` and logged; further ones in the next minute are only
counted, and the next entry (at most one a minute per key) says how many
were suppressed - so a flood cannot fill the audit log or the logs.

Behind a reverse proxy every request comes from the proxy's address, so the
per-address limit then throttles the whole fleet at once: raise it (or set 0)
and limit per client in the proxy, which sees the real addresses. The
buckets live in this process: each server process limits on its own, and a
restart forgets them.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from edgeseal.ota_server.auth import ANONYMOUS
from edgeseal.ota_server.context import ServerContext
from edgeseal.ota_server.key_release import CHALLENGE_ACTION, RELEASE_ACTION, KeyRelease
from edgeseal.ota_server.ratelimit import Rate, RateLimitedError, RateLimiter, address_key
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

logger = logging.getLogger(__name__)

Body = TypeVar("Body", KeyChallengeRequest, KeyReleaseRequest)

#: Audit action of a refused over-limit request (the first of its key a minute).
RATE_LIMITED_ACTION = "key.rate-limited"


class KeyReleaseLimits:
    """The routes' two limiters from the config (None: that limit is 0, off).

    The clock is the server's (``ctx.now``, injectable like every other clock
    here). A wall clock that steps back refills nothing; one that steps forward
    refills at most a full bucket.
    """

    def __init__(self, ctx: ServerContext) -> None:
        def clock() -> float:
            return ctx.now().timestamp()

        per_address = ctx.config.key_release_per_address
        per_device = ctx.config.key_release_per_device
        self.address = RateLimiter(Rate(per_address), clock=clock) if per_address else None
        self.device = RateLimiter(Rate(per_device), clock=clock) if per_device else None


def register_keys(app: FastAPI, ctx: ServerContext) -> None:
    service = KeyRelease(ctx)
    limits = KeyReleaseLimits(ctx)

    @app.post(CHALLENGE_PATH)
    async def key_challenge(request: Request) -> JSONResponse:
        limited = await _limit_address(ctx, limits, request)
        if limited is not None:
            return limited
        body = await _read(ctx, request, CHALLENGE_ACTION, KeyChallengeRequest.parse)
        if isinstance(body, JSONResponse):
            return body
        limited = await _limit(
            ctx, limits.device, body.device_id, f"devices/{body.device_id[:64]}", "device"
        )
        if limited is not None:
            return limited
        try:
            challenge = await run_in_threadpool(
                service.challenge, body.device_id, body.family, body.version
            )
        except Exception as exc:  # noqa: BLE001 - audited by the service; answered here
            return exception_response(exc)
        return JSONResponse(challenge.to_json())

    @app.post(RELEASE_PATH)
    async def key_release(request: Request) -> JSONResponse:
        limited = await _limit_address(ctx, limits, request)
        if limited is not None:
            return limited
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


async def _limit_address(
    ctx: ServerContext, limits: KeyReleaseLimits, request: Request
) -> JSONResponse | None:
    """The 429 to answer when the client's address is over its limit, else None."""
    key = address_key(request.client.host if request.client is not None else None)
    return await _limit(ctx, limits.address, key, f"addresses/{key}", "address")


async def _limit(
    ctx: ServerContext, limiter: RateLimiter | None, key: str, target: str, kind: str
) -> JSONResponse | None:
    """Take a token for ``key``, or answer 429 (audited at most once a minute per key)."""
    if limiter is None:
        return None
    decision = limiter.check(key)
    if decision.allowed:
        return None
    retry_after = decision.retry_after_seconds
    message = (
        f"too many key-release requests for {kind} {target.partition('/')[2]} (at most "
        f"{limiter.rate.requests} a minute): retry in {retry_after} s"
    )
    if decision.report:
        suppressed = (
            f"; {decision.suppressed} more refused since the last entry"
            if decision.suppressed
            else ""
        )
        logger.warning("rate limit: %s%s", message, suppressed)
        await run_in_threadpool(
            functools.partial(
                ctx.record_refusal,
                actor=ANONYMOUS,
                action=RATE_LIMITED_ACTION,
                target=target,
                exc=RateLimitedError(message + suppressed, retry_after=retry_after, field=kind),
            )
        )
    response = exception_response(RateLimitedError(message, retry_after=retry_after))
    response.headers["Retry-After"] = str(retry_after)
    return response
