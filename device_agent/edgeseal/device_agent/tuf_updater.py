"""python-tuf's ``Updater`` with delegated roles verified per delegator (the delegation fix).

A delegated role has no single source of trust: role C delegated by A (keys
k1) and by B (keys k2) is valid on the path through A only if k1 signed it and
on the path through B only if k2 signed it (TUF spec 5.6.7.2; specification
issue #19 "promiscuous delegations"). ngclient keeps one verified object per
role *name*. Releases before 7 returned a cached role whatever the delegator
(``if role in self._trusted_set: return ...``). 7.0.1 remembers (delegator,
role) pairs, but when C is re-loaded through B with *different bytes* it
replaces the cached C while the old pair (A, C) stays marked as verified: a
later lookup through A then uses bytes that only k2 signed.

:class:`DelegationCheckingUpdater` owns this decision instead of relying on
the library's cache:

* it keeps the exact bytes of every delegated role it verified, and the set
  of (delegator, role) pairs those bytes were verified against;
* a lookup through a delegator not in that set re-verifies the kept bytes
  with ``TrustedMetadataSet.update_delegated_targets`` against *this*
  delegator (signatures and threshold, snapshot version and hashes, expiry),
  falling back to the repository only as python-tuf itself does;
* when a role's bytes change, every pair naming the role - as delegate or as
  delegator (its keys may have changed) - is forgotten, so each path is
  verified again against what is now trusted.

It also persists metadata through :func:`edgeseal.sdk.files.atomic_write`
(fsync of file and directory, which ngclient's ``_persist_file`` lacks).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import cast

from tuf.api import exceptions as tuf_exc
from tuf.api.metadata import Root, Targets
from tuf.ngclient.config import UpdaterConfig
from tuf.ngclient.fetcher import FetcherInterface
from tuf.ngclient.updater import Updater

from edgeseal.sdk.files import atomic_write

logger = logging.getLogger(__name__)


class DelegationCheckingUpdater(Updater):
    """``Updater`` whose delegated roles are verified against the delegator of each lookup."""

    def __init__(  # noqa: PLR0917 - mirrors Updater.__init__
        self,
        metadata_dir: str,
        metadata_base_url: str,
        target_dir: str | None = None,
        target_base_url: str | None = None,
        fetcher: FetcherInterface | None = None,
        config: UpdaterConfig | None = None,
        *,
        bootstrap: bytes | None,
    ) -> None:
        self._role_bytes: dict[str, bytes] = {}
        self._verified_pairs: set[tuple[str, str]] = set()
        super().__init__(
            metadata_dir,
            metadata_base_url,
            target_dir,
            target_base_url,
            fetcher,
            config,
            bootstrap=bootstrap,
        )

    # -- small, named windows on ngclient internals -------------------------

    def trusted_root(self) -> Root:
        """The currently trusted root (after ``refresh()``, the newest verified)."""
        return self._trusted_set.root

    def top_level_targets(self) -> Targets:
        """The verified top-level targets role; ``refresh()`` must have run."""
        return self._trusted_set.targets

    def load_delegated(self, role: str, delegator: str) -> Targets:
        """Load ``role`` as delegated by ``delegator``, verified against it."""
        return self._load_targets(role, delegator)

    # -- the delegation fix -------------------------------------------------

    def _load_targets(self, role: str, parent_role: str) -> Targets:
        if (parent_role, role) in self._verified_pairs:
            return cast("Targets", self._trusted_set[role])

        local = self._role_bytes.get(role)
        if local is None:
            try:
                local = self._load_local_metadata(role)
            except OSError as e:
                logger.debug("no local %s metadata: %s", role, e)
        if local is not None:
            try:
                targets = self._trusted_set.update_delegated_targets(local, role, parent_role)
            except tuf_exc.RepositoryError as e:
                # Cached bytes do not verify for *this* delegator (or are stale):
                # never use them on this path; ask the repository as ngclient does.
                logger.info("local %s does not verify as delegated by %s: %s", role, parent_role, e)
            else:
                self._remember(role, parent_role, local)
                return targets

        metainfo = self._trusted_set.snapshot.meta.get(f"{role}.json")
        if metainfo is None:
            raise tuf_exc.RepositoryError(f"Role {role} was delegated but is not part of snapshot")
        length = metainfo.length or self.config.targets_max_length
        version = metainfo.version if self._trusted_set.root.consistent_snapshot else None
        data = self._download_metadata(role, length, version)
        targets = self._trusted_set.update_delegated_targets(data, role, parent_role)
        self._persist_metadata(role, data)
        self._remember(role, parent_role, data)
        return targets

    def _remember(self, role: str, delegator: str, data: bytes) -> None:
        if self._role_bytes.get(role) != data:
            # New bytes for this role: what was verified for the old bytes, or
            # with the old bytes' keys as delegator, no longer holds.
            stale = {p for p in self._verified_pairs if role in p}
            if stale:
                logger.info("%s changed; re-verifying its delegations %s", role, sorted(stale))
            self._verified_pairs -= stale
            self._role_bytes[role] = data
        self._verified_pairs.add((delegator, role))

    # -- durable writes -----------------------------------------------------

    def _persist_file(self, filename: str, data: bytes) -> None:
        atomic_write(Path(filename), data)
