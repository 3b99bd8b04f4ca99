"""``edgeseal-agent enroll --config C --token-file F [--json]``: enroll the device's
attestation key with the OTA server (see :mod:`edgeseal.device_agent.enroll`).

Run once per device at the factory or on first install, after the operator
added the device (``edgeseal-server device add``) and with an operator token
in a file (never on the command line: every user of the host can read
those). The TPM is opened here, so the agent must be stopped (swtpm serves
one connection; a real TPM would also interleave our commands with the
agent's). Exit status 0 when the server confirmed the enrollment, 1 otherwise
with the server's or the TPM's reason.

When the server runs an MQTT broker it answers the device's broker login:
the password goes to the configuration's ``mqtt_password_file`` and a
drop-in ``FILE.d/50-mqtt.toml`` names ``mqtt_url`` and that file, so the next
``edgeseal-agent run`` connects (:func:`~edgeseal.device_agent.enroll.install_mqtt_credentials`).
The configuration is read again afterwards, and a warning says so when the
environment or a later drop-in overrides what was written. The password is
never printed.

The finish request also names the *policy authority* of the device's signed
PCR policy (read as ``run`` reads it: the emulated device's, or
``pcr_policy_path``), so the server accepts boot states that authority
approves later (an OS update) in attestation and attested key release; a
device without a policy file sends null and only its enrolled boot state
passes. An unreadable or malformed policy file stops enrollment (``run``
would not start with it either).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from edgeseal.device_agent.cli.run_cmd import add_config_flag, config_from_args, config_path
from edgeseal.device_agent.config import AgentConfig
from edgeseal.hardware.errors import HardwareError
from edgeseal.hardware.policy import SignedPCRPolicy
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
            "in this TPM, and quote the boot PCRs as the device's baseline; the policy "
            "authority of the device's signed PCR policy goes with it, so boot states it "
            "approves later pass attestation too. When the server "
            "runs an MQTT broker, the broker password it issues is written to "
            "mqtt_password_file (0600) and FILE.d/50-mqtt.toml sets mqtt_url and "
            "mqtt_password_file. The agent must not be running."
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
    policy = current_policy(config)
    client = EnrollmentClient(config.server_url, token)
    try:
        with open_config_backend(config) as backend:
            record = enroll(backend, client, config.device_id, pcr_policy=policy)
    except ClientError as exc:
        if exc.status is None:
            raise
        raise CLIError(f"the server refused the enrollment: {exc.diagnostics()}") from exc
    except HardwareError as exc:
        raise CLIError(f"the TPM refused: {exc.diagnostics()}") from exc
    path = write_enrollment(state_dir, record)
    mqtt = install_mqtt(args, config, record.mqtt) if record.mqtt is not None else None
    if args.json:
        doc = {**record.to_json(), "ak_created": record.ak_created, "file": str(path)}
        print(json.dumps(doc | {"mqtt": mqtt}))
        return 0
    how = "created" if record.ak_created else "reused"
    print(f"enrolled {record.device_id} with {record.server}")
    print(f"attestation key ({how}): name {record.ak_name}")
    print(f"EK certificate sha256: {record.ek_certificate_sha256}")
    print(f"boot baseline: PCR {', '.join(record.pcrs)} (sha256)")
    authority = record.pcr_policy_authority_fingerprint
    if authority is not None:
        print(
            f"PCR policy authority: {authority} (boot states it approves pass attestation "
            "and attested key release)"
        )
    else:
        print(
            "PCR policy authority: none (no signed PCR policy on this device): only the "
            "baseline passes attestation"
        )
    print(f"recorded in {path}")
    if mqtt is not None:
        print(f"MQTT broker {mqtt['url']} (user {mqtt['username']}):")
        print(f"  password written to {mqtt['password_file']} (0600)")
        print(f"  {mqtt['drop_in']} sets mqtt_url and mqtt_password_file for `run`")
    return 0


def current_policy(config: AgentConfig) -> SignedPCRPolicy | None:
    """The signed PCR policy ``run`` would start with, or None when the device has none."""
    from edgeseal.device_agent.daemon import DaemonError, NoSignedPolicyError, read_signed_policy

    try:
        return read_signed_policy(config)
    except NoSignedPolicyError as exc:
        log.info("enroll: %s; sending no policy authority", exc.message)
        return None
    except (DaemonError, HardwareError) as exc:
        raise CLIError(
            f"cannot read the device's signed PCR policy: {exc.diagnostics()}; fix it "
            "(the agent will not start with it either), then enroll"
        ) from exc


def install_mqtt(args: argparse.Namespace, config: AgentConfig, credentials: Any) -> dict[str, str]:
    """Install the broker login (see the module docstring); what was written, no password."""
    from edgeseal.device_agent.enroll import install_mqtt_credentials

    try:
        done = install_mqtt_credentials(
            credentials,
            config_file=config_path(args),
            password_file=config.mqtt_password_file,
            state_dir=Path(config.state_dir),
        )
    except OSError as exc:
        raise CLIError(
            f"enrolled, but the MQTT credentials could not be installed: "
            f"{exc.strerror or exc} ({exc.filename}); fix that and enroll again, which issues "
            "a new password"
        ) from None
    effective = config_from_args(args)
    if effective.mqtt_url != done.url or Path(effective.mqtt_password_file) != done.password_file:
        print(
            f"warning: the environment or a drop-in after {done.drop_in.name} overrides it: "
            f"`run` will use mqtt_url {effective.mqtt_url!r} and mqtt_password_file "
            f"{str(effective.mqtt_password_file)!r}",
            file=sys.stderr,
        )
    return {
        "url": done.url,
        "username": done.username,
        "password_file": str(done.password_file),
        "drop_in": str(done.drop_in),
    }
