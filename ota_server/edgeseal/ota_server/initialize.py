"""Create a server data directory: config, database, KEK, bundle key, TUF repository, admin token.

Used by ``edgeseal-server init`` and by tests that need a real server. The
officers' signers are given by the caller (the CLI loads them from
passphrase-encrypted files); this module never sees a passphrase.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from securesystemslib.signer import Key, Signer

from edgeseal.ota_server.audit import ACCEPTED, AuditLog
from edgeseal.ota_server.auth import ADMIN, create_token
from edgeseal.ota_server.bundle_key import load_bundle_key
from edgeseal.ota_server.config import DataDir, ServerConfig, write_config
from edgeseal.ota_server.context import expiry_from_config
from edgeseal.ota_server.db import Database
from edgeseal.ota_server.kek import KeyEncryptionKey
from edgeseal.ota_server.repository import Repository
from edgeseal.ota_server.service_errors import ConfigError


@dataclass(frozen=True)
class Officers:
    """The offline keys of the top-level roles, and signers for the first versions."""

    root_keys: Sequence[Key]
    root_threshold: int
    root_signers: Sequence[Signer]
    targets_keys: Sequence[Key]
    targets_threshold: int
    targets_signers: Sequence[Signer]


def initialize(
    data_dir: Path,
    officers: Officers,
    *,
    config: ServerConfig | None = None,
    admin_name: str = "admin",
    actor: str = "init",
    now: datetime | None = None,
) -> str:
    """Create everything in ``data_dir``; return the first admin token (shown once)."""
    config = config or ServerConfig()
    now = now or datetime.now(UTC)
    data = DataDir(Path(data_dir))
    if data.config_file.exists() or data.db_file.exists() or data.metadata.exists():
        raise ConfigError(f"{data.root} already holds an edgeseal server; refusing to overwrite")
    data.create_dirs()
    Repository.create(
        data.repository,
        data.keys,
        root_keys=officers.root_keys,
        root_threshold=officers.root_threshold,
        root_signers=officers.root_signers,
        targets_keys=officers.targets_keys,
        targets_threshold=officers.targets_threshold,
        targets_signers=officers.targets_signers,
        bin_bits=config.bin_bits,
        expiry=expiry_from_config(config),
        now=now,
    )
    KeyEncryptionKey.generate(data.keys)
    load_bundle_key(data.keys)  # creates the trust bundle key
    db = Database.open(data.db_file)
    try:
        db.create_all()
        audit = AuditLog(data.audit_head)
        with db.session() as session:
            token, principal = create_token(
                session, name=admin_name, role=ADMIN, family=None, now=now
            )
            audit.append(
                session,
                actor=actor,
                action="server.init",
                target=str(data.root),
                outcome=ACCEPTED,
                details={"admin_token_id": principal.token_id, "bin_bits": config.bin_bits},
                now=now,
            )
    finally:
        db.close()
    data.db_file.chmod(0o600)
    write_config(data, config)  # last: its presence marks an initialized directory
    return token
