"""Helpers shared by the ``edgeseal-server`` subcommands: passphrases, JSON output, actor."""

from __future__ import annotations

import argparse
import getpass
import json
import os
from pathlib import Path
from typing import Any

from edgeseal.ota_server.context import ServerContext
from edgeseal.sdk.cli.common import CLIError

MAX_PASSPHRASE_FILE = 4096


def add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def add_passphrase_file(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--passphrase-file",
        type=Path,
        help="file holding the key passphrase (else env EDGESEAL_KEY_PASSPHRASE)",
    )


def passphrase(args: argparse.Namespace) -> str:
    """The key passphrase: from ``--passphrase-file`` or ``EDGESEAL_KEY_PASSPHRASE``.

    Never a plain argument: command lines are visible to every user of the host.
    """
    path: Path | None = args.passphrase_file
    if path is not None:
        try:
            with path.open("rb") as handle:
                raw = handle.read(MAX_PASSPHRASE_FILE + 1)
        except OSError as exc:
            raise CLIError(f"cannot read passphrase file {path}: {exc.strerror}") from None
        if len(raw) > MAX_PASSPHRASE_FILE:
            raise CLIError(f"passphrase file {path} is too large")
        text = raw.decode("utf-8", errors="strict").rstrip("\r\n")
    else:
        text = os.environ.get("EDGESEAL_KEY_PASSPHRASE", "")
    if not text:
        raise CLIError("no key passphrase: use --passphrase-file FILE or EDGESEAL_KEY_PASSPHRASE")
    return text


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
