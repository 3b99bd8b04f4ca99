"""Creating a repository: version 1 of every role and fresh online keys.

The offline root and targets keys are passed in as signers for this one call;
the online keys (snapshot, timestamp, envelopes) are generated here and
written to ``keys_dir`` together with the first metadata, under the lock.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from securesystemslib.signer import CryptoSigner, Key, Signer
from tuf.api.metadata import DelegatedRole, Delegations, Metadata, Targets

from edgeseal.ota_server.errors import RepositoryStateError
from edgeseal.ota_server.repository import envelopes as env
from edgeseal.ota_server.repository.expiry import Expiry, expires_at
from edgeseal.ota_server.repository.freshness import next_snapshot, next_timestamp
from edgeseal.ota_server.repository.layout import ENVELOPES, ENVELOPES_PATHS
from edgeseal.ota_server.repository.rotation import first_root, signed_root
from edgeseal.ota_server.repository.signing import (
    check_role_keys,
    new_online_key,
    require_threshold,
    sign,
    write_online_key,
)
from edgeseal.ota_server.repository.store import Changes, RepositoryStore

logger = logging.getLogger(__name__)


def create_repository(
    repo_dir: Path,
    keys_dir: Path,
    *,
    root_keys: Sequence[Key],
    root_threshold: int,
    root_signers: Sequence[Signer],
    targets_keys: Sequence[Key],
    targets_threshold: int,
    targets_signers: Sequence[Signer],
    bin_bits: int,
    expiry: Expiry,
    now: datetime,
) -> None:
    """Write version 1 of every role into ``repo_dir`` and the online keys into ``keys_dir``."""
    store = RepositoryStore(Path(repo_dir))
    if store.exists():
        raise RepositoryStateError(f"a TUF repository already exists in {repo_dir}")
    check_role_keys("root", root_keys, root_threshold)
    check_role_keys("targets", targets_keys, targets_threshold)
    online: dict[str, tuple[CryptoSigner, bytes]] = {
        role: new_online_key() for role in ("snapshot", "timestamp", ENVELOPES)
    }
    root = first_root(
        {
            "root": (root_keys, root_threshold),
            "targets": (targets_keys, targets_threshold),
            "snapshot": ([online["snapshot"][0].public_key], 1),
            "timestamp": ([online["timestamp"][0].public_key], 1),
        },
        now=now,
        expiry=expiry,
    )
    root_md = signed_root(None, root, root_signers)

    env_signer = online[ENVELOPES][0]
    env_key = env_signer.public_key
    targets_md = Metadata(
        Targets(
            version=1,
            expires=expires_at(now, expiry.targets),
            delegations=Delegations(
                keys={env_key.keyid: env_key},
                roles={
                    ENVELOPES: DelegatedRole(
                        name=ENVELOPES,
                        keyids=[env_key.keyid],
                        threshold=1,
                        terminating=True,
                        paths=list(ENVELOPES_PATHS),
                    )
                },
            ),
        )
    )
    sign(targets_md, targets_signers)
    require_threshold(root, "targets", targets_md.signed_bytes, targets_md.signatures)

    env_expires = expires_at(now, expiry.envelopes)
    envelopes_md = Metadata(env.new_envelopes_role(env_key, bin_bits, env_expires))
    sign(envelopes_md, [env_signer])
    changes = Changes()
    changes.put("root", root_md)
    changes.put("targets", targets_md)
    changes.put(ENVELOPES, envelopes_md)
    for name in env.succinct_of(envelopes_md.signed).get_roles():
        bin_md = Metadata(Targets(version=1, expires=env_expires))
        sign(bin_md, [env_signer])
        changes.put(name, bin_md)
    snapshot_md = next_snapshot(None, changes, now=now, expiry=expiry, signer=online["snapshot"][0])
    snapshot_bytes = changes.put("snapshot", snapshot_md)
    changes.put(
        "timestamp",
        next_timestamp(
            None, 1, snapshot_bytes, now=now, expiry=expiry, signer=online["timestamp"][0]
        ),
    )

    with store.locked():
        if store.exists():
            raise RepositoryStateError(f"a TUF repository already exists in {repo_dir}")
        for role, (signer, pem) in online.items():
            write_online_key(Path(keys_dir), role, signer.public_key.keyid, pem)
        store.targets_dir.mkdir(parents=True, exist_ok=True)
        store.commit(changes)
    logger.info("created TUF repository in %s with %d bins", repo_dir, 2**bin_bits)
