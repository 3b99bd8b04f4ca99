"""``edgeseal-server root rotate``: publish a new root (new officers, threshold, online keys).

TUF spec 5.3.4: root N+1 must be signed by a threshold of root N's keys AND a
threshold of its own, so clients can follow the chain. The officers' key files
are passphrase-encrypted and loaded only here.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from edgeseal.ota_server.cli.common import (
    add_json,
    add_passphrase_file,
    cli_actor,
    open_context,
    passphrase,
    print_json,
)
from edgeseal.ota_server.keys import load_public_key, load_signer


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("root", help="manage the offline TUF root")
    rsub = p.add_subparsers(dest="root_command", required=True)
    c: argparse.ArgumentParser = rsub.add_parser(
        "rotate",
        help="publish a new root version signed by the old and the new officers",
        description=(
            "Publish root N+1 with the officers' public keys given by --new-key and the "
            "threshold --threshold. It must be signed by a threshold of the current root's "
            "keys (--old-signer) and of the new ones (--new-signer). --rotate-online replaces "
            "the timestamp and/or snapshot keys: the recovery from a compromised online key "
            "or a fast-forward attack."
        ),
    )
    c.add_argument("--new-key", type=Path, action="append", required=True, help="public PEM")
    c.add_argument("--threshold", type=int, required=True, help="root signatures required (k)")
    c.add_argument("--old-signer", type=Path, action="append", required=True, help="key file")
    c.add_argument("--new-signer", type=Path, action="append", required=True, help="key file")
    c.add_argument(
        "--rotate-online", choices=("timestamp", "snapshot"), action="append", default=[]
    )
    add_passphrase_file(c)
    add_json(c)
    c.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    secret = passphrase(args)
    ctx = open_context(args)
    try:

        def work(_session: Session) -> tuple[Any, dict[str, Any]]:
            keys = [load_public_key(path) for path in args.new_key]
            old = [load_signer(path, secret) for path in args.old_signer]
            new = [load_signer(path, secret) for path in args.new_signer]
            ctx.repository.rotate_root(
                root_keys=keys,
                root_threshold=args.threshold,
                old_signers=old,
                new_signers=new,
                rotate_online=tuple(args.rotate_online),
                now=ctx.now(),
            )
            info = {
                "keyids": sorted(k.keyid for k in keys),
                "threshold": args.threshold,
                "rotated_online": list(args.rotate_online),
            }
            return info, info

        info = ctx.mutate(actor=cli_actor(), action="root.rotate", target="root", work=work)
    finally:
        ctx.close()
    if args.json:
        print_json(info)
    else:
        print(f"root rotated: {args.threshold} of {len(args.new_key)} officer keys")
    return 0
