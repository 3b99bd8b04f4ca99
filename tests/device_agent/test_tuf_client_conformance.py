"""The tuf-conformance client CLI, run as a subprocess against a loopback repository.

Checks what the tuf-conformance suite observes: exit codes, the metadata
files (non-versioned names), the files in the target directory, and the HTTP
requests made.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tuf_repo import StaticServer, TUFTestRepo, serve

CLIENT = [sys.executable, "-m", "edgeseal.device_agent.conformance"]


@pytest.fixture
def repo(tmp_path: Path) -> TUFTestRepo:
    repo = TUFTestRepo(tmp_path / "repo")
    repo.add_target("targets", "file1.txt", b"first artifact")
    repo.add_target("targets", "path/to/file2.txt", b"second artifact")
    repo.add_target("targets", "file3.txt", b"third artifact")
    repo.publish(["targets"])
    return repo


@pytest.fixture
def server(repo: TUFTestRepo) -> Iterator[StaticServer]:
    yield from serve(repo.metadata_dir.parent)


def run(*args: str | Path) -> int:
    done = subprocess.run(
        [*CLIENT, *map(str, args)], check=False, capture_output=True, text=True, timeout=60
    )
    if done.returncode not in (0, 1):
        pytest.fail(f"unexpected exit {done.returncode}: {done.stderr}")
    return done.returncode


def test_init_refresh_download(tmp_path: Path, repo: TUFTestRepo, server: StaticServer) -> None:
    md_dir, target_dir = tmp_path / "metadata", tmp_path / "targets"
    md_dir.mkdir()
    target_dir.mkdir()
    trusted = tmp_path / "initial_root.json"
    trusted.write_bytes(repo.root_bytes())
    md_url, t_url = f"{server.url}/metadata", f"{server.url}/targets"

    assert run("--metadata-dir", md_dir, "init", trusted) == 0
    assert (md_dir / "root.json").read_bytes() == repo.root_bytes()
    assert server.log == []  # init makes no request

    assert run("--metadata-dir", md_dir, "--metadata-url", md_url, "refresh") == 0
    for role in ("root", "timestamp", "snapshot", "targets"):
        assert (md_dir / f"{role}.json").is_file()
    assert not list(md_dir.glob("[0-9]*.*.json"))  # no versioned names at the top

    download = ["--metadata-dir", md_dir, "--metadata-url", md_url]
    download += ["--target-base-url", t_url, "--target-dir", target_dir]
    assert run(*download, "--target-name", "file1.txt", "--target-name", "path/to/file2.txt",
               "download") == 0  # fmt: skip
    assert sorted(p.name for p in target_dir.iterdir()) == ["file1.txt", "path%2Fto%2Ffile2.txt"]
    assert (target_dir / "path%2Fto%2Ffile2.txt").read_bytes() == b"second artifact"
    assert len(server.requests_for("/targets/")) == 2

    # already there with matching hashes: not fetched twice
    assert run(*download, "--target-name", "file1.txt", "download") == 0
    assert len(server.requests_for("/targets/")) == 2

    # a tampered artifact: exit 1, nothing stored, nothing left behind
    info = repo.targets_of("targets").targets["file3.txt"]
    repo.write_target_file(info, b"third artifacT")
    assert run(*download, "--target-name", "file3.txt", "download") == 1
    assert sorted(p.name for p in target_dir.iterdir()) == ["file1.txt", "path%2Fto%2Ffile2.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".edgeseal-tuf-")]

    # an unknown target and a broken repository are failures too
    assert run(*download, "--target-name", "nope.txt", "download") == 1
    assert run("--metadata-dir", md_dir, "--metadata-url", f"{server.url}/missing", "refresh") == 1


def test_usage_errors_exit_1(tmp_path: Path) -> None:
    assert run("--metadata-dir", tmp_path, "refresh") == 1  # no --metadata-url
    assert run("--metadata-dir", tmp_path, "frobnicate") == 1
