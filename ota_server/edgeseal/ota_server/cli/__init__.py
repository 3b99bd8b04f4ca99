"""``edgeseal-server``: the OTA server's command line (for the fleet operator).

Each subcommand lives in its own module exposing ``register(subparsers)``,
which adds a parser whose ``func`` takes the parsed arguments and returns an
exit code. The data directory comes from ``--data DIR`` or the environment
variable ``EDGESEAL_SERVER_DATA``. Library errors carry ``diagnostics()``: they
are printed and the command exits non-zero; ``-vv`` shows the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path

from edgeseal.ota_server.cli import attest_cmd as attest_cmd
from edgeseal.ota_server.cli import audit_cmd as audit_cmd
from edgeseal.ota_server.cli import device_cmd as device_cmd
from edgeseal.ota_server.cli import ek_ca_cmd as ek_ca_cmd
from edgeseal.ota_server.cli import family_cmd as family_cmd
from edgeseal.ota_server.cli import init_cmd as init_cmd
from edgeseal.ota_server.cli import refresh_cmd as refresh_cmd
from edgeseal.ota_server.cli import release_cmd as release_cmd
from edgeseal.ota_server.cli import root_cmd as root_cmd
from edgeseal.ota_server.cli import run_cmd as run_cmd
from edgeseal.ota_server.cli import token_cmd as token_cmd
from edgeseal.sdk.cli.common import run_command

_SUBCOMMANDS = (
    init_cmd,
    run_cmd,
    token_cmd,
    family_cmd,
    device_cmd,
    ek_ca_cmd,
    attest_cmd,
    release_cmd,
    audit_cmd,
    refresh_cmd,
    root_cmd,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgeseal-server",
        description="edgeseal OTA server: TUF repository of model releases, management API.",
    )
    parser.add_argument("--version", action="version", version=f"edgeseal {version('edgeseal')}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more output")
    env = os.environ.get("EDGESEAL_SERVER_DATA")
    parser.add_argument(
        "--data",
        type=Path,
        default=Path(env) if env else None,
        help="the server's data directory (env EDGESEAL_SERVER_DATA)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for module in _SUBCOMMANDS:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.data is None:
        parser.error("say where the data directory is: --data DIR or EDGESEAL_SERVER_DATA")
    return run_command(args)


if __name__ == "__main__":
    sys.exit(main())
