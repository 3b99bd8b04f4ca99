"""Family roles: the delegations in top-level targets and the proposals to sign.

Each model family is a delegated role of the offline top-level ``targets``
(paths ``<family>/*`` and ``<family>/*/*``, terminating, k-of-n release
managers). The server never holds a release manager's key: it proposes the
next version unsigned, collects signatures, and publishes once the threshold
of the *current* delegation is met (spec 5.6.3 is the check a client makes;
this is the same check, made first).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from securesystemslib.signer import Key
from tuf.api.metadata import DelegatedRole, Metadata, TargetFile, Targets

from edgeseal.ota_server.errors import ProposalError, UnknownFamilyError, UnknownTargetError
from edgeseal.ota_server.repository.layout import (
    ENVELOPES,
    family_paths,
    target_blob_path,
    validate_family_name,
    validate_family_target,
)


@dataclass(frozen=True)
class FamilyDelegation:
    """Who may sign a family's releases: its release managers' keys and threshold."""

    name: str
    keys: tuple[Key, ...]
    threshold: int

    @property
    def keyids(self) -> tuple[str, ...]:
        return tuple(key.keyid for key in self.keys)


def families_of(targets: Targets) -> dict[str, FamilyDelegation]:
    """The family delegations of top-level targets (every role but ``envelopes``)."""
    found: dict[str, FamilyDelegation] = {}
    if targets.delegations is None or targets.delegations.roles is None:
        return found
    for name, role in targets.delegations.roles.items():
        if name == ENVELOPES:
            continue
        keys = tuple(targets.delegations.keys[keyid] for keyid in role.keyids)
        found[name] = FamilyDelegation(name=name, keys=keys, threshold=role.threshold)
    return found


def delegation_for(targets: Targets, family: str) -> FamilyDelegation:
    validate_family_name(family)
    found = families_of(targets).get(family)
    if found is None:
        raise UnknownFamilyError(f"no family {family!r} is delegated", field="family")
    return found


def with_family(targets: Targets, family: str, keys: Sequence[Key], threshold: int) -> Targets:
    """A copy of ``targets`` delegating ``family`` to ``keys`` with ``threshold``.

    Keys no role uses any more are dropped from ``delegations.keys``, so a
    rotated-out release manager key leaves no trace in the metadata.
    """
    new = copy.deepcopy(targets)
    assert new.delegations is not None and new.delegations.roles is not None
    roles = new.delegations.roles
    roles[family] = DelegatedRole(
        name=family,
        keyids=[key.keyid for key in keys],
        threshold=threshold,
        terminating=True,
        paths=family_paths(family),
    )
    for key in keys:
        new.delegations.keys[key.keyid] = key
    used = {keyid for role in roles.values() for keyid in role.keyids}
    for keyid in list(new.delegations.keys):
        if keyid not in used:
            del new.delegations.keys[keyid]
    return new


def propose(
    family: str,
    current: Targets | None,
    *,
    add: Mapping[str, TargetFile],
    remove: Sequence[str],
    expires: datetime,
) -> Metadata[Targets]:
    """The next version of ``family``'s metadata, unsigned."""
    targets = dict(current.targets) if current is not None else {}
    overlap = set(add) & set(remove)
    if overlap:
        raise ProposalError(f"target {sorted(overlap)[0]!r} is both added and removed")
    for path in remove:
        if path not in targets:
            raise UnknownTargetError(
                f"cannot remove {path!r}: family {family!r} does not list it", field="target_path"
            )
        del targets[path]
    for path, target in add.items():
        validate_family_target(family, path)
        if target.path != path:
            raise ProposalError(f"target file for {path!r} is named {target.path!r}")
        targets[path] = target
    version = current.version + 1 if current is not None else 1
    return Metadata(Targets(version=version, expires=expires, targets=targets))


def validate_proposal(
    family: str,
    current: Targets | None,
    signed: Metadata[Targets],
    *,
    now: datetime,
    max_expires: datetime,
    targets_dir: Path,
) -> None:
    """Everything but signatures: type, version, expiry, structure, paths, files."""
    if not isinstance(signed.signed, Targets):
        raise ProposalError(f"metadata for {family!r} is {signed.signed.type}, not targets")
    proposal = signed.signed
    expected = current.version + 1 if current is not None else 1
    if proposal.version != expected:
        raise ProposalError(
            f"{family}: version {proposal.version} is not the next version {expected}",
            field="version",
        )
    if proposal.expires <= now:
        raise ProposalError(f"{family}: metadata expires {proposal.expires}, before now")
    if proposal.expires > max_expires:
        raise ProposalError(f"{family}: expiry {proposal.expires} is after {max_expires}")
    if proposal.delegations is not None:
        raise ProposalError(f"{family}: a family role may not delegate further")
    for path, target in proposal.targets.items():
        validate_family_target(family, path)
        sha256 = target.hashes.get("sha256")
        if sha256 is None:
            raise ProposalError(f"target {path!r} has no sha256 hash", field="target_path")
        blob = targets_dir / target_blob_path(path, sha256)
        try:
            size = blob.stat().st_size
        except FileNotFoundError:
            raise UnknownTargetError(
                f"target file for {path!r} was never uploaded", field="target_path"
            ) from None
        if size != target.length:
            raise UnknownTargetError(
                f"target file for {path!r} is {size} bytes, metadata says {target.length}",
                field="target_path",
            )
