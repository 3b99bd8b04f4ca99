"""Staged rollout over real HTTP: a published release's ``rollout_percent`` raised 10 -> 50.

The change is a proposal of the family metadata like a release or a yank: one
signature publishes nothing, two of three publish it, and python-tuf's ngclient
then sees the new percentage (and the same length and hashes). Refused: a
viewer or another family's release manager, a release that is not published,
a second pending proposal in the family, a percentage out of range or unchanged.
Also the CLI: ``edgeseal release rollout``, ``list``/``show`` showing the pending
change, and ``release sign`` checking it against the published metadata.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from release_helpers import build_release, publish, sign
from server_fixture import RunningServer
from test_server_release_flow import add_device, updater

from edgeseal.ota_server.repository import Repository
from edgeseal.sdk.cli import main
from edgeseal.sdk.signing import load_release_signer

PASSPHRASE = b"release manager passphrase"


def rollout(server: RunningServer, release_id: str, token: str, body: Any) -> Any:
    return server.request("POST", f"/api/v1/releases/{release_id}/rollout", token=token, body=body)


def test_rollout_raised_by_two_of_three(ota_server: RunningServer, tmp_path: Path) -> None:
    ota_server.add_family("detector", managers=3, threshold=2)
    rm = ota_server.token("release-manager", "detector")
    add_device(ota_server, ota_server.admin_token, "dev-1", "rpi5")
    release = build_release(ota_server, "detector", 4, rollout_percent=10)
    release_id = publish(ota_server, release, rm)
    before = updater(ota_server, tmp_path, "a").get_targetinfo(release.target_path)
    assert before is not None and before.custom["edgeseal"]["rollout_percent"] == 10

    answer = rollout(ota_server, release_id, rm, {"percent": 50})
    assert answer.status == 200, answer.body
    assert answer.json() == {
        "id": release_id,
        "state": "rollout-awaiting-signatures",
        "proposal_version": 2,
        "rollout_percent": 10,
        "pending_rollout_percent": 50,
    }
    shown = ota_server.request("GET", f"/api/v1/releases/{release_id}", token=rm).json()
    assert (shown["rollout_percent"], shown["pending_rollout_percent"]) == (10, 50)
    # the proposal changes exactly that field of the published target
    proposal = ota_server.request("GET", f"/api/v1/releases/{release_id}/proposal", token=rm)
    proposed = json.loads(proposal.body)["signed"]["targets"][release.target_path]
    published = before.to_dict()
    published["custom"]["edgeseal"]["rollout_percent"] = 50
    assert proposed == published

    assert sign(ota_server, release_id, rm, 2)["state"] == "rollout-awaiting-signatures"
    still = updater(ota_server, tmp_path, "b").get_targetinfo(release.target_path)
    assert still is not None and still.custom["edgeseal"]["rollout_percent"] == 10
    # the release stays published (envelopes, key release) while the change is pending
    assert updater(ota_server, tmp_path, "b2").get_targetinfo("envelopes/dev-1/detector-4.env")

    done = sign(ota_server, release_id, rm, 0)
    assert done == {"signatures": 2, "threshold": 2, "state": "published"}
    after = updater(ota_server, tmp_path, "c").get_targetinfo(release.target_path)
    assert after is not None and after.custom["edgeseal"]["rollout_percent"] == 50
    assert (after.length, after.hashes) == (before.length, before.hashes)
    shown = ota_server.request("GET", f"/api/v1/releases/{release_id}", token=rm).json()
    assert (shown["state"], shown["rollout_percent"], shown["pending_rollout_percent"]) == (
        "published",
        50,
        None,
    )
    # lowering is allowed (a pause); the same value again is refused
    assert rollout(ota_server, release_id, rm, {"percent": 50}).status == 400
    assert rollout(ota_server, release_id, rm, {"percent": 5}).status == 200

    audit = ota_server.request("GET", "/api/v1/audit", token=ota_server.admin_token)
    assert audit.status == 200
    assert "release.rollout" in audit.body.decode()


def test_rollout_refusals(ota_server: RunningServer) -> None:
    ota_server.add_family("detector")
    ota_server.add_family("segmenter")
    rm = ota_server.token("release-manager", "detector")
    other_rm = ota_server.token("release-manager", "segmenter")
    viewer = ota_server.token("viewer")
    release_id = publish(
        ota_server, build_release(ota_server, "detector", 1, rollout_percent=10), rm
    )

    assert rollout(ota_server, release_id, viewer, {"percent": 50}).status == 403
    assert rollout(ota_server, release_id, other_rm, {"percent": 50}).status == 403
    for bad in ({"percent": 0}, {"percent": 101}, {"percent": "50"}, {"percent": 50.0}, {}):
        assert rollout(ota_server, release_id, rm, bad).status == 400, bad
    assert rollout(ota_server, release_id, rm, {"percent": 50, "x": 1}).status == 400

    # a release that is not published yet
    pending = build_release(ota_server, "detector", 2)
    assert ota_server.request("POST", "/api/v1/releases", token=rm, body=pending.body).status == 201
    assert rollout(ota_server, "detector-2", rm, {"percent": 50}).status == 409
    uploaded = ota_server.request(
        "PUT", "/api/v1/releases/detector-2/sealed-model", token=rm, body=pending.sealed
    )
    assert uploaded.status == 200
    assert rollout(ota_server, "detector-2", rm, {"percent": 50}).status == 409
    # the family has a pending proposal (detector-2 awaits its signatures)
    answer = rollout(ota_server, release_id, rm, {"percent": 50})
    assert answer.status == 409 and "pending proposal" in answer.json()["error"]["message"]
    assert rollout(ota_server, "detector-9", rm, {"percent": 50}).status == 404


def test_pending_rollout_blocks_other_proposals(ota_server: RunningServer) -> None:
    ota_server.add_family("detector")
    rm = ota_server.token("release-manager", "detector")
    release_id = publish(
        ota_server, build_release(ota_server, "detector", 1, rollout_percent=10), rm
    )
    assert rollout(ota_server, release_id, rm, {"percent": 20}).status == 200
    # a second rollout of the same release, or a yank, waits for the first to be signed
    assert rollout(ota_server, release_id, rm, {"percent": 30}).status == 409
    yank = ota_server.request("POST", f"/api/v1/releases/{release_id}/yank", token=rm, body={})
    assert yank.status == 409
    nxt = build_release(ota_server, "detector", 2)
    assert ota_server.request("POST", "/api/v1/releases", token=rm, body=nxt.body).status == 201
    upload = ota_server.request(
        "PUT", "/api/v1/releases/detector-2/sealed-model", token=rm, body=nxt.sealed
    )
    assert upload.status == 409


# --- the CLI ---------------------------------------------------------------------------------


def _key_file(path: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(PASSPHRASE),
        )
    )
    return path


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_rollout_sign_and_show(
    ota_server: RunningServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    keys = [_key_file(tmp_path / f"rm{i}.pem") for i in range(3)]
    signers = [load_release_signer(k, PASSPHRASE) for k in keys]
    repo = Repository(ota_server.data_dir / "repository", ota_server.data_dir / "keys")
    repo.set_family("detector", [s.public_key for s in signers], 2, ota_server.targets_signers)
    ota_server.release_managers["detector"] = signers
    rm = ota_server.token("release-manager", "detector")
    release_id = publish(
        ota_server, build_release(ota_server, "detector", 3, rollout_percent=10), rm
    )
    (tmp_path / "pass").write_bytes(PASSPHRASE + b"\n")
    root = tmp_path / "root.json"
    root.write_bytes((ota_server.data_dir / "repository" / "metadata" / "1.root.json").read_bytes())
    monkeypatch.setenv("EDGESEAL_SERVER", ota_server.base_url)
    monkeypatch.setenv("EDGESEAL_TOKEN", rm)
    monkeypatch.setenv("EDGESEAL_ROOT", str(root))
    monkeypatch.delenv("EDGESEAL_KEY_PASSPHRASE", raising=False)
    sign_args = ("--passphrase-file", str(tmp_path / "pass"), "--yes")

    code, out, err = cli(capsys, "release", "rollout", release_id, "--percent", "50")
    assert code == 0, err
    assert "rollout-awaiting-signatures (10% -> 50%)" in out
    code, out, _ = cli(capsys, "release", "list")
    assert code == 0 and "10% -> 50%" in out
    code, out, _ = cli(capsys, "release", "show", release_id)
    assert code == 0 and "pending_rollout_percent 50" in " ".join(out.split())

    # a release manager expecting another percentage does not sign
    code, _, err = cli(
        capsys, "release", "sign", release_id, "--key", str(keys[0]), "--percent", "60", *sign_args
    )
    assert code == 1 and "is 50%, not the 60% you expect" in err
    code, out, err = cli(
        capsys, "release", "sign", release_id, "--key", str(keys[0]), "--percent", "50", *sign_args
    )
    assert code == 0, err
    assert "rollout_percent 10% -> 50%, nothing else changes" in out
    assert out.rstrip().endswith("signed: 1 of 2 signatures; rollout-awaiting-signatures")
    code, out, err = cli(
        capsys, "release", "sign", release_id, "--key", str(keys[1]), "--json", *sign_args[:2]
    )
    assert code == 0, err
    answer = json.loads(out)
    assert answer["state"] == "published"
    assert answer["proposal"]["action"] == "rollout"
    assert answer["proposal"]["previous_rollout_percent"] == 10
    assert answer["proposal"]["rollout_percent"] == 50
    code, out, _ = cli(capsys, "release", "show", release_id, "--json")
    assert code == 0 and json.loads(out)["rollout_percent"] == 50


def test_cli_refuses_a_tampered_rollout_proposal(
    ota_server: RunningServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A compromised server widens the rollout *and* swaps the model: not signed."""
    import sqlite3

    key = _key_file(tmp_path / "rm.pem")
    signers = [load_release_signer(key, PASSPHRASE), *ota_server.add_family("detector")[:2]]
    repo = Repository(ota_server.data_dir / "repository", ota_server.data_dir / "keys")
    repo.set_family("detector", [s.public_key for s in signers], 2, ota_server.targets_signers)
    ota_server.release_managers["detector"] = signers[1:]
    rm = ota_server.token("release-manager", "detector")
    release_id = publish(
        ota_server, build_release(ota_server, "detector", 3, rollout_percent=10), rm
    )
    assert rollout(ota_server, release_id, rm, {"percent": 50}).status == 200
    with sqlite3.connect(ota_server.data_dir / "server.db") as db:
        (raw,) = db.execute("SELECT proposal FROM releases WHERE id = ?", (release_id,)).fetchone()
        tampered = json.loads(raw)
        (target,) = tampered["signed"]["targets"].values()
        target["hashes"]["sha256"] = "0" * 64
        db.execute(
            "UPDATE releases SET proposal = ? WHERE id = ?",
            (json.dumps(tampered).encode(), release_id),
        )
    monkeypatch.setenv("EDGESEAL_SERVER", ota_server.base_url)
    monkeypatch.setenv("EDGESEAL_TOKEN", rm)
    monkeypatch.delenv("EDGESEAL_ROOT", raising=False)
    (tmp_path / "pass").write_bytes(PASSPHRASE + b"\n")
    code, _, err = cli(
        capsys,
        "release",
        "sign",
        release_id,
        "--key",
        str(key),
        "--passphrase-file",
        str(tmp_path / "pass"),
        "--yes",
    )
    assert code == 1
    assert "refusing to sign" in err and "more of detector/3/detector-3.esm" in err
    assert "hashes" in err
