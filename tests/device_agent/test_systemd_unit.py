"""The agent's systemd unit keeps its hardening settings (parsed, not grepped)."""

from __future__ import annotations

from pathlib import Path

UNIT = Path(__file__).resolve().parents[2] / "device_agent" / "systemd" / "edgeseal-agent.service"


def _parse(text: str) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"setting outside a section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {line}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_hardening() -> None:
    unit = _parse(UNIT.read_text())
    service = {k: v[-1] for k, v in unit["Service"].items()}
    expected = {
        "DynamicUser": "no",
        "User": "edgeseal",
        "ProtectSystem": "strict",
        "ReadWritePaths": "/var/lib/edgeseal /run/edgeseal",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "DeviceAllow": "/dev/tpmrm0 rw",
        "DevicePolicy": "closed",
        "SupplementaryGroups": "tss",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "MemoryDenyWriteExecute": "no",
        "SystemCallFilter": "@system-service",
        "RuntimeDirectory": "edgeseal",
        "StateDirectory": "edgeseal",
        "Restart": "on-failure",
    }
    for key, value in expected.items():
        assert service.get(key) == value, f"{key}={service.get(key)!r}, want {value!r}"
    assert service["ExecStart"].split()[:2] == ["/usr/bin/edgeseal-agent", "run"]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    text = UNIT.read_text()
    # The one relaxed setting says why.
    before = text.split("MemoryDenyWriteExecute=no")[0].splitlines()[-4:]
    assert any("JIT" in line for line in before)
