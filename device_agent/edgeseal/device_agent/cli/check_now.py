"""``edgeseal-agent check-now [--json] [--timeout S]``: run one update check now.

With an agent running (its pid file names a live process) the check runs in
the agent: it is sent SIGUSR1 and this command waits for its
``STATE/last-check.json`` to change (the running agent then serves the new
model at once). Without one, the check runs in this process: recover what a
crash left, then one update cycle; the next ``run`` serves the result.
Exit status 0 for ``installed`` and ``no-update``, 1 for ``refused`` or ``failed``.
"""

from __future__ import annotations

import argparse
import json
import signal
import time
from pathlib import Path
from typing import Any

from edgeseal.device_agent.cli.run_cmd import add_config_flag, config_from_args
from edgeseal.device_agent.config import AgentConfig
from edgeseal.device_agent.state import read_json
from edgeseal.sdk.cli.common import CLIError


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "check-now", help="check for an update now (in the running agent, or here)"
    )
    add_config_flag(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument(
        "--timeout", type=float, default=900.0, help="seconds to wait for a running agent"
    )
    p.set_defaults(func=run)


def _last_check(state_dir: Path) -> dict[str, Any] | None:
    from edgeseal.device_agent.update_records import LAST_CHECK_FILE

    try:
        doc = read_json(state_dir / LAST_CHECK_FILE, LAST_CHECK_FILE)
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _via_agent(config: AgentConfig, pid: int, timeout: float) -> dict[str, Any]:
    import os

    state_dir = Path(config.state_dir)
    before = (_last_check(state_dir) or {}).get("cycle")
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = _last_check(state_dir)
        if now is not None and now.get("cycle") != before:
            return now
        time.sleep(0.05)
    raise CLIError(f"the agent (pid {pid}) did not finish a check within {timeout:g} s")


def _in_process(config: AgentConfig) -> dict[str, Any]:
    from edgeseal.device_agent.daemon import make_installer, open_key_setup
    from edgeseal.device_agent.updater import Updater

    keys = open_key_setup(config)
    with keys.backend:
        installer = make_installer(config, keys)
        installer.recover()
        updater = Updater(
            config, keys.backend, keys.approved, installer, attestation_pcrs=keys.pcrs
        )
        return updater.check_now().to_json()


def run(args: argparse.Namespace) -> int:
    from edgeseal.device_agent.daemon import read_pid

    config = config_from_args(args)
    pid = read_pid(Path(config.state_dir))
    result = _via_agent(config, pid, args.timeout) if pid else _in_process(config)
    if args.json:
        print(json.dumps(result))
    else:
        version = result.get("version")
        print(f"{result['outcome']}: {result['family']} v{version} {result.get('reason') or ''}")
        phases = result.get("phases") or {}
        print("  " + ", ".join(f"{k} {v:.3f}s" for k, v in phases.items()))
    return 0 if result["outcome"] in ("installed", "no-update") else 1
