"""``edgeseal-agent rollback``: go back to the previous good slot (operator action).

Without a running agent the rollback is done here. With one, it is done *by*
the agent, which holds the TPM (swtpm serves one connection at a time): this
command writes ``STATE/rollback.request`` and sends SIGHUP; on SIGHUP the
agent performs a requested rollback, then reloads and serves the active slot,
and records the result in ``daemon.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from edgeseal.device_agent.cli.run_cmd import add_config_flag, config_from_args
from edgeseal.device_agent.state import read_json
from edgeseal.sdk.cli.common import CLIError


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "rollback", help="serve the previous good model again (the current one becomes bad)"
    )
    add_config_flag(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the agent")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgeseal.device_agent.daemon import (
        DAEMON_FILE,
        ROLLBACK_REQUEST,
        make_installer,
        open_key_setup,
        read_pid,
    )

    config = config_from_args(args)
    state_dir = Path(config.state_dir)
    pid = read_pid(state_dir)
    if pid is not None:
        request = state_dir / ROLLBACK_REQUEST
        request.write_text(f"{time.time()}\n")
        os.kill(pid, signal.SIGHUP)
        deadline = time.monotonic() + args.timeout
        while request.exists():
            if time.monotonic() > deadline:
                raise CLIError(f"the agent (pid {pid}) did not roll back in {args.timeout:g} s")
            time.sleep(0.05)
        doc = read_json(state_dir / DAEMON_FILE, DAEMON_FILE)
        result: dict[str, Any] = doc.get("last_rollback") or {}
    else:
        keys = open_key_setup(config)
        with keys.backend:
            done = make_installer(config, keys).rollback()
        result = {"outcome": done.outcome, "slot": done.slot, "version": done.version}
    if args.json:
        print(json.dumps(result))
    elif result.get("outcome") == "rolled-back":
        print(f"rolled back: now serving v{result.get('version')} from slot {result.get('slot')}")
    else:
        print(f"rollback failed: {result.get('error')}")
    return 0 if result.get("outcome") == "rolled-back" else 1
