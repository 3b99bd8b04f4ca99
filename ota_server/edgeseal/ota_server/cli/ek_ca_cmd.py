"""``edgeseal-server ek-ca add``: trust a TPM vendor's EK CA certificate for enrollment."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from sqlalchemy.orm import Session

from edgeseal.ota_server.cli.common import add_json, cli_actor, open_context, print_json
from edgeseal.ota_server.ek_ca import MAX_CA_FILE, add_ek_cas, certificate_sha256
from edgeseal.sdk.cli.common import CLIError, open_input


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "ek-ca", help="the EK CA certificates enrollment trusts"
    )
    esub = p.add_subparsers(dest="ek_ca_command", required=True)
    a: argparse.ArgumentParser = esub.add_parser(
        "add",
        help="trust the CA certificate(s) in a PEM file (root or intermediate)",
        description=(
            "Check that every certificate in FILE is a CA certificate and copy it into "
            "DIR/ek-ca/. Enrollment accepts a device whose EK certificate chains to these. "
            "Add the TPM vendors' roots and intermediates; for emulated devices, the swtpm "
            "local CA's root and issuer certificates."
        ),
    )
    a.add_argument("file", type=Path, help="PEM file with one or more CA certificates")
    add_json(a)
    a.set_defaults(func=run_add)


def run_add(args: argparse.Namespace) -> int:
    with open_input(args.file, "CA certificate file") as handle:
        pem = handle.read(MAX_CA_FILE + 1)
    if len(pem) > MAX_CA_FILE:
        raise CLIError(f"{args.file} is larger than {MAX_CA_FILE} bytes")
    ctx = open_context(args)
    try:

        def work(_session: Session) -> tuple[list[dict[str, str]], dict[str, Any]]:
            certs = add_ek_cas(ctx.data.ek_ca, pem, source=str(args.file))
            added = [
                {
                    "subject": cert.subject.rfc4514_string(),
                    "sha256": certificate_sha256(cert.public_bytes(serialization.Encoding.DER)),
                }
                for cert in certs
            ]
            return added, {"certificates": added}

        added = ctx.mutate(
            actor=cli_actor(), action="ek-ca.add", target=str(ctx.data.ek_ca), work=work
        )
    finally:
        ctx.close()
    if args.json:
        print_json(added)
    else:
        for cert in added:
            print(f"trusting EK CA {cert['subject']} (sha256 {cert['sha256']})")
    return 0
