"""Snapshot and timestamp: the online roles that make a repository state current.

Every change ends here: one new snapshot naming the new versions of the
targets-type roles, then one new timestamp naming that snapshot. Snapshot meta
is version-only (spec 4.4 allows omitting ``length``/``hashes``): with 256 or
more bins it stays small, and a client still refuses a role whose version does
not match (mix-and-match) and never accepts a lower version (rollback). The
timestamp carries length and SHA-256 of the snapshot, so the snapshot download
is bounded by its exact size.
"""

from __future__ import annotations

import copy
from datetime import datetime

from securesystemslib.signer import Signer
from tuf.api.metadata import Metadata, MetaFile, Snapshot, Timestamp

from edgeseal.ota_server.repository.expiry import Expiry, expires_at
from edgeseal.ota_server.repository.signing import sign
from edgeseal.ota_server.repository.store import Changes


def next_snapshot(
    current: Snapshot | None,
    changes: Changes,
    *,
    now: datetime,
    expiry: Expiry,
    signer: Signer,
) -> Metadata[Snapshot]:
    """A snapshot naming the roles in ``changes`` at their new versions."""
    meta = copy.deepcopy(current.meta) if current is not None else {}
    for role, (version, _) in changes.files.items():
        if role in ("root", "snapshot", "timestamp"):
            continue
        meta[f"{role}.json"] = MetaFile(version=version)
    version = current.version + 1 if current is not None else 1
    md = Metadata(Snapshot(version=version, expires=expires_at(now, expiry.snapshot), meta=meta))
    sign(md, [signer])
    return md


def next_timestamp(
    current: Timestamp | None,
    snapshot_version: int,
    snapshot_bytes: bytes,
    *,
    now: datetime,
    expiry: Expiry,
    signer: Signer,
) -> Metadata[Timestamp]:
    """A timestamp naming the snapshot whose exact bytes are ``snapshot_bytes``."""
    meta = MetaFile.from_data(snapshot_version, snapshot_bytes, ["sha256"])
    version = current.version + 1 if current is not None else 1
    md = Metadata(
        Timestamp(
            version=version,
            expires=expires_at(now, expiry.timestamp),
            snapshot_meta=meta,
        )
    )
    sign(md, [signer])
    return md
