"""What every route shares: JSON errors, bounded body reading, reads and audited changes.

Routes are thin: each authenticates, bounds and parses its input, and hands
a service function to :meth:`ServerContext.mutate` (state changes, audited
whether accepted or refused) through :func:`state_change`, or runs a read in a
transaction through :func:`run_read`. Blocking work runs in the thread pool;
only the body stream is read on the event loop, chunk by chunk, never more
than its limit.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from edgeseal.ota_server.auth import ANONYMOUS, Principal
from edgeseal.ota_server.context import ServerContext, actor_of
from edgeseal.ota_server.service_errors import BadRequestError, TooLargeError, http_status
from edgeseal.sdk.errors import EdgesealError
from edgeseal.sdk.strict_json import StrictJSONError
from edgeseal.sdk.strict_json import loads as strict_loads

logger = logging.getLogger(__name__)

JSONValue = Any
Work = Callable[[Session, Principal, Any], tuple[Any, dict[str, Any]]]
Prepare = Callable[[Request, Principal], Awaitable[Any]]


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def exception_response(exc: BaseException) -> JSONResponse:
    status, code = http_status(exc)
    if isinstance(exc, EdgesealError):
        return error_response(status, code, exc.diagnostics())
    logger.error("internal error: %s", type(exc).__name__, exc_info=exc)
    return error_response(500, "internal", "internal server error")


def strict_json(data: bytes) -> JSONValue:
    """A request body as strict JSON (floats allowed), or :class:`BadRequestError`."""
    try:
        return strict_loads(data, allow_floats=True)
    except StrictJSONError as exc:
        if exc.rule == "duplicate-key":
            raise BadRequestError(f"duplicate JSON key {str(exc.token)[:40]!r}") from None
        if exc.rule == "constant":
            raise BadRequestError(f"JSON constant {exc.token} is not allowed") from None
        raise BadRequestError("the request body is not valid JSON") from None


def check_declared_length(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadRequestError("invalid Content-Length")
        if int(declared) > limit:
            raise TooLargeError(f"the request body exceeds {limit} bytes")


async def read_limited(request: Request, limit: int) -> bytes:
    check_declared_length(request, limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLargeError(f"the request body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json_body(request: Request, limit: int) -> JSONValue:
    """The request's JSON body, refusing more than ``limit`` bytes before reading them."""
    return strict_json(await read_limited(request, limit))


def json_body(ctx: ServerContext) -> Prepare:
    """A ``prepare`` step reading a JSON body of at most the configured size."""

    async def prepare(request: Request, _principal: Principal) -> Any:
        return await read_json_body(request, ctx.config.max_json_body)

    return prepare


def no_body(ctx: ServerContext) -> Prepare:
    """A ``prepare`` step accepting only an empty body (or ``{}``)."""

    async def prepare(request: Request, _principal: Principal) -> Any:
        raw = await read_limited(request, ctx.config.max_json_body)
        if raw.strip() and strict_json(raw) != {}:
            raise BadRequestError("this call takes no body (or {})")
        return None

    return prepare


def run_read(ctx: ServerContext, request: Request, fn: Callable[[Session, Principal], Any]) -> Any:
    with ctx.db.session() as session:
        from edgeseal.ota_server.auth import authenticate

        principal = authenticate(session, request.headers.get("authorization"))
        return fn(session, principal)


async def state_change(
    ctx: ServerContext,
    request: Request,
    action: str,
    prepare: Prepare,
    work: Work,
    *,
    status: int = 200,
) -> JSONResponse:
    """Authenticate, ``prepare`` the input (bounded), run ``work`` audited.

    Every refusal, at any step, is audited with its reason and answered as JSON.
    """
    actor = ANONYMOUS
    target = request.url.path
    error: Exception | None = None
    try:
        principal = await run_in_threadpool(ctx.authenticate, request.headers.get("authorization"))
        actor = actor_of(principal)
        prepared = await prepare(request, principal)
    except Exception as exc:  # noqa: BLE001 - every refusal is audited and answered
        error = exc
    if error is not None:
        await run_in_threadpool(
            functools.partial(
                ctx.record_refusal, actor=actor, action=action, target=target, exc=error
            )
        )
        return exception_response(error)
    try:
        result = await run_in_threadpool(
            functools.partial(
                ctx.mutate,
                actor=actor,
                action=action,
                target=target,
                work=lambda session: work(session, principal, prepared),
            )
        )
    except Exception as exc:  # noqa: BLE001 - audited by mutate; answered here
        return exception_response(exc)
    return JSONResponse(result, status_code=status)
