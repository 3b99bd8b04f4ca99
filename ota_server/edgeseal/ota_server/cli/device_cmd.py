"""``edgeseal-server device add|revoke|mqtt-credentials``: manage devices locally (no HTTP)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from edgeseal.ota_server.cli.common import add_json, cli_actor, open_context, print_json
from edgeseal.ota_server.devices import (
    MAX_PEM,
    add_device,
    issue_mqtt_credentials,
    revoke_device,
)
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
    r: argparse.ArgumentParser = dsub.add_parser(
        "revoke",
        help="revoke a device: no envelopes, no broker access, no enrollment",
        description=(
            "Revoke the device, enrolled or not: its envelopes are removed from the TUF "
            "repository and new releases publish none for it, its MQTT credentials are "
            "removed (a running broker reloads and disconnects it), it cannot enroll again, "
            "and trust bundles exported from now on fail it (export and hand out a fresh "
            "one). Content keys it already fetched cannot be taken back. Revoking again is "
            "harmless and finishes an interrupted revocation."
        ),
    )
    r.add_argument("--id", required=True, dest="device_id", help="device id")
    add_json(r)
    r.set_defaults(func=run_revoke)
    m: argparse.ArgumentParser = dsub.add_parser(
        "mqtt-credentials",
        help="create or rotate a device's MQTT broker password (release hints, telemetry)",
        description=(
            "Write a new random broker password for the device (user name = device id) to "
            "--output (mode 0600), to be installed on the device as its mqtt_password_file; "
            "the old one stops working. Enrollment (edgeseal-agent enroll) already issues "
            "one: use this to rotate it by hand. A running broker re-reads its password file "
            "at once. Refused for a device that is not registered or is revoked."
        ),
    )
    m.add_argument("--id", required=True, dest="device_id", help="device id")
    m.add_argument("--output", type=Path, required=True, help="where to write the password")
    m.set_defaults(func=run_mqtt_credentials)


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


def run_revoke(args: argparse.Namespace) -> int:
    ctx = open_context(args)
    try:

        def work(session: Session) -> tuple[Any, dict[str, Any]]:
            return revoke_device(ctx, session, None, args.device_id)

        answer = ctx.mutate(
            actor=cli_actor(),
            action="device.revoke",
            target=f"devices/{args.device_id}",
            work=work,
        )
    finally:
        ctx.close()
    if args.json:
        print_json(answer)
    else:
        again = " (it was already revoked)" if answer["already_revoked"] else ""
        mqtt = "removed" if answer["mqtt_credentials_removed"] else "none to remove"
        print(
            f"device {args.device_id} revoked{again}: "
            f"{len(answer['envelopes_removed'])} envelope(s) removed, MQTT credentials {mqtt}; "
            "export a fresh trust bundle for technicians"
        )
    return 0


def run_mqtt_credentials(args: argparse.Namespace) -> int:
    from edgeseal.sdk.files import atomic_write

    ctx = open_context(args)
    try:

        def work(session: Session) -> tuple[Any, dict[str, Any]]:
            credentials = issue_mqtt_credentials(ctx, session, args.device_id, require_url=False)
            atomic_write(args.output, credentials.password.encode() + b"\n", mode=0o600)
            return credentials.url, {"device": args.device_id}

        url = ctx.mutate(
            actor=cli_actor(),
            action="device.mqtt-credentials",
            target=f"devices/{args.device_id}",
            work=work,
        )
    finally:
        ctx.close()
    print(f"MQTT password for {args.device_id} written to {args.output}")
    if url:
        print(f"the device's mqtt_url: {url} (user name {args.device_id})")
    else:
        print("the device's mqtt_url: the broker's address (set mqtt_public_url in server.toml)")
    return 0
