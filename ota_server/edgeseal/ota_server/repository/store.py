"""The repository on disk: read the current metadata, write a batch of new versions.

Layout (consistent snapshots, spec 5.2 / 6.1)::

    <repo>/metadata/N.root.json  N.targets.json  N.<family>.json  N.envelopes.json
                    N.envelopes-XX.json  N.snapshot.json  timestamp.json
    <repo>/targets/<dir>/<sha256>.<name>

What is "current" follows the TUF chain the clients walk: ``timestamp.json``
names the snapshot version, the snapshot names every targets role's version,
and root is the highest ``N.root.json``. Nothing else is kept as state.

Every new version gets a new file name, so writing one early is harmless: it is
unreachable until ``timestamp.json`` (written last, atomically, with fsync of
file and directory) points at the snapshot that names it. A refused operation
raises before :meth:`RepositoryStore.commit` and leaves the disk untouched.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuf.api.metadata import Metadata, Root, Snapshot, Targets, Timestamp
from tuf.api.serialization import DeserializationError
from tuf.api.serialization.json import JSONSerializer

from edgeseal.ota_server.errors import RepositoryStateError
from edgeseal.ota_server.repository.layout import metadata_filename
from edgeseal.sdk.files import atomic_write

logger = logging.getLogger(__name__)

_ROOT_FILE = re.compile(r"^([0-9]{1,10})\.root\.json$")
_SERIALIZER = JSONSerializer(compact=True)
#: write order inside one batch: delegated roles, targets, root, snapshot, timestamp last
_ORDER = {"targets": 1, "root": 2, "snapshot": 3, "timestamp": 4}


def serialize(md: Metadata[Any]) -> bytes:
    """The exact bytes written (and hashed) for ``md``."""
    return md.to_bytes(_SERIALIZER)


@dataclass
class Changes:
    """New metadata versions produced by one operation, not yet on disk."""

    files: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    mds: dict[str, Metadata[Any]] = field(default_factory=dict)

    def put(self, role: str, md: Metadata[Any]) -> bytes:
        data = serialize(md)
        self.files[role] = (md.signed.version, data)
        self.mds[role] = md
        return data

    def roles(self) -> list[str]:
        return sorted(self.files, key=lambda role: _ORDER.get(role, 0))


class RepositoryStore:
    """File access for one repository directory, serialized by a lock."""

    def __init__(self, repo_dir: Path) -> None:
        self.repo_dir = Path(repo_dir)
        self.metadata_dir = self.repo_dir / "metadata"
        self.targets_dir = self.repo_dir / "targets"
        self._thread_lock = threading.RLock()

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Serialize writers across threads and processes (an flock on ``.lock``)."""
        with self._thread_lock:
            self.repo_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.repo_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)

    def exists(self) -> bool:
        return (self.metadata_dir / "timestamp.json").exists()

    def read_bytes(self, role: str, version: int) -> bytes:
        path = self.metadata_dir / metadata_filename(role, version)
        try:
            return path.read_bytes()
        except FileNotFoundError as exc:
            raise RepositoryStateError(
                f"repository metadata {path.name} is missing", field=role
            ) from exc

    def read(self, role: str, version: int) -> Metadata[Any]:
        data = self.read_bytes(role, version)
        try:
            md: Metadata[Any] = Metadata.from_bytes(data)
        except DeserializationError as exc:
            raise RepositoryStateError(f"repository metadata for {role} is corrupt") from exc
        return md

    def root_version(self) -> int:
        versions = [
            int(m.group(1))
            for m in (_ROOT_FILE.match(p.name) for p in self.metadata_dir.iterdir())
            if m is not None
        ]
        if not versions:
            raise RepositoryStateError(f"no root metadata in {self.metadata_dir}")
        return max(versions)

    def root(self) -> Metadata[Root]:
        md: Metadata[Root] = self.read("root", self.root_version())
        return md

    def timestamp(self) -> Metadata[Timestamp]:
        if not self.exists():
            raise RepositoryStateError(f"no TUF repository in {self.repo_dir}")
        md: Metadata[Timestamp] = self.read("timestamp", 0)
        return md

    def snapshot(self, timestamp: Metadata[Timestamp]) -> Metadata[Snapshot]:
        md: Metadata[Snapshot] = self.read("snapshot", timestamp.signed.snapshot_meta.version)
        return md

    def role(self, snapshot: Metadata[Snapshot], role: str) -> Metadata[Targets] | None:
        """Current metadata of a targets-type role, or None if the snapshot lists none."""
        meta = snapshot.signed.meta.get(f"{role}.json")
        if meta is None:
            return None
        md: Metadata[Targets] = self.read(role, meta.version)
        return md

    def commit(self, changes: Changes) -> None:
        """Write every new version, timestamp last (each atomic and durable)."""
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        names = {role: metadata_filename(role, changes.files[role][0]) for role in changes.files}
        for role, name in names.items():
            if role != "timestamp" and (self.metadata_dir / name).exists():
                raise RepositoryStateError(f"refusing to overwrite published metadata {name}")
        for role in changes.roles():
            atomic_write(self.metadata_dir / names[role], changes.files[role][1])
            logger.debug("wrote %s", names[role])

    def blob_path(self, relative: str) -> Path:
        return self.targets_dir / relative

    def store_blob(self, relative: str, data: bytes) -> None:
        """Write a target file under its hash name (content-addressed: idempotent)."""
        path = self.blob_path(relative)
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, data)

    def import_file(self, target_path: str, src: Path) -> tuple[int, str]:
        """Copy ``src`` to ``<dir>/<sha256>.<name>``, hashing what is copied.

        Hashing the copy (not the source before copying) means the name always
        matches the content, even if ``src`` changes meanwhile. Returns
        (length, sha256).
        """
        head, _, name = target_path.rpartition("/")
        directory = self.targets_dir / head
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=".import.", suffix=".tmp", dir=directory)
        tmp = Path(tmp_name)
        digest = hashlib.sha256()
        length = 0
        try:
            os.fchmod(fd, 0o644)
            with os.fdopen(fd, "wb") as out, Path(src).open("rb") as source:
                while chunk := source.read(1 << 20):
                    digest.update(chunk)
                    length += len(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            sha256 = digest.hexdigest()
            tmp.replace(directory / f"{sha256}.{name}")
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return length, sha256
