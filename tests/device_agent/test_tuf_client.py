"""AgentTUFClient against real TUF metadata served over loopback HTTP.

Attack and fault tests are named after what they do to the client: resume,
corrupt partial, endless data, flaky server, slow retrieval, tampered target.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tuf_repo import StaticServer, TUFTestRepo, serve

from edgeseal.device_agent.errors import AgentError
from edgeseal.device_agent.tuf_client import AgentTUFClient
from edgeseal.device_agent.tuf_config import TUFClientConfig
from edgeseal.device_agent.tuf_download import partial_path
from edgeseal.device_agent.tuf_errors import (
    TargetNotFoundError,
    TargetVerificationError,
    TUFClientError,
    TUFDownloadError,
    TUFRepositoryError,
    TUFStorageError,
    TUFTimeoutError,
    UnknownFamilyError,
)

MODEL = "detector/1/detector-1.esm"
DATA = bytes(random.Random(1).getrandbits(8) for _ in range(300_000))


class Sleeps(list[float]):
    """Injected ``sleep``: records what was asked, never sleeps."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def repo(tmp_path: Path) -> TUFTestRepo:
    repo = TUFTestRepo(tmp_path / "repo")
    repo.add_delegation("targets", "detector", ["detector/*", "detector/*/*"])
    repo.add_delegation("targets", "camera", ["camera/*", "camera/*/*"])
    repo.add_target("detector", MODEL, DATA)
    repo.add_target("detector", "detector/2/detector-2.esm", b"model two")
    repo.add_target("camera", "camera/1/camera-1.esm", b"camera model")
    repo.publish(["detector", "camera", "targets"])
    return repo


@pytest.fixture
def server(repo: TUFTestRepo) -> Iterator[StaticServer]:
    yield from serve(repo.metadata_dir.parent)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def make_client(tmp_path: Path, repo: TUFTestRepo, server: StaticServer, sleeps: Sleeps) -> Any:
    def make(**config: Any) -> AgentTUFClient:
        tuf_dir = tmp_path / "state" / "tuf"
        tuf_dir.mkdir(parents=True, exist_ok=True)
        if not (tuf_dir / "root.json").exists():
            (tuf_dir / "root.json").write_bytes(repo.root_bytes())
        settings: dict[str, Any] = {"connect_timeout": 2.0, "read_timeout": 2.0}
        settings.update(config)
        return AgentTUFClient(
            tuf_dir,
            f"{server.url}/metadata",
            f"{server.url}/targets",
            tmp_path / "state" / "downloads",
            config=TUFClientConfig(**settings),
            sleep=sleeps,
            rng=random.Random(7),
        )

    return make


def target_url_path(repo: TUFTestRepo, path: str) -> str:
    info = repo.targets_of(path.split("/", maxsplit=1)[0]).targets[path]
    dirname, _, name = path.rpartition("/")
    return f"/targets/{dirname}/{info.hashes['sha256']}.{name}"


def test_bootstrap_refresh_download_and_cache(
    make_client: Any, repo: TUFTestRepo, server: StaticServer, tmp_path: Path
) -> None:
    client = make_client()
    client.refresh()
    tuf_dir = tmp_path / "state" / "tuf"
    for name in ("root.json", "timestamp.json", "snapshot.json", "targets.json"):
        assert (tuf_dir / name).is_file(), name
    assert not list(tuf_dir.glob("[0-9]*.targets.json"))

    info = client.get_targetinfo(MODEL)
    assert (tuf_dir / "detector.json").is_file()  # delegated role, non-versioned name
    path = client.download_target(info)
    assert path.read_bytes() == DATA
    assert path.parent == tmp_path / "state" / "downloads"
    assert sorted(path.parent.iterdir()) == [path]

    # a verified file is reused: no second request for the target
    before = len(server.requests_for("/targets/"))
    assert client.download_target(info) == path
    assert client.find_cached_target(info) == path
    assert len(server.requests_for("/targets/")) == before == 1


def test_new_cycle_sees_new_release(make_client: Any, repo: TUFTestRepo) -> None:
    client = make_client()
    client.refresh()
    with pytest.raises(TargetNotFoundError):
        client.get_targetinfo("detector/3/detector-3.esm")
    repo.add_target("detector", "detector/3/detector-3.esm", b"three")
    repo.publish(["detector"])
    client.refresh()  # a fresh Updater: a new cycle
    assert client.get_targetinfo("detector/3/detector-3.esm").length == 5


def test_resume_fetches_only_the_rest(
    make_client: Any, repo: TUFTestRepo, server: StaticServer
) -> None:
    client = make_client()
    info = client.get_targetinfo(MODEL)
    client.download_dir.mkdir(parents=True)
    part = partial_path(client.local_path(info))
    part.write_bytes(DATA[:200_000])

    assert client.download_target(info).read_bytes() == DATA
    served = server.requests_for(target_url_path(repo, MODEL))
    assert [(s.range, s.status, s.sent) for s in served] == [("bytes=200000-", 206, 100_000)]
    assert not part.exists()


def test_complete_partial_after_power_cut_needs_no_request(
    make_client: Any, server: StaticServer
) -> None:
    client = make_client()
    info = client.get_targetinfo(MODEL)
    client.download_dir.mkdir(parents=True)
    partial_path(client.local_path(info)).write_bytes(DATA)  # crashed before the rename
    assert client.download_target(info).read_bytes() == DATA
    assert server.requests_for("/targets/") == []


def test_server_ignoring_range_restarts_cleanly(
    make_client: Any, repo: TUFTestRepo, server: StaticServer
) -> None:
    client = make_client()
    info = client.get_targetinfo(MODEL)
    client.download_dir.mkdir(parents=True)
    partial_path(client.local_path(info)).write_bytes(DATA[:1000])
    server.faults.no_range = True
    assert client.download_target(info).read_bytes() == DATA
    served = server.requests_for(target_url_path(repo, MODEL))
    assert [(s.range, s.status, s.sent) for s in served] == [("bytes=1000-", 200, len(DATA))]


def test_corrupt_partial_is_detected_and_refetched(
    make_client: Any, repo: TUFTestRepo, server: StaticServer
) -> None:
    client = make_client()
    info = client.get_targetinfo(MODEL)
    client.download_dir.mkdir(parents=True)
    part = partial_path(client.local_path(info))
    corrupt = bytearray(DATA[:200_000])
    corrupt[1234] ^= 0xFF
    part.write_bytes(bytes(corrupt))

    assert client.download_target(info).read_bytes() == DATA
    served = server.requests_for(target_url_path(repo, MODEL))
    assert [(s.range, s.sent) for s in served] == [("bytes=200000-", 100_000), (None, 300_000)]


def test_connection_drop_resumes_after_backoff(
    make_client: Any, repo: TUFTestRepo, server: StaticServer, sleeps: Sleeps
) -> None:
    client = make_client()
    info = client.get_targetinfo(MODEL)
    url_path = target_url_path(repo, MODEL)
    server.faults.drop_after[url_path] = 120_000

    assert client.download_target(info).read_bytes() == DATA
    first, second = server.requests_for(url_path)
    assert (first.range, first.sent) == (None, 120_000)
    # what reached the disk before the drop (whole chunks) is kept and not fetched again
    assert second.range is not None
    resumed_at = int(second.range.removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= 120_000
    assert second.sent == len(DATA) - resumed_at
    assert len(sleeps) == 1


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "no-length"])
def test_endless_data_is_refused(
    make_client: Any, repo: TUFTestRepo, server: StaticServer, declared: bool
) -> None:
    client = make_client()
    info = client.get_targetinfo(MODEL)
    url_path = target_url_path(repo, MODEL)
    server.faults.extra[url_path] = b"\0" * 50_000
    if not declared:
        server.faults.no_length.add(url_path)

    with pytest.raises(TargetVerificationError) as excinfo:
        client.download_target(info)
    assert "endless data" in excinfo.value.diagnostics()
    assert not list(client.download_dir.iterdir())  # partial deleted, nothing kept


def test_endless_metadata_is_refused(make_client: Any, server: StaticServer) -> None:
    server.faults.extra["/metadata/timestamp.json"] = b" " * 20_000
    with pytest.raises(TUFRepositoryError):
        make_client().refresh()


def test_tampered_target_is_refused_and_not_kept(
    make_client: Any, repo: TUFTestRepo, sleeps: Sleeps
) -> None:
    client = make_client()
    info = client.get_targetinfo(MODEL)
    evil = bytearray(DATA)
    evil[-1] ^= 1
    repo.write_target_file(info, bytes(evil))

    with pytest.raises(TargetVerificationError):
        client.download_target(info)
    assert not list(client.download_dir.iterdir())
    assert sleeps == []  # a verification failure is not retried


def test_flaky_server_succeeds_after_backoff(
    make_client: Any, repo: TUFTestRepo, server: StaticServer, sleeps: Sleeps
) -> None:
    server.faults.fail["/metadata/timestamp.json"] = [503]
    url_path = target_url_path(repo, MODEL)
    server.faults.fail[url_path] = [503, 503]
    client = make_client(backoff_initial=1.0, backoff_max=60.0)

    info = client.get_targetinfo(MODEL)
    assert client.download_target(info).read_bytes() == DATA
    # one retry for timestamp, two for the target; equal-jitter exponential delays
    assert len(sleeps) == 3
    assert 0.5 <= sleeps[0] <= 1.0
    assert 0.5 <= sleeps[1] <= 1.0
    assert 1.0 <= sleeps[2] <= 2.0
    assert [s.status for s in server.requests_for(url_path)] == [503, 503, 200]


def test_retries_are_bounded(
    make_client: Any, repo: TUFTestRepo, server: StaticServer, sleeps: Sleeps
) -> None:
    client = make_client(max_attempts=3)
    info = client.get_targetinfo(MODEL)
    server.faults.fail[target_url_path(repo, MODEL)] = [503] * 5
    with pytest.raises(TUFDownloadError) as excinfo:
        client.download_target(info)
    assert "503" in excinfo.value.diagnostics()
    assert len(sleeps) == 2


def test_missing_file_is_not_retried(make_client: Any, repo: TUFTestRepo, sleeps: Sleeps) -> None:
    client = make_client()
    info = client.get_targetinfo(MODEL)
    for file in repo.targets_dir.rglob("*detector-1.esm"):
        file.unlink()
    with pytest.raises(TUFDownloadError):
        client.download_target(info)
    assert sleeps == []


def test_slow_target_times_out(make_client: Any, repo: TUFTestRepo, server: StaticServer) -> None:
    client = make_client(read_timeout=0.3, max_attempts=1)
    info = client.get_targetinfo(MODEL)
    server.faults.stall[target_url_path(repo, MODEL)] = 1.5
    with pytest.raises(TUFTimeoutError):
        client.download_target(info)


def test_slow_metadata_times_out(make_client: Any, server: StaticServer, sleeps: Sleeps) -> None:
    server.faults.stall["/metadata/timestamp.json"] = 1.5
    with pytest.raises(TUFTimeoutError) as excinfo:
        make_client(read_timeout=0.3, max_attempts=2).refresh()
    assert isinstance(excinfo.value, AgentError)
    assert len(sleeps) == 1


def test_target_over_configured_bound_is_refused_before_download(
    make_client: Any, server: StaticServer
) -> None:
    client = make_client(target_max_length=1000)
    info = client.get_targetinfo(MODEL)
    with pytest.raises(TargetVerificationError):
        client.download_target(info)
    assert server.requests_for("/targets/") == []


def test_iter_family_targets_lists_one_family(make_client: Any, repo: TUFTestRepo) -> None:
    # a path the family role lists but was not delegated to it is left out
    repo.targets_of("detector").targets["camera/9/camera-9.esm"] = repo.targets_of(
        "detector"
    ).targets[MODEL]
    repo.publish(["detector"])
    client = make_client()

    listed = client.iter_family_targets("detector")
    assert [path for path, _ in listed] == [
        "detector/1/detector-1.esm",
        "detector/2/detector-2.esm",
    ]
    assert listed[0][1].length == len(DATA)
    assert [p for p, _ in client.iter_family_targets("camera")] == ["camera/1/camera-1.esm"]
    with pytest.raises(UnknownFamilyError):
        client.iter_family_targets("nosuchfamily")


def test_family_role_signed_by_wrong_key_is_refused(make_client: Any, repo: TUFTestRepo) -> None:
    from securesystemslib.signer import CryptoSigner

    repo.targets_of("detector").targets.pop("detector/2/detector-2.esm")
    repo.md["detector"].signed.version += 1  # sign_bytes serializes the next version
    data = repo.sign_bytes("detector", [CryptoSigner.generate_ecdsa()])
    repo.md["detector"].signed.version -= 1
    repo.publish_bytes("detector", data)
    client = make_client()
    with pytest.raises(TUFRepositoryError) as excinfo:
        client.iter_family_targets("detector")
    assert isinstance(excinfo.value, TUFClientError)
    with pytest.raises(TUFRepositoryError):
        client.get_targetinfo(MODEL)


def test_unprovisioned_device(tmp_path: Path, server: StaticServer) -> None:
    client = AgentTUFClient(
        tmp_path / "empty",
        f"{server.url}/metadata",
        f"{server.url}/targets",
        tmp_path / "dl",
        config=TUFClientConfig(),
    )
    with pytest.raises(TUFStorageError) as excinfo:
        client.refresh()
    assert "not provisioned" in excinfo.value.diagnostics()


def test_unreachable_repository(tmp_path: Path, repo: TUFTestRepo, sleeps: Sleeps) -> None:
    tuf_dir = tmp_path / "tuf"
    tuf_dir.mkdir()
    (tuf_dir / "root.json").write_bytes(repo.root_bytes())
    client = AgentTUFClient(
        tuf_dir,
        "http://127.0.0.1:9/metadata",  # discard port: connection refused
        "http://127.0.0.1:9/targets",
        tmp_path / "dl",
        config=TUFClientConfig(max_attempts=2),
        sleep=sleeps,
    )
    with pytest.raises(TUFDownloadError):
        client.refresh()
    assert len(sleeps) == 1
