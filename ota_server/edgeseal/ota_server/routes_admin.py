"""Routes about the server itself: who am I, the KEK, families, the audit log, tokens."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from edgeseal.ota_server.audit import AuditLog
from edgeseal.ota_server.auth import Principal, create_token, require_admin, require_viewer
from edgeseal.ota_server.context import ServerContext
from edgeseal.ota_server.releases import check_keys
from edgeseal.ota_server.routes_common import json_body, run_read, state_change
from edgeseal.ota_server.service_errors import BadRequestError


def register_admin(app: FastAPI, ctx: ServerContext) -> None:
    @app.get("/api/v1/whoami")
    def whoami(request: Request) -> Any:
        return run_read(ctx, request, lambda _s, p: p.as_json())

    @app.get("/api/v1/kek")
    def kek(request: Request) -> Any:
        return run_read(ctx, request, lambda _s, _p: {"public_key_pem": ctx.kek.public_key_pem()})

    @app.get("/api/v1/families")
    def families(request: Request) -> Any:
        def fn(_s: Session, p: Principal) -> Any:
            require_viewer(p)
            return [
                {"family": name, "keyids": sorted(d.keyids), "threshold": d.threshold}
                for name, d in sorted(ctx.repository.families().items())
            ]

        return run_read(ctx, request, fn)

    @app.get("/api/v1/audit")
    def audit(request: Request, after: int = 0, limit: int = 1000) -> Any:
        def fn(s: Session, p: Principal) -> Any:
            require_viewer(p)
            if after < 0 or not 1 <= limit <= 10000:
                raise BadRequestError("after >= 0 and 1 <= limit <= 10000")
            return [e.as_json() for e in AuditLog.entries(s, after=after, limit=limit)]

        return run_read(ctx, request, fn)

    @app.post("/api/v1/tokens")
    async def create_token_route(request: Request) -> JSONResponse:
        def work(s: Session, p: Principal, body: Any) -> tuple[Any, dict[str, Any]]:
            require_admin(p)
            check_keys(body, frozenset({"name", "role"}), frozenset({"family"}))
            token, created = create_token(
                s, name=body["name"], role=body["role"], family=body.get("family"), now=ctx.now()
            )
            info = created.as_json() | {"id": created.token_id}
            return {"token": token} | info, info

        return await state_change(ctx, request, "token.create", json_body(ctx), work, status=201)
