"""The delegation fix: a delegated role is trusted only as signed for the delegator of a lookup.

Layout (TUF specification issue #19, "promiscuous delegations"):

    targets --a/*--> A --a/*--> C  (C's key as delegated by A: k1)
    targets --b/*--> B --b/*--> C  (C's key as delegated by B: k2)

C is one role name reached through two delegators that trust different keys.
Whatever was verified on one path must not be reused on the other.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api import exceptions as tuf_exc
from tuf.ngclient import Updater
from tuf_repo import StaticServer, TUFTestRepo, serve

from edgeseal.device_agent.tuf_client import AgentTUFClient
from edgeseal.device_agent.tuf_config import TUFClientConfig
from edgeseal.device_agent.tuf_errors import TUFRepositoryError


@pytest.fixture
def keys() -> dict[str, CryptoSigner]:
    return {"k1": CryptoSigner.generate_ecdsa(), "k2": CryptoSigner.generate_ecdsa()}


@pytest.fixture
def repo(tmp_path: Path, keys: dict[str, CryptoSigner]) -> TUFTestRepo:
    repo = TUFTestRepo(tmp_path / "repo")
    repo.add_delegation("targets", "A", ["a/*"])
    repo.add_delegation("targets", "B", ["b/*"])
    repo.add_delegation("A", "C", ["a/*"], signer=keys["k1"])
    repo.add_delegation("B", "C", ["b/*"], signer=keys["k2"])
    repo.signers["C"] = [keys["k1"]]  # C is signed by k1 only
    repo.add_target("C", "a/x", b"fine for A")
    repo.add_target("C", "b/y", b"listed in C, but B trusts only k2")
    repo.publish(["C", "A", "B", "targets"])
    return repo


@pytest.fixture
def server(repo: TUFTestRepo) -> Iterator[StaticServer]:
    yield from serve(repo.metadata_dir.parent)


def agent_client(tmp_path: Path, repo: TUFTestRepo, server: StaticServer) -> AgentTUFClient:
    tuf_dir = tmp_path / "agent-tuf"
    tuf_dir.mkdir()
    (tuf_dir / "root.json").write_bytes(repo.root_bytes())
    client = AgentTUFClient(
        tuf_dir,
        f"{server.url}/metadata",
        f"{server.url}/targets",
        tmp_path / "agent-dl",
        config=TUFClientConfig(max_attempts=1),
    )
    client.refresh()
    return client


def plain_updater(tmp_path: Path, repo: TUFTestRepo, server: StaticServer) -> Updater:
    tuf_dir = tmp_path / "plain-tuf"
    tuf_dir.mkdir()
    updater = Updater(str(tuf_dir), f"{server.url}/metadata", bootstrap=repo.root_bytes())
    updater.refresh()
    return updater


def swap_c_to_k2_signed(repo: TUFTestRepo, keys: dict[str, CryptoSigner]) -> None:
    """A mirror holding k2 serves another C, same version, signed by k2 only, adding a/evil."""
    repo.add_target("C", "a/evil", b"malware")
    repo.write_role("C", repo.sign_bytes("C", [keys["k2"]]))


def test_role_verified_through_one_delegator_is_not_reused_through_another(
    tmp_path: Path, repo: TUFTestRepo, server: StaticServer
) -> None:
    client = agent_client(tmp_path, repo, server)
    assert client.get_targetinfo("a/x").length == len(b"fine for A")  # caches C via A
    with pytest.raises(TUFRepositoryError):
        client.get_targetinfo("b/y")  # C is not signed by k2: refused via B
    # and A's path is still served from the verified C
    assert client.get_targetinfo("a/x").length == len(b"fine for A")


def test_role_replaced_through_another_delegator_is_reverified_for_the_first(
    tmp_path: Path, repo: TUFTestRepo, server: StaticServer, keys: dict[str, CryptoSigner]
) -> None:
    """python-tuf 7.0.1 accepts a/evil here; the agent must not."""
    client = agent_client(tmp_path, repo, server)
    client.get_targetinfo("a/x")  # C (k1-signed) verified via A
    swap_c_to_k2_signed(repo, keys)
    # via B the k2-signed C is legitimately trusted for b/* ...
    assert client.get_targetinfo("b/y").length == len(b"listed in C, but B trusts only k2")
    # ... but it must not become trusted for a/* through A, which trusts only k1
    with pytest.raises(TUFRepositoryError) as excinfo:
        client.get_targetinfo("a/evil")
    assert "C" in excinfo.value.diagnostics()


def test_plain_ngclient_reuses_the_replaced_role(
    tmp_path: Path, repo: TUFTestRepo, server: StaticServer, keys: dict[str, CryptoSigner]
) -> None:
    """The bug the override fixes, shown on the unmodified library (same steps as above).

    If this starts failing, python-tuf fixed it upstream; the agent's test above
    must keep passing either way.
    """
    updater = plain_updater(tmp_path, repo, server)
    assert updater.get_targetinfo("a/x") is not None
    swap_c_to_k2_signed(repo, keys)
    assert updater.get_targetinfo("b/y") is not None
    evil = updater.get_targetinfo("a/evil")
    assert evil is not None  # accepted although k1 never signed it


def test_plain_ngclient_refuses_the_simple_case(
    tmp_path: Path, repo: TUFTestRepo, server: StaticServer
) -> None:
    """tuf 7.0.1 tracks (delegator, role) pairs, so the simple case is refused upstream too."""
    updater = plain_updater(tmp_path, repo, server)
    assert updater.get_targetinfo("a/x") is not None
    with pytest.raises(tuf_exc.UnsignedMetadataError):
        updater.get_targetinfo("b/y")
