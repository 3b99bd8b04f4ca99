"""A small TUF repository for tests, and a loopback HTTP server with fault injection.

``TUFTestRepo`` builds real python-tuf metadata (``tuf.api.metadata``) signed
with fresh ECDSA keys and writes it as a static repository (consistent
snapshots: ``N.role.json`` plus ``timestamp.json``; targets under
``<dir>/<sha256>.<name>``). ``StaticServer`` serves that directory on
127.0.0.1 with Range support, records every request and the bytes sent, and
can misbehave on purpose: fail N times with a status, stall, send more bytes
than the file has, ignore Range, or serve other bytes for a path.

Ideas from python-tuf's tests/repository_simulator.py, but as real HTTP so the
agent's fetcher (timeouts, Range, retries) is exercised as on a device.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

TOP = ("root", "timestamp", "snapshot", "targets")


class TUFTestRepo:
    """A signed TUF repository written to ``base/metadata`` and ``base/targets``."""

    def __init__(self, base: Path, *, consistent_snapshot: bool = True) -> None:
        self.metadata_dir = base / "metadata"
        self.targets_dir = base / "targets"
        self.metadata_dir.mkdir(parents=True)
        self.targets_dir.mkdir(parents=True)
        self.signers: dict[str, list[CryptoSigner]] = {}
        expires = datetime.now(UTC).replace(microsecond=0) + timedelta(days=30)
        self.expires = expires
        root = Root(expires=expires, consistent_snapshot=consistent_snapshot)
        self.md: dict[str, Metadata] = {
            "root": Metadata(root),
            "timestamp": Metadata(Timestamp(expires=expires)),
            "snapshot": Metadata(Snapshot(expires=expires)),
            "targets": Metadata(Targets(expires=expires)),
        }
        for role in TOP:
            signer = CryptoSigner.generate_ecdsa()
            root.add_key(signer.public_key, role)
            self.signers[role] = [signer]
        # version 1 of everything
        self._write_all(TOP)

    # -- building ------------------------------------------------------------

    @property
    def consistent(self) -> bool:
        return bool(self.md["root"].signed.consistent_snapshot)

    def targets_of(self, role: str) -> Targets:
        signed = self.md[role].signed
        assert isinstance(signed, Targets)
        return signed

    def add_target(self, role: str, path: str, data: bytes) -> TargetFile:
        """List ``path`` in ``role`` and store its file (hash-prefixed if consistent)."""
        info = TargetFile.from_data(path, data, ["sha256"])
        self.targets_of(role).targets[path] = info
        self.write_target_file(info, data)
        return info

    def write_target_file(self, info: TargetFile, data: bytes) -> Path:
        """(Over)write the served bytes of target ``info`` (may differ from ``info``)."""
        dirname, sep, name = info.path.rpartition("/")
        if self.consistent:
            name = f"{info.hashes['sha256']}.{name}"
        dest = self.targets_dir / f"{dirname}{sep}{name}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        return dest

    def add_delegation(
        self,
        delegator: str,
        name: str,
        paths: list[str],
        *,
        signer: CryptoSigner | None = None,
        terminating: bool = True,
    ) -> CryptoSigner:
        """Delegate ``paths`` from ``delegator`` to role ``name`` (threshold 1, one key)."""
        signer = signer if signer is not None else CryptoSigner.generate_ecdsa()
        parent = self.targets_of(delegator)
        if parent.delegations is None:
            parent.delegations = Delegations(keys={}, roles={})
        assert parent.delegations.roles is not None
        key = signer.public_key
        parent.delegations.keys[key.keyid] = key
        parent.delegations.roles[name] = DelegatedRole(
            name, [key.keyid], 1, terminating, paths=paths
        )
        if name not in self.md:
            self.md[name] = Metadata(Targets(expires=self.expires))
            self.signers[name] = [signer]
        return signer

    # -- publishing ----------------------------------------------------------

    def sign_bytes(self, role: str, signers: list[CryptoSigner] | None = None) -> bytes:
        """The serialized metadata of ``role`` signed by ``signers`` (default: its own)."""
        md = self.md[role]
        md.signatures.clear()
        for signer in signers if signers is not None else self.signers[role]:
            md.sign(signer, append=True)
        return md.to_bytes(JSONSerializer())

    def publish(self, roles: list[str]) -> None:
        """Bump and re-sign ``roles`` (targets-type roles), then snapshot and timestamp."""
        for role in roles:
            self.md[role].signed.version += 1
        self.md["snapshot"].signed.version += 1
        self.md["timestamp"].signed.version += 1
        self._write_all([*roles, "snapshot", "timestamp"])

    def write_role(self, role: str, data: bytes) -> None:
        """Serve ``data`` as the current version of ``role`` (for attack tests)."""
        version = self.md[role].signed.version
        if self.consistent and role != "timestamp":
            (self.metadata_dir / f"{version}.{role}.json").write_bytes(data)
        (self.metadata_dir / f"{role}.json").write_bytes(data)

    def publish_bytes(self, role: str, data: bytes) -> None:
        """Publish ``data`` as the next version of ``role`` (signed as the caller chose)."""
        self.md[role].signed.version += 1
        self.write_role(role, data)
        snapshot = self.md["snapshot"].signed
        assert isinstance(snapshot, Snapshot)
        snapshot.meta[f"{role}.json"] = MetaFile(version=self.md[role].signed.version)
        self.publish([])

    def _write_all(self, roles: tuple[str, ...] | list[str]) -> None:
        snapshot = self.md["snapshot"].signed
        assert isinstance(snapshot, Snapshot)
        for role in roles:
            if role in ("root", "snapshot", "timestamp"):
                continue
            self.write_role(role, self.sign_bytes(role))
            snapshot.meta[f"{role}.json"] = MetaFile(version=self.md[role].signed.version)
        if "root" in roles:
            data = self.sign_bytes("root")
            (self.metadata_dir / f"{self.md['root'].signed.version}.root.json").write_bytes(data)
            (self.metadata_dir / "root.json").write_bytes(data)
        snapshot_bytes = self.sign_bytes("snapshot")
        self.write_role("snapshot", snapshot_bytes)
        timestamp = self.md["timestamp"].signed
        assert isinstance(timestamp, Timestamp)
        timestamp.snapshot_meta = MetaFile(version=snapshot.version)
        self.write_role("timestamp", self.sign_bytes("timestamp"))

    def root_bytes(self) -> bytes:
        return (self.metadata_dir / "1.root.json").read_bytes()


# -- HTTP ------------------------------------------------------------------------


@dataclass
class Faults:
    """Misbehaviour of :class:`StaticServer`, keyed by URL path (``/targets/...``)."""

    fail: dict[str, list[int]] = field(default_factory=dict)  # statuses to answer first
    stall: dict[str, float] = field(default_factory=dict)  # seconds before the body
    extra: dict[str, bytes] = field(default_factory=dict)  # appended beyond the file
    body: dict[str, bytes] = field(default_factory=dict)  # served instead of the file
    drop_after: dict[str, int] = field(default_factory=dict)  # close after N bytes, once
    no_length: set[str] = field(default_factory=set)  # no Content-Length; close to end
    no_range: bool = False


@dataclass(frozen=True)
class Served:
    path: str
    range: str | None
    status: int
    sent: int


RANGE_RE = re.compile(r"bytes=(\d+)-$")


class StaticServer:
    """Threaded loopback HTTP server of a directory, with :class:`Faults` and a request log."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.faults = Faults()
        self.log: list[Served] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                server._handle(self)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> StaticServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def requests_for(self, fragment: str) -> list[Served]:
        with self._lock:
            return [s for s in self.log if fragment in s.path]

    def _record(self, path: str, rng: str | None, status: int, sent: int) -> None:
        with self._lock:
            self.log.append(Served(path, rng, status, sent))

    def _handle(self, req: BaseHTTPRequestHandler) -> None:
        path = req.path
        rng = req.headers.get("Range")
        f = self.faults
        with self._lock:
            queued = f.fail.get(path)
            status = queued.pop(0) if queued else None
        if status is not None:
            req.send_response(status)
            req.send_header("Content-Length", "0")
            req.end_headers()
            self._record(path, rng, status, 0)
            return
        if path in f.body:
            data = f.body[path]
        else:
            file = (self.root / path.lstrip("/")).resolve()
            if not file.is_relative_to(self.root.resolve()) or not file.is_file():
                req.send_response(404)
                req.send_header("Content-Length", "0")
                req.end_headers()
                self._record(path, rng, 404, 0)
                return
            data = file.read_bytes()
        data += f.extra.get(path, b"")
        start = 0
        match = RANGE_RE.match(rng) if rng else None
        if match and not f.no_range:
            start = int(match.group(1))
            if start >= len(data):
                req.send_response(416)
                req.send_header("Content-Range", f"bytes */{len(data)}")
                req.send_header("Content-Length", "0")
                req.end_headers()
                self._record(path, rng, 416, 0)
                return
            req.send_response(206)
            req.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            req.send_response(200)
        body = data[start:]
        if path in f.no_length:
            req.close_connection = True
            req.send_header("Connection", "close")
        else:
            req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        delay = f.stall.get(path)
        if delay:
            time.sleep(delay)
        with self._lock:
            cut = f.drop_after.pop(path, None)
        if cut is not None:
            body = body[:cut]
            req.close_connection = True
        try:
            req.wfile.write(body)
            req.wfile.flush()
        except OSError:
            pass
        self._record(path, rng, 206 if start else 200, len(body))


def serve(root: Path) -> Iterator[StaticServer]:
    """Generator for a fixture: a started server, stopped afterwards."""
    server = StaticServer(root).start()
    try:
        yield server
    finally:
        server.stop()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
