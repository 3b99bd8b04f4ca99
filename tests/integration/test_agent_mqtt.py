"""MQTT end to end: a release published on the real OTA server sends a hint through a
real mosquitto; the running agent (real swtpm, real TFLite) checks at once instead of
waiting for its hour-long poll, installs through TUF, and reports telemetry that the
server-side user receives. The hint is only a trigger: the install is TUF-verified."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from agent_fleet import fleet

from components import require_module
from edgeseal.ota_server.broker import SERVER_USERNAME
from edgeseal.sdk.mqtt_messages import TELEMETRY_FILTER
from mqtt_fixtures import RawClient, running_broker

pytestmark = [pytest.mark.swtpm, pytest.mark.tflite, pytest.mark.mosquitto]


def test_hint_triggers_update_and_telemetry_reports_it(tmp_path: Path, swtpm_ca: Path) -> None:
    require_module("ai_edge_litert", "ai-edge-litert")
    with running_broker() as broker, fleet(tmp_path, hint_settings=broker.hint_settings()) as f:
        dev = f.add_device("dev-m", swtpm_ca)
        try:
            password = tmp_path / "dev-m.mqtt-password"
            password.write_text(broker.add_device_credentials("dev-m") + "\n")
            password.chmod(0o600)
            with dev.config.open("a") as config:
                config.write(
                    f'mqtt_url = "{broker.endpoint.url}"\n'
                    f'mqtt_password_file = "{password}"\n'
                    "mqtt_hint_jitter_s = 0.2\n"
                    "mqtt_hint_min_interval_s = 0.0\n"
                )
            f.publish(1)
            assert dev.check_now()["outcome"] == "installed"
            watcher = RawClient(broker.endpoint, SERVER_USERNAME, broker.server_password())
            try:
                assert watcher.connect() == "Success"
                assert watcher.subscribe(TELEMETRY_FILTER) == ["Granted QoS 1"]
                with dev.daemon():
                    f.publish(2)  # the poll interval is an hour: only the hint can do this
                    deadline = time.monotonic() + 60
                    while dev.status()["active_version"] != 2:
                        assert time.monotonic() < deadline, dev.log_tail()
                        time.sleep(0.2)
                    topic, payload, _ = watcher.wait_messages(1)[-1]
                    report = json.loads(payload)
                    assert topic.endswith("/devices/dev-m/telemetry")
                    assert (report["device"], report["outcome"]) == ("dev-m", "installed")
                    assert report["active_version"] == 2
            finally:
                watcher.close()
        finally:
            dev.device.stop()
