"""Online re-signing: keep the online roles from expiring without any offline key.

The envelopes role and its bins, the snapshot and the timestamp are re-signed
by the online keys once less than ``Expiry.refresh_fraction`` of their
lifetime is left; a re-signed role means a new snapshot and timestamp.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from securesystemslib.signer import CryptoSigner

from edgeseal.ota_server.repository import envelopes as env
from edgeseal.ota_server.repository.expiry import Expiry, expires_at, needs_refresh
from edgeseal.ota_server.repository.freshness import next_timestamp
from edgeseal.ota_server.repository.layout import ENVELOPES
from edgeseal.ota_server.repository.signing import sign
from edgeseal.ota_server.repository.state import finish, load_state, online_signer
from edgeseal.ota_server.repository.store import Changes, RepositoryStore


def refresh_online(
    store: RepositoryStore, keys_dir: Path, expiry: Expiry, now: datetime
) -> list[str]:
    """Re-sign online roles with less than half their lifetime left; return their names."""
    fraction = expiry.refresh_fraction
    with store.locked():
        state = load_state(store)
        changes = Changes()
        signer: CryptoSigner | None = None
        envelopes_md = store.role(state.snapshot, ENVELOPES)
        online_roles = [ENVELOPES]
        if envelopes_md is not None:
            online_roles += list(env.succinct_of(envelopes_md.signed).get_roles())
        for role in online_roles:
            md = store.role(state.snapshot, role)
            if md is None:
                continue
            lifetime = expiry.lifetime(role)
            if not needs_refresh(md.signed.expires, now, lifetime, fraction):
                continue
            if signer is None:
                signer = online_signer(keys_dir, ENVELOPES, state.root.signed, state.targets.signed)
            md.signed.version += 1
            md.signed.expires = expires_at(now, lifetime)
            sign(md, [signer])
            changes.put(role, md)
        refreshed = changes.roles()
        snapshot_due = needs_refresh(state.snapshot.signed.expires, now, expiry.snapshot, fraction)
        if changes.files or snapshot_due:
            finish(store, keys_dir, state, changes, expiry=expiry, now=now)
            return [*refreshed, "snapshot", "timestamp"]
        if needs_refresh(state.timestamp.signed.expires, now, expiry.timestamp, fraction):
            root, targets = state.root.signed, state.targets.signed
            snapshot_bytes = store.read_bytes("snapshot", state.snapshot.signed.version)
            changes.put(
                "timestamp",
                next_timestamp(
                    state.timestamp.signed,
                    state.snapshot.signed.version,
                    snapshot_bytes,
                    now=now,
                    expiry=expiry,
                    signer=online_signer(keys_dir, "timestamp", root, targets),
                ),
            )
            store.commit(changes)
            return ["timestamp"]
        return []
