"""The published state of the repository and the commit that ends every change.

A change loads the state a client would see now (timestamp -> snapshot ->
roles), builds its new role versions, and hands them to :func:`finish`, which
adds a new snapshot and timestamp signed by the online keys and writes them all
(``timestamp.json`` last).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, Root, Snapshot, Targets, Timestamp

from edgeseal.ota_server.errors import RepositoryStateError
from edgeseal.ota_server.repository.expiry import Expiry
from edgeseal.ota_server.repository.freshness import next_snapshot, next_timestamp
from edgeseal.ota_server.repository.layout import ENVELOPES
from edgeseal.ota_server.repository.signing import load_online_signer
from edgeseal.ota_server.repository.store import Changes, RepositoryStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class State:
    """The published state, as a client would see it now."""

    root: Metadata[Root]
    timestamp: Metadata[Timestamp]
    snapshot: Metadata[Snapshot]
    targets: Metadata[Targets]


def load_state(store: RepositoryStore) -> State:
    timestamp = store.timestamp()
    snapshot = store.snapshot(timestamp)
    targets = store.role(snapshot, "targets")
    if targets is None:
        raise RepositoryStateError("the snapshot lists no targets metadata")
    return State(store.root(), timestamp, snapshot, targets)


def online_signer(keys_dir: Path, role: str, root: Root, targets: Targets) -> CryptoSigner:
    """The signer of an online role, by the keyid the current root (or targets) names."""
    if role == ENVELOPES:
        assert targets.delegations is not None and targets.delegations.roles is not None
        keyid = targets.delegations.roles[ENVELOPES].keyids[0]
    else:
        keyid = root.roles[role].keyids[0]
    return load_online_signer(keys_dir, role, keyid)


def finish(
    store: RepositoryStore,
    keys_dir: Path,
    state: State,
    changes: Changes,
    *,
    expiry: Expiry,
    now: datetime,
) -> None:
    """Add a new snapshot and timestamp to ``changes`` and write them all."""
    root = changes.mds["root"].signed if "root" in changes.mds else state.root.signed
    targets = state.targets.signed
    snapshot_md = next_snapshot(
        state.snapshot.signed,
        changes,
        now=now,
        expiry=expiry,
        signer=online_signer(keys_dir, "snapshot", root, targets),
    )
    snapshot_bytes = changes.put("snapshot", snapshot_md)
    timestamp_md = next_timestamp(
        state.timestamp.signed,
        snapshot_md.signed.version,
        snapshot_bytes,
        now=now,
        expiry=expiry,
        signer=online_signer(keys_dir, "timestamp", root, targets),
    )
    changes.put("timestamp", timestamp_md)
    store.commit(changes)
    logger.info(
        "published snapshot v%d, timestamp v%d (%s)",
        snapshot_md.signed.version,
        timestamp_md.signed.version,
        ", ".join(r for r in changes.roles() if r not in ("snapshot", "timestamp")) or "-",
    )
