"""Helpers shared by the ``edgeseal-server`` subcommands: passphrases, JSON output, actor."""

from __future__ import annotations

import argparse
import getpass
import json
import os
from pathlib import Path
from typing import Any

from edgeseal.ota_server.context import ServerContext
from edgeseal.sdk.cli.common import CLIError, read_passphrase


def add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def add_passphrase_file(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--passphrase-file",
        type=Path,
        help="file holding the key passphrase (else env EDGESEAL_KEY_PASSPHRASE)",
    )


def passphrase(args: argparse.Namespace) -> str:
    """The officers' key passphrase: ``--passphrase-file`` or ``EDGESEAL_KEY_PASSPHRASE``."""
    try:
        return read_passphrase(args.passphrase_file).decode("utf-8")
    except UnicodeDecodeError:
        raise CLIError("the passphrase is not UTF-8 text") from None


def cli_actor() -> str:
    """Who ran a local command, for the audit log."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid{os.getuid()}"
    return f"cli:{user}"


def open_context(args: argparse.Namespace) -> ServerContext:
    return ServerContext.open(Path(args.data))


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))
