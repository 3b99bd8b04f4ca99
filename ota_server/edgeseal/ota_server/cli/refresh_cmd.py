"""``edgeseal-server refresh``: re-sign the online roles that are near expiry, now."""

from __future__ import annotations

import argparse
from typing import Any

from edgeseal.ota_server.cli.common import add_json, open_context, print_json


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "refresh",
        help="re-sign timestamp, snapshot and envelope bins that are near expiry",
    )
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgeseal.ota_server.app import refresh_online

    ctx = open_context(args)
    try:
        roles = refresh_online(ctx)
    finally:
        ctx.close()
    if args.json:
        print_json({"resigned": roles})
    elif roles:
        print(f"re-signed: {', '.join(roles)}")
    else:
        print("nothing needed re-signing")
    return 0
