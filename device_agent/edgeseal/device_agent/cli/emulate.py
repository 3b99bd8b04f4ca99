"""``edgeseal-agent emulate``: create and drive an emulated device (swtpm).

    edgeseal-agent emulate create --dir DEV [--profile emulated] [--id ID] [--running]
    edgeseal-agent emulate start|stop|status [--json]|approve --dir DEV
    edgeseal-agent emulate tamper COMPONENT [--digest HEX] --dir DEV

``--dir`` defaults to ``$EDGESEAL_DEVICE_DIR``. ``start`` leaves swtpm running
after the command exits and prints the TCTI to give other tools
(``TPM2TOOLS_TCTI``, ``edgeseal-agent open --tcti``).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from edgeseal.hardware.emulated import AUTHORITY_KEY_FILE, EmulatedDevice
from edgeseal.hardware.errors import EmulatorError
from edgeseal.hardware.measured_boot import BOOT_COMPONENTS, parse_digest
from edgeseal.hardware.profiles import list_profiles

ENV_DEVICE_DIR = "EDGESEAL_DEVICE_DIR"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``emulate`` and its subcommands to the agent's parser."""
    parser = subparsers.add_parser(
        "emulate",
        help="create and run an emulated device (swtpm with measured boot)",
        description="Create, start, stop, inspect and tamper with an emulated device.",
    )
    sub = parser.add_subparsers(dest="emulate_command", required=True, metavar="ACTION")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--dir",
        type=Path,
        default=_env_path(ENV_DEVICE_DIR),
        help=f"the device's state directory (default: ${ENV_DEVICE_DIR})",
    )

    create = sub.add_parser("create", parents=[common], help="manufacture a new emulated device")
    create.add_argument(
        "--profile",
        default="emulated",
        help=f"board profile id ({', '.join(list_profiles())}) or a .toml path",
    )
    create.add_argument("--id", dest="device_id", help="device id (default: emu-<random>)")
    create.add_argument(
        "--ca-dir", type=Path, help="swtpm local CA directory (default: DIR/../swtpm-ca)"
    )
    create.add_argument("--running", action="store_true", help="leave the device running")
    create.set_defaults(func=_create)

    start = sub.add_parser("start", parents=[common], help="power on and run measured boot")
    start.set_defaults(func=_start)

    stop = sub.add_parser("stop", parents=[common], help="power off (TPM state is kept)")
    stop.set_defaults(func=_stop)

    status = sub.add_parser("status", parents=[common], help="show state, PCRs and policy")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=_status)

    tamper = sub.add_parser(
        "tamper",
        parents=[common],
        help="change a boot component (measured at the next start)",
    )
    tamper.add_argument("component", choices=BOOT_COMPONENTS)
    tamper.add_argument("--digest", help="new SHA-256 as 64 hex characters (default: random)")
    tamper.set_defaults(func=_tamper)

    approve = sub.add_parser(
        "approve",
        parents=[common],
        help="sign the PCR policy for the current boot manifest (an approved OS update)",
    )
    approve.set_defaults(func=_approve)


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def _device_dir(args: argparse.Namespace) -> Path:
    if args.dir is None:
        raise EmulatorError(f"no device directory: pass --dir or set {ENV_DEVICE_DIR}")
    return Path(args.dir)


def _create(args: argparse.Namespace) -> int:
    device = EmulatedDevice.create(
        _device_dir(args),
        profile=args.profile,
        device_id=args.device_id,
        ca_dir=args.ca_dir,
        running=args.running,
    )
    print(f"created emulated device {device.device_id} ({device.profile.id}) in {device.state_dir}")
    print(f"EK certificate CA: {device.local_ca().root_cert_path}")
    print(
        f"PCR-policy authority key: {device.state_dir / AUTHORITY_KEY_FILE} "
        "(stands in for the embedded team's offline signing key; never on a real device)"
    )
    if args.running:
        print(f"running: TCTI {device.tcti}")
    return 0


def _start(args: argparse.Namespace) -> int:
    device = EmulatedDevice(_device_dir(args))
    tcti = device.start()
    print(f"device {device.device_id} running: TCTI {tcti}")
    return 0


def _stop(args: argparse.Namespace) -> int:
    device = EmulatedDevice(_device_dir(args))
    device.stop()
    print(f"device {device.device_id} stopped")
    return 0


def _status(args: argparse.Namespace) -> int:
    device = EmulatedDevice(_device_dir(args))
    info = device.status()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(_format_status(info))
    return 0


def _format_status(info: dict[str, Any]) -> str:
    lines = [
        f"device     {info['id']} (profile {info['profile']}, "
        f"hardware class {info['hardware_class']})",
        f"state dir  {info['state_dir']}",
    ]
    if not info["running"]:
        lines.append("power      stopped")
    else:
        lines.append(f"power      running, TCTI {info['tcti']}")
    lines.append("boot manifest:")
    for name, digest in info["manifest"].items():
        lines.append(f"  {name:<11} {digest}")
    if info["pending_reboot"]:
        lines.append("  (changed since boot: measured at the next start)")
    lines.append(f"PCR policy signed by authority {info['policy']['authority']}")
    if info["running"]:
        if info["policy_matches"]:
            lines.append("PCRs       match the signed policy: the device key is usable")
        else:
            changed = ", ".join(str(i) for i in info["changed_pcrs"])
            components = ", ".join(info["changed_components"]) or "no measured component"
            lines.append(
                f"PCRs       DIFFER from the signed policy: PCR {changed} ({components}); "
                "the device key is locked until a new policy is approved"
            )
    return "\n".join(lines)


def _tamper(args: argparse.Namespace) -> int:
    device = EmulatedDevice(_device_dir(args))
    digest = parse_digest(args.digest, "--digest") if args.digest is not None else None
    new = device.tamper(args.component, digest)
    print(f"{args.component} is now {new.hex()}; it is measured at the next start")
    return 0


def _approve(args: argparse.Namespace) -> int:
    device = EmulatedDevice(_device_dir(args))
    policy = device.approve()
    pcrs = ", ".join(str(i) for i in policy.values.indices)
    print(f"signed a PCR policy over PCR {pcrs} for the current boot manifest")
    return 0
