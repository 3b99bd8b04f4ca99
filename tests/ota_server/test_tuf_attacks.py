"""The TUF attacks (spec 1.5.2), each refused by python-tuf's real client over HTTP.

Every test first shows the honest path works (so a refusal is the attack's
doing, not a broken setup), then plays the attacker on the served files.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from tuf.api import exceptions as tuf_exc
from tuf.api.metadata import Metadata, MetaFile, Targets
from tuf.ngclient import UpdaterConfig
from tuf_helpers import (
    FAMILY,
    client_clock,
    forge_online,
    make_repository,
    make_updater,
    online_signer,
    release,
    serve,
    sign_proposal,
    utcnow,
)

from edgeseal.ota_server.errors import ThresholdError
from edgeseal.ota_server.repository import target_blob_path

MODEL = f"{FAMILY}/1/{FAMILY}-1.esm"
MODEL2 = f"{FAMILY}/2/{FAMILY}-2.esm"


def test_arbitrary_software_replaced_target_is_refused(tmp_path: Path) -> None:
    repo, officers = make_repository(tmp_path)
    target = release(repo, officers.rms[:2], src_dir=tmp_path, content=b"genuine sealed model")
    blob = repo.targets_dir / target_blob_path(MODEL, target.hashes["sha256"])
    with serve(repo) as server:
        updater = make_updater(tmp_path / "c1", server, repo.root_bytes())
        info = updater.get_targetinfo(MODEL)
        assert info is not None
        updater.download_target(info, str(tmp_path / "ok.esm"))

        blob.write_bytes(b"malicious sealed mod")  # same length, other bytes
        with pytest.raises(tuf_exc.LengthOrHashMismatchError):
            updater.download_target(info, str(tmp_path / "bad.esm"))
        assert not (tmp_path / "bad.esm").exists()


def test_rollback_of_timestamp_snapshot_and_family_is_refused(tmp_path: Path) -> None:
    repo, officers = make_repository(tmp_path)
    release(repo, officers.rms[:2], src_dir=tmp_path)
    old_timestamp = (repo.metadata_dir / "timestamp.json").read_bytes()
    release(repo, officers.rms[:2], version=2, src_dir=tmp_path)
    client = tmp_path / "client"
    with serve(repo) as server:
        updater = make_updater(client, server, repo.root_bytes())
        assert updater.get_targetinfo(MODEL2) is not None
        current_ts = (repo.metadata_dir / "timestamp.json").read_bytes()

        # timestamp rollback: the older, validly signed timestamp.json served again
        (repo.metadata_dir / "timestamp.json").write_bytes(old_timestamp)
        with pytest.raises(tuf_exc.BadVersionNumberError, match="timestamp version"):
            make_updater(client, server, repo.root_bytes()).refresh()
        (repo.metadata_dir / "timestamp.json").write_bytes(current_ts)

        # snapshot rollback: a newer timestamp (stolen key) naming an older snapshot
        ts = Metadata.from_bytes(current_ts)
        old_snap = ts.signed.snapshot_meta.version - 1
        ts.signed.version += 1
        ts.signed.snapshot_meta = MetaFile(version=old_snap)
        ts.sign(online_signer(repo, "timestamp"))
        (repo.metadata_dir / "timestamp.json").write_bytes(ts.to_bytes())
        with pytest.raises(tuf_exc.BadVersionNumberError, match="snapshot version"):
            make_updater(client, server, repo.root_bytes()).refresh()
        (repo.metadata_dir / "timestamp.json").write_bytes(current_ts)

        # family rollback: stolen online keys, a new snapshot naming detector v1 again
        forge_online(repo, snapshot_meta={FAMILY: 1})
        with pytest.raises(tuf_exc.BadVersionNumberError, match=r"detector\.json"):
            make_updater(client, server, repo.root_bytes()).refresh()


def test_indefinite_freeze_expired_timestamp_is_refused(tmp_path: Path) -> None:
    now = utcnow()
    repo, officers = make_repository(tmp_path, now=now)
    release(repo, officers.rms[:2], src_dir=tmp_path, now=now)
    client = tmp_path / "client"
    with serve(repo) as server:
        make_updater(client, server, repo.root_bytes()).refresh()
        # the server is frozen (no refresh_online); two days pass for the client
        with (
            client_clock(now + timedelta(days=2)),
            pytest.raises(tuf_exc.ExpiredMetadataError, match=r"timestamp\.json is expired"),
        ):
            make_updater(client, server, repo.root_bytes()).refresh()


def test_fast_forward_attack_and_recovery_by_rotating_timestamp_key(tmp_path: Path) -> None:
    repo, officers = make_repository(tmp_path)
    release(repo, officers.rms[:2], src_dir=tmp_path)
    client = tmp_path / "client"
    with serve(repo) as server:
        make_updater(client, server, repo.root_bytes()).refresh()
        honest_ts = (repo.metadata_dir / "timestamp.json").read_bytes()

        # attacker with the timestamp key fast-forwards the client to version 1000
        forged = Metadata.from_bytes(honest_ts)
        forged.signed.version = 1000
        forged.sign(online_signer(repo, "timestamp"))
        (repo.metadata_dir / "timestamp.json").write_bytes(forged.to_bytes())
        make_updater(client, server, repo.root_bytes()).refresh()
        (repo.metadata_dir / "timestamp.json").write_bytes(honest_ts)

        # the honest repository goes on, at versions below 1000: refused (5.3.11 problem)
        release(repo, officers.rms[:2], version=2, src_dir=tmp_path)
        with pytest.raises(tuf_exc.BadVersionNumberError, match="must be >= 1000"):
            make_updater(client, server, repo.root_bytes()).refresh()

        # recovery: root rotates the timestamp key; the client drops the forged timestamp
        old_key_files = {p.name for p in repo.keys_dir.glob("timestamp.*.pem")}
        repo.rotate_root(
            root_keys=[s.public_key for s in officers.root],
            root_threshold=2,
            old_signers=officers.root[:2],
            new_signers=[],
            rotate_online=["timestamp"],
        )
        assert not old_key_files & {p.name for p in repo.keys_dir.glob("timestamp.*.pem")}
        updater = make_updater(client, server, repo.root_bytes())
        assert updater.get_targetinfo(MODEL2) is not None


def test_mix_and_match_family_not_matching_snapshot_is_refused(tmp_path: Path) -> None:
    repo, officers = make_repository(tmp_path)
    release(repo, officers.rms[:2], src_dir=tmp_path)
    release(repo, officers.rms[:2], version=2, src_dir=tmp_path)
    # serve the (validly signed) version 1 where the snapshot says version 2
    v1 = (repo.metadata_dir / f"1.{FAMILY}.json").read_bytes()
    (repo.metadata_dir / f"2.{FAMILY}.json").write_bytes(v1)
    with serve(repo) as server:
        updater = make_updater(tmp_path / "client", server, repo.root_bytes())
        with pytest.raises(tuf_exc.BadVersionNumberError, match=f"Expected {FAMILY} v2, got v1"):
            updater.get_targetinfo(MODEL2)


def test_endless_data_oversized_metadata_is_refused(tmp_path: Path) -> None:
    repo, officers = make_repository(tmp_path)
    release(repo, officers.rms[:2], src_dir=tmp_path)
    with serve(repo) as server:
        # family metadata padded past the client's limit for targets metadata
        family_file = repo.metadata_dir / f"1.{FAMILY}.json"
        family_file.write_bytes(family_file.read_bytes() + b" " * 200_000)
        config = UpdaterConfig(targets_max_length=100_000)
        updater = make_updater(tmp_path / "c1", server, repo.root_bytes(), config=config)
        with pytest.raises(tuf_exc.DownloadLengthMismatchError):
            updater.get_targetinfo(MODEL)

        # an endless timestamp.json: refused at the default 16 KiB limit
        ts_file = repo.metadata_dir / "timestamp.json"
        ts_file.write_bytes(ts_file.read_bytes() + b" " * 50_000)
        with pytest.raises(tuf_exc.DownloadLengthMismatchError):
            make_updater(tmp_path / "c2", server, repo.root_bytes()).refresh()


def test_key_compromise_below_threshold_is_refused_by_server_and_client(tmp_path: Path) -> None:
    repo, officers = make_repository(tmp_path)
    release(repo, officers.rms[:2], src_dir=tmp_path)
    src = tmp_path / "evil.esm"
    src.write_bytes(b"evil")
    target = repo.add_target_file(MODEL2, src)
    proposal = repo.propose_family(FAMILY, add={MODEL2: target})
    sign_proposal(proposal, officers.rms[:1])  # one stolen release manager key
    with pytest.raises(ThresholdError, match="2 of 3 required signatures, 1 valid"):
        repo.publish_family(FAMILY, proposal)

    # the attacker also owns the server and writes it to disk with the online keys
    forge_online(repo, {FAMILY: proposal})
    with serve(repo) as server:
        updater = make_updater(tmp_path / "client", server, repo.root_bytes())
        with pytest.raises(tuf_exc.UnsignedMetadataError):
            updater.get_targetinfo(MODEL2)


def test_envelope_bin_signed_by_other_key_is_refused(tmp_path: Path) -> None:
    """A forged bin (not signed by the envelopes key) never yields an envelope."""
    repo, officers = make_repository(tmp_path)
    path = f"envelopes/dev-1/{FAMILY}-1.env"
    repo.publish_envelopes({path: b"e" * 129})
    with serve(repo) as server:
        updater = make_updater(tmp_path / "c1", server, repo.root_bytes())
        assert updater.get_targetinfo(path) is not None
    meta = Metadata.from_bytes(repo.root_bytes())
    assert meta.signed.consistent_snapshot
    envelopes = Metadata.from_bytes((repo.metadata_dir / "1.envelopes.json").read_bytes())
    bin_name = envelopes.signed.delegations.succinct_roles.get_role_for_target(path)
    forged = Metadata(Targets(version=99, expires=utcnow() + timedelta(days=1)))
    forged.signed.targets[path] = Metadata.from_bytes(
        (repo.metadata_dir / f"2.{bin_name}.json").read_bytes()
    ).signed.targets[path]
    forged.sign(officers.rms[0])
    forge_online(repo, {bin_name: forged})
    with serve(repo) as server:
        updater = make_updater(tmp_path / "c2", server, repo.root_bytes())
        with pytest.raises(tuf_exc.UnsignedMetadataError):
            updater.get_targetinfo(path)
