"""Agent configuration: precedence defaults < file < drop-ins < env < overrides; refusals."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from edgeseal.device_agent.config import AgentConfig, ConfigError, load_config


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults() -> None:
    cfg = load_config()
    assert cfg.state_dir == Path("/var/lib/edgeseal")
    assert cfg.boot_attempts == 3
    assert cfg.nv_counter_index == 0x01500010
    assert cfg.max_version_step == 10000
    assert cfg.socket_mode == 0o660
    assert cfg.agent_version
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.family = "x"  # type: ignore[misc]


def test_precedence(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "agent.toml",
        'version = 1\nfamily = "from-file"\nchannel = "beta"\npoll_interval_s = 100\n'
        'device_id = "file-id"\nkey_backend = "emulated:/srv/dev0"\n',
    )
    _write(tmp_path / "agent.toml.d" / "20-b.toml", 'family = "drop-in-b"\nchannel = "canary"\n')
    _write(tmp_path / "agent.toml.d" / "10-a.toml", 'version = 1\nfamily = "drop-in-a"\n')
    _write(tmp_path / "agent.toml.d" / "README", "not toml, ignored")
    env = {
        "EDGESEAL_AGENT_CHANNEL": "env-chan",
        "EDGESEAL_AGENT_POLL_INTERVAL_S": "60",
        "EDGESEAL_AGENT_SOCKET_MODE": "0640",
        "EDGESEAL_AGENT_NV_COUNTER_INDEX": "0x01500020",
        "EDGESEAL_AGENT_CONFIG": "/ignored/here",
        "PATH": "/usr/bin",
    }
    cfg = load_config(path, env=env, overrides={"poll_interval_s": "30", "poll_jitter_s": 5})
    assert cfg.family == "drop-in-b"  # later drop-in wins over the earlier one and the file
    assert cfg.channel == "env-chan"  # env over drop-ins
    assert cfg.poll_interval_s == 30.0  # overrides over env
    assert cfg.poll_jitter_s == 5.0
    assert cfg.socket_mode == 0o640
    assert cfg.nv_counter_index == 0x01500020
    assert cfg.device_id == "file-id"  # file over defaults
    assert cfg.emulated_device_dir == Path("/srv/dev0")
    assert load_config(path).family == "drop-in-b"  # env is applied only when passed


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('family = "x"\n', "version = 1"),
        ("version = 2\n", "unsupported configuration version 2"),
        ("version = 1\npol_interval_s = 5\n", "unknown key pol_interval_s"),
        ('version = 1\npoll_interval_s = "soon"\n', "wrong type str"),
        ("version = 1\nboot_attempts = 0\n", "boot_attempts"),
        ("version = 1\nboot_attempts = true\n", "wrong type bool"),
        ('version = 1\nkey_backend = "tpm0"\n', "key_backend"),
        ('version = 1\nkey_backend = "emulated:"\n', "needs a directory"),
        ("version = 1\nnv_counter_index = 0x01000000\n", "owner NV range"),
        ('version = 1\nmetadata_url = "ftp://x"\n', "not an http"),
        ('version = 1\nsocket_mode = "0666"\n', "world-accessible"),
        ('version = 1\nfamily = "Bad Family"\n', "family"),
        ("version = 1\npoll_jitter_s = -1\n", "poll_jitter_s"),
        ("version = 1\n[oops]\n", "unknown key oops"),
        ("version = 1\nfamily = \n", "not valid TOML"),
    ],
)
def test_file_refusals(tmp_path: Path, text: str, match: str) -> None:
    path = _write(tmp_path / "agent.toml", text)
    with pytest.raises(ConfigError, match=match) as info:
        load_config(path)
    assert "configuration error" in info.value.diagnostics()


def test_drop_in_refusals_name_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "agent.toml", "version = 1\n")
    _write(tmp_path / "agent.toml.d" / "50-x.toml", "famly = 'x'\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "50-x.toml" in info.value.diagnostics() and "famly" in info.value.diagnostics()


def test_env_and_override_refusals(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown environment variable EDGESEAL_AGENT_FAMLY"):
        load_config(env={"EDGESEAL_AGENT_FAMLY": "x"})
    with pytest.raises(ConfigError, match="not a number"):
        load_config(env={"EDGESEAL_AGENT_BOOT_ATTEMPTS": "three"})
    with pytest.raises(ConfigError, match="unknown key nope"):
        load_config(overrides={"nope": 1})


def test_missing_and_oversized_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")
    big = _write(tmp_path / "big.toml", "version = 1\n" + "# x\n" * 20000)
    with pytest.raises(ConfigError, match="larger than"):
        load_config(big)


def test_direct_construction_validates() -> None:
    with pytest.raises(ConfigError, match="max_model_bytes"):
        AgentConfig(max_model_bytes=0)
