"""``edgeseal release``: create, sign, list, show, roll out and yank releases on an OTA server.

The server URL comes from ``--server`` or ``EDGESEAL_SERVER``; the API token
from ``--token-file`` or ``EDGESEAL_TOKEN`` (flag before environment). The
token is never a command-line argument: arguments are visible to every user
of the machine in the process list.

``create`` lives in :mod:`.release_create`, ``sign`` in :mod:`.release_sign`;
both need the same connection options, defined here.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import stat
from pathlib import Path
from typing import Any

from edgeseal.sdk.cli.common import CLIError
from edgeseal.sdk.client import DEFAULT_TIMEOUT, ManagementClient, ReleaseRecord

logger = logging.getLogger(__name__)

MAX_TOKEN_FILE = 4096


def register(sub: Any) -> None:
    from edgeseal.sdk.cli import release_create, release_sign

    p: argparse.ArgumentParser = sub.add_parser(
        "release",
        help="create, sign, list, show and yank releases on an OTA server",
        description=(
            "Manage model releases. A release is sealed locally, uploaded, and published "
            "once k of the family's n release managers have signed it with their own keys."
        ),
    )
    actions = p.add_subparsers(dest="release_command", required=True)
    common = connection_options()
    release_create.register(actions, common)
    release_sign.register(actions, common)

    lst = actions.add_parser("list", parents=[common], allow_abbrev=False, help="list releases")
    lst.add_argument("--family", help="only this model family")
    lst.set_defaults(func=run_list)

    show = actions.add_parser("show", parents=[common], allow_abbrev=False, help="show one release")
    show.add_argument("release", help="release id")
    show.set_defaults(func=run_show)

    yank = actions.add_parser(
        "yank",
        parents=[common],
        allow_abbrev=False,
        help="propose removing a published release (then sign it)",
        description=(
            "Ask the server for a proposal that removes the release's target. Nothing "
            "changes for devices until k release managers run 'edgeseal release sign' on it."
        ),
    )
    yank.add_argument("release", help="release id")
    yank.set_defaults(func=run_yank)

    rollout = actions.add_parser(
        "rollout",
        parents=[common],
        allow_abbrev=False,
        help="propose a new rollout percentage for a published release (then sign it)",
        description=(
            "Ask the server for a proposal that changes only the release's rollout_percent. "
            "Nothing changes for devices until k release managers run 'edgeseal release "
            "sign' on it. Lowering it stops devices not yet updated from installing; "
            "devices that already installed the release keep it (yank to withdraw it)."
        ),
    )
    rollout.add_argument("release", help="release id")
    rollout.add_argument(
        "--percent", required=True, type=int, help="the new rollout percentage, 1 to 100"
    )
    rollout.set_defaults(func=run_rollout)


def connection_options() -> argparse.ArgumentParser:
    """The options every release subcommand shares (an argparse parent parser).

    Subparsers using it set ``allow_abbrev=False``: otherwise ``--token SECRET``
    would be accepted as an abbreviation of ``--token-file``.
    """
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--server",
        default=os.environ.get("EDGESEAL_SERVER"),
        help="OTA server URL, e.g. https://ota.example.com (env EDGESEAL_SERVER)",
    )
    common.add_argument(
        "--token-file",
        type=Path,
        help="file holding the API token (otherwise env EDGESEAL_TOKEN)",
    )
    common.add_argument(
        "--ca-file",
        type=Path,
        default=os.environ.get("EDGESEAL_CA_FILE"),
        help="CA bundle for the server's TLS certificate (env EDGESEAL_CA_FILE)",
    )
    common.add_argument(
        "--allow-http",
        action="store_true",
        default=os.environ.get("EDGESEAL_ALLOW_HTTP") == "1",
        help="allow plain http to a non-loopback server (env EDGESEAL_ALLOW_HTTP=1); "
        "the token then crosses the network unencrypted",
    )
    common.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help=f"seconds to wait for the server (default {DEFAULT_TIMEOUT:g})",
    )
    common.add_argument("--json", action="store_true", help="print the result as JSON")
    return common


def read_token(args: argparse.Namespace) -> str | None:
    """The API token: ``--token-file`` wins over ``EDGESEAL_TOKEN``."""
    path: Path | None = args.token_file
    if path is None:
        token = os.environ.get("EDGESEAL_TOKEN")
        return token.strip() if token else None
    try:
        with path.open("rb") as handle:
            info = os.fstat(handle.fileno())
            data = handle.read(MAX_TOKEN_FILE + 1)
    except OSError as exc:
        raise CLIError(f"cannot read the token file {path}: {exc.strerror}") from exc
    if len(data) > MAX_TOKEN_FILE:
        raise CLIError(f"{path} is too large to be a token file")
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning("token file %s is readable by other users; chmod 600 it", path)
    try:
        return data.decode("ascii").strip()
    except UnicodeDecodeError as exc:
        raise CLIError(f"the token file {path} is not ASCII text") from exc


def make_client(args: argparse.Namespace) -> ManagementClient:
    if not args.server:
        raise CLIError("no server: give --server URL or set EDGESEAL_SERVER")
    return ManagementClient(
        args.server,
        read_token(args),
        timeout=args.timeout,
        ca_file=Path(args.ca_file) if args.ca_file else None,
        allow_http=args.allow_http,
    )


def record_summary(record: ReleaseRecord) -> dict[str, Any]:
    """A release record as JSON: everything the server said, normalized fields first."""
    out: dict[str, Any] = {
        "id": record.id,
        "family": record.family,
        "version": record.version,
        "state": record.state,
        "channel": record.channel,
        "hardware": list(record.hardware),
        "target_path": record.target_path,
        "signatures": record.signatures,
        "threshold": record.threshold,
        "created": record.created,
    }
    for key, value in record.raw.items():
        out.setdefault(key, value)
    return out


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def run_list(args: argparse.Namespace) -> int:
    records = make_client(args).list_releases(args.family)
    if args.json:
        print_json([record_summary(r) for r in records])
        return 0
    if not records:
        print("no releases")
        return 0
    rows = [("ID", "FAMILY", "VERSION", "STATE", "CHANNEL", "ROLLOUT", "HARDWARE", "SIGNED")]
    for r in records:
        signed = f"{r.signatures if r.signatures is not None else '?'}/{r.threshold or '?'}"
        rows.append(
            (
                r.id,
                r.family or "?",
                str(r.version if r.version is not None else "?"),
                r.state,
                r.channel or "?",
                rollout_text(r),
                ",".join(r.hardware) or "?",
                signed,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def rollout_text(record: ReleaseRecord) -> str:
    """``50%``, or ``10% -> 50%`` while a rollout change awaits its signatures."""
    current, pending = record.raw.get("rollout_percent"), record.raw.get("pending_rollout_percent")
    shown = f"{current}%" if type(current) is int else "?"
    if type(pending) is int:
        shown += f" -> {pending}%"
    return shown


def run_show(args: argparse.Namespace) -> int:
    record = make_client(args).get_release(args.release)
    summary = record_summary(record)
    if args.json:
        print_json(summary)
        return 0
    for key, value in summary.items():
        if key == "custom":
            continue  # the full signed metadata: use --json to see it
        shown = ", ".join(map(str, value)) if isinstance(value, list) else value
        print(f"{key:<16} {shown}")
    return 0


def run_yank(args: argparse.Namespace) -> int:
    record = make_client(args).yank(args.release)
    if args.json:
        print_json(record_summary(record))
        return 0
    print(f"release {record.id}: {record.state}")
    print(f"now sign the yank: edgeseal release sign {record.id} --key YOUR_KEY")
    return 0


def run_rollout(args: argparse.Namespace) -> int:
    if not 1 <= args.percent <= 100:
        raise CLIError("--percent must be from 1 to 100")
    record = make_client(args).rollout(args.release, args.percent)
    if args.json:
        print_json(record_summary(record))
        return 0
    print(f"release {record.id}: {record.state} ({rollout_text(record)})")
    print(
        f"now sign the rollout: edgeseal release sign {record.id} --percent {args.percent} "
        "--key YOUR_KEY"
    )
    return 0
