"""``edgeseal``: the release manager's command line (parser in :mod:`.main`).

Kept empty of imports on purpose: the device agent's and the server's CLIs
import :mod:`edgeseal.sdk.cli.common`, and importing this package must not
pull in every release-manager subcommand (HTTP client, TLS) into a daemon.
"""

from __future__ import annotations

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """The ``edgeseal`` console script."""
    from edgeseal.sdk.cli.main import main as _main

    return _main(argv)
