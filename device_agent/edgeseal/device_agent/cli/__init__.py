"""``edgeseal-agent``: the device agent's command line.

Each subcommand lives in its own module exposing ``register(subparsers)``,
which adds a parser whose ``func`` takes the parsed arguments and returns an
exit code. Library errors carry ``diagnostics()``: they are printed and the
command exits non-zero; ``-v`` shows the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from edgeseal.device_agent.cli import check_now as check_now
from edgeseal.device_agent.cli import emulate as emulate
from edgeseal.device_agent.cli import enroll_cmd as enroll_cmd
from edgeseal.device_agent.cli import open_cmd as open_cmd
from edgeseal.device_agent.cli import provision as provision
from edgeseal.device_agent.cli import rollback_cmd as rollback_cmd
from edgeseal.device_agent.cli import run_cmd as run_cmd
from edgeseal.device_agent.cli import status_cmd as status_cmd
from edgeseal.sdk.cli.common import run_command

_SUBCOMMANDS = (
    emulate,
    open_cmd,
    provision,
    enroll_cmd,
    run_cmd,
    status_cmd,
    check_now,
    rollback_cmd,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgeseal-agent",
        description="edgeseal device agent: sealed models, TPM keys, emulated devices.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more output")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in _SUBCOMMANDS:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TSS2_LOG", "all+none")
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_command(args)


if __name__ == "__main__":
    sys.exit(main())
