"""``GET /api/v1/fleet?family=F[&silent_hours=H]``: the release manager's fleet view.

Any token may read (viewer and up), except that a release manager reads only
the fleet of their own family (403 otherwise). 400 for an invalid family name
or ``silent_hours`` outside 1..:data:`~edgeseal.ota_server.fleet.MAX_SILENT_HOURS`;
404 for a family with no delegation. The answer is
:func:`edgeseal.ota_server.fleet.fleet_status`.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from sqlalchemy.orm import Session

from edgeseal.ota_server.auth import RELEASE_MANAGER, Principal, require_viewer
from edgeseal.ota_server.context import ServerContext
from edgeseal.ota_server.fleet import DEFAULT_SILENT_HOURS, MAX_SILENT_HOURS, fleet_status
from edgeseal.ota_server.routes_common import run_read
from edgeseal.ota_server.service_errors import BadRequestError, ForbiddenError, NotFoundError
from edgeseal.sdk.hazmat.format import NAME_RULE, is_valid_name


def register_fleet(app: FastAPI, ctx: ServerContext) -> None:
    @app.get("/api/v1/fleet")
    def fleet(request: Request, family: str = "", silent_hours: int = DEFAULT_SILENT_HOURS) -> Any:
        def fn(s: Session, p: Principal) -> Any:
            require_viewer(p)
            if not is_valid_name(family):
                raise BadRequestError(f"family must be a family name ({NAME_RULE})", field="family")
            if p.role == RELEASE_MANAGER and p.family != family:
                raise ForbiddenError(
                    f"a release manager of {p.family!r} reads only that family's fleet"
                )
            if not 1 <= silent_hours <= MAX_SILENT_HOURS:
                raise BadRequestError(
                    f"silent_hours must be from 1 to {MAX_SILENT_HOURS}", field="silent_hours"
                )
            if family not in ctx.repository.families():
                raise NotFoundError(f"family {family!r} has no delegation")
            return fleet_status(s, family, now=ctx.now(), silent_hours=silent_hours)

        return run_read(ctx, request, fn)
