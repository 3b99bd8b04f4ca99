"""``edgeseal-agent status [--json]``: what the agent runs and what its last update did.

Read-only: reads state.json, the slots' slot.json and (when an agent runs)
its ``daemon.json``; it takes no lock, moves nothing aside, and opens the TPM
only to read the anti-rollback floor when no agent is running (swtpm serves one
connection at a time; a running agent reports the floor in daemon.json).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from edgeseal.device_agent.cli.run_cmd import add_config_flag, config_from_args
from edgeseal.device_agent.config import AgentConfig
from edgeseal.device_agent.daemon import DAEMON_FILE, read_pid
from edgeseal.device_agent.slots import SLOT_FILE, SlotInfo
from edgeseal.device_agent.state import (
    SLOT_NAMES,
    SLOTS_DIR,
    STATE_FILE,
    AgentState,
    StateFormatError,
    read_json,
)
from edgeseal.device_agent.update_records import LAST_CHECK_FILE


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "status", help="show the active model, slots, last update and floor"
    )
    add_config_flag(p)
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.add_argument("--no-tpm", action="store_true", help="do not read the NV floor")
    p.set_defaults(func=run)


def _read(path: Path, what: str) -> tuple[Any, str | None]:
    try:
        return read_json(path, what), None
    except FileNotFoundError:
        return None, None
    except (StateFormatError, OSError) as exc:
        return None, f"{path} is unreadable: {exc}"


def collect(config: AgentConfig, *, tpm: bool = True) -> dict[str, Any]:
    state_dir = Path(config.state_dir)
    problems: list[str] = []
    doc, problem = _read(state_dir / STATE_FILE, STATE_FILE)
    state = AgentState()
    if problem:
        problems.append(problem)
    elif doc is not None:
        try:
            state = AgentState.from_json(doc)
        except StateFormatError as exc:
            problems.append(f"{STATE_FILE} is corrupt: {exc}")
    slots = {}
    for name in SLOT_NAMES:
        raw, problem = _read(state_dir / SLOTS_DIR / name / SLOT_FILE, SLOT_FILE)
        info = SlotInfo(name)
        if problem:
            problems.append(problem)
        elif raw is not None:
            try:
                info = SlotInfo.from_json(name, raw)
            except StateFormatError as exc:
                problems.append(f"slot {name}: {exc}")
        slots[name] = info.to_json()
    pid = read_pid(state_dir)
    daemon, _ = _read(state_dir / DAEMON_FILE, DAEMON_FILE) if pid is not None else (None, None)
    last_check, _ = _read(state_dir / LAST_CHECK_FILE, LAST_CHECK_FILE)
    floor = daemon.get("floor") if isinstance(daemon, dict) else None
    if floor is None and pid is None and tpm:
        floor = _read_floor(config, problems)
    active = slots.get(state.active) if state.active else None
    return {
        "device_id": config.device_id,
        "key_backend": config.key_backend,
        "insecure_key_backend": config.key_backend.startswith("software:"),
        "family": config.family,
        "agent_running": pid is not None,
        "pid": pid,
        "serving": daemon.get("serving") if isinstance(daemon, dict) else None,
        "active": state.active,
        "previous": state.previous,
        "active_version": None if active is None else active["model_version"],
        "active_digest": None if active is None else active["plaintext_digest"],
        "trial": state.to_json()["trial"],
        "boot_attempts": state.boot_attempts,
        "floor": floor,
        "last_update": state.to_json()["last_update"],
        "last_error": state.to_json()["last_error"],
        "last_check": last_check,
        "slots": slots,
        "problems": problems,
    }


def _read_floor(config: AgentConfig, problems: list[str]) -> int | None:
    from edgeseal.device_agent.daemon import open_key_setup
    from edgeseal.device_agent.rollback_floor import RollbackFloor

    try:
        keys = open_key_setup(config)
        with keys.backend:
            return RollbackFloor(keys.backend, config.nv_counter_index).floor()
    except Exception as exc:  # noqa: BLE001 - status reports; a stopped TPM is not fatal
        problems.append(f"cannot read the NV floor: {exc}")
        return None


def run(args: argparse.Namespace) -> int:
    report = collect(config_from_args(args), tpm=not args.no_tpm)
    if args.json:
        print(json.dumps(report, indent=1, sort_keys=True))
        return 0
    print(f"device {report['device_id']} ({report['family']})")
    if report["insecure_key_backend"]:
        print("WARNING: INSECURE software key backend: keys are files, not in a TPM")
    print(f"key backend: {report['key_backend']}")
    print(
        f"agent: {'running, pid ' + str(report['pid']) if report['agent_running'] else 'stopped'}"
    )
    for name, slot in report["slots"].items():
        mark = " (active)" if name == report["active"] else ""
        mark += " (previous)" if name == report["previous"] else ""
        model = f" {slot['family']} v{slot['model_version']}" if slot["model_version"] else ""
        print(f"slot {name}: {slot['status']}{model}{mark}")
    print(f"digest: {report['active_digest']}")
    print(f"anti-rollback floor: {report['floor']}")
    print(f"trial: {report['trial']}; boot attempts: {report['boot_attempts']}")
    update = report["last_update"] or {}
    print(f"last update: {update.get('outcome')} v{update.get('model_version')}")
    error = report["last_error"]
    if error:
        print(f"last error: [{error.get('code')}] {error.get('message')}")
    check = report["last_check"]
    if check:
        print(f"last check: {check.get('outcome')} at {check.get('at')}: {check.get('reason')}")
    for problem in report["problems"]:
        print(f"problem: {problem}")
    return 0
