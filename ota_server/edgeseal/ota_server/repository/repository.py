"""The TUF repository of the OTA server: one object, one directory, every change signed.

Each public method loads the current state from disk (the chain the clients
walk: timestamp -> snapshot -> roles), builds and signs every new metadata
version in memory, checks it the way a client will, and only then writes:
target files, new role versions, root, snapshot, and ``timestamp.json`` last.
A refused operation raises a :class:`~edgeseal.ota_server.errors.RepositoryError`
before the first write, so it changes nothing on disk.

Offline keys (root, targets, release managers) are passed in as signers by the
caller for the one call that needs them and are never stored; online keys
(snapshot, timestamp, envelopes) live in ``keys_dir``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

from securesystemslib.exceptions import UnverifiedSignatureError
from securesystemslib.signer import CryptoSigner, Key, Signature, Signer
from tuf.api.metadata import Metadata, Root, TargetFile, Targets

from edgeseal.ota_server.errors import RepositoryStateError, SignatureError, UnknownFamilyError
from edgeseal.ota_server.repository import delegations as fam
from edgeseal.ota_server.repository import envelopes as env
from edgeseal.ota_server.repository import refresh
from edgeseal.ota_server.repository.create import create_repository
from edgeseal.ota_server.repository.expiry import Expiry, expires_at, utc_now
from edgeseal.ota_server.repository.layout import (
    ENVELOPES,
    target_blob_path,
    validate_family_name,
    validate_family_target,
    validate_target_path,
)
from edgeseal.ota_server.repository.rotation import next_root, signed_root
from edgeseal.ota_server.repository.signing import (
    check_role_keys,
    new_online_key,
    remove_online_key,
    require_threshold,
    sign,
    write_online_key,
)
from edgeseal.ota_server.repository.state import State, finish, load_state, online_signer
from edgeseal.ota_server.repository.store import Changes, RepositoryStore

_EMPTY: Mapping[str, Any] = MappingProxyType({})
DEFAULT_EXPIRY = Expiry()


class Repository:
    """A TUF repository with consistent snapshots, family roles and envelope bins."""

    def __init__(self, repo_dir: Path, keys_dir: Path, *, expiry: Expiry = DEFAULT_EXPIRY) -> None:
        self._store = RepositoryStore(Path(repo_dir))
        self.keys_dir = Path(keys_dir)
        self.expiry = expiry
        if not self._store.exists():
            raise RepositoryStateError(f"no TUF repository in {repo_dir}; create one first")

    @property
    def metadata_dir(self) -> Path:
        return self._store.metadata_dir

    @property
    def targets_dir(self) -> Path:
        return self._store.targets_dir

    # ------------------------------------------------------------------ create

    @classmethod
    def create(
        cls,
        repo_dir: Path,
        keys_dir: Path,
        *,
        root_keys: Sequence[Key],
        root_threshold: int,
        root_signers: Sequence[Signer],
        targets_keys: Sequence[Key],
        targets_threshold: int,
        targets_signers: Sequence[Signer],
        bin_bits: int = 8,
        expiry: Expiry = DEFAULT_EXPIRY,
        now: datetime | None = None,
    ) -> Repository:
        """Create version 1 of every role; generate the online keys into ``keys_dir``."""
        create_repository(
            repo_dir,
            keys_dir,
            root_keys=root_keys,
            root_threshold=root_threshold,
            root_signers=root_signers,
            targets_keys=targets_keys,
            targets_threshold=targets_threshold,
            targets_signers=targets_signers,
            bin_bits=bin_bits,
            expiry=expiry,
            now=utc_now(now),
        )
        return cls(Path(repo_dir), Path(keys_dir), expiry=expiry)

    # ------------------------------------------------------------------ reading

    def _load(self) -> State:
        return load_state(self._store)

    def _role(self, state: State, role: str) -> Metadata[Targets] | None:
        return self._store.role(state.snapshot, role)

    def root_bytes(self) -> bytes:
        """The latest root metadata, exactly as published (to bootstrap clients)."""
        return self._store.read_bytes("root", self._store.root_version())

    def families(self) -> dict[str, fam.FamilyDelegation]:
        """Every delegated family with its release managers' keys and threshold."""
        return fam.families_of(self._load().targets.signed)

    def family_targets(self, family: str) -> Metadata[Targets]:
        """The currently published metadata of ``family`` (raises if none yet)."""
        state = self._load()
        fam.delegation_for(state.targets.signed, family)
        md = self._role(state, family)
        if md is None:
            raise UnknownFamilyError(
                f"family {family!r} has no published metadata yet", field="family"
            )
        return md

    # ------------------------------------------------------------------ writing

    def _online_signer(self, role: str, root: Root, targets: Targets) -> CryptoSigner:
        return online_signer(self.keys_dir, role, root, targets)

    def _finish(self, state: State, changes: Changes, now: datetime) -> None:
        """Add a new snapshot and timestamp to ``changes`` and write them all."""
        finish(self._store, self.keys_dir, state, changes, expiry=self.expiry, now=now)

    def _next_targets(self, state: State, new: Targets, now: datetime) -> Targets:
        new.version = state.targets.signed.version + 1
        new.expires = expires_at(now, self.expiry.targets)
        return new

    def set_family(
        self,
        family: str,
        keys: Sequence[Key],
        threshold: int,
        targets_signers: Sequence[Signer],
        now: datetime | None = None,
    ) -> None:
        """Delegate ``family`` to ``keys`` (add it, rotate its keys, change its threshold).

        Signed by the offline targets keys. After a rotation, the family's
        published metadata no longer verifies for clients until the new
        release managers sign its next version.
        """
        now = utc_now(now)
        validate_family_name(family)
        check_role_keys(family, keys, threshold)
        with self._store.locked():
            state = self._load()
            new = fam.with_family(state.targets.signed, family, keys, threshold)
            md = Metadata(self._next_targets(state, new, now))
            sign(md, targets_signers)
            require_threshold(state.root.signed, "targets", md.signed_bytes, md.signatures)
            changes = Changes()
            changes.put("targets", md)
            self._finish(state, changes, now)

    def propose_family(
        self,
        family: str,
        *,
        add: Mapping[str, TargetFile] = _EMPTY,
        remove: Sequence[str] = (),
        now: datetime | None = None,
    ) -> Metadata[Targets]:
        """The next version of ``family``'s metadata, unsigned, for the release managers."""
        now = utc_now(now)
        state = self._load()
        fam.delegation_for(state.targets.signed, family)
        current = self._role(state, family)
        return fam.propose(
            family,
            current.signed if current is not None else None,
            add=add,
            remove=remove,
            expires=expires_at(now, self.expiry.family),
        )

    def check_signature(
        self, family: str, proposal: Metadata[Targets], signature: Signature
    ) -> None:
        """Raise unless ``signature`` is a valid one by a current release manager of ``family``."""
        delegation = fam.delegation_for(self._load().targets.signed, family)
        keys = {key.keyid: key for key in delegation.keys}
        key = keys.get(signature.keyid)
        if key is None:
            raise SignatureError(
                f"key {signature.keyid} is not a release manager key of family {family!r}",
                field="keyid",
            )
        try:
            key.verify_signature(signature, proposal.signed_bytes)
        except UnverifiedSignatureError as exc:
            raise SignatureError(
                f"signature by {signature.keyid} does not verify over the {family} proposal",
                field="sig",
            ) from exc

    def publish_family(
        self, family: str, signed: Metadata[Targets], now: datetime | None = None
    ) -> None:
        """Publish the next version of ``family`` once its threshold of signatures is met."""
        now = utc_now(now)
        with self._store.locked():
            state = self._load()
            fam.delegation_for(state.targets.signed, family)
            current = self._role(state, family)
            fam.validate_proposal(
                family,
                current.signed if current is not None else None,
                signed,
                now=now,
                max_expires=now + self.expiry.root,
                targets_dir=self.targets_dir,
            )
            payload = signed.signed_bytes
            require_threshold(state.targets.signed, family, payload, signed.signatures)
            # keep only the signatures that count (a client ignores the others anyway)
            result = state.targets.signed.get_verification_result(
                family, payload, signed.signatures
            )
            md = copy.deepcopy(signed)
            md.signatures.clear()
            for keyid in result.signed:
                md.signatures[keyid] = signed.signatures[keyid]
            changes = Changes()
            changes.put(family, md)
            self._finish(state, changes, now)

    def add_target_file(
        self, target_path: str, src: Path, *, custom: Mapping[str, Any] | None = None
    ) -> TargetFile:
        """Copy ``src`` into ``targets/`` under its hash name; return its TUF target.

        Nothing is published: the file is unreachable until a family version
        listing it is published.
        """
        validate_target_path(target_path)
        family = target_path.split("/", 1)[0]
        fam.delegation_for(self._load().targets.signed, family)
        validate_family_target(family, target_path)
        length, sha256 = self._store.import_file(target_path, Path(src))
        target = TargetFile(length=length, hashes={"sha256": sha256}, path=target_path)
        if custom is not None:
            target.unrecognized_fields["custom"] = dict(custom)
        return target

    def publish_envelopes(
        self,
        add: Mapping[str, bytes],
        remove: Sequence[str] = (),
        now: datetime | None = None,
        *,
        missing_ok: bool = False,
    ) -> list[str]:
        """Publish and/or remove envelope targets; re-sign only the bins they fall in.

        Returns the paths removed. ``missing_ok`` skips removals of envelopes no
        bin lists (a revocation or a yank removing whatever is still there); a
        call that then changes nothing writes nothing. Without it, such a
        removal is refused (:class:`~edgeseal.ota_server.errors.UnknownTargetError`).
        """
        now = utc_now(now)
        if not add and not remove:
            return []
        targets = {path: env.envelope_target(path, data) for path, data in add.items()}
        with self._store.locked():
            state = self._load()
            envelopes_md = self._role(state, ENVELOPES)
            if envelopes_md is None:
                raise RepositoryStateError("the snapshot lists no envelopes metadata")
            succinct = env.succinct_of(envelopes_md.signed)
            signer = self._online_signer(ENVELOPES, state.root.signed, state.targets.signed)
            expires = expires_at(now, self.expiry.envelopes)
            changes = Changes()
            removed: list[str] = []
            for name, (bin_add, planned) in sorted(env.plan(succinct, targets, remove).items()):
                current = self._role(state, name)
                if current is None:
                    raise RepositoryStateError(f"the snapshot lists no metadata for bin {name}")
                bin_remove = (
                    [p for p in planned if p in current.signed.targets] if missing_ok else planned
                )
                if not bin_add and not bin_remove:
                    continue
                md = env.next_bin(name, current.signed, bin_add, bin_remove, expires)
                sign(md, [signer])
                changes.put(name, md)
                removed.extend(bin_remove)
            if not changes.mds:
                return []
            for path, target in targets.items():
                self._store.store_blob(target_blob_path(path, target.hashes["sha256"]), add[path])
            self._finish(state, changes, now)
        return sorted(removed)

    def refresh_online(self, now: datetime | None = None) -> list[str]:
        """Re-sign online roles with less than half their lifetime left; return their names."""
        return refresh.refresh_online(self._store, self.keys_dir, self.expiry, utc_now(now))

    def rotate_root(
        self,
        *,
        root_keys: Sequence[Key],
        root_threshold: int,
        old_signers: Sequence[Signer],
        new_signers: Sequence[Signer],
        rotate_online: Sequence[str] = (),
        now: datetime | None = None,
    ) -> None:
        """Publish root N+1 with new root keys (and optionally new timestamp/snapshot keys).

        Signed by a threshold of the old root keys and of the new ones (spec
        5.3.4). ``rotate_online`` names online roles ("timestamp", "snapshot")
        whose keys are replaced by freshly generated ones: the recovery from a
        compromised online key or a fast-forward attack (spec 5.3.11).
        """
        now = utc_now(now)
        for role in rotate_online:
            if role not in ("timestamp", "snapshot"):
                raise RepositoryStateError(
                    f"rotate_online: {role!r} is not 'timestamp' or 'snapshot'", field=role
                )
        with self._store.locked():
            state = self._load()
            new_online = {role: new_online_key() for role in rotate_online}
            replace: dict[str, tuple[Sequence[Key], int]] = {"root": (root_keys, root_threshold)}
            for role, (signer, _) in new_online.items():
                replace[role] = ([signer.public_key], 1)
            root = next_root(state.root.signed, replace, now=now, expiry=self.expiry)
            md = signed_root(state.root.signed, root, [*old_signers, *new_signers])
            retired = {role: state.root.signed.roles[role].keyids[0] for role in new_online}
            for role, (signer, pem) in new_online.items():
                write_online_key(self.keys_dir, role, signer.public_key.keyid, pem)
            changes = Changes()
            changes.put("root", md)
            self._finish(state, changes, now)
            for role, keyid in retired.items():
                remove_online_key(self.keys_dir, role, keyid)

    def set_targets_keys(
        self,
        *,
        targets_keys: Sequence[Key],
        targets_threshold: int,
        root_signers: Sequence[Signer],
        targets_signers: Sequence[Signer],
        now: datetime | None = None,
    ) -> None:
        """Rotate the offline top-level targets keys: root N+1, targets re-signed by new keys."""
        now = utc_now(now)
        with self._store.locked():
            state = self._load()
            root = next_root(
                state.root.signed,
                {"targets": (targets_keys, targets_threshold)},
                now=now,
                expiry=self.expiry,
            )
            root_md = signed_root(state.root.signed, root, root_signers)
            targets_md = Metadata(
                self._next_targets(state, copy.deepcopy(state.targets.signed), now)
            )
            sign(targets_md, targets_signers)
            require_threshold(root, "targets", targets_md.signed_bytes, targets_md.signatures)
            changes = Changes()
            changes.put("root", root_md)
            changes.put("targets", targets_md)
            self._finish(state, changes, now)
