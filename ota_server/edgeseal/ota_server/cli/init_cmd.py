"""``edgeseal-server init``: data directory, officers' keys, TUF repository, admin token."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edgeseal.ota_server.cli.common import add_json, add_passphrase_file, passphrase, print_json
from edgeseal.ota_server.config import ServerConfig
from edgeseal.ota_server.initialize import Officers, initialize
from edgeseal.ota_server.keys import generate_key_file, load_signer, write_public_key
from edgeseal.sdk.cli.common import CLIError


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "init",
        help="create the data directory, officers' keys, TUF repository and an admin token",
        description=(
            "Create DIR (config, database, key-encryption key, online TUF keys) and the TUF "
            "repository whose root and targets roles are held by N security officers, k of "
            "whom must sign. The officers' keys are generated into --officer-keys, encrypted "
            "with the passphrase; move them offline afterwards. The admin token is printed "
            "once and never again."
        ),
    )
    p.add_argument(
        "--officer-keys", type=Path, required=True, help="directory for the officers' key files"
    )
    p.add_argument("--officers", type=int, default=3, help="number of officers (n)")
    p.add_argument("--threshold", type=int, default=2, help="root signatures required (k)")
    p.add_argument("--targets-threshold", type=int, help="targets signatures required (default: k)")
    p.add_argument("--bin-bits", type=int, default=8, help="hashed-bin bits for envelopes")
    p.add_argument("--host", default="127.0.0.1", help="address `run` binds by default")
    p.add_argument("--port", type=int, default=8443, help="port `run` listens on by default")
    add_passphrase_file(p)
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    n, k = args.officers, args.threshold
    targets_k = args.targets_threshold or k
    if not 1 <= k <= n or not 1 <= targets_k <= n or n > 32:
        raise CLIError("need 1 <= threshold <= officers <= 32")
    secret = passphrase(args)
    config = ServerConfig(bind=args.host, port=args.port, bin_bits=args.bin_bits)
    keydir: Path = args.officer_keys
    keydir.mkdir(parents=True, exist_ok=True)
    keydir.chmod(0o700)
    files: dict[str, list[str]] = {"root": [], "targets": []}
    keys: dict[str, list[Any]] = {"root": [], "targets": []}
    signers: dict[str, list[Any]] = {"root": [], "targets": []}
    for i in range(1, n + 1):
        for role in ("root", "targets"):
            path = keydir / f"officer-{i}-{role}.pem"
            key = generate_key_file(path, secret)
            write_public_key(keydir / f"officer-{i}-{role}.pub.pem", key)
            files[role].append(str(path))
            keys[role].append(key)
            signers[role].append(load_signer(path, secret))
    officers = Officers(
        root_keys=keys["root"],
        root_threshold=k,
        root_signers=signers["root"],
        targets_keys=keys["targets"],
        targets_threshold=targets_k,
        targets_signers=signers["targets"],
    )
    token = initialize(args.data, officers, config=config)
    if args.json:
        print_json({"data": str(args.data), "admin_token": token, "officer_keys": files})
    else:
        print(f"initialized edgeseal server data in {args.data}")
        print(f"officers' keys ({k} of {n} for root, {targets_k} for targets) in {keydir}")
        print("admin token (shown once, store it now):")
        print(token)
    return 0
