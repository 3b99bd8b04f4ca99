"""Online roles are re-signed before they expire, and the re-signing is audited."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from server_fixture import new_signer

from edgeseal.ota_server.app import refresh_online
from edgeseal.ota_server.audit import AuditLog
from edgeseal.ota_server.config import ServerConfig
from edgeseal.ota_server.context import ServerContext
from edgeseal.ota_server.initialize import Officers, initialize

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def test_refresh_resigns_near_expiry_and_audits(tmp_path: Path) -> None:
    signers = [new_signer() for _ in range(2)]
    keys = [s.public_key for s in signers]
    officers = Officers(keys, 1, signers[:1], keys, 1, signers[:1])
    initialize(tmp_path / "d", officers, config=ServerConfig(bin_bits=2), now=T0)

    now = [T0 + timedelta(hours=1)]
    ctx = ServerContext.open(tmp_path / "d", now=lambda: now[0])
    try:
        assert refresh_online(ctx) == []
        now[0] = T0 + timedelta(hours=20)  # the 1-day timestamp is past half its life
        resigned = refresh_online(ctx)
        assert "timestamp" in resigned
        with ctx.db.session() as session:
            entries = AuditLog.entries(session)
            assert ctx.audit.verify(session) == len(entries)
        assert entries[-1].action == "repository.refresh"
        assert entries[-1].details == {"roles": resigned}
        assert refresh_online(ctx) == []
    finally:
        ctx.close()
