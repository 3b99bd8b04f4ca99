"""Key rotations (root, targets, release managers) and online re-signing, seen by a real client."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api import exceptions as tuf_exc
from tuf.api.metadata import Metadata
from tuf_helpers import (
    FAMILY,
    client_clock,
    forge_online,
    make_repository,
    make_updater,
    release,
    serve,
    sign_proposal,
    utcnow,
)

from edgeseal.ota_server.errors import ThresholdError

MODEL = f"{FAMILY}/1/{FAMILY}-1.esm"
MODEL2 = f"{FAMILY}/2/{FAMILY}-2.esm"


def _keys(signers: list[CryptoSigner]) -> list:
    return [s.public_key for s in signers]


def _client_root_version(client: Path) -> int:
    return int(json.loads((client / "metadata" / "root.json").read_bytes())["signed"]["version"])


def test_client_follows_root_rotations_and_refuses_under_threshold_roots(tmp_path: Path) -> None:
    repo, officers = make_repository(tmp_path)
    release(repo, officers.rms[:2], src_dir=tmp_path)
    bootstrap = repo.root_bytes()
    gen2 = [CryptoSigner.generate_ecdsa() for _ in range(3)]
    gen3 = [CryptoSigner.generate_ecdsa() for _ in range(2)]
    repo.rotate_root(
        root_keys=_keys(gen2), root_threshold=2, old_signers=officers.root[1:], new_signers=gen2[:2]
    )
    repo.rotate_root(
        root_keys=_keys(gen3), root_threshold=2, old_signers=gen2[:2], new_signers=gen3
    )
    client = tmp_path / "client"
    with serve(repo) as server:
        updater = make_updater(client, server, bootstrap)
        assert updater.get_targetinfo(MODEL) is not None
        assert _client_root_version(client) == 3

    # the server refuses roots under either threshold, and writes nothing
    before = sorted(p.name for p in repo.metadata_dir.iterdir())
    gen4 = [CryptoSigner.generate_ecdsa() for _ in range(2)]
    with pytest.raises(
        ThresholdError, match=r"root \(old keys\): 2 of 2 required signatures, 1 valid"
    ):
        repo.rotate_root(
            root_keys=_keys(gen4), root_threshold=2, old_signers=gen3[:1], new_signers=gen4
        )
    with pytest.raises(
        ThresholdError, match=r"root \(new keys\): 2 of 2 required signatures, 1 valid"
    ):
        repo.rotate_root(
            root_keys=_keys(gen4), root_threshold=2, old_signers=gen3, new_signers=gen4[:1]
        )
    assert sorted(p.name for p in repo.metadata_dir.iterdir()) == before

    # written to disk bypassing the server, the client refuses them
    root3 = Metadata.from_bytes(repo.root_bytes())
    with serve(repo) as server:
        for old, new in ((gen3[:1], gen4), (gen3, gen4[:1])):
            forged = Metadata.from_bytes(repo.root_bytes())
            for keyid in list(forged.signed.roles["root"].keyids):
                forged.signed.revoke_key(keyid, "root")
            for key in _keys(gen4):
                forged.signed.add_key(key, "root")
            forged.signed.version = root3.signed.version + 1
            forged.signatures.clear()
            sign_proposal(forged, [*old, *new])  # type: ignore[arg-type]
            (repo.metadata_dir / "4.root.json").write_bytes(forged.to_bytes())
            with pytest.raises(tuf_exc.UnsignedMetadataError):
                make_updater(client, server, bootstrap).refresh()
            assert _client_root_version(client) == 3


def test_release_manager_rotation_and_threshold_change(tmp_path: Path) -> None:
    repo, officers = make_repository(tmp_path)
    release(repo, officers.rms[:2], src_dir=tmp_path)
    old_rm, kept = officers.rms[0], officers.rms[1:]
    new_rm = CryptoSigner.generate_ecdsa()
    # rotate out rms[0], add a new key, lower the threshold to 1 of 3
    repo.set_family(FAMILY, _keys([*kept, new_rm]), 1, officers.targets[:1])
    assert repo.families()[FAMILY].threshold == 1
    assert old_rm.public_key.keyid not in repo.families()[FAMILY].keyids

    src = tmp_path / "v2.esm"
    src.write_bytes(b"v2")
    target = repo.add_target_file(MODEL2, src)
    by_old = repo.propose_family(FAMILY, add={MODEL2: target})
    sign_proposal(by_old, [old_rm])
    with pytest.raises(ThresholdError, match="1 of 3 required signatures, 0 valid"):
        repo.publish_family(FAMILY, by_old)

    client = tmp_path / "client"
    with serve(repo) as server:
        # the client refuses the family metadata signed only with the old key
        forge_online(repo, {FAMILY: by_old})
        with pytest.raises(tuf_exc.UnsignedMetadataError):
            make_updater(client, server, repo.root_bytes()).get_targetinfo(MODEL2)

    repo2, officers2 = make_repository(tmp_path / "second")
    release(repo2, officers2.rms[:2], src_dir=tmp_path)
    new_rm2 = CryptoSigner.generate_ecdsa()
    repo2.set_family(FAMILY, _keys([officers2.rms[1], new_rm2]), 2, officers2.targets[:1])
    with serve(repo2) as server:
        # the published v1 was signed by the old set: refused until re-signed by the new one
        with pytest.raises(tuf_exc.UnsignedMetadataError):
            make_updater(tmp_path / "c2", server, repo2.root_bytes()).get_targetinfo(MODEL)
        proposal = repo2.propose_family(FAMILY)
        sign_proposal(proposal, [officers2.rms[1], new_rm2])
        repo2.publish_family(FAMILY, proposal)
        assert make_updater(tmp_path / "c2", server, repo2.root_bytes()).get_targetinfo(MODEL)


def test_targets_key_rotation(tmp_path: Path) -> None:
    repo, officers = make_repository(tmp_path)
    release(repo, officers.rms[:2], src_dir=tmp_path)
    bootstrap = repo.root_bytes()
    new_targets = [CryptoSigner.generate_ecdsa() for _ in range(2)]
    with pytest.raises(ThresholdError):
        repo.set_targets_keys(
            targets_keys=_keys(new_targets),
            targets_threshold=2,
            root_signers=officers.root[:2],
            targets_signers=new_targets[:1],
        )
    repo.set_targets_keys(
        targets_keys=_keys(new_targets),
        targets_threshold=2,
        root_signers=officers.root[:2],
        targets_signers=new_targets,
    )
    with pytest.raises(ThresholdError):  # the old targets key no longer delegates families
        repo.set_family("tracker", _keys(officers.rms), 1, officers.targets[:1])
    repo.set_family("tracker", _keys(officers.rms), 1, new_targets)
    with serve(repo) as server:
        updater = make_updater(tmp_path / "client", server, bootstrap)
        assert updater.get_targetinfo(MODEL) is not None
    assert set(repo.families()) == {FAMILY, "tracker"}


def test_refresh_online_resigns_expiring_roles_and_client_accepts(tmp_path: Path) -> None:
    now = utcnow()
    repo, officers = make_repository(tmp_path, now=now)
    release(repo, officers.rms[:2], src_dir=tmp_path, now=now)
    env_path = f"envelopes/dev-1/{FAMILY}-1.env"
    repo.publish_envelopes({env_path: b"e" * 129}, now=now)

    assert repo.refresh_online(now=now + timedelta(hours=1)) == []
    assert repo.refresh_online(now=now + timedelta(hours=13)) == ["timestamp"]
    assert repo.refresh_online(now=now + timedelta(hours=14)) == []
    later = now + timedelta(hours=30)
    client = tmp_path / "client"
    with serve(repo) as server:
        with client_clock(later + timedelta(hours=5)):  # the timestamp signed at +13h is valid
            assert make_updater(client, server, repo.root_bytes()).get_targetinfo(MODEL)
        with (
            client_clock(now + timedelta(hours=40)),  # frozen: expired
            pytest.raises(tuf_exc.ExpiredMetadataError),
        ):
            make_updater(client, server, repo.root_bytes()).refresh()
        assert repo.refresh_online(now=now + timedelta(hours=40)) == ["timestamp"]
        with client_clock(now + timedelta(hours=41)):
            make_updater(client, server, repo.root_bytes()).refresh()

        # 4 days: snapshot (7 d) has less than half left
        assert repo.refresh_online(now=now + timedelta(days=4)) == ["snapshot", "timestamp"]
        # 16 days: envelopes and every bin (30 d) too
        refreshed = repo.refresh_online(now=now + timedelta(days=16))
        assert refreshed[0] == "envelopes" and len(refreshed) == 1 + 16 + 2
        with client_clock(now + timedelta(days=16, hours=1)):
            updater = make_updater(client, server, repo.root_bytes())
            info = updater.get_targetinfo(env_path)
            assert info is not None
        assert repo.refresh_online(now=now + timedelta(days=16, hours=1)) == []
