"""One open server data directory: config, database, audit log, KEK and TUF repository.

Both the web app and the CLI act through a :class:`ServerContext`, so a device
added with ``edgeseal-server device add`` goes through exactly the same checks,
envelope production and audit entry as ``POST /api/v1/devices``.

:meth:`ServerContext.mutate` is the one path of every state-changing action:
it runs the action in one database transaction together with its "accepted"
audit entry, and if anything refuses it writes a "refused" entry (with the
reason) in a fresh transaction, then re-raises. Because the repository
refuses before writing (and the database rolls back), a refused request
changes nothing but the audit log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from edgeseal.ota_server.audit import ACCEPTED, REFUSED, AuditLog
from edgeseal.ota_server.auth import ANONYMOUS, Principal, authenticate
from edgeseal.ota_server.config import DataDir, ServerConfig, load_config
from edgeseal.ota_server.db import Database
from edgeseal.ota_server.hints import HintSettings
from edgeseal.ota_server.kek import KeyEncryptionKey
from edgeseal.ota_server.repository import Expiry, Repository
from edgeseal.ota_server.service_errors import http_status
from edgeseal.ota_server.telemetry import TelemetrySettings
from edgeseal.sdk.errors import EdgesealError

logger = logging.getLogger(__name__)

T = TypeVar("T")
Clock = Callable[[], datetime]


def wall_clock() -> datetime:
    return datetime.now(UTC)


def expiry_from_config(config: ServerConfig) -> Expiry:
    return Expiry(
        root=timedelta(days=config.root_expiry_days),
        targets=timedelta(days=config.targets_expiry_days),
        family=timedelta(days=config.family_expiry_days),
        envelopes=timedelta(days=config.envelopes_expiry_days),
        snapshot=timedelta(days=config.snapshot_expiry_days),
        timestamp=timedelta(days=config.timestamp_expiry_days),
    )


def actor_of(principal: Principal) -> str:
    """How a token appears in the audit log: its name and public id, never its secret."""
    return f"{principal.name}#{principal.token_id}"


@dataclass
class ServerContext:
    data: DataDir
    config: ServerConfig
    db: Database
    audit: AuditLog
    kek: KeyEncryptionKey
    repository: Repository
    clock: Clock = wall_clock
    #: Where release hints go (the MQTT broker ``run`` started), or None: no hints.
    hint_settings: HintSettings | None = None
    #: Where the server reads device telemetry (the broker ``run`` started), or None.
    telemetry_settings: TelemetrySettings | None = None

    @classmethod
    def open(
        cls,
        data_dir: Path,
        *,
        now: Clock | None = None,
        hint_settings: HintSettings | None = None,
        telemetry_settings: TelemetrySettings | None = None,
    ) -> ServerContext:
        data = DataDir(Path(data_dir))
        config = load_config(data)
        db = Database.open(data.db_file)
        db.create_all()
        repository = Repository(data.repository, data.keys, expiry=expiry_from_config(config))
        return cls(
            data=data,
            config=config,
            db=db,
            audit=AuditLog(data.audit_head),
            kek=KeyEncryptionKey.load(data.keys),
            repository=repository,
            clock=now or wall_clock,
            hint_settings=hint_settings,
            telemetry_settings=telemetry_settings,
        )

    def now(self) -> datetime:
        return self.clock()

    def authenticate(self, authorization: str | None) -> Principal:
        with self.db.session() as session:
            return authenticate(session, authorization)

    def mutate(
        self,
        *,
        actor: str,
        action: str,
        target: str,
        work: Callable[[Session], tuple[T, dict[str, Any]]],
    ) -> T:
        """Run ``work`` and its audit entry in one transaction; audit a refusal and re-raise.

        ``work`` returns ``(result, audit details)``.
        """
        try:
            with self.db.session() as session:
                result, details = work(session)
                self.audit.append(
                    session,
                    actor=actor,
                    action=action,
                    target=target,
                    outcome=ACCEPTED,
                    details=details,
                    now=self.now(),
                )
            return result
        except BaseException as exc:
            self.record_refusal(actor=actor, action=action, target=target, exc=exc)
            raise

    def record_refusal(self, *, actor: str, action: str, target: str, exc: BaseException) -> None:
        """Write the "refused" audit entry of a failed state-changing call."""
        status, _code = http_status(exc)
        if isinstance(exc, EdgesealError):
            details: dict[str, Any] = {"reason": exc.diagnostics()[:1000], "status": status}
        else:
            details = {"reason": f"internal error ({type(exc).__name__})", "status": status}
        try:
            with self.db.session() as session:
                self.audit.append(
                    session,
                    actor=actor or ANONYMOUS,
                    action=action,
                    target=target,
                    outcome=REFUSED,
                    details=details,
                    now=self.now(),
                )
        except Exception:
            logger.exception("cannot write the audit entry of a refused %s", action)

    def close(self) -> None:
        self.db.close()
