"""``edgeseal-agent provision``: write the agent's config, create its state directory, pin the
TUF root, and make sure the device key exists in the TPM.

    edgeseal-agent provision --config /etc/edgeseal/agent.toml --device-id pi-0042 \\
        --family detector --server https://updates.example.com --root root.json \\
        (--backend emulated:DIR | --backend device:/dev/tpmrm0 --profile rpi5-tpm \\
         --policy-authority authority.pub.pem --pcr-policy pcr-policy.json)

It prints where the device public key is and the ``edgeseal-server device add``
line the fleet operator runs to enroll it (envelopes are then published for it).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgeseal.device_agent.config import (
    CONFIG_VERSION,
    DEFAULT_CONFIG_PATH,
    ENV_CONFIG_PATH,
    AgentConfig,
)
from edgeseal.device_agent.state import TUF_DIR, StateStore
from edgeseal.sdk.cli.common import CLIError
from edgeseal.sdk.files import atomic_write

#: A root.json of a few officers is a few KiB; python-tuf's own bound.
MAX_ROOT_BYTES = 512_000
MAX_POLICY_BYTES = 16 * 1024
DEVICE_KEY_FILE = "device-key.pub.pem"


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "provision",
        help="write the agent config, pin the TUF root, create the device key",
        description=(
            "Provision this device: write the agent configuration (TOML, version 1), create "
            "the state directory, pin the TUF root.json, and create the device decryption key "
            "in the TPM if it is missing."
        ),
    )
    p.add_argument(
        "--config",
        type=Path,
        default=Path(os.environ.get(ENV_CONFIG_PATH, DEFAULT_CONFIG_PATH)),
        help=f"config file to write (env {ENV_CONFIG_PATH}; default {DEFAULT_CONFIG_PATH})",
    )
    p.add_argument("--device-id", required=True)
    p.add_argument("--family", required=True, help="the model family this device runs")
    p.add_argument("--channel", default="stable")
    p.add_argument("--server", required=True, help="OTA server base URL (TUF under /tuf/)")
    p.add_argument("--root", required=True, type=Path, help="the trusted TUF root.json to pin")
    p.add_argument("--state-dir", type=Path, default=Path("/var/lib/edgeseal"))
    p.add_argument("--socket", type=Path, default=Path("/run/edgeseal/inference.sock"))
    p.add_argument(
        "--backend",
        default="device:/dev/tpmrm0",
        help="emulated:DIR, or a TCTI such as device:/dev/tpmrm0 (default)",
    )
    p.add_argument("--profile", default="x86-dtpm", help="board profile (real TPM)")
    p.add_argument(
        "--policy-authority", type=Path, help="PEM public key of the PCR-policy authority"
    )
    p.add_argument("--pcr-policy", type=Path, help="the signed PCR policy (real TPM)")
    p.add_argument("--poll-interval", type=float, default=3600.0, help="seconds between polls")
    p.add_argument("--poll-jitter", type=float, default=600.0, help="random extra seconds")
    p.add_argument(
        "--console-port",
        default="",
        help="serial console answering technicians' attestation requests (e.g. /dev/ttyS0)",
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing config file")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def _pem(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _device_key(args: argparse.Namespace, state_dir: Path) -> tuple[Path, str, str, Path]:
    """(public key PEM path, hardware class, profile, pcr policy path) for the config."""
    kind, _, rest = args.backend.partition(":")
    if kind == "emulated":
        from edgeseal.hardware.emulated import DEVICE_KEY_PUB_FILE, POLICY_FILE, EmulatedDevice

        device = EmulatedDevice(Path(rest))
        return (
            device.state_dir / DEVICE_KEY_PUB_FILE,
            device.profile.hardware_class,
            device.profile_name,
            device.state_dir / POLICY_FILE,
        )
    from edgeseal.hardware.backend import open_backend
    from edgeseal.hardware.errors import HardwareError
    from edgeseal.hardware.policy import SignedPCRPolicy
    from edgeseal.hardware.profiles import load_profile

    if args.policy_authority is None or args.pcr_policy is None:
        raise CLIError("a real TPM needs --policy-authority PUBKEY and --pcr-policy FILE")
    policy = SignedPCRPolicy.from_bytes(args.pcr_policy.read_bytes()[: MAX_POLICY_BYTES + 1])
    authority = serialization.load_pem_public_key(args.policy_authority.read_bytes())
    if not isinstance(authority, ec.EllipticCurvePublicKey):
        raise CLIError(f"{args.policy_authority} is not an EC public key")
    # The device key will accept only policies this authority signs: the policy given
    # now must be one of them, or the device could never use its key.
    policy.verify(authority)
    hardware_class = load_profile(args.profile).hardware_class
    with open_backend(args.backend) as backend:
        try:
            public = backend.device_key_public()
        except HardwareError:
            public = backend.create_device_key(authority)
    path = state_dir / DEVICE_KEY_FILE
    atomic_write(path, _pem(public), mode=0o644)
    return path, hardware_class, args.profile, args.pcr_policy.resolve()


def _toml(values: dict[str, Any]) -> str:
    lines = [f"version = {CONFIG_VERSION}"]
    for key, value in values.items():
        if isinstance(value, str | Path):
            lines.append(f"{key} = {json.dumps(str(value))}")
        else:
            lines.append(f"{key} = {value!r}")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    config_path: Path = args.config
    if config_path.exists() and not args.force:
        raise CLIError(f"{config_path} exists: pass --force to overwrite it")
    root = args.root.read_bytes()[: MAX_ROOT_BYTES + 1]
    if len(root) > MAX_ROOT_BYTES:
        raise CLIError(f"{args.root} is larger than any root.json")
    from tuf.api.metadata import Metadata, Root

    try:
        Metadata[Root].from_bytes(root)
    except Exception as exc:
        raise CLIError(f"{args.root} is not a TUF root.json: {exc}") from exc
    state_dir = args.state_dir.resolve()
    StateStore(state_dir).create_layout()
    key_path, hardware_class, profile, policy = _device_key(args, state_dir)
    server = args.server.rstrip("/")
    values: dict[str, Any] = {
        "device_id": args.device_id,
        "state_dir": state_dir,
        "key_backend": args.backend,
        "profile": profile,
        "pcr_policy_path": policy,
        "family": args.family,
        "channel": args.channel,
        "metadata_url": f"{server}/tuf/metadata/",
        "target_url": f"{server}/tuf/targets/",
        "server_url": server,
        "socket_path": args.socket,
        "poll_interval_s": float(args.poll_interval),
        "poll_jitter_s": float(args.poll_jitter),
    }
    if args.console_port:
        values["console_port"] = args.console_port
    text = _toml(values)
    AgentConfig(**values)  # validate before writing
    config_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(config_path, text.encode(), mode=0o644)
    atomic_write(state_dir / TUF_DIR / "root.json", root, mode=0o644)
    enroll = (
        f"edgeseal-server device add --id {args.device_id} --pubkey {key_path} "
        f"--hardware-class {hardware_class} --channel {args.channel}"
    )
    if args.json:
        print(
            json.dumps(
                {
                    "config": str(config_path),
                    "state_dir": str(state_dir),
                    "device_public_key": str(key_path),
                    "hardware_class": hardware_class,
                    "enroll": enroll,
                }
            )
        )
    else:
        print(f"wrote {config_path}; state in {state_dir}; TUF root pinned")
        print(f"device public key: {key_path}")
        print("enroll the device on the server (fleet operator):")
        print(f"  {enroll}")
        print("then enroll its attestation key (operator token in a file, agent stopped):")
        print(f"  edgeseal-agent enroll --config {config_path} --token-file TOKEN_FILE")
    return 0
