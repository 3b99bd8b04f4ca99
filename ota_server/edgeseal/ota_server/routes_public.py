"""Unauthenticated routes: health, and the TUF repository served as static files."""

from __future__ import annotations

from importlib.metadata import version as package_version

from fastapi import FastAPI
from fastapi.responses import Response

from edgeseal.ota_server.context import ServerContext


def register_public(app: FastAPI, ctx: ServerContext) -> None:
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
