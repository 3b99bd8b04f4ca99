"""``edgeseal-server device add|revoke|mqtt-credentials``: manage devices locally (no HTTP)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from edgeseal.ota_server.cli.common import add_json, cli_actor, open_context, print_json
from edgeseal.ota_server.devices import MAX_PEM, add_device
from edgeseal.ota_server.enrollment import revoke
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
        help="revoke an enrolled device: trust bundles then fail it",
        description=(
            "Mark the device's enrollment revoked. Trust bundles exported from now on list it "
            "as revoked, so a technician's `edgeseal attest` fails it, and it cannot enroll "
            "again. Export and hand out a fresh bundle. Envelopes of new releases are still "
            "published for it."
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
            "--output (mode 0600), to be installed on the device as its mqtt_password_file. "
            "A running broker re-reads its password file at once."
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
            record = revoke(session, args.device_id)
            return record, {"device": record.device_id}

        ctx.mutate(
            actor=cli_actor(),
            action="device.revoke",
            target=f"devices/{args.device_id}",
            work=work,
        )
    finally:
        ctx.close()
    if args.json:
        print_json({"id": args.device_id, "revoked": True})
    else:
        print(f"device {args.device_id} revoked; export a fresh trust bundle for technicians")
    return 0


def run_mqtt_credentials(args: argparse.Namespace) -> int:
    from edgeseal.ota_server.broker import MosquittoBroker
    from edgeseal.ota_server.config import DataDir, load_config
    from edgeseal.sdk.files import atomic_write

    data = DataDir(Path(args.data))
    if not load_config(data).mqtt_port:
        raise CLIError("this server runs no MQTT broker: set mqtt_port in server.toml")
    ctx = open_context(args)
    try:

        def work(_session: Session) -> tuple[Any, dict[str, Any]]:
            broker = MosquittoBroker(data.broker)
            password = broker.add_device_credentials(args.device_id)
            atomic_write(args.output, password.encode() + b"\n", mode=0o600)
            _signal_broker(broker.pid_file)
            return None, {"device": args.device_id}

        ctx.mutate(
            actor=cli_actor(),
            action="device.mqtt-credentials",
            target=f"devices/{args.device_id}",
            work=work,
        )
    finally:
        ctx.close()
    print(f"MQTT password for {args.device_id} written to {args.output}")
    return 0


def _signal_broker(pid_file: Path) -> None:
    """SIGHUP the broker ``edgeseal-server run`` started, so it re-reads its passwords."""
    import contextlib
    import os
    import signal

    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return  # not running: it reads the file when it starts
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGHUP)
