"""``edgeseal-agent open``: unwrap a sealed model in the TPM and run one inference."""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

from edgeseal.device_agent.opener import open_on_device
from edgeseal.hardware.backend import open_backend
from edgeseal.hardware.emulated import EmulatedDevice
from edgeseal.hardware.policy import SignedPCRPolicy
from edgeseal.hardware.profiles import load_profile
from edgeseal.sdk.cli.common import CLIError, open_input

#: Envelopes are a little over 100 bytes; a policy file a few KiB.
MAX_ENVELOPE_FILE = 4096
MAX_POLICY_FILE = 16 * 1024
MAX_INPUT_FILE = 64 * 1024 * 1024
INSECURE_WARNING = (
    "WARNING: INSECURE software key backend: the device key is a file, not in a TPM; "
    "for development only"
)


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "open",
        help="unwrap a sealed model in the TPM, decrypt it in memory, run one inference",
        description=(
            "Open FILE with its envelope on this device: the content key is unwrapped by "
            "the TPM under the device's PCR policy, the model is authenticated and "
            "decrypted in memory only, and one inference runs on the given or random input."
        ),
    )
    p.add_argument("file", type=Path, help="the sealed model (.esm)")
    p.add_argument("--envelope", required=True, type=Path, help="the model's envelope for us")
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--device",
        type=Path,
        default=os.environ.get("EDGESEAL_DEVICE_DIR"),
        help="an emulated device's state directory (env EDGESEAL_DEVICE_DIR)",
    )
    where.add_argument("--tcti", help="a real TPM, e.g. device:/dev/tpmrm0 (with --policy)")
    p.add_argument(
        "--policy", type=Path, help="the signed PCR policy the device key needs (with --tcti)"
    )
    p.add_argument("--profile", default="x86-dtpm", help="board profile (with --tcti)")
    p.add_argument(
        "--input", type=Path, action="append", help=".npy input tensor (repeat per input)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random input")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def _read_bounded(path: Path, limit: int, what: str) -> bytes:
    with open_input(path, what) as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise CLIError(f"{path} is larger than any {what} ({limit} bytes at most)")
    return data


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from edgeseal.sdk.runtime import load_model

    envelope = _read_bounded(args.envelope, MAX_ENVELOPE_FILE, "envelope")
    if args.tcti:
        approved = None
        if args.policy is not None:
            approved = SignedPCRPolicy.from_bytes(
                _read_bounded(args.policy, MAX_POLICY_FILE, "PCR policy")
            )
        hardware_class = load_profile(args.profile).hardware_class
        backend = open_backend(args.tcti)
    elif args.device:
        device = EmulatedDevice(args.device)
        approved = device.signed_policy()
        hardware_class = device.profile.hardware_class
        backend = device.backend()
    else:
        raise CLIError("say which device: --device DIR (emulated) or --tcti TCTI --policy FILE")
    insecure = backend.insecure
    with backend, open_input(args.file, "the sealed model") as sealed:
        opened = open_on_device(
            sealed, envelope, backend=backend, approved=approved, hardware_class=hardware_class
        )
    model = load_model(opened.plaintext)
    if args.input:
        inputs = [np.load(_npy(path), allow_pickle=False) for path in args.input]
    else:
        inputs = model.random_inputs(np.random.default_rng(args.seed))
    outputs = model.run(inputs)
    header = opened.header
    result = {
        "family": header.family,
        "version": header.version,
        "digest_alg": header.digest_alg,
        "plaintext_digest": header.plaintext_digest.hex(),
        "runtime": model.runtime_name,
        "key_backend": backend.kind,
        "insecure_key_backend": insecure,
        "outputs": [o.tolist() for o in outputs],
    }
    if insecure:
        print(INSECURE_WARNING, file=sys.stderr)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"opened {header.family} v{header.version} in memory ({header.plaintext_size} bytes)")
        print(f"runtime {model.runtime_name}, key backend {backend.kind}")
        for i, out in enumerate(outputs):
            print(f"output {i}: shape {list(out.shape)} {np.array2string(out, precision=5)}")
    return 0


def _npy(path: Path) -> Any:
    return io.BytesIO(_read_bounded(path, MAX_INPUT_FILE, "input tensor"))
