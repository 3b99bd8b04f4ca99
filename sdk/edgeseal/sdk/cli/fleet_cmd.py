"""``edgeseal fleet status``: watch a rollout - which version each device serves, whose
last update cycle failed or was refused (and why), and which devices went silent.

Reads ``GET /api/v1/fleet`` with the connection options of ``edgeseal release``
(``--server``/``EDGESEAL_SERVER``, ``--token-file``/``EDGESEAL_TOKEN``, ``--json``).
What it shows is what devices reported over MQTT: informative, never proof.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from edgeseal.sdk.cli.release_cmd import connection_options, make_client

DEFAULT_SILENT_HOURS = 24
_MAX_CELL = 200


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "fleet",
        help="watch a family's fleet: versions served, failures, silent devices",
        description=(
            "What the devices of a model family report after each update cycle. "
            "To stop a bad rollout, yank the release: edgeseal release yank RELEASE."
        ),
    )
    actions = p.add_subparsers(dest="fleet_command", required=True)
    status = actions.add_parser(
        "status",
        parents=[connection_options()],
        allow_abbrev=False,
        help="versions served, last cycles that failed or were refused, silent devices",
    )
    status.add_argument("--family", required=True, help="model family")
    status.add_argument(
        "--silent-hours",
        type=int,
        default=DEFAULT_SILENT_HOURS,
        help=f"a device is silent after this many hours without a report "
        f"(default {DEFAULT_SILENT_HOURS})",
    )
    status.set_defaults(func=run_status)


def run_status(args: argparse.Namespace) -> int:
    answer = make_client(args).fleet(args.family, silent_hours=args.silent_hours)
    if args.json:
        print(json.dumps(answer, indent=2, sort_keys=True))
        return 0
    print(format_status(answer), end="")
    return 0


def _cell(value: object) -> str:
    """A server-supplied value made safe for a terminal (printable, bounded)."""
    text = "-" if value is None else str(value)
    return "".join(c if c.isprintable() else " " for c in text)[:_MAX_CELL]


def format_status(answer: dict[str, Any]) -> str:
    """The human table of a fleet answer (see the module docstring)."""
    summary = answer.get("summary") or {}
    devices = [d for d in answer.get("devices") or [] if isinstance(d, dict)]
    by_id = {d.get("id"): d for d in devices}
    lines = [
        f"fleet of {_cell(answer.get('family'))}: {_cell(summary.get('devices'))} devices "
        f"({_cell(summary.get('revoked'))} revoked), as of {_cell(answer.get('generated_at'))}",
        "",
        f"{'VERSION':<10} DEVICES",
    ]
    for entry in summary.get("versions") or []:
        version = entry.get("version")
        label = "none" if version is None else _cell(version)
        lines.append(f"{label:<10} {_cell(entry.get('devices'))}")
    lines.append(f"{'no report':<10} {_cell(summary.get('never_reported'))}")

    failing = summary.get("failing") or []
    lines += ["", f"LAST CYCLE FAILED OR REFUSED ({len(failing)})"]
    for device_id in failing:
        report = (by_id.get(device_id) or {}).get("report") or {}
        lines.append(
            f"  {_cell(device_id):<24} {_cell(report.get('outcome')):<9} "
            f"v{_cell(report.get('version'))} -> v{_cell(report.get('attempted_version'))}  "
            f"{_cell(report.get('reported_at'))}  {_cell(report.get('reason'))}"
        )

    silent = summary.get("silent") or []
    hours = _cell(answer.get("silent_hours"))
    lines += ["", f"SILENT FOR MORE THAN {hours} H ({len(silent)})"]
    for device_id in silent:
        report = (by_id.get(device_id) or {}).get("report")
        heard = f"last heard {_cell(report.get('received_at'))}" if report else "never reported"
        lines.append(f"  {_cell(device_id):<24} {heard}")
    return "\n".join(lines) + "\n"
