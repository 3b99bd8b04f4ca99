"""Shared helpers for tests of the TUF repository and its clients.

- :class:`Officers` holds the keys of a test deployment: 3 root officers
  (threshold 2), 2 targets officers (threshold 1... configurable) and 3
  release managers of the ``detector`` family (threshold 2).
- :func:`make_repository` creates a real repository with them.
- :class:`StaticServer` serves ``<repo>/metadata`` and ``<repo>/targets`` over
  real HTTP on 127.0.0.1 (port 0) from a thread, so python-tuf's real
  ``Updater`` and ``Urllib3Fetcher`` fetch over a real socket.
- :class:`CountingFetcher` records every URL and the bytes it fetched.
- :func:`client_clock` moves the clock the python-tuf client uses (its
  ``TrustedMetadataSet`` reads ``datetime.datetime.now``) - the same seam
  python-tuf's own tests patch.

Import from a test in this directory with ``from tuf_helpers import ...``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import http.server
import threading
import types
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from securesystemslib.signer import CryptoSigner, Key
from tuf.api.metadata import Metadata, TargetFile, Targets
from tuf.ngclient import Updater, UpdaterConfig, Urllib3Fetcher
from tuf.ngclient._internal import trusted_metadata_set

from edgeseal.ota_server.repository import Expiry, Repository

FAMILY = "detector"


def _signers(n: int) -> list[CryptoSigner]:
    return [CryptoSigner.generate_ecdsa() for _ in range(n)]


@dataclass
class Officers:
    """All offline keys of a test deployment (in memory; key files are tested elsewhere)."""

    root: list[CryptoSigner] = field(default_factory=lambda: _signers(3))
    root_threshold: int = 2
    targets: list[CryptoSigner] = field(default_factory=lambda: _signers(2))
    targets_threshold: int = 1
    rms: list[CryptoSigner] = field(default_factory=lambda: _signers(3))
    rm_threshold: int = 2

    @staticmethod
    def keys(signers: Sequence[CryptoSigner]) -> list[Key]:
        return [s.public_key for s in signers]


def make_repository(
    base: Path,
    officers: Officers | None = None,
    *,
    bin_bits: int = 4,
    family: str | None = FAMILY,
    expiry: Expiry | None = None,
    now: _dt.datetime | None = None,
) -> tuple[Repository, Officers]:
    """A repository in ``base/repository`` with online keys in ``base/keys``.

    With ``family`` set, the family is delegated to the officers' release
    managers (k = ``rm_threshold``).
    """
    officers = officers or Officers()
    repo = Repository.create(
        base / "repository",
        base / "keys",
        root_keys=Officers.keys(officers.root),
        root_threshold=officers.root_threshold,
        root_signers=officers.root[: officers.root_threshold],
        targets_keys=Officers.keys(officers.targets),
        targets_threshold=officers.targets_threshold,
        targets_signers=officers.targets[: officers.targets_threshold],
        bin_bits=bin_bits,
        expiry=expiry or Expiry(),
        now=now,
    )
    if family is not None:
        repo.set_family(
            family,
            Officers.keys(officers.rms),
            officers.rm_threshold,
            officers.targets[: officers.targets_threshold],
            now=now,
        )
    return repo, officers


def sign_proposal(proposal: Metadata[Targets], signers: Sequence[CryptoSigner]) -> None:
    for signer in signers:
        proposal.sign(signer, append=True)


def release(
    repo: Repository,
    signers: Sequence[CryptoSigner],
    *,
    family: str = FAMILY,
    version: int = 1,
    content: bytes | None = None,
    src_dir: Path,
    now: _dt.datetime | None = None,
) -> TargetFile:
    """Upload a fake sealed model, propose, sign with ``signers`` and publish it."""
    path = f"{family}/{version}/{family}-{version}.esm"
    src = src_dir / f"{family}-{version}.esm"
    src.write_bytes(content if content is not None else f"sealed {family} {version}".encode())
    custom = {"edgeseal": {"schema": 1, "kind": "model", "family": family, "version": version}}
    target = repo.add_target_file(path, src, custom=custom)
    proposal = repo.propose_family(family, add={path: target}, now=now)
    sign_proposal(proposal, signers)
    repo.publish_family(family, proposal, now=now)
    return target


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class StaticServer:
    """A real HTTP server on loopback serving a directory (the repository dir)."""

    def __init__(self, root: Path) -> None:
        handler = functools.partial(_QuietHandler, directory=str(root))
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def metadata_url(self) -> str:
        return f"{self.url}/metadata/"

    @property
    def targets_url(self) -> str:
        return f"{self.url}/targets/"

    def __enter__(self) -> StaticServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


@contextlib.contextmanager
def serve(repo: Repository) -> Iterator[StaticServer]:
    """Serve ``repo``'s metadata and targets directories over loopback HTTP."""
    with StaticServer(repo.metadata_dir.parent) as server:
        yield server


class CountingFetcher(Urllib3Fetcher):
    """The production fetcher, recording each URL and the bytes received for it."""

    def __init__(self) -> None:
        super().__init__(socket_timeout=5)
        self.fetched: dict[str, int] = {}

    def _fetch(self, url: str) -> Iterator[bytes]:
        self.fetched.setdefault(url, 0)
        for chunk in super()._fetch(url):
            self.fetched[url] += len(chunk)
            yield chunk

    def names(self) -> list[str]:
        return [url.rsplit("/", 1)[1] for url in self.fetched]

    @property
    def total(self) -> int:
        return sum(self.fetched.values())


def make_updater(
    client_dir: Path,
    server: StaticServer,
    bootstrap: bytes,
    *,
    fetcher: CountingFetcher | None = None,
    config: UpdaterConfig | None = None,
) -> Updater:
    """A fresh python-tuf Updater (refresh() runs once per Updater) on ``client_dir``."""
    metadata_dir = client_dir / "metadata"
    target_dir = client_dir / "targets"
    metadata_dir.mkdir(parents=True, exist_ok=True)
    target_dir.mkdir(parents=True, exist_ok=True)
    return Updater(
        metadata_dir=str(metadata_dir),
        metadata_base_url=server.metadata_url,
        target_base_url=server.targets_url,
        target_dir=str(target_dir),
        fetcher=fetcher,
        config=config,
        bootstrap=bootstrap,
    )


@contextlib.contextmanager
def client_clock(now: _dt.datetime) -> Iterator[None]:
    """Make python-tuf's client believe it is ``now`` (TrustedMetadataSet's clock)."""

    class _Frozen(_dt.datetime):
        @classmethod
        def now(cls, tz: _dt.tzinfo | None = None) -> _Frozen:  # type: ignore[override]
            return cls.fromtimestamp(now.timestamp(), tz)

    fake = types.SimpleNamespace(datetime=_Frozen, timezone=_dt.timezone)
    original = trusted_metadata_set.datetime
    trusted_metadata_set.datetime = fake  # type: ignore[assignment]
    try:
        yield
    finally:
        trusted_metadata_set.datetime = original


def utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0)


def write_role_bypassing_server(repo: Repository, role: str, md: Metadata[Any]) -> None:
    """Write metadata straight into the served directory, as an attacker with disk access."""
    name = f"{md.signed.version}.{role}.json" if role != "timestamp" else "timestamp.json"
    (repo.metadata_dir / name).write_bytes(md.to_bytes())


def file_names(fetched: Mapping[str, int]) -> list[str]:
    return [url.rsplit("/", 1)[1] for url in fetched]


def online_signer(repo: Repository, role: str) -> CryptoSigner:
    """The server's current online key for ``role`` (what an attacker on the server holds)."""
    from edgeseal.ota_server.keys import load_signer

    root = Metadata.from_bytes(repo.root_bytes()).signed
    if role == "envelopes":
        (path,) = repo.keys_dir.glob("envelopes.*.pem")
        return load_signer(path, None)
    return load_signer(repo.keys_dir / f"{role}.{root.roles[role].keyids[0]}.pem", None)


def forge_online(
    repo: Repository,
    roles: Mapping[str, Metadata[Any]] | None = None,
    *,
    snapshot_meta: Mapping[str, int] | None = None,
    timestamp_version: int | None = None,
) -> None:
    """An attacker holding the online keys publishes ``roles`` bypassing the Repository API.

    Writes each role's file, then a snapshot listing them (``snapshot_meta``
    overrides versions) and a timestamp, signed with the server's online keys.
    """
    from tuf.api.metadata import MetaFile

    md_dir = repo.metadata_dir
    ts: Metadata[Any] = Metadata.from_bytes((md_dir / "timestamp.json").read_bytes())
    snap_version = ts.signed.snapshot_meta.version
    snap: Metadata[Any] = Metadata.from_bytes(
        (md_dir / f"{snap_version}.snapshot.json").read_bytes()
    )
    for role, md in (roles or {}).items():
        (md_dir / f"{md.signed.version}.{role}.json").write_bytes(md.to_bytes())
        snap.signed.meta[f"{role}.json"] = MetaFile(version=md.signed.version)
    for name, version in (snapshot_meta or {}).items():
        snap.signed.meta[f"{name}.json"] = MetaFile(version=version)
    snap.signed.version += 1
    snap.sign(online_signer(repo, "snapshot"))
    snap_bytes = snap.to_bytes()
    (md_dir / f"{snap.signed.version}.snapshot.json").write_bytes(snap_bytes)
    ts.signed.version = timestamp_version or ts.signed.version + 1
    ts.signed.snapshot_meta = MetaFile.from_data(snap.signed.version, snap_bytes, ["sha256"])
    ts.sign(online_signer(repo, "timestamp"))
    (md_dir / "timestamp.json").write_bytes(ts.to_bytes())
