"""Release routes: list and show, the proposal to sign, and every workflow step.

Uploads are authorized *before* a single body byte is read, then streamed to
``DIR/uploads`` with a running SHA-256, never more than the size declared at
creation.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from edgeseal.ota_server import releases
from edgeseal.ota_server.auth import Principal, require_release_manager, require_viewer
from edgeseal.ota_server.context import ServerContext
from edgeseal.ota_server.routes_common import (
    check_declared_length,
    json_body,
    no_body,
    run_read,
    state_change,
)
from edgeseal.ota_server.service_errors import TooLargeError


def register_releases(app: FastAPI, ctx: ServerContext) -> None:
    _register_reads(app, ctx)
    _register_changes(app, ctx)


def _register_reads(app: FastAPI, ctx: ServerContext) -> None:
    @app.get("/api/v1/releases")
    def list_releases(request: Request, family: str | None = None) -> Any:
        def fn(s: Session, p: Principal) -> Any:
            require_viewer(p)
            return releases.list_releases(s, family)

        return run_read(ctx, request, fn)

    @app.get("/api/v1/releases/{release_id}")
    def show_release(request: Request, release_id: str) -> Any:
        def fn(s: Session, p: Principal) -> Any:
            require_viewer(p)
            return releases.release_json(releases.get_release(s, release_id))

        return run_read(ctx, request, fn)

    @app.get("/api/v1/releases/{release_id}/proposal")
    def proposal(request: Request, release_id: str) -> Response:
        def fn(s: Session, p: Principal) -> bytes:
            require_viewer(p)
            return releases.proposal_bytes(s, release_id)

        body: bytes = run_read(ctx, request, fn)
        return Response(body, media_type="application/json")


def _register_changes(app: FastAPI, ctx: ServerContext) -> None:
    @app.post("/api/v1/releases")
    async def create_release(request: Request) -> JSONResponse:
        def work(s: Session, p: Principal, body: Any) -> tuple[Any, dict[str, Any]]:
            return releases.create_release(ctx, s, p, body)

        return await state_change(ctx, request, "release.create", json_body(ctx), work, status=201)

    @app.post("/api/v1/releases/{release_id}/signatures")
    async def add_signature(request: Request, release_id: str) -> JSONResponse:
        def work(s: Session, p: Principal, body: Any) -> tuple[Any, dict[str, Any]]:
            return releases.add_signature(ctx, s, p, release_id, body)

        return await state_change(ctx, request, "release.sign", json_body(ctx), work)

    @app.post("/api/v1/releases/{release_id}/yank")
    async def yank(request: Request, release_id: str) -> JSONResponse:
        def work(s: Session, p: Principal, _body: Any) -> tuple[Any, dict[str, Any]]:
            return releases.yank_release(ctx, s, p, release_id)

        return await state_change(ctx, request, "release.yank", no_body(ctx), work)

    @app.post("/api/v1/releases/{release_id}/rollout")
    async def rollout(request: Request, release_id: str) -> JSONResponse:
        def work(s: Session, p: Principal, body: Any) -> tuple[Any, dict[str, Any]]:
            return releases.rollout_release(ctx, s, p, release_id, body)

        return await state_change(ctx, request, "release.rollout", json_body(ctx), work)

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
            return await state_change(ctx, request, "release.upload", tracked, work)
        finally:
            for path in staged:
                path.unlink(missing_ok=True)


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
    check_declared_length(request, limit)
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
