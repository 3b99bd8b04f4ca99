"""The OTA server's web app: the factory, error handlers and the online re-signing loop.

The routes live in one module per resource (``routes_public``, ``routes_admin``,
``routes_devices``, ``routes_releases``, ``routes_enroll``, ``routes_keys``,
``routes_fleet``) over the plumbing of
:mod:`edgeseal.ota_server.routes_common`.

Order of checks on a state-changing call: token, then body size and syntax,
then role (a release manager's role depends on the family named in the
body), then the service's own checks. Uploads are authorized *before* a
single body byte is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from importlib.metadata import version as package_version
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from edgeseal.ota_server.audit import ACCEPTED
from edgeseal.ota_server.context import ServerContext
from edgeseal.ota_server.hints import HintSettings
from edgeseal.ota_server.routes_admin import register_admin
from edgeseal.ota_server.routes_common import error_response, exception_response
from edgeseal.ota_server.routes_devices import register_devices
from edgeseal.ota_server.routes_enroll import register_enroll
from edgeseal.ota_server.routes_fleet import register_fleet
from edgeseal.ota_server.routes_keys import register_keys
from edgeseal.ota_server.routes_public import register_public
from edgeseal.ota_server.routes_releases import register_releases
from edgeseal.ota_server.telemetry import TelemetrySettings, TelemetrySubscriber
from edgeseal.sdk.errors import EdgesealError

logger = logging.getLogger(__name__)


def create_app(
    data_dir: Path,
    *,
    now: Callable[[], datetime] | None = None,
    hint_settings: HintSettings | None = None,
    telemetry_settings: TelemetrySettings | None = None,
) -> FastAPI:
    """The app serving the initialized data directory ``data_dir``.

    With ``telemetry_settings`` the app reads device telemetry while it runs
    (:class:`~edgeseal.ota_server.telemetry.TelemetrySubscriber`, started and stopped
    with the app's lifespan, available as ``app.state.telemetry``).
    """
    ctx = ServerContext.open(
        Path(data_dir), now=now, hint_settings=hint_settings, telemetry_settings=telemetry_settings
    )
    return build_app(ctx)


def build_app(ctx: ServerContext) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(running_app: FastAPI) -> AsyncIterator[None]:
        task = None
        if ctx.config.refresh_interval > 0:
            task = asyncio.create_task(_refresh_loop(ctx, ctx.config.refresh_interval))
        subscriber = None
        if ctx.telemetry_settings is not None:
            subscriber = TelemetrySubscriber(ctx.telemetry_settings, ctx.db, clock=ctx.now)
            subscriber.start()
        running_app.state.telemetry = subscriber
        try:
            yield
        finally:
            if subscriber is not None:
                await run_in_threadpool(subscriber.stop)
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
    app.state.telemetry = None

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
        return error_response(exc.status_code, code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, _exc: RequestValidationError) -> JSONResponse:
        return error_response(400, "bad-request", "invalid request parameters")

    @app.exception_handler(EdgesealError)
    async def _edgeseal_error(_request: Request, exc: EdgesealError) -> JSONResponse:
        return exception_response(exc)

    register_public(app, ctx)
    register_admin(app, ctx)
    register_devices(app, ctx)
    register_releases(app, ctx)
    register_enroll(app, ctx)
    register_keys(app, ctx)
    register_fleet(app, ctx)
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
