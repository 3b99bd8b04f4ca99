"""``edgeseal-server family add|set-keys``: delegate a model family to its release managers.

Signed by the offline targets keys (the officers'), loaded here from their
passphrase-encrypted files.
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
from edgeseal.ota_server.service_errors import ConflictError, NotFoundError


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("family", help="manage model families")
    fsub = p.add_subparsers(dest="family_command", required=True)
    for name, text in (
        ("add", "delegate a new family to its release managers' keys"),
        ("set-keys", "rotate a family's release-manager keys or change its threshold"),
    ):
        c: argparse.ArgumentParser = fsub.add_parser(name, help=text)
        c.add_argument("family", help="the family name (also its TUF role name)")
        c.add_argument(
            "--key",
            type=Path,
            action="append",
            required=True,
            help="a release manager's public key PEM (repeat)",
        )
        c.add_argument("--threshold", type=int, required=True, help="signatures required (k)")
        c.add_argument(
            "--targets-key",
            type=Path,
            action="append",
            required=True,
            help="an officer's targets key file, to sign the delegation (repeat up to k)",
        )
        add_passphrase_file(c)
        add_json(c)
        c.set_defaults(func=run, must_exist=name == "set-keys")


def run(args: argparse.Namespace) -> int:
    secret = passphrase(args)
    ctx = open_context(args)
    try:

        def work(_session: Session) -> tuple[Any, dict[str, Any]]:
            # inside the audited step: a wrong passphrase is a refusal worth recording
            keys = [load_public_key(path) for path in args.key]
            signers = [load_signer(path, secret) for path in args.targets_key]
            exists = args.family in ctx.repository.families()
            if args.must_exist and not exists:
                raise NotFoundError(f"family {args.family!r} does not exist; use `family add`")
            if not args.must_exist and exists:
                raise ConflictError(f"family {args.family!r} exists; use `family set-keys`")
            ctx.repository.set_family(args.family, keys, args.threshold, signers, now=ctx.now())
            info = {
                "family": args.family,
                "keyids": sorted(k.keyid for k in keys),
                "threshold": args.threshold,
            }
            return info, info

        action = "family.set-keys" if args.must_exist else "family.add"
        info = ctx.mutate(actor=cli_actor(), action=action, target=args.family, work=work)
    finally:
        ctx.close()
    if args.json:
        print_json(info)
    else:
        print(f"family {args.family}: {args.threshold} of {len(args.key)} release-manager keys")
    return 0
