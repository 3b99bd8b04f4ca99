"""The OTA server's web app: management API, static TUF files, health.

Routes are thin: each authenticates, bounds and parses its input, and hands
a service function to :meth:`ServerContext.mutate` (state changes, audited
whether accepted or refused) or runs a read in a transaction. Blocking work
(SQLite, signing, file copies) runs in the thread pool; only the body stream
is read on the event loop, chunk by chunk, never more than its limit.

Order of checks on a state-changing call: token, then body size and syntax,
then role (a release manager's role depends on the family named in the
body), then the service's own checks. Uploads are authorized *before* a
single body byte is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from edgeseal.ota_server import devices, releases
from edgeseal.ota_server.audit import ACCEPTED, AuditLog
from edgeseal.ota_server.auth import (
    ANONYMOUS,
    Principal,
    create_token,
    require_admin,
    require_release_manager,
    require_viewer,
)
from edgeseal.ota_server.context import ServerContext, actor_of
from edgeseal.ota_server.hints import HintSettings
from edgeseal.ota_server.service_errors import BadRequestError, TooLargeError, http_status
from edgeseal.sdk.errors import EdgesealError

logger = logging.getLogger(__name__)

JSONValue = Any
_UPLOAD_CHUNK = 1 << 20


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def _exception_response(exc: BaseException) -> JSONResponse:
    status, code = http_status(exc)
    if isinstance(exc, EdgesealError):
        return error_response(status, code, exc.diagnostics())
    logger.error("internal error: %s", type(exc).__name__, exc_info=exc)
    return error_response(500, "internal", "internal server error")


def _strict_json(data: bytes) -> JSONValue:
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in items:
            if key in out:
                raise BadRequestError(f"duplicate JSON key {key[:40]!r}")
            out[key] = value
        return out

    def constant(name: str) -> Any:
        raise BadRequestError(f"JSON constant {name} is not allowed")

    try:
        return json.loads(data.decode("utf-8"), object_pairs_hook=pairs, parse_constant=constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BadRequestError("the request body is not valid JSON") from None


def _declared_length(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadRequestError("invalid Content-Length")
        if int(declared) > limit:
            raise TooLargeError(f"the request body exceeds {limit} bytes")


async def read_json_body(request: Request, limit: int) -> JSONValue:
    """The request's JSON body, refusing more than ``limit`` bytes before reading them."""
    return _strict_json(await read_limited(request, limit))


def create_app(
    data_dir: Path,
    *,
    now: Callable[[], datetime] | None = None,
    hint_settings: HintSettings | None = None,
) -> FastAPI:
    """The app serving the initialized data directory ``data_dir``."""
    ctx = ServerContext.open(Path(data_dir), now=now, hint_settings=hint_settings)
    return build_app(ctx)


def build_app(ctx: ServerContext) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        task = None
        if ctx.config.refresh_interval > 0:
            task = asyncio.create_task(_refresh_loop(ctx, ctx.config.refresh_interval))
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            ctx.close()

    app = FastAPI(
        title="edgeseal OTA server",
        version=package_version("edgeseal"),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.ctx = ctx

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
        return error_response(exc.status_code, code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, _exc: RequestValidationError) -> JSONResponse:
        return error_response(400, "bad-request", "invalid request parameters")

    @app.exception_handler(EdgesealError)
    async def _edgeseal_error(_request: Request, exc: EdgesealError) -> JSONResponse:
        return _exception_response(exc)

    _register_public(app, ctx)
    _register_reads(app, ctx)
    _register_mutations(app, ctx)
    return app


async def _refresh_loop(ctx: ServerContext, interval: int) -> None:
    while True:
        try:
            await run_in_threadpool(refresh_online, ctx)
        except Exception:
            logger.exception("re-signing the online roles failed; retrying in %d s", interval)
        await asyncio.sleep(interval)


def refresh_online(ctx: ServerContext) -> list[str]:
    """Re-sign online roles near expiry; audit it when anything was re-signed."""

    with ctx.db.session() as session:
        roles = ctx.repository.refresh_online(now=ctx.now())
        if roles:
            ctx.audit.append(
                session,
                actor="server",
                action="repository.refresh",
                target="online roles",
                outcome=ACCEPTED,
                details={"roles": roles},
                now=ctx.now(),
            )
    return roles


# --- public -------------------------------------------------------------------------------


def _register_public(app: FastAPI, ctx: ServerContext) -> None:
    from edgeseal.ota_server.static import metadata_is_mutable, static_response

    version = package_version("edgeseal")

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok", "version": version}

    @app.get("/tuf/metadata/{name:path}")
    def tuf_metadata(name: str) -> Response:
        return static_response(ctx.data.metadata, name, mutable=metadata_is_mutable(name))

    @app.get("/tuf/targets/{path:path}")
    def tuf_targets(path: str) -> Response:
        return static_response(ctx.data.targets, path, mutable=False)


# --- reads --------------------------------------------------------------------------------


def _read(ctx: ServerContext, request: Request, fn: Callable[[Session, Principal], Any]) -> Any:
    with ctx.db.session() as session:
        from edgeseal.ota_server.auth import authenticate

        principal = authenticate(session, request.headers.get("authorization"))
        return fn(session, principal)


def _register_reads(app: FastAPI, ctx: ServerContext) -> None:
    @app.get("/api/v1/whoami")
    def whoami(request: Request) -> Any:
        return _read(ctx, request, lambda _s, p: p.as_json())

    @app.get("/api/v1/kek")
    def kek(request: Request) -> Any:
        return _read(ctx, request, lambda _s, _p: {"public_key_pem": ctx.kek.public_key_pem()})

    @app.get("/api/v1/families")
    def families(request: Request) -> Any:
        def fn(_s: Session, p: Principal) -> Any:
            require_viewer(p)
            return [
                {"family": name, "keyids": sorted(d.keyids), "threshold": d.threshold}
                for name, d in sorted(ctx.repository.families().items())
            ]

        return _read(ctx, request, fn)

    @app.get("/api/v1/releases")
    def list_releases(request: Request, family: str | None = None) -> Any:
        def fn(s: Session, p: Principal) -> Any:
            require_viewer(p)
            return releases.list_releases(s, family)

        return _read(ctx, request, fn)

    @app.get("/api/v1/releases/{release_id}")
    def show_release(request: Request, release_id: str) -> Any:
        def fn(s: Session, p: Principal) -> Any:
            require_viewer(p)
            return releases.release_json(releases.get_release(s, release_id))

        return _read(ctx, request, fn)

    @app.get("/api/v1/releases/{release_id}/proposal")
    def proposal(request: Request, release_id: str) -> Response:
        def fn(s: Session, p: Principal) -> bytes:
            require_viewer(p)
            return releases.proposal_bytes(s, release_id)

        body: bytes = _read(ctx, request, fn)
        return Response(body, media_type="application/json")

    @app.get("/api/v1/devices")
    def list_devices(request: Request) -> Any:
        def fn(s: Session, p: Principal) -> Any:
            require_viewer(p)
            return devices.list_devices(s)

        return _read(ctx, request, fn)

    @app.get("/api/v1/audit")
    def audit(request: Request, after: int = 0, limit: int = 1000) -> Any:
        def fn(s: Session, p: Principal) -> Any:
            require_viewer(p)
            if after < 0 or not 1 <= limit <= 10000:
                raise BadRequestError("after >= 0 and 1 <= limit <= 10000")
            return [e.as_json() for e in AuditLog.entries(s, after=after, limit=limit)]

        return _read(ctx, request, fn)


# --- state changes ------------------------------------------------------------------------

Work = Callable[[Session, Principal, Any], tuple[Any, dict[str, Any]]]
Prepare = Callable[[Request, Principal], Awaitable[Any]]


async def _state_change(
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
        return _exception_response(error)
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
        return _exception_response(exc)
    return JSONResponse(result, status_code=status)


def _register_mutations(app: FastAPI, ctx: ServerContext) -> None:
    async def json_body(request: Request, _principal: Principal) -> Any:
        return await read_json_body(request, ctx.config.max_json_body)

    async def no_body(request: Request, _principal: Principal) -> Any:
        raw = await read_limited(request, ctx.config.max_json_body)
        if raw.strip() and _strict_json(raw) != {}:
            raise BadRequestError("this call takes no body (or {})")
        return None

    @app.post("/api/v1/tokens")
    async def create_token_route(request: Request) -> JSONResponse:
        def work(s: Session, p: Principal, body: Any) -> tuple[Any, dict[str, Any]]:
            require_admin(p)
            releases.check_keys(body, frozenset({"name", "role"}), frozenset({"family"}))
            token, created = create_token(
                s, name=body["name"], role=body["role"], family=body.get("family"), now=ctx.now()
            )
            info = created.as_json() | {"id": created.token_id}
            return {"token": token} | info, info

        return await _state_change(ctx, request, "token.create", json_body, work, status=201)

    @app.post("/api/v1/devices")
    async def add_device(request: Request) -> JSONResponse:
        def work(s: Session, p: Principal, body: Any) -> tuple[Any, dict[str, Any]]:
            return devices.add_device(ctx, s, p, body)

        return await _state_change(ctx, request, "device.add", json_body, work, status=201)

    @app.post("/api/v1/releases")
    async def create_release(request: Request) -> JSONResponse:
        def work(s: Session, p: Principal, body: Any) -> tuple[Any, dict[str, Any]]:
            return releases.create_release(ctx, s, p, body)

        return await _state_change(ctx, request, "release.create", json_body, work, status=201)

    @app.post("/api/v1/releases/{release_id}/signatures")
    async def add_signature(request: Request, release_id: str) -> JSONResponse:
        def work(s: Session, p: Principal, body: Any) -> tuple[Any, dict[str, Any]]:
            return releases.add_signature(ctx, s, p, release_id, body)

        return await _state_change(ctx, request, "release.sign", json_body, work)

    @app.post("/api/v1/releases/{release_id}/yank")
    async def yank(request: Request, release_id: str) -> JSONResponse:
        def work(s: Session, p: Principal, _body: Any) -> tuple[Any, dict[str, Any]]:
            return releases.yank_release(ctx, s, p, release_id)

        return await _state_change(ctx, request, "release.yank", no_body, work)

    @app.put("/api/v1/releases/{release_id}/sealed-model")
    async def upload(request: Request, release_id: str) -> JSONResponse:
        def work(s: Session, p: Principal, staged: Any) -> tuple[Any, dict[str, Any]]:
            path, size, sha256 = staged
            return releases.accept_upload(
                ctx, s, p, release_id, upload=path, size=size, sha256=sha256
            )

        staged: list[Path] = []

        async def tracked(request: Request, principal: Principal) -> Any:
            result = await _receive_upload(ctx, request, principal, release_id)
            staged.append(result[0])
            return result

        try:
            return await _state_change(ctx, request, "release.upload", tracked, work)
        finally:
            for path in staged:
                path.unlink(missing_ok=True)


async def read_limited(request: Request, limit: int) -> bytes:
    _declared_length(request, limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLargeError(f"the request body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _check_size(size: int, limit: int) -> None:
    if size > limit:
        raise TooLargeError(f"the upload exceeds {limit} bytes (the declared size or the limit)")


async def _receive_upload(
    ctx: ServerContext, request: Request, principal: Principal, release_id: str
) -> tuple[Path, int, str]:
    """Stream a sealed model to ``DIR/uploads`` with a running SHA-256 (never all in memory).

    The uploader's role is checked before a byte is read; the limit is the size
    declared at creation (itself at most the configured upload limit).
    """

    def precheck() -> int:
        with ctx.db.session() as session:
            row = releases.get_release(session, release_id)
            require_release_manager(principal, row.family)
            return min(row.sealed_size, ctx.config.max_upload)

    limit = await run_in_threadpool(precheck)
    _declared_length(request, limit)
    fd, name = tempfile.mkstemp(prefix="upload.", suffix=".part", dir=ctx.data.uploads)
    path = Path(name)
    digest = hashlib.sha256()
    size = 0
    try:
        with os.fdopen(fd, "wb") as handle:
            async for chunk in request.stream():
                size += len(chunk)
                _check_size(size, limit)
                digest.update(chunk)
                handle.write(chunk)
            handle.flush()
            await run_in_threadpool(os.fsync, handle.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path, size, digest.hexdigest()
