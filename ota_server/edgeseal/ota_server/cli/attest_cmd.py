"""``edgeseal-server attest``: export the signed trust bundle and its public key for technicians."""

from __future__ import annotations

import argparse
import socket
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from edgeseal.ota_server.bundle_key import bundle_public_key_pem
from edgeseal.ota_server.cli.common import add_json, cli_actor, open_context, print_json
from edgeseal.ota_server.trust_bundles import DEFAULT_VALID_DAYS, export_bundle
from edgeseal.sdk.files import atomic_write


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "attest", help="trust bundles for offline attestation by field technicians"
    )
    asub = p.add_subparsers(dest="attest_command", required=True)
    b: argparse.ArgumentParser = asub.add_parser(
        "bundle",
        help="write a signed trust bundle: enrolled devices, their baselines, releases",
        description=(
            "Write the trust bundle that `edgeseal attest` checks devices against offline: "
            "every enrolled device (AK, EK certificate hash, boot-state baseline, revoked or "
            "not) and every published or yanked release with its plaintext digest, signed "
            "with the server's bundle key. Export a fresh one after a revocation."
        ),
    )
    b.add_argument("--out", type=Path, required=True, help="where to write the bundle (JSON)")
    b.add_argument(
        "--valid-days",
        type=int,
        default=DEFAULT_VALID_DAYS,
        help=f"days until the bundle expires (default {DEFAULT_VALID_DAYS})",
    )
    b.add_argument("--issuer", help="issuer name in the bundle (default edgeseal-server@HOST)")
    add_json(b)
    b.set_defaults(func=run_bundle)
    k: argparse.ArgumentParser = asub.add_parser(
        "bundle-key", help="write the public key that signs trust bundles (technicians pin it)"
    )
    k.add_argument("--out", type=Path, required=True, help="where to write the PEM public key")
    k.set_defaults(func=run_bundle_key)


def run_bundle(args: argparse.Namespace) -> int:
    issuer = args.issuer or f"edgeseal-server@{socket.gethostname()}"
    ctx = open_context(args)
    try:

        def work(session: Session) -> tuple[dict[str, Any], dict[str, Any]]:
            data, payload = export_bundle(
                session, ctx.data.keys, now=ctx.now(), valid_days=args.valid_days, issuer=issuer
            )
            atomic_write(args.out, data, mode=0o644)
            summary = {
                "out": str(args.out),
                "devices": len(payload["devices"]),
                "revoked": sum(1 for d in payload["devices"] if d["revoked"]),
                "releases": len(payload["releases"]),
                "expires": payload["expires"],
            }
            return summary, summary

        summary = ctx.mutate(
            actor=cli_actor(), action="attest.bundle", target="trust-bundle", work=work
        )
    finally:
        ctx.close()
    if args.json:
        print_json(summary)
    else:
        print(
            f"trust bundle with {summary['devices']} device(s) ({summary['revoked']} revoked) "
            f"and {summary['releases']} release(s), valid until {summary['expires']}, "
            f"written to {args.out}"
        )
    return 0


def run_bundle_key(args: argparse.Namespace) -> int:
    ctx = open_context(args)
    try:
        pem = bundle_public_key_pem(ctx.data.keys)
    finally:
        ctx.close()
    atomic_write(args.out, pem, mode=0o644)
    print(f"trust bundle public key written to {args.out}")
    return 0
