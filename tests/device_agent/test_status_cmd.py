"""``edgeseal-agent status`` says which key backend the agent uses, and flags the
insecure software backend in its report."""

from __future__ import annotations

from pathlib import Path

from edgeseal.device_agent.cli.status_cmd import collect
from edgeseal.device_agent.config import load_config


def _config(tmp_path: Path, backend: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(
        "version = 1\n"
        'device_id = "dev-1"\n'
        f'state_dir = "{tmp_path / "state"}"\n'
        f'key_backend = "{backend}"\n'
        'family = "demo"\n'
    )
    return path


def test_software_backend_is_flagged_insecure(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path, f"software:{tmp_path / 'keys'}"))
    report = collect(config, tpm=False)
    assert report["insecure_key_backend"] is True
    assert report["key_backend"].startswith("software:")
    assert report["active_version"] is None and report["problems"] == []


def test_tpm_backend_is_not_flagged(tmp_path: Path) -> None:
    report = collect(load_config(_config(tmp_path, "device:/dev/tpmrm0")), tpm=False)
    assert report["insecure_key_backend"] is False
