"""``edgeseal-server root rotate``: officers replaced through the CLI, and a real
python-tuf client bootstrapped on the old root follows the chain to the new one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tuf_helpers import StaticServer, make_updater

from edgeseal.ota_server.cli import main
from edgeseal.ota_server.keys import generate_key_file, load_signer, public_key_pem

PASSPHRASE = "correct horse battery staple"


@pytest.fixture
def server_dir(tmp_path: Path) -> tuple[Path, Path, Path]:
    data, officers, passfile = tmp_path / "data", tmp_path / "officers", tmp_path / "pass"
    passfile.write_text(PASSPHRASE + "\n")
    code = main(
        [
            "--data", str(data), "init", "--officer-keys", str(officers), "--officers", "3",
            "--threshold", "2", "--bin-bits", "2", "--passphrase-file", str(passfile),
        ]
    )  # fmt: skip
    assert code == 0
    return data, officers, passfile


def _root_versions(data: Path) -> list[str]:
    return sorted(p.name for p in (data / "repository" / "metadata").glob("*.root.json"))


def test_rotate_root_and_client_follows(
    server_dir: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, officers, passfile = server_dir
    new = []
    for n in (1, 2):
        key = tmp_path / f"new-officer-{n}.pem"
        generate_key_file(key, PASSPHRASE)
        new.append(key)
    pubs = []
    for key in new:
        pub = tmp_path / f"{key.name}.pub.pem"
        pub.write_bytes(public_key_pem(load_signer(key, PASSPHRASE).public_key))
        pubs.append(pub)
    root_v1 = (data / "repository" / "metadata" / "1.root.json").read_bytes()

    args = ["--data", str(data), "root", "rotate", "--threshold", "2", "--json"]
    args += [a for p in pubs for a in ("--new-key", str(p))]
    args += [a for k in new for a in ("--new-signer", str(k))]
    args += ["--passphrase-file", str(passfile), "--rotate-online", "timestamp"]
    # one old officer is below the old threshold: refused, nothing published
    refused = [*args, "--old-signer", str(officers / "officer-1-root.pem")]
    assert main(refused) == 1
    assert "root" in capsys.readouterr().err
    assert _root_versions(data) == ["1.root.json"]

    accepted = [*args]
    accepted += ["--old-signer", str(officers / "officer-1-root.pem")]
    accepted += ["--old-signer", str(officers / "officer-3-root.pem")]
    assert main(accepted) == 0
    assert json.loads(capsys.readouterr().out)["threshold"] == 2
    assert _root_versions(data) == ["1.root.json", "2.root.json"]

    with StaticServer(data / "repository") as server:
        updater = make_updater(tmp_path / "client", server, root_v1)
        updater.refresh()
    trusted = json.loads((tmp_path / "client" / "metadata" / "root.json").read_bytes())
    assert trusted["signed"]["version"] == 2
    assert main(["--data", str(data), "audit", "verify"]) == 0
