"""``edgeseal keygen``: a release manager's signing key, encrypted with a passphrase."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgeseal.sdk.cli.common import CLIError
from edgeseal.sdk.cli.release_sign import read_passphrase
from edgeseal.sdk.files import atomic_write


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "keygen",
        help="create a release manager's signing key (ECDSA P-256, passphrase-encrypted)",
        description=(
            "Write KEY (PKCS#8 PEM, encrypted with the passphrase, mode 0600) and KEY.pub.pem. "
            "Give the public half to the fleet operator, who adds it to your model family's "
            "release managers; keep the private half on your machine or move it to a token."
        ),
    )
    p.add_argument("key", type=Path, help="where to write the private key")
    p.add_argument(
        "--passphrase-file",
        type=Path,
        help="file holding the passphrase (otherwise env EDGESEAL_KEY_PASSPHRASE, or a prompt)",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    key_path: Path = args.key
    public_path = key_path.with_name(key_path.name + ".pub.pem")
    for path in (key_path, public_path):
        if path.exists():
            raise CLIError(f"{path} exists; refusing to overwrite a key")
    passphrase = read_passphrase(args)
    if not passphrase:
        raise CLIError("an empty passphrase is not allowed")
    private = ec.generate_private_key(ec.SECP256R1())
    atomic_write(
        key_path,
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(passphrase),
        ),
        mode=0o600,
    )
    atomic_write(
        public_path,
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )
    if args.json:
        print(json.dumps({"private_key": str(key_path), "public_key": str(public_path)}))
    else:
        print(f"private key (encrypted): {key_path}")
        print(f"public key:              {public_path}")
    return 0
