"""The currently published metadata of one model family, authenticated from a root.

Before signing a proposal a release manager needs the family metadata it
changes. The server could hand over anything, so this walks the TUF chain the
way a device does (TUF specification 5.3-5.6, consistent snapshots) and
checks every signature, using the public ``Metadata.verify_delegate`` of
python-tuf:

root (trusted copy, then each ``N+1.root.json`` signed by old and new root)
-> ``timestamp.json`` -> ``V.snapshot.json`` -> ``T.targets.json`` (the
family's delegation: keys and threshold) -> ``F.<family>.json`` at the version
the snapshot names.

Expiry is deliberately not enforced: a family whose metadata expired is
exactly one that needs a new release, and the signer needs the latest
*authentic* version, not a fresh one (devices enforce freshness). Rollback by a
malicious server is harmless here: a proposal built on an old version cannot
be published over a newer one.

The trust anchor is the root the caller passes (``--root``); without one the
server's ``1.root.json`` is trusted on first use and the result says so.
Fetching is done by the injected ``fetch`` callable (None for "no such file").
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgeseal.sdk.errors import EdgesealError

__all__ = ["MAX_ROOT_ROTATIONS", "PublishedFamily", "PublishedMetadataError", "published_family"]

logger = logging.getLogger(__name__)

MAX_ROOT_ROTATIONS = 1024

Fetch = Callable[[str], "bytes | None"]


class PublishedMetadataError(EdgesealError):
    """The published TUF metadata is missing, malformed or not properly signed."""


@dataclass(frozen=True)
class PublishedFamily:
    """The authenticated current state of one family's delegated targets role."""

    family: str
    #: The published family metadata (signatures checked), None if never published.
    metadata: bytes | None
    version: int | None
    keyids: tuple[str, ...]
    threshold: int
    #: True when the chain started at a root the caller trusts, not one fetched on first use.
    root_pinned: bool


def published_family(fetch: Fetch, family: str, trusted_root: bytes | None) -> PublishedFamily:
    """Walk root -> timestamp -> snapshot -> targets -> ``family``; verify each step."""
    from tuf.api.exceptions import UnsignedMetadataError
    from tuf.api.metadata import Metadata
    from tuf.api.serialization import DeserializationError

    def load(name: str, required: bool = True) -> Any:
        data = fetch(name)
        if data is None:
            if required:
                raise PublishedMetadataError(f"the server publishes no {name}")
            return None
        try:
            return Metadata.from_bytes(data)
        except DeserializationError as exc:
            raise PublishedMetadataError(f"published {name} is malformed: {exc}") from exc

    def check(delegator: Any, role: str, delegate: Any, name: str) -> None:
        try:
            delegator.verify_delegate(role, delegate)
        except UnsignedMetadataError as exc:
            raise PublishedMetadataError(
                f"published {name} is not signed by {role}'s keys"
            ) from exc
        except ValueError as exc:
            raise PublishedMetadataError(f"cannot check {name}: {exc}") from exc

    pinned = trusted_root is not None
    if trusted_root is not None:
        try:
            root = Metadata.from_bytes(trusted_root)
        except DeserializationError as exc:
            raise PublishedMetadataError(f"the trusted root is malformed: {exc}") from exc
    else:
        logger.warning("no trusted root given: trusting the server's 1.root.json on first use")
        root = load("1.root.json")
    if root.signed.type != "root":
        raise PublishedMetadataError("the trusted root is not root metadata")
    check(root, "root", root, f"{root.signed.version}.root.json")
    for _ in range(MAX_ROOT_ROTATIONS):
        name = f"{root.signed.version + 1}.root.json"
        new = load(name, required=False)
        if new is None:
            break
        if new.signed.type != "root" or new.signed.version != root.signed.version + 1:
            raise PublishedMetadataError(f"published {name} is not the next root")
        check(root, "root", new, name)
        check(new, "root", new, name)
        root = new
    else:
        raise PublishedMetadataError(f"more than {MAX_ROOT_ROTATIONS} root rotations")

    consistent = bool(root.signed.consistent_snapshot)

    def versioned(role: str, version: int) -> str:
        return f"{version}.{role}.json" if consistent else f"{role}.json"

    timestamp = load("timestamp.json")
    check(root, "timestamp", timestamp, "timestamp.json")
    snapshot_version = timestamp.signed.snapshot_meta.version
    snapshot = _load_version(load, versioned("snapshot", snapshot_version), snapshot_version)
    check(root, "snapshot", snapshot, "snapshot")
    targets_meta = snapshot.signed.meta.get("targets.json")
    if targets_meta is None:
        raise PublishedMetadataError("the published snapshot lists no targets.json")
    targets = _load_version(load, versioned("targets", targets_meta.version), targets_meta.version)
    check(root, "targets", targets, "targets")
    delegations = targets.signed.delegations
    role = delegations.roles.get(family) if delegations and delegations.roles else None
    if role is None:
        raise PublishedMetadataError(f"the top-level targets delegate no role named {family!r}")
    family_meta = snapshot.signed.meta.get(f"{family}.json")
    metadata: bytes | None = None
    version: int | None = None
    if family_meta is not None:
        name = versioned(family, family_meta.version)
        metadata = fetch(name)
        if metadata is None:
            raise PublishedMetadataError(f"the snapshot lists {name} but the server lacks it")
        current = _load_version(lambda _n: Metadata.from_bytes(metadata), name, family_meta.version)
        check(targets, family, current, name)
        version = current.signed.version
    logger.debug("published %s: version %s, threshold %d", family, version, role.threshold)
    return PublishedFamily(
        family=family,
        metadata=metadata,
        version=version,
        keyids=tuple(role.keyids),
        threshold=role.threshold,
        root_pinned=pinned,
    )


def _load_version(load: Callable[[str], Any], name: str, version: int) -> Any:
    metadata = load(name)
    if metadata.signed.version != version:
        raise PublishedMetadataError(
            f"published {name} is version {metadata.signed.version}, expected {version}"
        )
    return metadata
