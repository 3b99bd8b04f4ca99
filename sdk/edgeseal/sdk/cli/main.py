"""``edgeseal``: the release manager's command line: the parser and its subcommands.

Each subcommand lives in its own module exposing ``register(subparsers)``;
the parser it adds has a ``func`` that takes the parsed arguments and returns
an exit code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from edgeseal.sdk.cli import (
    attest_cmd,
    fleet_cmd,
    inspect_cmd,
    keygen_cmd,
    release_cmd,
    seal_cmd,
)
from edgeseal.sdk.cli.common import run_command

_SUBCOMMANDS = (keygen_cmd, seal_cmd, inspect_cmd, release_cmd, fleet_cmd, attest_cmd)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgeseal",
        description=(
            "edgeseal: seal models for edge devices, manage their releases and attest "
            "devices in the field."
        ),
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more output")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in _SUBCOMMANDS:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
