"""``edgeseal release sign``: verify a release's proposal, then sign it with your key.

The published family metadata is read from the server's ``/tuf/metadata/``
and authenticated along the TUF chain (:mod:`edgeseal.sdk.published`) from the
root given by ``--root`` (env ``EDGESEAL_ROOT``), or the server's first root
trusted on first use. The proposal must be exactly that metadata with the
release's target added (or removed, for a yank; or with only its
``rollout_percent`` changed to the server's recorded pending value, for a
rollout change), at the next version
(:func:`edgeseal.sdk.signing.verify_proposal`). Nothing is signed otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path
from typing import Any, Literal

from edgeseal.sdk.cli import common
from edgeseal.sdk.cli.common import CLIError, open_input
from edgeseal.sdk.sealed import inspect_sealed_model

MAX_ROOT_FILE = 1024 * 1024


def register(actions: Any, common: argparse.ArgumentParser) -> None:
    p: argparse.ArgumentParser = actions.add_parser(
        "sign",
        parents=[common],
        allow_abbrev=False,
        help="verify a release's proposal and sign it",
        description=(
            "Fetch the release's proposed family metadata, check that it is exactly the "
            "published metadata plus this release (or minus it, for a yank; or with only "
            "its rollout percentage changed, for a rollout), show what it does, and sign it "
            "with your release-manager key."
        ),
    )
    p.add_argument("release", help="release id")
    p.add_argument(
        "--key", required=True, type=Path, help="your key (passphrase-encrypted PKCS#8 PEM)"
    )
    p.add_argument(
        "--passphrase-file",
        type=Path,
        help="file holding the key's passphrase (otherwise env EDGESEAL_KEY_PASSPHRASE, "
        "or a prompt when stdin is a terminal)",
    )
    p.add_argument(
        "--sealed-model",
        type=Path,
        help="the sealed model you expect (from 'release create -o'): its size and sha256 "
        "must be the proposal's",
    )
    p.add_argument(
        "--root",
        type=Path,
        default=os.environ.get("EDGESEAL_ROOT"),
        help="a root.json you trust (env EDGESEAL_ROOT); without it the server's first "
        "root is trusted on first use",
    )
    p.add_argument(
        "--percent",
        type=int,
        help="for a rollout change: the percentage you expect it to publish (otherwise the "
        "server's pending value, shown before you confirm)",
    )
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(func=run)


def read_passphrase(args: argparse.Namespace) -> bytes:
    return common.read_passphrase(args.passphrase_file, prompt=f"passphrase for {args.key}: ")


def _local_sealed_model(path: Path) -> tuple[int, str, Any]:
    digest = hashlib.sha256()
    size = 0
    with open_input(path, "the sealed model") as handle:
        header = inspect_sealed_model(handle)
        handle.seek(0)
        while block := handle.read(1024 * 1024):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest(), header


def run(args: argparse.Namespace) -> int:
    from edgeseal.sdk.cli.release_cmd import make_client, print_json
    from edgeseal.sdk.published import published_family
    from edgeseal.sdk.signing import (
        ExpectedChange,
        load_release_signer,
        sign_proposal,
        verify_proposal,
    )

    client = make_client(args)
    record = client.get_release(args.release)
    if record.family is None or record.version is None:
        raise CLIError(f"the server's record of release {record.id} lacks family or version")
    action: Literal["add", "remove", "rollout"]
    percent: int | None = None
    if record.state == "awaiting-signatures":
        action = "add"
    elif record.state == "yank-awaiting-signatures":
        action = "remove"
    elif record.state == "rollout-awaiting-signatures":
        action = "rollout"
        percent = _expected_percent(record.id, record.raw.get("pending_rollout_percent"), args)
    else:
        raise CLIError(f"release {record.id} is {record.state}: there is nothing to sign")
    length, sha256 = record.sealed_size, record.sealed_sha256
    header = None
    if args.sealed_model is not None:
        local_size, local_sha256, header = _local_sealed_model(args.sealed_model)
        if (length is not None and length != local_size) or (
            sha256 is not None and sha256 != local_sha256
        ):
            raise CLIError(
                f"{args.sealed_model} is not the sealed model the server recorded for "
                f"release {record.id}"
            )
        length, sha256 = local_size, local_sha256
    trusted_root = None
    if args.root is not None:
        root_path = Path(args.root)
        with open_input(root_path, "the trusted root") as handle:
            trusted_root = handle.read(MAX_ROOT_FILE + 1)
        if len(trusted_root) > MAX_ROOT_FILE:
            raise CLIError(f"{root_path} is too large to be root metadata")

    published = published_family(client.fetch_tuf_metadata, record.family, trusted_root)
    proposal = client.proposal(record.id)
    expected = ExpectedChange(
        record.family, record.version, action, length, sha256, rollout_percent=percent
    )
    summary = verify_proposal(proposal, published.metadata, expected)
    release = summary.release
    if header is not None and (
        header.family != release.family
        or header.version != release.version
        or set(header.hardware) != set(release.hardware)
        or header.plaintext_digest != release.plaintext.digest
    ):
        raise CLIError(f"{args.sealed_model}'s header does not match the proposal's metadata")

    signer = load_release_signer(args.key, read_passphrase(args))
    keyid = signer.public_key.keyid
    if keyid not in published.keyids:
        raise CLIError(
            f"your key {keyid[:16]}... is not one of the {len(published.keyids)} release-manager "
            f"keys of family {record.family}"
        )
    notes = []
    if length is None or sha256 is None:
        notes.append("the sealed model's size and hash were not checked independently")
    if not published.root_pinned:
        notes.append("the TUF root was trusted on first use (give --root to pin it)")
    if not args.json:
        _print_summary(record.id, summary.to_json(), notes)
    if not args.yes and not args.json and sys.stdin.isatty():
        answer = input("sign this proposal? [y/N] ").strip().lower()
        if answer not in ("y", "yes"):
            print("not signed", file=sys.stderr)
            return 1
    keyid, sig = sign_proposal(proposal, signer)
    status = client.add_signature(record.id, keyid, sig)
    if args.json:
        print_json(
            {
                "release": record.id,
                "keyid": keyid,
                "signatures": status.signatures,
                "threshold": status.threshold,
                "state": status.state,
                "proposal": summary.to_json(),
                "notes": notes,
            }
        )
    else:
        print(f"signed: {status.signatures} of {status.threshold} signatures; {status.state}")
    return 0


def _expected_percent(release_id: str, pending: Any, args: argparse.Namespace) -> int:
    """The rollout percentage to verify: ``--percent`` if given (it must be the server's)."""
    if type(pending) is not int:
        raise CLIError(f"the server's record of release {release_id} lacks its pending percentage")
    if args.percent is not None and args.percent != pending:
        raise CLIError(
            f"the server's pending rollout of {release_id} is {pending}%, not the "
            f"{args.percent}% you expect: not signed"
        )
    return pending


def _print_summary(release_id: str, summary: dict[str, Any], notes: list[str]) -> None:
    verb = {"add": "publishes", "remove": "YANKS"}.get(summary["action"], "CHANGES THE ROLLOUT OF")
    previous = summary["previous_metadata_version"]
    change = f"version {previous} -> " if previous is not None else "first version, "
    if summary["action"] == "rollout":
        print(
            f"release {release_id}: rollout_percent {summary['previous_rollout_percent']}% -> "
            f"{summary['rollout_percent']}%, nothing else changes"
        )
    print(
        f"release {release_id} {verb} {summary['target_path']} "
        f"({summary['family']} metadata {change}{summary['metadata_version']}, "
        f"{summary['unchanged_targets']} other target(s) unchanged)"
    )
    for key in (
        "hardware",
        "channel",
        "rollout_percent",
        "key_release",
        "min_agent_version",
        "length",
        "sha256",
        "plaintext_digest",
        "expires",
    ):
        value = summary[key]
        shown = ", ".join(value) if isinstance(value, list) else value
        print(f"  {key:<18} {shown}")
    for note in notes:
        print(f"  note: {note}")
