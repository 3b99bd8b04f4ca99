"""``edgeseal-server token create``: issue an API token (shown once, stored hashed)."""

from __future__ import annotations

import argparse
from typing import Any

from sqlalchemy.orm import Session

from edgeseal.ota_server.auth import ROLES, create_token
from edgeseal.ota_server.cli.common import add_json, cli_actor, open_context, print_json


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("token", help="manage API tokens")
    tsub = p.add_subparsers(dest="token_command", required=True)
    c: argparse.ArgumentParser = tsub.add_parser(
        "create", help="create a token; it is printed once and stored only as a hash"
    )
    c.add_argument("--name", required=True, help="who holds it (shown in the audit log)")
    c.add_argument("--role", required=True, choices=ROLES)
    c.add_argument("--family", help="the model family (release-manager tokens only)")
    add_json(c)
    c.set_defaults(func=run_create)


def run_create(args: argparse.Namespace) -> int:
    ctx = open_context(args)
    try:

        def work(session: Session) -> tuple[Any, dict[str, Any]]:
            token, principal = create_token(
                session, name=args.name, role=args.role, family=args.family, now=ctx.now()
            )
            info = principal.as_json() | {"id": principal.token_id}
            return (token, info), info

        token, info = ctx.mutate(
            actor=cli_actor(), action="token.create", target="tokens", work=work
        )
    finally:
        ctx.close()
    if args.json:
        print_json(info | {"token": token})
    else:
        print(token)
    return 0
