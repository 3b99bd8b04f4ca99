"""Bounded bodies, strict input and the audit trail of accepted and refused calls (real HTTP)."""

from __future__ import annotations

import http.client
import itertools
import logging

import pytest
from release_helpers import build_release, device_key_pem
from server_fixture import RunningServer


def audit(server: RunningServer) -> list[dict]:
    answer = server.request("GET", "/api/v1/audit", token=server.admin_token)
    assert answer.status == 200
    return answer.json()


def test_accepted_and_refused_calls_are_audited(ota_server: RunningServer) -> None:
    viewer = ota_server.token("viewer", name="vera")
    before = len(audit(ota_server))
    body = {"id": "dev-1", "public_key_pem": device_key_pem()[1], "hardware_class": "rpi5",
            "channel": "stable"}  # fmt: skip
    assert ota_server.request("POST", "/api/v1/devices", body=body).status == 401
    assert ota_server.request("POST", "/api/v1/devices", token=viewer, body=body).status == 403
    bad = dict(body, id="../etc")
    assert (
        ota_server.request("POST", "/api/v1/devices", token=ota_server.admin_token, body=bad).status
        == 400
    )
    ok = ota_server.request("POST", "/api/v1/devices", token=ota_server.admin_token, body=body)
    assert ok.status == 201
    entries = audit(ota_server)[before:]
    summary = [(e["action"], e["outcome"], e["actor"].split("#")[0]) for e in entries]
    assert summary == [
        ("device.add", "refused", "anonymous"),
        ("device.add", "refused", "vera"),
        ("device.add", "refused", "admin"),
        ("device.add", "accepted", "admin"),
    ]
    assert entries[0]["details"]["status"] == 401
    assert entries[1]["details"]["status"] == 403
    assert "device id" in entries[2]["details"]["reason"]
    assert entries[3]["details"]["device"] == "dev-1"
    # the chain links
    for prev, entry in itertools.pairwise(entries):
        assert entry["prev_hash"] == prev["hash"]


def test_tokens_never_in_logs_audit_or_other_answers(
    ota_server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    created = ota_server.request(
        "POST", "/api/v1/tokens", token=ota_server.admin_token, body={"name": "x", "role": "viewer"}
    )
    token = created.json()["token"]
    secret = token.split(".")[2]
    ota_server.request("GET", "/api/v1/whoami", token=token)
    ota_server.request("POST", "/api/v1/tokens", token=token, body={"name": "y", "role": "admin"})
    everything = ota_server.request("GET", "/api/v1/audit", token=token).body
    everything += ota_server.request("GET", "/api/v1/devices", token=token).body
    assert secret.encode() not in everything
    assert ota_server.admin_token.split(".")[2].encode() not in everything
    assert secret not in caplog.text
    assert (ota_server.data_dir / "server.db").read_bytes().find(secret.encode()) == -1


def test_oversized_json_body_is_413_and_stores_nothing(ota_server: RunningServer) -> None:
    pem = device_key_pem()[1]
    body = {"id": "dev-big", "public_key_pem": pem, "hardware_class": "rpi5", "channel": "stable"}
    big = dict(body, padding="x" * (1024 * 1024 + 10))
    before = len(audit(ota_server))
    answer = ota_server.request("POST", "/api/v1/devices", token=ota_server.admin_token, body=big)
    assert answer.status == 413
    assert answer.json()["error"]["code"] == "too-large"
    assert ota_server.request("GET", "/api/v1/devices", token=ota_server.admin_token).json() == []
    (entry,) = audit(ota_server)[before:]
    assert (entry["outcome"], entry["details"]["status"]) == ("refused", 413)


def _chunked_put(server: RunningServer, path: str, token: str, chunks: list[bytes]) -> int:
    host, port = server.host_port
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request(
            "PUT",
            path,
            body=iter(chunks),
            headers={"Authorization": f"Bearer {token}"},
            encode_chunked=True,
        )
        return conn.getresponse().status
    finally:
        conn.close()


def test_oversized_upload_is_413_and_stores_nothing(ota_server: RunningServer) -> None:
    ota_server.add_family("detector")
    rm = ota_server.token("release-manager", "detector")
    release = build_release(ota_server, "detector", 1)
    assert ota_server.request("POST", "/api/v1/releases", token=rm, body=release.body).status == 201
    url = "/api/v1/releases/detector-1/sealed-model"
    # declared by Content-Length: refused before reading
    answer = ota_server.request("PUT", url, token=rm, body=release.sealed + b"x")
    assert answer.status == 413
    # streamed without a length: refused when the running count passes the limit
    status = _chunked_put(ota_server, url, rm, [release.sealed, b"more bytes"])
    assert status == 413
    assert list((ota_server.data_dir / "uploads").iterdir()) == []
    assert not (ota_server.data_dir / "repository" / "targets" / "detector").exists()
    shown = ota_server.request("GET", "/api/v1/releases/detector-1", token=rm).json()
    assert shown["state"] == "awaiting-upload"
    # a declared sealed size above the server's upload limit is refused at creation
    huge = dict(build_release(ota_server, "detector", 2).body, sealed_size=9 * 1024 * 1024)
    assert ota_server.request("POST", "/api/v1/releases", token=rm, body=huge).status == 413


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b'{"id": 1, "id": 2}', b'{"id": NaN}', b"[]", b"\xff\xfe"],
    ids=["syntax", "duplicate-key", "nan", "not-object", "not-utf8"],
)
def test_malformed_json_is_400(ota_server: RunningServer, raw: bytes) -> None:
    answer = ota_server.request("POST", "/api/v1/devices", token=ota_server.admin_token, body=raw)
    assert answer.status == 400


@pytest.mark.parametrize(
    "device_id",
    ["..", "a/b", "a\x00b", "a\nb", "dev\n", ".hidden", "x" * 65, "", "dev 1", "a:b"],
)
def test_bad_device_ids_are_refused(ota_server: RunningServer, device_id: str) -> None:
    body = {"id": device_id, "public_key_pem": device_key_pem()[1], "hardware_class": "rpi5",
            "channel": "stable"}  # fmt: skip
    answer = ota_server.request("POST", "/api/v1/devices", token=ota_server.admin_token, body=body)
    assert answer.status == 400


def test_release_ids_with_traversal_are_404(ota_server: RunningServer) -> None:
    viewer = ota_server.token("viewer")
    for path in ("/api/v1/releases/..%2f..%2fserver.db", "/api/v1/releases/%2e%2e"):
        assert ota_server.request("GET", path, token=viewer).status == 404
