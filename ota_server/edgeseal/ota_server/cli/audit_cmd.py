"""``edgeseal-server audit verify``: check the hash chain of the audit log."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from edgeseal.ota_server.cli.common import add_json, open_context, print_json
from edgeseal.ota_server.service_errors import AuditChainError


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("audit", help="the hash-chained audit log")
    asub = p.add_subparsers(dest="audit_command", required=True)
    v: argparse.ArgumentParser = asub.add_parser(
        "verify",
        help="verify the chain; exit 1 naming the first edited, removed or reordered entry",
    )
    add_json(v)
    v.set_defaults(func=run_verify)


def run_verify(args: argparse.Namespace) -> int:
    ctx = open_context(args)
    try:
        with ctx.db.session() as session:
            try:
                count = ctx.audit.verify(session)
            except AuditChainError as exc:
                if args.json:
                    print_json({"ok": False, "seq": exc.seq, "error": exc.message})
                else:
                    print(f"FAIL: {exc.message}", file=sys.stderr)
                return 1
    finally:
        ctx.close()
    if args.json:
        print_json({"ok": True, "entries": count})
    else:
        print(f"OK: {count} audit entries verified")
    return 0
