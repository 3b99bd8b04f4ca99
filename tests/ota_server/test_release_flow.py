"""`edgeseal release ...` end to end: the real CLI against the real server on loopback.

A release manager creates a release from a plaintext TFLite model (golden
outputs computed with the real runtime), two of the family's three release
managers sign it with passphrase-encrypted key files, and it is published:
the family's TUF metadata, authenticated from the root, lists the target with
the signed release metadata, and the served target is the sealed file. Then
it is yanked the same way. Attacks: a key outside the delegation, a forged
published family metadata, a sealed model other than the one expected.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from server_fixture import RunningServer

from edgeseal.ota_server.repository import Repository
from edgeseal.sdk.cli import main
from edgeseal.sdk.client import ManagementClient
from edgeseal.sdk.modelgen import dense_model
from edgeseal.sdk.published import published_family
from edgeseal.sdk.releases import ReleaseMetadata
from edgeseal.sdk.sealed import seal_model
from edgeseal.sdk.signing import load_release_signer

pytestmark = pytest.mark.tflite
FAMILY = "detector"
PASSPHRASE = b"release manager passphrase"


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


@pytest.fixture
def deployment(ota_server: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    keys = [_key_file(tmp_path / f"rm{i}.pem") for i in range(3)]
    signers = [load_release_signer(k, PASSPHRASE) for k in keys]
    repo = Repository(ota_server.data_dir / "repository", ota_server.data_dir / "keys")
    repo.set_family(FAMILY, [s.public_key for s in signers], 2, ota_server.targets_signers)
    token = ota_server.token("release-manager", FAMILY)
    (tmp_path / "pass").write_bytes(PASSPHRASE + b"\n")
    root = tmp_path / "root.json"
    root.write_bytes((ota_server.data_dir / "repository" / "metadata" / "1.root.json").read_bytes())
    monkeypatch.setenv("EDGESEAL_SERVER", ota_server.base_url)
    monkeypatch.setenv("EDGESEAL_TOKEN", token)
    monkeypatch.setenv("EDGESEAL_ROOT", str(root))
    monkeypatch.delenv("EDGESEAL_KEY_PASSPHRASE", raising=False)
    rng = np.random.default_rng(7)
    model = tmp_path / "detector.tflite"
    model.write_bytes(
        dense_model(rng.standard_normal((2, 3)).astype(np.float32), np.zeros(2, np.float32))
    )
    golden = tmp_path / "golden.npz"
    np.savez(golden, input_0=rng.standard_normal((1, 3)).astype(np.float32))
    return {
        "server": ota_server,
        "keys": keys,
        "token": token,
        "model": model,
        "golden": golden,
        "tmp": tmp_path,
        "pass": tmp_path / "pass",
    }


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def create(d: Any, capsys: pytest.CaptureFixture[str], version: int) -> tuple[str, Path]:
    sealed = d["tmp"] / f"detector-{version}.esm"
    code, out, err = cli(
        capsys,
        "release",
        "create",
        str(d["model"]),
        "--family",
        FAMILY,
        "--version",
        str(version),
        "--hardware",
        "rpi5",
        "--hardware",
        "jetson-orin",
        "--channel",
        "stable",
        "--rollout",
        "10",
        "--golden",
        str(d["golden"]),
        "--latency-budget-ms",
        "250",
        "-o",
        str(sealed),
    )
    assert code == 0, err
    assert "computed 1 golden output(s)" in err
    return out.splitlines()[0], sealed


def sign(
    d: Any, capsys: pytest.CaptureFixture[str], release: str, key: Path, *extra: str
) -> tuple[int, Any, str]:
    code, out, err = cli(
        capsys,
        "release",
        "sign",
        release,
        "--key",
        str(key),
        "--passphrase-file",
        str(d["pass"]),
        "--json",
        *extra,
    )
    return code, json.loads(out) if code == 0 else None, err


def published(d: Any) -> Any:
    client = ManagementClient(d["server"].base_url, None)
    root = (d["tmp"] / "root.json").read_bytes()
    return published_family(client.fetch_tuf_metadata, FAMILY, root)


def test_create_sign_two_of_three_publish_then_yank(
    deployment: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    d = deployment
    release, sealed = create(d, capsys, 7)
    assert release == "detector-7"

    code, out, err = cli(
        capsys,
        "release",
        "sign",
        release,
        "--key",
        str(d["keys"][0]),
        "--passphrase-file",
        str(d["pass"]),
        "--sealed-model",
        str(sealed),
    )
    assert code == 0, err
    assert "publishes detector/7/detector-7.esm" in out
    assert "metadata first version, 1" in out and "note:" not in out
    assert out.rstrip().endswith("signed: 1 of 2 signatures; awaiting-signatures")
    assert published(d).metadata is None  # not yet

    code, second, err = sign(d, capsys, release, d["keys"][2])
    assert code == 0, err
    assert second["state"] == "published"

    state = published(d)
    assert state.version == 1 and state.root_pinned
    md = json.loads(state.metadata or b"")
    (path,) = md["signed"]["targets"]
    target = md["signed"]["targets"][path]
    meta = ReleaseMetadata.from_custom(target["custom"])
    assert (meta.version, set(meta.hardware), meta.rollout_percent) == (
        7,
        {"rpi5", "jetson-orin"},
        10,
    )
    assert meta.health_check.latency_budget_ms == 250
    assert target["length"] == sealed.stat().st_size
    served = d["server"].request(
        "GET", f"/tuf/targets/detector/7/{target['hashes']['sha256']}.detector-7.esm"
    )
    assert served.status == 200 and served.body == sealed.read_bytes()

    code, out, _ = cli(capsys, "release", "list", "--family", FAMILY, "--json")
    assert code == 0 and [r["state"] for r in json.loads(out)] == ["published"]
    code, out, _ = cli(capsys, "release", "show", release, "--json")
    assert code == 0 and json.loads(out)["signatures"] == 2

    code, out, _ = cli(capsys, "release", "yank", release, "--json")
    assert code == 0 and json.loads(out)["state"] == "yank-awaiting-signatures"
    for key in d["keys"][:2]:
        code, answer, err = sign(d, capsys, release, key)
        assert code == 0, err
        assert answer["proposal"]["action"] == "remove"
    assert answer["state"] == "yanked"
    assert json.loads(published(d).metadata or b"")["signed"]["targets"] == {}


def test_key_outside_the_delegation_cannot_sign(
    deployment: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    release, _ = create(deployment, capsys, 3)
    stranger = _key_file(deployment["tmp"] / "stranger.pem")
    code, _, err = sign(deployment, capsys, release, stranger)
    assert code == 1 and "is not one of the 3 release-manager keys" in err


def test_other_sealed_model_is_refused(deployment: Any, capsys: pytest.CaptureFixture[str]) -> None:
    d = deployment
    release, _ = create(d, capsys, 4)
    other = d["tmp"] / "other.esm"  # the same model sealed again: a fresh key, other bytes
    with d["model"].open("rb") as src, other.open("wb") as dst:
        seal_model(src, dst, family=FAMILY, version=4, hardware=["rpi5", "jetson-orin"])
    code, _, err = sign(d, capsys, release, d["keys"][0], "--sealed-model", str(other))
    assert code == 1 and "is not the sealed model the server recorded" in err


def test_forged_published_metadata_is_refused(
    deployment: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    d = deployment
    release, _ = create(d, capsys, 7)
    for key in d["keys"][:2]:
        assert sign(d, capsys, release, key)[0] == 0
    # The server's disk is compromised: the published family metadata is altered
    # (its custom metadata widened to 100 %) without the release managers' keys.
    metadata_dir = d["server"].data_dir / "repository" / "metadata"
    (path,) = metadata_dir.glob(f"1.{FAMILY}.json")
    forged = json.loads(path.read_bytes())
    (target,) = forged["signed"]["targets"].values()
    target["custom"]["edgeseal"]["rollout_percent"] = 100
    path.write_text(json.dumps(forged))

    nxt, _ = create(d, capsys, 8)
    code, _, err = sign(d, capsys, nxt, d["keys"][0])
    assert code == 1 and f"is not signed by {FAMILY}'s keys" in err
