"""Device routes: list the devices, add one (with its envelopes), revoke one.

``POST /api/v1/devices/{device_id}/revoke`` (operator or admin, no body or
``{}``) answers ``{"id", "revoked": true, "enrolled", "already_revoked",
"envelopes_removed": [paths], "mqtt_credentials_removed"}``; 404 for an
unknown device. Audited as ``device.revoke``, accepted or refused.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from edgeseal.ota_server import devices
from edgeseal.ota_server.auth import Principal, require_viewer
from edgeseal.ota_server.context import ServerContext
from edgeseal.ota_server.routes_common import json_body, no_body, run_read, state_change


def register_devices(app: FastAPI, ctx: ServerContext) -> None:
    @app.get("/api/v1/devices")
    def list_devices(request: Request) -> Any:
        def fn(s: Session, p: Principal) -> Any:
            require_viewer(p)
            return devices.list_devices(s)

        return run_read(ctx, request, fn)

    @app.post("/api/v1/devices")
    async def add_device(request: Request) -> JSONResponse:
        def work(s: Session, p: Principal, body: Any) -> tuple[Any, dict[str, Any]]:
            return devices.add_device(ctx, s, p, body)

        return await state_change(ctx, request, "device.add", json_body(ctx), work, status=201)

    @app.post("/api/v1/devices/{device_id}/revoke")
    async def revoke_device(request: Request, device_id: str) -> JSONResponse:
        def work(s: Session, p: Principal, _body: Any) -> tuple[Any, dict[str, Any]]:
            return devices.revoke_device(ctx, s, p, device_id)

        return await state_change(ctx, request, "device.revoke", no_body(ctx), work)
