"""Shared by every edgeseal CLI: logging set-up and error reporting."""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, Protocol, cast

from edgeseal.sdk.errors import EdgesealError
from edgeseal.sdk.hazmat.format import SealedModelHeader


class _Diagnosable(Protocol):
    def diagnostics(self) -> str: ...


def configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def run_command(args: argparse.Namespace) -> int:
    """Call ``args.func``; print ``diagnostics()`` of an edgeseal error and return 1."""
    configure_logging(int(args.verbose))
    func = cast(Callable[[argparse.Namespace], int], args.func)
    try:
        return func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        diagnostics = getattr(exc, "diagnostics", None)
        if not callable(diagnostics) or args.verbose >= 2:
            raise
        print(f"error: {cast(_Diagnosable, exc).diagnostics()}", file=sys.stderr)
        return 1


class CLIError(EdgesealError):
    """A command-line argument or file the user gave cannot be used."""


def header_summary(header: SealedModelHeader) -> dict[str, Any]:
    """The fields of a sealed model header a person wants to see, JSON-ready."""
    return {
        "format_version": header.format_version,
        "cipher": header.cipher,
        "family": header.family,
        "version": header.version,
        "hardware": list(header.hardware),
        "plaintext_size": header.plaintext_size,
        "digest_alg": header.digest_alg,
        "plaintext_digest": header.plaintext_digest.hex(),
        "chunk_size": header.chunk_size,
        "sealed_size": header.sealed_size,
        "authenticated": header.authenticated,
    }


def open_input(path: Path, what: str) -> BinaryIO:
    """Open a file the user named for reading, or raise a :class:`CLIError` saying why not."""
    try:
        return Path(path).open("rb")
    except OSError as exc:
        raise CLIError(f"cannot read {what} {path}: {exc.strerror}") from exc


#: A passphrase file holds one line; anything larger is not one.
MAX_PASSPHRASE_FILE = 4096


def read_passphrase(path: Path | None, *, prompt: str | None = None) -> bytes:
    """A key passphrase: from ``path``, else ``EDGESEAL_KEY_PASSPHRASE``, else a prompt.

    Never a plain argument: command lines are visible to every user of the host.
    The prompt is offered only with ``prompt`` and a terminal on stdin.
    """
    if path is not None:
        try:
            with Path(path).open("rb") as handle:
                data = handle.read(MAX_PASSPHRASE_FILE + 1)
        except OSError as exc:
            raise CLIError(f"cannot read the passphrase file {path}: {exc.strerror}") from exc
        if len(data) > MAX_PASSPHRASE_FILE:
            raise CLIError(f"{path} is too large to be a passphrase file")
        secret = data.rstrip(b"\r\n")
    elif os.environ.get("EDGESEAL_KEY_PASSPHRASE"):
        secret = os.environ["EDGESEAL_KEY_PASSPHRASE"].encode()
    elif prompt is not None and sys.stdin.isatty():
        secret = getpass.getpass(prompt).encode()
    else:
        how = "--passphrase-file, set EDGESEAL_KEY_PASSPHRASE"
        raise CLIError(f"no passphrase: give {how}" + (", or run in a terminal" if prompt else ""))
    if not secret:
        raise CLIError("an empty passphrase is not allowed")
    return secret
