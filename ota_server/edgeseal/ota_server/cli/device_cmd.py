"""``edgeseal-server device add``: register a device locally (without the HTTP API)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from edgeseal.ota_server.cli.common import add_json, cli_actor, open_context, print_json
from edgeseal.ota_server.devices import MAX_PEM, add_device
from edgeseal.sdk.cli.common import CLIError, open_input


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("device", help="manage devices")
    dsub = p.add_subparsers(dest="device_command", required=True)
    c: argparse.ArgumentParser = dsub.add_parser(
        "add",
        help="register a device and publish its envelopes for current releases",
    )
    c.add_argument("--id", required=True, dest="device_id", help="device id")
    c.add_argument(
        "--pubkey", type=Path, required=True, help="the device's TPM decryption key (PEM)"
    )
    c.add_argument("--hardware-class", required=True, help="e.g. rpi5, jetson-orin")
    c.add_argument("--channel", default="stable", help="release channel (default stable)")
    add_json(c)
    c.set_defaults(func=run_add)


def run_add(args: argparse.Namespace) -> int:
    with open_input(args.pubkey, "device public key") as handle:
        raw = handle.read(MAX_PEM + 1)
    if len(raw) > MAX_PEM:
        raise CLIError(f"{args.pubkey} is too large for a PEM public key")
    body = {
        "id": args.device_id,
        "public_key_pem": raw.decode("ascii", errors="replace"),
        "hardware_class": args.hardware_class,
        "channel": args.channel,
    }
    ctx = open_context(args)
    try:

        def work(session: Session) -> tuple[Any, dict[str, Any]]:
            return add_device(ctx, session, None, body)

        answer = ctx.mutate(
            actor=cli_actor(), action="device.add", target=f"devices/{args.device_id}", work=work
        )
    finally:
        ctx.close()
    if args.json:
        print_json(answer)
    else:
        print(f"device {args.device_id} added with {len(answer['envelopes'])} envelope(s)")
    return 0
