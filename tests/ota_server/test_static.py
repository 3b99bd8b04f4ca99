"""Static TUF files: path rules (unit) and HTTP Range / traversal over real HTTP."""

from __future__ import annotations

import http.client
import json
from pathlib import Path

import pytest
from server_fixture import RunningServer

from edgeseal.ota_server.service_errors import NotFoundError
from edgeseal.ota_server.static import metadata_is_mutable, resolve_static_path


@pytest.fixture
def served(tmp_path: Path) -> Path:
    root = tmp_path / "targets"
    (root / "detector" / "7").mkdir(parents=True)
    (root / "detector" / "7" / "abc.detector-7.esm").write_bytes(b"sealed")
    (root / ".lock").write_bytes(b"")
    (root / "detector" / ".abc.tmp").write_bytes(b"partial")
    (tmp_path / "secret.txt").write_bytes(b"secret")
    (root / "escape").symlink_to(tmp_path / "secret.txt")
    return root


def test_resolves_a_file_inside_the_root(served: Path) -> None:
    path = resolve_static_path(served, "detector/7/abc.detector-7.esm")
    assert path.read_bytes() == b"sealed"


@pytest.mark.parametrize(
    "relative",
    [
        "../secret.txt",
        "detector/../../secret.txt",
        "detector/./7/abc.detector-7.esm",
        "/etc/passwd",
        "detector//7/abc.detector-7.esm",
        "detector",  # a directory: no listing
        "",
        ".lock",
        "detector/.abc.tmp",
        "escape",  # a symlink out of the root
        "detector\\7",
        "detector/7/abc.detector-7.esm\x00",
        "x" * 2000,
        "missing.json",
    ],
)
def test_refuses_everything_else(served: Path, relative: str) -> None:
    with pytest.raises(NotFoundError):
        resolve_static_path(served, relative)


def test_mutable_metadata_names() -> None:
    assert metadata_is_mutable("timestamp.json")
    assert not metadata_is_mutable("3.snapshot.json")


def _get(server: RunningServer, path: str, headers: dict[str, str] | None = None) -> tuple:
    host, port = server.host_port
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_range_requests(ota_server: RunningServer) -> None:
    status, _, full = _get(ota_server, "/tuf/metadata/1.root.json")
    assert status == 200
    size = len(full)
    status, headers, part = _get(ota_server, "/tuf/metadata/1.root.json", {"Range": "bytes=0-9"})
    assert status == 206
    assert part == full[:10]
    assert headers["content-range"] == f"bytes 0-9/{size}"
    status, headers, part = _get(
        ota_server, "/tuf/metadata/1.root.json", {"Range": f"bytes={size - 5}-"}
    )
    assert (status, part) == (206, full[-5:])
    status, _, part = _get(ota_server, "/tuf/metadata/1.root.json", {"Range": "bytes=-3"})
    assert (status, part) == (206, full[-3:])
    status, headers, _ = _get(
        ota_server, "/tuf/metadata/1.root.json", {"Range": f"bytes={size}-{size + 10}"}
    )
    assert status == 416
    assert headers["content-range"] == f"bytes */{size}"


def test_timestamp_is_not_cached_and_versioned_files_are(ota_server: RunningServer) -> None:
    _, headers, body = _get(ota_server, "/tuf/metadata/timestamp.json")
    assert headers["cache-control"] == "no-cache"
    assert json.loads(body)["signed"]["_type"] == "timestamp"
    _, headers, _ = _get(ota_server, "/tuf/metadata/1.root.json")
    assert "immutable" in headers["cache-control"]


@pytest.mark.parametrize(
    "path",
    [
        "/tuf/metadata/../server.toml",
        "/tuf/metadata/%2e%2e/%2e%2e/server.db",
        "/tuf/metadata/..%2f..%2fserver.db",
        "/tuf/targets/../../keys/kek.pem",
        "/tuf/targets/%2e%2e%2f%2e%2e%2fkeys%2fkek.pem",
        "/tuf/metadata/",
        "/tuf/targets/",
        "/tuf/metadata/.lock",
        "/tuf/metadata/%00",
        "/tuf/../keys/kek.pem",
    ],
)
def test_traversal_and_listing_are_404(ota_server: RunningServer, path: str) -> None:
    status, _, body = _get(ota_server, path)
    assert status == 404
    assert b"PRIVATE KEY" not in body and b"version" not in body
