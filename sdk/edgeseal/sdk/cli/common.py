"""Shared by every edgeseal CLI: logging set-up and error reporting."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import Protocol, cast


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
