"""``edgeseal-server``: the OTA server's command line.

The TUF repository, management API and server process arrive with the OTA
server issue; until then this entry point reports its version only.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import version


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgeseal-server",
        description="edgeseal OTA server (TUF repository of model releases).",
    )
    parser.add_argument("--version", action="version", version=f"edgeseal {version('edgeseal')}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    build_parser().parse_args(argv)
    print("edgeseal-server: no subcommands yet (see the OTA server issue)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
