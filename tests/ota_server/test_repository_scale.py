"""Hashed bins keep a fleet cheap: one release for 1,000 devices, one bin per device refresh."""

from __future__ import annotations

import json
from pathlib import Path

from tuf.api.metadata import Metadata
from tuf_helpers import FAMILY, CountingFetcher, make_repository, make_updater, release, serve

DEVICES = 1000


def test_one_release_for_1000_devices_and_a_device_fetches_only_its_bin(tmp_path: Path) -> None:
    repo, officers = make_repository(tmp_path, bin_bits=8)
    release(repo, officers.rms[:2], src_dir=tmp_path)
    envelopes = {
        f"envelopes/dev-{i:04d}/{FAMILY}-1.env": i.to_bytes(2, "big") * 64 + b"x"
        for i in range(DEVICES)
    }
    timestamp_before = json.loads((repo.metadata_dir / "timestamp.json").read_bytes())
    repo.publish_envelopes(envelopes)
    timestamp_after = json.loads((repo.metadata_dir / "timestamp.json").read_bytes())
    # one snapshot (and one timestamp) for the whole call
    assert (
        timestamp_after["signed"]["meta"]["snapshot.json"]["version"]
        == timestamp_before["signed"]["meta"]["snapshot.json"]["version"] + 1
    )

    mine = f"envelopes/dev-0042/{FAMILY}-1.env"
    env_md = Metadata.from_bytes((repo.metadata_dir / "1.envelopes.json").read_bytes())
    my_bin = env_md.signed.delegations.succinct_roles.get_role_for_target(mine)
    bins_total = sum(p.stat().st_size for p in repo.metadata_dir.glob("2.envelopes-*.json"))

    fetcher = CountingFetcher()
    with serve(repo) as server:
        updater = make_updater(tmp_path / "client", server, repo.root_bytes(), fetcher=fetcher)
        info = updater.get_targetinfo(mine)
        assert info is not None
        path = updater.download_target(info)
        assert Path(path).read_bytes() == envelopes[mine]

    fetched_bins = {name for name in fetcher.names() if ".envelopes-" in name}
    assert fetched_bins == {f"2.{my_bin}.json"}
    bin_bytes = sum(n for url, n in fetcher.fetched.items() if ".envelopes-" in url)
    assert bin_bytes == (repo.metadata_dir / f"2.{my_bin}.json").stat().st_size
    assert bin_bytes * 50 < bins_total
    assert not any(f".{FAMILY}.json" in name for name in fetcher.names())  # other roles not walked
    assert fetcher.total < 40_000
