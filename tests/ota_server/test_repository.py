"""The repository end to end with python-tuf's real client over loopback HTTP."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from tuf.api.metadata import Metadata
from tuf_helpers import (
    FAMILY,
    CountingFetcher,
    make_repository,
    make_updater,
    release,
    serve,
    sign_proposal,
    utcnow,
)

from edgeseal.ota_server.errors import (
    InvalidNameError,
    ProposalError,
    RepositoryError,
    RepositoryStateError,
    SignatureError,
    ThresholdError,
    UnknownFamilyError,
    UnknownTargetError,
)
from edgeseal.ota_server.repository import Repository

ENVELOPE = bytes(range(129))


def _tree(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


def test_client_bootstraps_and_downloads_model_and_envelope(tmp_path: Path) -> None:
    repo, officers = make_repository(tmp_path)
    model = release(repo, officers.rms[:2], src_dir=tmp_path, content=b"sealed model bytes")
    env_path = f"envelopes/dev-1/{FAMILY}-1.env"
    repo.publish_envelopes({env_path: ENVELOPE})

    with serve(repo) as server:
        updater = make_updater(tmp_path / "client", server, repo.root_bytes())
        updater.refresh()
        info = updater.get_targetinfo(model.path)
        assert info is not None
        assert info.custom["edgeseal"]["version"] == 1
        path = updater.download_target(info)
        assert Path(path).read_bytes() == b"sealed model bytes"

        env_info = updater.get_targetinfo(env_path)
        assert env_info is not None
        assert env_info.custom == {
            "edgeseal": {
                "schema": 1,
                "kind": "envelope",
                "device": "dev-1",
                "family": FAMILY,
                "version": 1,
            }
        }
        assert Path(updater.download_target(env_info)).read_bytes() == ENVELOPE
        assert updater.get_targetinfo(f"envelopes/dev-2/{FAMILY}-1.env") is None


def test_layout_consistent_snapshots_and_version_only_snapshot_meta(tmp_path: Path) -> None:
    repo, officers = make_repository(tmp_path, bin_bits=8)
    target = release(repo, officers.rms[:2], src_dir=tmp_path)
    names = {p.name for p in repo.metadata_dir.iterdir()}
    assert {"1.root.json", "timestamp.json", "1.envelopes.json", "1.detector.json"} <= names
    assert "1.envelopes-ff.json" in names and "1.envelopes-00.json" in names
    sha = target.hashes["sha256"]
    assert (repo.targets_dir / FAMILY / "1" / f"{sha}.{FAMILY}-1.esm").is_file()

    root = Metadata.from_bytes(repo.root_bytes()).signed
    assert root.consistent_snapshot is True
    ts = json.loads((repo.metadata_dir / "timestamp.json").read_bytes())["signed"]
    snap_meta = ts["meta"]["snapshot.json"]
    assert set(snap_meta) == {"version", "length", "hashes"}
    snapshot = json.loads(
        (repo.metadata_dir / f"{snap_meta['version']}.snapshot.json").read_bytes()
    )
    meta = snapshot["signed"]["meta"]
    assert len(meta) == 256 + 3  # bins, envelopes, targets, detector
    assert all(set(m) == {"version"} for m in meta.values())
    assert len(json.dumps(snapshot)) < 20_000


def test_families_and_delegation_paths(tmp_path: Path) -> None:
    repo, officers = make_repository(tmp_path)
    fams = repo.families()
    assert list(fams) == [FAMILY]
    assert fams[FAMILY].threshold == 2
    assert set(fams[FAMILY].keyids) == {s.public_key.keyid for s in officers.rms}
    with pytest.raises(UnknownFamilyError):
        repo.family_targets(FAMILY)  # delegated, nothing published yet
    release(repo, officers.rms[1:], src_dir=tmp_path)
    assert repo.family_targets(FAMILY).signed.version == 1


@pytest.mark.parametrize(
    "name",
    [
        "",
        "Detector",
        "-x",
        "envelopes",
        "targets",
        "root",
        "snapshot",
        "timestamp",
        "envelopes-1f",
        "a/b",
        "a" * 65,
        "x y",
    ],
)
def test_family_names_refused(tmp_path: Path, name: str) -> None:
    repo, officers = make_repository(tmp_path, family=None)
    before = _tree(tmp_path)
    with pytest.raises(InvalidNameError) as info:
        repo.set_family(name, [officers.rms[0].public_key], 1, officers.targets[:1])
    assert repr(name) in info.value.diagnostics()
    assert _tree(tmp_path) == before


@pytest.mark.parametrize(
    "path",
    [
        "detector/../x/a.esm",
        "/detector/1/a.esm",
        "detector\\1\\a.esm",
        "detector/1/a\x00.esm",
        "detector/1/a\n.esm",
        "detector//a.esm",
        "detector/./a.esm",
        "other/1/a.esm",
        "detector/1/2/a.esm",
        "detector",
        "",
    ],
)
def test_target_paths_refused(tmp_path: Path, path: str) -> None:
    repo, _ = make_repository(tmp_path)
    src = tmp_path / "src.esm"
    src.write_bytes(b"x")
    target = repo.add_target_file("detector/1/detector-1.esm", src)
    target.path = path
    before = _tree(tmp_path)
    with pytest.raises(RepositoryError) as info:
        repo.propose_family(FAMILY, add={path: target})
    if path:
        assert repr(path) in info.value.diagnostics()
    with pytest.raises(RepositoryError):
        repo.add_target_file(path, src)
    assert _tree(tmp_path) == before


@pytest.mark.parametrize(
    "path",
    [
        "envelopes/../x/detector-1.env",
        "envelopes/dev/detector.env",
        "envelopes/dev/Bad-1.env",
        "envelopes/a/b/detector-1.env",
        "detector/dev/detector-1.env",
    ],
)
def test_envelope_paths_refused(tmp_path: Path, path: str) -> None:
    repo, _ = make_repository(tmp_path)
    before = _tree(tmp_path)
    with pytest.raises(InvalidNameError):
        repo.publish_envelopes({path: ENVELOPE})
    assert _tree(tmp_path) == before


def test_refused_publications_change_nothing(tmp_path: Path) -> None:
    repo, officers = make_repository(tmp_path)
    release(repo, officers.rms[:2], src_dir=tmp_path)
    src = tmp_path / "v2.esm"
    src.write_bytes(b"v2")
    target = repo.add_target_file("detector/2/detector-2.esm", src)
    proposal = repo.propose_family(FAMILY, add={target.path: target})
    assert proposal.signed.version == 2
    before = _tree(tmp_path)

    one = Metadata.from_bytes(proposal.to_bytes())
    sign_proposal(one, officers.rms[:1])
    with pytest.raises(ThresholdError, match="2 of 3 required signatures, 1 valid"):
        repo.publish_family(FAMILY, one)

    skipped = repo.propose_family(FAMILY, add={target.path: target})
    skipped.signed.version = 3
    sign_proposal(skipped, officers.rms[:2])
    with pytest.raises(ProposalError, match="not the next version 2"):
        repo.publish_family(FAMILY, skipped)

    stale = repo.propose_family(
        FAMILY, add={target.path: target}, now=utcnow() - timedelta(days=91)
    )
    sign_proposal(stale, officers.rms[:2])
    with pytest.raises(ProposalError, match="before now"):
        repo.publish_family(FAMILY, stale)

    missing = repo.propose_family(FAMILY)
    missing.signed.targets["detector/3/detector-3.esm"] = type(target)(
        length=5, hashes={"sha256": "00" * 32}, path="detector/3/detector-3.esm"
    )
    sign_proposal(missing, officers.rms[:2])
    with pytest.raises(UnknownTargetError, match="never uploaded"):
        repo.publish_family(FAMILY, missing)

    with pytest.raises(UnknownTargetError):
        repo.propose_family(FAMILY, remove=["detector/9/detector-9.esm"])
    with pytest.raises(UnknownFamilyError):
        repo.publish_family("tracker", proposal)
    with pytest.raises(UnknownTargetError):
        repo.publish_envelopes({}, remove=["envelopes/dev-9/detector-1.env"])
    assert _tree(tmp_path) == before

    sign_proposal(proposal, officers.rms[1:])
    repo.publish_family(FAMILY, proposal)
    assert repo.family_targets(FAMILY).signed.version == 2


def test_check_signature(tmp_path: Path) -> None:
    repo, officers = make_repository(tmp_path)
    proposal = repo.propose_family(FAMILY)
    good = officers.rms[0].sign(proposal.signed_bytes)
    repo.check_signature(FAMILY, proposal, good)
    with pytest.raises(SignatureError, match="not a release manager key"):
        repo.check_signature(FAMILY, proposal, officers.targets[0].sign(proposal.signed_bytes))
    with pytest.raises(SignatureError, match="does not verify"):
        repo.check_signature(FAMILY, proposal, officers.rms[0].sign(b"something else"))


def test_create_refuses_existing_and_bad_thresholds(tmp_path: Path) -> None:
    _, officers = make_repository(tmp_path)
    with pytest.raises(RepositoryStateError):
        make_repository(tmp_path, officers)
    with pytest.raises(RepositoryError):
        make_repository(tmp_path / "other", officers.__class__(root_threshold=4))
    with pytest.raises(ThresholdError):
        Repository.create(
            tmp_path / "third",
            tmp_path / "third-keys",
            root_keys=[s.public_key for s in officers.root],
            root_threshold=2,
            root_signers=officers.root[:1],
            targets_keys=[officers.targets[0].public_key],
            targets_threshold=1,
            targets_signers=officers.targets[:1],
        )
    assert not (tmp_path / "third").exists() or not any((tmp_path / "third").rglob("*.json"))
    with pytest.raises(RepositoryStateError):
        Repository(tmp_path / "nowhere", tmp_path / "keys")


def test_online_keys_are_private_files(tmp_path: Path) -> None:
    make_repository(tmp_path)
    keys = tmp_path / "keys"
    assert keys.stat().st_mode & 0o777 == 0o700
    files = sorted(p.name.split(".")[0] for p in keys.iterdir())
    assert files == ["envelopes", "snapshot", "timestamp"]
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in keys.iterdir())


def test_publish_envelopes_prunes(tmp_path: Path) -> None:
    repo, _ = make_repository(tmp_path)
    paths = [f"envelopes/dev-{i}/{FAMILY}-1.env" for i in range(5)]
    repo.publish_envelopes(dict.fromkeys(paths, ENVELOPE))
    repo.publish_envelopes({}, remove=paths[:2])
    with serve(repo) as server:
        updater = make_updater(
            tmp_path / "client", server, repo.root_bytes(), fetcher=CountingFetcher()
        )
        assert updater.get_targetinfo(paths[0]) is None
        assert updater.get_targetinfo(paths[1]) is None
        assert updater.get_targetinfo(paths[2]) is not None


def test_remove_envelopes_missing_ok(tmp_path: Path) -> None:
    """A revocation or a yank removes whatever is still published, and nothing else."""
    repo, _ = make_repository(tmp_path)
    paths = [f"envelopes/dev-{i}/{FAMILY}-1.env" for i in range(3)]
    repo.publish_envelopes(dict.fromkeys(paths[:2], ENVELOPE))
    with pytest.raises(UnknownTargetError):
        repo.publish_envelopes({}, remove=paths)
    removed = repo.publish_envelopes({}, remove=paths, missing_ok=True)
    assert removed == paths[:2]
    # nothing left to remove: no new snapshot or timestamp is written
    before = _tree(tmp_path)
    assert repo.publish_envelopes({}, remove=paths, missing_ok=True) == []
    assert _tree(tmp_path) == before
    with serve(repo) as server:
        updater = make_updater(tmp_path / "client", server, repo.root_bytes())
        updater.refresh()
        assert all(updater.get_targetinfo(p) is None for p in paths)
