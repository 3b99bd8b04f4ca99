"""tuf-conformance client-under-test CLI, on the agent's own TUF code path.

The grammar is tuf-conformance's ``CLIENT-CLI.md``::

    CLIENT --metadata-dir DIR init TRUSTED_ROOT
    CLIENT --metadata-dir DIR --metadata-url URL refresh
    CLIENT --metadata-dir DIR --metadata-url URL --target-name PATH [--target-name PATH ...]
           --target-base-url URL --target-dir DIR download

Exit status 0 when the command fully succeeded, 1 otherwise (also for a usage
error). Every command runs :class:`~edgeseal.device_agent.tuf_client.AgentTUFClient`,
the class the agent uses, so the suite exercises the device's TUF client.

Artifacts are stored flat in the target directory under their URL-quoted
target path (``a/b.txt`` -> ``a%2Fb.txt``), the same name every time, as the
protocol asks. An artifact already there with matching length and hashes is
not fetched again. Downloads in progress live in a scratch directory beside
the target directory (same file system, so the final rename is atomic), never
inside it: the suite counts every file in the target directory as an artifact.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from urllib import parse

from edgeseal.device_agent.tuf_client import ROOT_FILE, AgentTUFClient
from edgeseal.device_agent.tuf_config import TUFClientConfig
from edgeseal.device_agent.tuf_errors import TUFClientError
from edgeseal.sdk.files import atomic_write

logger = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgeseal-tuf-conformance",
        description="tuf-conformance client-under-test, using the edgeseal agent's TUF client",
    )
    parser.add_argument("--metadata-dir", type=Path, required=True)
    parser.add_argument("--metadata-url")
    parser.add_argument("--target-name", action="append", default=[])
    parser.add_argument("--target-base-url")
    parser.add_argument("--target-dir", type=Path)
    parser.add_argument("--max-root-rotations", type=int, default=None)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logs and tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)
    init = commands.add_parser("init", help="trust the given root.json")
    init.add_argument("trusted_root", type=Path)
    commands.add_parser("refresh", help="update the top-level metadata")
    commands.add_parser("download", help="download and verify --target-name artifacts")
    return parser


def _config(args: argparse.Namespace) -> TUFClientConfig:
    if args.max_root_rotations is None:
        return TUFClientConfig()
    return TUFClientConfig(max_root_rotations=args.max_root_rotations)


def _client(args: argparse.Namespace, download_dir: Path, target_base_url: str) -> AgentTUFClient:
    return AgentTUFClient(
        args.metadata_dir,
        args.metadata_url,
        target_base_url,
        download_dir,
        config=_config(args),
    )


def _init(args: argparse.Namespace) -> None:
    # No request and no check, as the protocol says: trust is on first use.
    args.metadata_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(args.metadata_dir / ROOT_FILE, args.trusted_root.read_bytes())


def _refresh(args: argparse.Namespace, scratch: Path) -> None:
    _client(args, scratch, args.metadata_url).refresh()


def _download(args: argparse.Namespace, target_dir: Path, scratch: Path) -> None:
    client = _client(args, scratch, args.target_base_url)
    client.refresh()
    for name in args.target_name:
        info = client.get_targetinfo(name)
        dest = target_dir / parse.quote(name, "")
        if client.find_cached_target(info, dest) is not None:
            logger.info("%s: already present and verified, not fetched", name)
            continue
        client.download_target(info).replace(dest)


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if args.command == "init":
        _init(args)
        return
    if args.metadata_url is None:
        parser.error(f"{args.command} needs --metadata-url")
    if args.command == "download":
        if not args.target_name or args.target_base_url is None or args.target_dir is None:
            parser.error("download needs --target-name, --target-base-url and --target-dir")
        target_dir: Path = args.target_dir
        target_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(
            prefix=".edgeseal-tuf-", dir=target_dir.resolve().parent
        ) as scratch:
            _download(args, target_dir, Path(scratch))
        return
    with tempfile.TemporaryDirectory(prefix="edgeseal-tuf-") as scratch:
        _refresh(args, Path(scratch))


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status (0 success, 1 any failure)."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits 2 on usage errors; the protocol wants 1
        return 0 if e.code in (0, None) else 1
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        _run(args, parser)
    except SystemExit as e:
        return 0 if e.code in (0, None) else 1
    except TUFClientError as e:
        logger.debug("failure", exc_info=True)
        print(f"error: {e.diagnostics()}", file=sys.stderr)
        return 1
    except OSError as e:
        logger.debug("failure", exc_info=True)
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
