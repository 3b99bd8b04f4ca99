"""``edgeseal-server release list|show``: what releases exist and in which state."""

from __future__ import annotations

import argparse
from typing import Any

from edgeseal.ota_server.cli.common import add_json, open_context, print_json
from edgeseal.ota_server.releases import get_release, list_releases, release_json


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("release", help="inspect releases")
    rsub = p.add_subparsers(dest="release_command", required=True)
    ls: argparse.ArgumentParser = rsub.add_parser("list", help="list releases")
    ls.add_argument("--family", help="only this family")
    add_json(ls)
    ls.set_defaults(func=run_list)
    show: argparse.ArgumentParser = rsub.add_parser("show", help="show one release")
    show.add_argument("release_id")
    add_json(show)
    show.set_defaults(func=run_show)


def run_list(args: argparse.Namespace) -> int:
    ctx = open_context(args)
    try:
        with ctx.db.session() as session:
            rows = list_releases(session, args.family)
    finally:
        ctx.close()
    if args.json:
        print_json(rows)
        return 0
    for r in rows:
        signed = f"{r['signatures']}/{r['threshold']}" if r["threshold"] else "-"
        print(
            f"{r['id']:<32} {r['state']:<26} {r['channel']:<10} sig {signed:<6} "
            f"{','.join(r['hardware'])}"
        )
    return 0


def run_show(args: argparse.Namespace) -> int:
    ctx = open_context(args)
    try:
        with ctx.db.session() as session:
            row = release_json(get_release(session, args.release_id))
    finally:
        ctx.close()
    if args.json:
        print_json(row)
    else:
        for key, value in row.items():
            print(f"{key:<17} {value}")
    return 0
