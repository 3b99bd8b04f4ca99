"""``edgeseal inspect``: show a sealed model's header without any key."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from edgeseal.sdk.cli.common import header_summary, open_input
from edgeseal.sdk.sealed import inspect_sealed_model


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "inspect",
        help="show a sealed model's header (no key needed)",
        description=(
            "Parse and validate a sealed model's header. Without the content key the "
            "header is NOT authenticated: use it to look, never to decide."
        ),
    )
    p.add_argument("file", type=Path, help="a sealed model (.esm)")
    p.add_argument("--json", action="store_true", help="print the header as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with open_input(args.file, "the sealed model") as src:
        header = inspect_sealed_model(src)
    summary = header_summary(header)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    width = max(len(k) for k in summary)
    for key, value in summary.items():
        shown = ", ".join(value) if isinstance(value, list) else value
        print(f"{key:<{width}}  {shown}")
    print("(header parsed without a key: not authenticated)")
    return 0
