"""Root metadata versions: the first root, and rotations of root and targets keys.

A new root must be signed by a threshold of the old root's keys *and* of its
own (spec 5.3.4); ``require_root_threshold`` checks both before anything is
written. Rotating the timestamp or snapshot key in a new root is also how a
repository recovers from a fast-forward attack (spec 5.3.11): a client that
sees the timestamp role's keys change forgets the attacker's high versions.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from datetime import datetime

from securesystemslib.signer import Key, Signer
from tuf.api.metadata import Metadata, Root

from edgeseal.ota_server.repository.expiry import Expiry, expires_at
from edgeseal.ota_server.repository.signing import (
    check_role_keys,
    require_root_threshold,
    sign,
)


def first_root(
    roles: Mapping[str, tuple[Sequence[Key], int]], *, now: datetime, expiry: Expiry
) -> Root:
    """Root version 1 with consistent snapshots and the given keys per role."""
    root = Root(version=1, expires=expires_at(now, expiry.root), consistent_snapshot=True)
    for role, (keys, threshold) in roles.items():
        check_role_keys(role, keys, threshold)
        for key in keys:
            root.add_key(key, role)
        root.roles[role].threshold = threshold
    return root


def next_root(
    current: Root,
    replace: Mapping[str, tuple[Sequence[Key], int]],
    *,
    now: datetime,
    expiry: Expiry,
) -> Root:
    """``current`` with the keys and threshold of some roles replaced, version + 1."""
    new = copy.deepcopy(current)
    for role, (keys, threshold) in replace.items():
        check_role_keys(role, keys, threshold)
        for keyid in list(new.roles[role].keyids):
            new.revoke_key(keyid, role)
        for key in keys:
            new.add_key(key, role)
        new.roles[role].threshold = threshold
    new.version = current.version + 1
    new.expires = expires_at(now, expiry.root)
    return new


def _unique(signers: Sequence[Signer]) -> list[Signer]:
    seen: set[str] = set()
    unique: list[Signer] = []
    for signer in signers:
        if signer.public_key.keyid not in seen:
            seen.add(signer.public_key.keyid)
            unique.append(signer)
    return unique


def signed_root(previous: Root | None, root: Root, signers: Sequence[Signer]) -> Metadata[Root]:
    """Sign ``root`` and check the thresholds a client will check (old and new keys)."""
    md = Metadata(root)
    sign(md, _unique(signers))
    require_root_threshold(previous, root, md)
    return md
