"""``edgeseal seal``: seal a model and its content key to one device's public key."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgeseal.sdk.cli.common import CLIError, header_summary, open_input
from edgeseal.sdk.envelope import seal_envelope
from edgeseal.sdk.files import atomic_write, atomic_writer
from edgeseal.sdk.sealed import CIPHERS, seal_model

#: A PEM public key is a few hundred bytes; refuse to read anything much larger.
MAX_PUBLIC_KEY_FILE = 16 * 1024


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "seal",
        help="seal a model to a device's public key",
        description=(
            "Encrypt MODEL into a sealed model (.esm) under a fresh content key, and seal "
            "that key to the device's TPM decryption key (an HPKE envelope). Neither file "
            "is useful without the device's TPM."
        ),
    )
    p.add_argument("model", type=Path, help="the plaintext model (.tflite)")
    p.add_argument("--family", required=True, help="model family, e.g. 'detector'")
    p.add_argument("--version", required=True, type=int, help="model version (integer)")
    p.add_argument(
        "--hardware",
        required=True,
        action="append",
        help="hardware class the model is built for (repeat for several)",
    )
    p.add_argument(
        "--to",
        required=True,
        type=Path,
        metavar="PUBKEY",
        help="the device's decryption public key (PEM, P-256)",
    )
    p.add_argument("-o", "--output", type=Path, help="sealed model path (default MODEL.esm)")
    p.add_argument("--envelope", type=Path, help="envelope path (default OUTPUT.env)")
    p.add_argument(
        "--cipher",
        choices=CIPHERS,
        default=os.environ.get("EDGESEAL_CIPHER", "aes-256-gcm"),
        help="chacha20-poly1305 for CPUs without AES instructions (Raspberry Pi 4)",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def load_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    """Read a P-256 public key in PEM, with a clear error for anything else."""
    try:
        if path.stat().st_size > MAX_PUBLIC_KEY_FILE:
            raise CLIError(f"{path} is too large to be a public key")
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise CLIError(f"cannot read the public key {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise CLIError(f"{path} is not a PEM public key") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise CLIError(f"{path} is not a P-256 public key (edgeseal devices use ECC P-256)")
    return key


def run(args: argparse.Namespace) -> int:
    model: Path = args.model
    output: Path = args.output or model.with_name(model.name + ".esm")
    envelope_path: Path = args.envelope or output.with_name(output.name + ".env")
    recipient = load_public_key(args.to)
    with open_input(model, "the model") as src, atomic_writer(output) as dst:
        info = seal_model(
            src,
            dst,
            family=args.family,
            version=args.version,
            hardware=args.hardware,
            cipher=args.cipher,
        )
    atomic_write(envelope_path, seal_envelope(info.content_key, recipient, info.header))
    result = {"sealed_model": str(output), "envelope": str(envelope_path)}
    result.update(header_summary(info.header))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"sealed {model} -> {output}")
        print(f"envelope for {args.to} -> {envelope_path}")
        h = info.header
        print(f"family {h.family}, version {h.version}, hardware {', '.join(h.hardware)}")
    return 0
