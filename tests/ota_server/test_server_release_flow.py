"""The release workflow end to end over real HTTP, checked with a real TUF client.

create -> upload -> 2 of 3 release managers sign -> published: python-tuf's
ngclient then fetches the target from the server and finds the device's
envelope, which opens with the device key to the release's content key.
Yank: a new proposal without the target; once signed, the target and its
envelopes are gone from what the TUF client sees.
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest
from release_helpers import build_release, device_key_pem, publish, sign
from server_fixture import RunningServer
from tuf.api import exceptions as tuf_exc
from tuf.ngclient import Updater

from edgeseal.sdk.envelope import SoftwareRecipient, open_envelope


def updater(server: RunningServer, tmp_path: Path, name: str) -> Updater:
    root = server.request("GET", "/tuf/metadata/1.root.json")
    assert root.status == 200
    meta_dir = tmp_path / name / "metadata"
    target_dir = tmp_path / name / "targets"
    meta_dir.mkdir(parents=True)
    target_dir.mkdir(parents=True)
    up = Updater(
        metadata_dir=str(meta_dir),
        metadata_base_url=f"{server.base_url}/tuf/metadata/",
        target_base_url=f"{server.base_url}/tuf/targets/",
        target_dir=str(target_dir),
        bootstrap=root.body,
    )
    up.refresh()
    return up


def add_device(server: RunningServer, token: str, device_id: str, hardware: str) -> tuple:
    key, pem = device_key_pem()
    answer = server.request(
        "POST",
        "/api/v1/devices",
        token=token,
        body={
            "id": device_id,
            "public_key_pem": pem,
            "hardware_class": hardware,
            "channel": "stable",
        },
    )
    assert answer.status == 201, answer.body
    return key, answer.json()


def test_release_published_and_fetched_by_tuf_client(
    ota_server: RunningServer, tmp_path: Path
) -> None:
    ota_server.add_family("detector", managers=3, threshold=2)
    rm = ota_server.token("release-manager", "detector")
    operator = ota_server.token("operator")
    early_key, _ = add_device(ota_server, operator, "dev-early", "rpi5")
    add_device(ota_server, operator, "dev-other-hw", "jetson-orin")

    release = build_release(ota_server, "detector", 7)
    created = ota_server.request("POST", "/api/v1/releases", token=rm, body=release.body)
    assert created.status == 201, created.body
    assert created.json() == {"id": "detector-7", "state": "awaiting-upload"}
    up = ota_server.request(
        "PUT", "/api/v1/releases/detector-7/sealed-model", token=rm, body=release.sealed
    )
    assert up.status == 200, up.body
    assert up.json()["state"] == "awaiting-signatures"
    assert up.json()["proposal_version"] == 1

    # one signature is not enough: nothing is published yet
    first = sign(ota_server, "detector-7", rm, 0)
    assert first == {"signatures": 1, "threshold": 2, "state": "awaiting-signatures"}
    # the family role is not in the snapshot yet: the TUF client cannot resolve the target
    with pytest.raises(tuf_exc.RepositoryError, match="detector"):
        updater(ota_server, tmp_path, "before").get_targetinfo(release.target_path)

    second = sign(ota_server, "detector-7", rm, 1)
    assert second == {"signatures": 2, "threshold": 2, "state": "published"}

    client = updater(ota_server, tmp_path, "after")
    info = client.get_targetinfo(release.target_path)
    assert info is not None
    assert info.custom["edgeseal"]["version"] == 7
    path = client.download_target(info)
    assert Path(path).read_bytes() == release.sealed

    # the device registered before publication got its envelope; it opens to the content key
    env_info = client.get_targetinfo("envelopes/dev-early/detector-7.env")
    assert env_info is not None
    envelope = Path(client.download_target(env_info)).read_bytes()
    key = open_envelope(envelope, SoftwareRecipient(early_key), release.info.header)
    assert key == release.info.content_key
    # a device of another hardware class gets none
    assert client.get_targetinfo("envelopes/dev-other-hw/detector-7.env") is None

    # the content key rests on the server only as a KEK envelope (never raw)
    with sqlite3.connect(ota_server.data_dir / "server.db") as db:
        (stored,) = db.execute("SELECT kek_envelope FROM releases").fetchone()
    assert release.info.content_key.secret_bytes() not in stored
    shown = ota_server.request("GET", "/api/v1/releases/detector-7", token=rm).json()
    assert shown["state"] == "published" and shown["signatures"] == 2


def test_device_added_later_gets_envelopes(ota_server: RunningServer, tmp_path: Path) -> None:
    ota_server.add_family("detector")
    rm = ota_server.token("release-manager", "detector")
    release = build_release(ota_server, "detector", 1, hardware=("rpi5", "jetson-orin"))
    publish(ota_server, release, rm)

    key, answer = add_device(ota_server, ota_server.admin_token, "jetson-01", "jetson-orin")
    assert answer["envelopes"] == ["envelopes/jetson-01/detector-1.env"]
    client = updater(ota_server, tmp_path, "c")
    info = client.get_targetinfo("envelopes/jetson-01/detector-1.env")
    assert info is not None
    envelope = Path(client.download_target(info)).read_bytes()
    assert info.custom["edgeseal"]["device"] == "jetson-01"
    assert open_envelope(envelope, SoftwareRecipient(key), release.info.header) == (
        release.info.content_key
    )


def test_yank_flow(ota_server: RunningServer, tmp_path: Path) -> None:
    ota_server.add_family("detector")
    rm = ota_server.token("release-manager", "detector")
    add_device(ota_server, ota_server.admin_token, "dev-1", "rpi5")
    release = build_release(ota_server, "detector", 3)
    publish(ota_server, release, rm)
    assert updater(ota_server, tmp_path, "a").get_targetinfo(release.target_path) is not None

    yanked = ota_server.request("POST", "/api/v1/releases/detector-3/yank", token=rm, body={})
    assert yanked.status == 200, yanked.body
    assert yanked.json()["state"] == "yank-awaiting-signatures"
    # still published until the yank is signed
    assert updater(ota_server, tmp_path, "b").get_targetinfo(release.target_path) is not None
    sign(ota_server, "detector-3", rm, 2)
    done = sign(ota_server, "detector-3", rm, 0)
    assert done["state"] == "yanked"
    client = updater(ota_server, tmp_path, "c")
    assert client.get_targetinfo(release.target_path) is None
    assert client.get_targetinfo("envelopes/dev-1/detector-3.env") is None
    # a yanked version cannot come back, and a lower one cannot be released
    again = ota_server.request("POST", "/api/v1/releases", token=rm, body=release.body)
    assert again.status == 409


def test_upload_checks_refuse_mismatches(ota_server: RunningServer) -> None:
    ota_server.add_family("detector")
    rm = ota_server.token("release-manager", "detector")
    release = build_release(ota_server, "detector", 5)
    assert ota_server.request("POST", "/api/v1/releases", token=rm, body=release.body).status == 201
    url = "/api/v1/releases/detector-5/sealed-model"
    # wrong bytes of the declared size: refused before parsing (sha256 differs)
    tampered = bytearray(release.sealed)
    tampered[-1] ^= 1
    answer = ota_server.request("PUT", url, token=rm, body=bytes(tampered))
    assert answer.status == 400
    assert "not the declared sealed model" in answer.json()["error"]["message"]
    # another release's sealed model (right family, but declared hashes differ)
    other = build_release(ota_server, "detector", 5)
    assert ota_server.request("PUT", url, token=rm, body=other.sealed).status in (400, 413)
    # still awaiting the upload; nothing staged remains
    shown = ota_server.request("GET", "/api/v1/releases/detector-5", token=rm).json()
    assert shown["state"] == "awaiting-upload"
    assert list((ota_server.data_dir / "uploads").iterdir()) == []
    # the right file is accepted
    assert ota_server.request("PUT", url, token=rm, body=release.sealed).status == 200


def test_kek_envelope_for_another_model_is_refused(ota_server: RunningServer) -> None:
    ota_server.add_family("detector")
    rm = ota_server.token("release-manager", "detector")
    release = build_release(ota_server, "detector", 2)
    decoy = build_release(ota_server, "detector", 2)
    body = dict(release.body, kek_envelope_b64=decoy.body["kek_envelope_b64"])
    assert ota_server.request("POST", "/api/v1/releases", token=rm, body=body).status == 201
    answer = ota_server.request(
        "PUT", "/api/v1/releases/detector-2/sealed-model", token=rm, body=release.sealed
    )
    assert answer.status == 400
    assert "KEK envelope" in answer.json()["error"]["message"]
    assert hashlib.sha256(release.sealed).hexdigest() == release.body["sealed_sha256"]


def test_one_pending_proposal_per_family(ota_server: RunningServer) -> None:
    ota_server.add_family("detector")
    rm = ota_server.token("release-manager", "detector")
    first, second = (
        build_release(ota_server, "detector", 1),
        build_release(ota_server, "detector", 2),
    )
    for rel in (first, second):
        assert ota_server.request("POST", "/api/v1/releases", token=rm, body=rel.body).status == 201
    put = "/api/v1/releases/{}/sealed-model"
    assert (
        ota_server.request("PUT", put.format("detector-1"), token=rm, body=first.sealed).status
        == 200
    )
    answer = ota_server.request("PUT", put.format("detector-2"), token=rm, body=second.sealed)
    assert answer.status == 409
