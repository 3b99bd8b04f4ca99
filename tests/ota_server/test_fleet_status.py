"""``GET /api/v1/fleet`` and ``edgeseal fleet status`` against the real server.

Reports are stored the way the telemetry subscriber stores them
(:func:`~edgeseal.ota_server.telemetry.store_report`); the MQTT path itself is
tested in test_telemetry_ingest.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from release_helpers import build_release, device_key_pem
from server_fixture import RunningServer

from edgeseal.ota_server.context import ServerContext
from edgeseal.ota_server.telemetry import store_report
from edgeseal.sdk.cli import main
from edgeseal.sdk.client import ClientError, ManagementClient
from edgeseal.sdk.mqtt_messages import Telemetry

FAMILY = "detector"


def add_device(server: RunningServer, device_id: str, hardware: str = "rpi5") -> None:
    body = {
        "id": device_id,
        "public_key_pem": device_key_pem()[1],
        "hardware_class": hardware,
        "channel": "stable",
    }
    answer = server.request("POST", "/api/v1/devices", token=server.admin_token, body=body)
    assert answer.status == 201, answer.body


def report(
    ctx: ServerContext,
    device_id: str,
    *,
    family: str = FAMILY,
    version: int | None = 8,
    outcome: str = "installed",
    reason: str | None = None,
    age: timedelta = timedelta(0),
) -> None:
    when = datetime.now(UTC) - age
    telemetry = Telemetry(
        device=device_id,
        family=family,
        active_version=version,
        attempted_version=9 if outcome in ("failed", "refused") else None,
        outcome=outcome,
        reason=reason,
        at=when.strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    with ctx.db.session() as session:
        store_report(session, telemetry, received_at=when)


@pytest.fixture
def fleet(ota_server: RunningServer) -> Iterator[RunningServer]:
    """detector: cam-1 on v8, cam-2 refused v9 (on v7), cam-3 silent two days,
    cam-4 never reported (rpi5, a class of a detector release), cam-5 revoked,
    other-1 reports for another family, x86-1 never reported and of no detector class."""
    ota_server.add_family(FAMILY)
    ota_server.add_family("segmenter")
    rm = ota_server.token("release-manager", FAMILY)
    created = ota_server.request(
        "POST", "/api/v1/releases", token=rm, body=build_release(ota_server, FAMILY, 9).body
    )
    assert created.status == 201, created.body
    for device_id in ("cam-1", "cam-2", "cam-3", "cam-4", "cam-5", "other-1"):
        add_device(ota_server, device_id)
    add_device(ota_server, "x86-1", "x86_64")
    ctx = ServerContext.open(ota_server.data_dir)
    try:
        report(ctx, "cam-1")
        report(ctx, "cam-2", version=7, outcome="refused", reason="golden output 0 differs")
        report(ctx, "cam-3", age=timedelta(hours=48))
        report(ctx, "cam-5")
        report(ctx, "other-1", family="segmenter", version=3)
    finally:
        ctx.close()
    revoked = ota_server.request(
        "POST", "/api/v1/devices/cam-5/revoke", token=ota_server.admin_token
    )
    assert revoked.status == 200, revoked.body
    yield ota_server


def test_fleet_lists_devices_and_summarizes(fleet: RunningServer) -> None:
    answer = fleet.request("GET", f"/api/v1/fleet?family={FAMILY}", token=fleet.admin_token)
    assert answer.status == 200, answer.body
    body = answer.json()
    by_id = {d["id"]: d for d in body["devices"]}
    assert sorted(by_id) == ["cam-1", "cam-2", "cam-3", "cam-4", "cam-5"]
    assert by_id["cam-4"]["report"] is None and by_id["cam-4"]["silent"]
    assert by_id["cam-5"]["revoked"] is True
    cam2 = by_id["cam-2"]
    assert cam2["hardware_class"] == "rpi5" and cam2["channel"] == "stable"
    assert cam2["report"]["outcome"] == "refused"
    assert cam2["report"]["reason"] == "golden output 0 differs"
    assert cam2["report"]["version"] == 7
    assert set(cam2["report"]) >= {"version", "outcome", "reason", "reported_at", "received_at"}
    summary = body["summary"]
    assert summary["devices"] == 4 and summary["revoked"] == 1
    assert summary["versions"] == [{"version": 8, "devices": 2}, {"version": 7, "devices": 1}]
    assert summary["never_reported"] == 1
    assert summary["failing"] == ["cam-2"]
    assert summary["silent"] == ["cam-3", "cam-4"]

    wider = fleet.request(
        "GET", f"/api/v1/fleet?family={FAMILY}&silent_hours=72", token=fleet.admin_token
    )
    assert wider.json()["summary"]["silent"] == ["cam-4"]


@pytest.mark.parametrize(
    ("role", "family", "status"),
    [
        ("viewer", None, 200),
        ("operator", None, 200),
        ("admin", None, 200),
        ("release-manager", FAMILY, 200),
        ("release-manager", "segmenter", 403),
    ],
)
def test_fleet_role_matrix(
    fleet: RunningServer, role: str, family: str | None, status: int
) -> None:
    token = fleet.admin_token if role == "admin" else fleet.token(role, family)
    answer = fleet.request("GET", f"/api/v1/fleet?family={FAMILY}", token=token)
    assert answer.status == status, answer.body


def test_fleet_refusals(fleet: RunningServer) -> None:
    token = fleet.token("viewer")
    assert fleet.request("GET", f"/api/v1/fleet?family={FAMILY}").status == 401
    assert fleet.request("GET", "/api/v1/fleet", token=token).status == 400
    assert fleet.request("GET", "/api/v1/fleet?family=..%2Fx", token=token).status == 400
    for hours in ("0", "9999", "x"):
        path = f"/api/v1/fleet?family={FAMILY}&silent_hours={hours}"
        assert fleet.request("GET", path, token=token).status == 400
    assert fleet.request("GET", "/api/v1/fleet?family=nosuch", token=token).status == 404


def test_client_fleet(fleet: RunningServer) -> None:
    client = ManagementClient(fleet.base_url, fleet.token("release-manager", FAMILY))
    assert client.fleet(FAMILY, silent_hours=72)["summary"]["silent"] == ["cam-4"]
    with pytest.raises(ClientError) as refused:
        client.fleet("segmenter")
    assert refused.value.status == 403


def cli(fleet: RunningServer, tmp_path: Path, *extra: str) -> list[str]:
    token_file = tmp_path / "token"
    token_file.write_text(fleet.token("release-manager", FAMILY) + "\n")
    token_file.chmod(0o600)
    return [
        "fleet", "status", "--server", fleet.base_url, "--token-file", str(token_file),
        "--family", FAMILY, *extra,
    ]  # fmt: skip


def test_cli_table(
    fleet: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(cli(fleet, tmp_path)) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("fleet of detector: 4 devices (1 revoked)")
    versions = lines[lines.index("VERSION    DEVICES") + 1 :]
    assert versions[:3] == ["8          2", "7          1", "no report  1"]
    failing = out.split("LAST CYCLE FAILED OR REFUSED (1)\n", 1)[1].splitlines()[0]
    assert "cam-2" in failing and "refused" in failing and "golden output 0 differs" in failing
    silent = out.split("SILENT FOR MORE THAN 24 H (2)\n", 1)[1].splitlines()
    assert silent[0].split()[:2] == ["cam-3", "last"] and "never reported" in silent[1]


def test_cli_json_and_errors(
    fleet: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*cli(fleet, tmp_path), "--json", "--silent-hours", "72"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["silent_hours"] == 72 and body["summary"]["silent"] == ["cam-4"]
    argv = cli(fleet, tmp_path)
    argv[argv.index(FAMILY)] = "segmenter"
    assert main(argv) == 1
    assert "release manager of 'detector'" in capsys.readouterr().err
