"""``edgeseal-agent enroll --config C --token-file F [--json]``: enroll the device's
attestation key with the OTA server (see :mod:`edgeseal.device_agent.enroll`).

Run once per device at the factory or on first install, after the operator
added the device (``edgeseal-server device add``) and with an operator token
in a file (never on the command line: every user of the host can read
those). The TPM is opened here, so the agent must be stopped (swtpm serves
one connection; a real TPM would also interleave our commands with the
agent's). Exit status 0 when the server confirmed the enrollment, 1 otherwise
with the server's or the TPM's reason.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from edgeseal.device_agent.cli.run_cmd import add_config_flag, config_from_args
from edgeseal.hardware.errors import HardwareError
from edgeseal.sdk.cli.common import CLIError
from edgeseal.sdk.client import ClientError

log = logging.getLogger(__name__)

#: A token file holds one line; anything larger is not one.
MAX_TOKEN_FILE_BYTES = 4096


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "enroll",
        help="enroll this device's attestation key with the OTA server (EK, credential, quote)",
        description=(
            "Create (or reuse) the attestation key in the TPM, send it with the TPM's EK "
            "certificate to the OTA server, prove with TPM2_ActivateCredential that both live "
            "in this TPM, and quote the boot PCRs as the device's baseline. The agent must "
            "not be running."
        ),
    )
    add_config_flag(p)
    p.add_argument(
        "--token-file",
        type=Path,
        required=True,
        help="file holding an operator (or admin) API token of the OTA server",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def read_token_file(path: Path) -> str:
    """The token: the first line of ``path`` (at most 4 KiB); never logged."""
    try:
        with Path(path).open("rb") as handle:
            data = handle.read(MAX_TOKEN_FILE_BYTES + 1)
            mode = Path(path).stat().st_mode
    except OSError as exc:
        raise CLIError(f"cannot read the token file {path}: {exc.strerror}") from None
    if len(data) > MAX_TOKEN_FILE_BYTES:
        raise CLIError(f"{path} is too large for a token file")
    token = data.decode("utf-8", errors="replace").strip()
    if not token or "\n" in token:
        raise CLIError(f"{path} must hold one token line")
    if mode & 0o077:
        log.warning("the token file %s is readable by others (chmod 600 it)", path)
    return token


def run(args: argparse.Namespace) -> int:
    from edgeseal.device_agent.daemon import open_config_backend, read_pid
    from edgeseal.device_agent.enroll import EnrollmentClient, enroll, write_enrollment

    config = config_from_args(args)
    if not config.device_id:
        raise CLIError("the configuration names no device_id")
    if not config.server_url:
        raise CLIError("the configuration names no server_url (the OTA server to enroll with)")
    token = read_token_file(args.token_file)
    state_dir = Path(config.state_dir)
    pid = read_pid(state_dir)
    if pid is not None:
        raise CLIError(
            f"the agent runs (pid {pid}) and holds the TPM: stop it first "
            "(systemctl stop edgeseal-agent), enroll, then start it again"
        )
    client = EnrollmentClient(config.server_url, token)
    try:
        with open_config_backend(config) as backend:
            record = enroll(backend, client, config.device_id)
    except ClientError as exc:
        if exc.status is None:
            raise
        raise CLIError(f"the server refused the enrollment: {exc.diagnostics()}") from exc
    except HardwareError as exc:
        raise CLIError(f"the TPM refused: {exc.diagnostics()}") from exc
    path = write_enrollment(state_dir, record)
    if args.json:
        print(json.dumps({**record.to_json(), "ak_created": record.ak_created, "file": str(path)}))
        return 0
    how = "created" if record.ak_created else "reused"
    print(f"enrolled {record.device_id} with {record.server}")
    print(f"attestation key ({how}): name {record.ak_name}")
    print(f"EK certificate sha256: {record.ek_certificate_sha256}")
    print(f"boot baseline: PCR {', '.join(record.pcrs)} (sha256)")
    print(f"recorded in {path}")
    return 0
