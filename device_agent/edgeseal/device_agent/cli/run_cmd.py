"""``edgeseal-agent run [--config FILE]``: the agent daemon (see :mod:`..daemon`).

The config file is ``--config``, else ``$EDGESEAL_AGENT_CONFIG``, else
``/etc/edgeseal/agent.toml``; ``EDGESEAL_AGENT_<KEY>`` variables override its
keys. SIGTERM/SIGINT stop it gracefully, SIGUSR1 runs an update check, SIGHUP
reloads the active slot. Also home of the config helpers of the other
daemon-facing subcommands (status, check-now, rollback).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

from edgeseal.device_agent.config import (
    DEFAULT_CONFIG_PATH,
    ENV_CONFIG_PATH,
    AgentConfig,
    load_config,
)


def add_config_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help=f"agent config (env {ENV_CONFIG_PATH}; default {DEFAULT_CONFIG_PATH})",
    )


def config_path(args: argparse.Namespace) -> Path:
    """The config file: --config, $EDGESEAL_AGENT_CONFIG or the default path."""
    return Path(args.config or os.environ.get(ENV_CONFIG_PATH, DEFAULT_CONFIG_PATH))


def config_from_args(args: argparse.Namespace) -> AgentConfig:
    """Read the config named by --config, $EDGESEAL_AGENT_CONFIG or the default path."""
    return load_config(config_path(args), env=os.environ)


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "run",
        help="run the agent: serve the model, poll for updates",
        description=(
            "Run the device agent: recover, serve the last committed model on the inference "
            "socket (no network needed), and check for updates every poll interval "
            "(SIGUSR1: now; SIGHUP: reload after a rollback; SIGTERM: stop)."
        ),
    )
    add_config_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgeseal.device_agent.daemon import Daemon

    config = config_from_args(args)
    if args.verbose == 0:  # a daemon logs what it does (journald keeps it)
        logging.getLogger().setLevel(logging.INFO)
    mqtt = None
    if config.mqtt_url:
        from edgeseal.device_agent.mqtt_link import MQTTLinkSettings

        mqtt = MQTTLinkSettings.from_config(
            url=config.mqtt_url,
            device_id=config.device_id,
            password_file=config.mqtt_password_file,
            family=config.family,
        )
    daemon = Daemon(config, mqtt=mqtt)
    daemon.install_signal_handlers()
    daemon.run()
    return 0
