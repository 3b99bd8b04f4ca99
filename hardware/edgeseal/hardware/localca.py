"""A project-local certificate authority for emulated TPMs' EK certificates.

A real TPM ships with an EK certificate from its vendor's CA (Infineon,
NVIDIA...), which is how a server knows it talks to a genuine TPM. For the
emulated device, ``swtpm_setup`` creates the EK and asks ``swtpm_localca`` to
certify it. Debian's default configuration keeps that CA under
``/var/lib/swtpm-localca``, shared by the whole machine; we point both tools
at a CA directory of our own instead, so a demo or test fleet has its own
trust anchor that the OTA server can be told about.

Layout of a CA directory (mode 0700)::

    swtpm_setup.conf                  config for swtpm_setup (--config)
    swtpm-localca.conf                config for swtpm_localca: where its keys live
    swtpm-localca.options             platform-certificate fields
    swtpm-localca-rootca-cert.pem     root CA (self-signed, RSA 3072)   } created by
    swtpm-localca-rootca-privkey.pem                                    } swtpm_localca
    issuercert.pem, signkey.pem       intermediate CA that signs EK     } on first use
    certserial                        last serial number issued

The CA keys are created by ``swtpm_localca`` when it certifies the first EK
(about 0.7 s once); later devices take about 0.7 s each. The root key has no
password (``SWTPM_ROOTCA_PASSWORD`` unset): this CA stands in for a TPM
vendor's and protects only emulated devices.

``swtpm_setup`` 0.7 runs non-interactively as root without ``--runas``
(it then manufactures the TPM as root:root); as another user it needs write
access to the state and CA directories only.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from edgeseal.hardware.errors import EmulatorError

log = logging.getLogger(__name__)

SETUP_CONFIG = "swtpm_setup.conf"
LOCALCA_CONFIG = "swtpm-localca.conf"
LOCALCA_OPTIONS = "swtpm-localca.options"
ROOT_CERT = "swtpm-localca-rootca-cert.pem"
ISSUER_CERT = "issuercert.pem"
#: The file swtpm writes its TPM 2.0 state into (present once provisioned).
TPM2_STATE_FILE = "tpm2-00.permall"

_SETUP_TIMEOUT_S = 120.0
_DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
#: stderr/stdout lines kept in an error message.
_SUMMARY_LINES = 6


@dataclass(frozen=True)
class LocalCA:
    """A CA directory prepared for swtpm_setup and swtpm_localca."""

    ca_dir: Path

    @property
    def setup_config(self) -> Path:
        return self.ca_dir / SETUP_CONFIG

    @property
    def root_cert_path(self) -> Path:
        return self.ca_dir / ROOT_CERT

    @property
    def issuer_cert_path(self) -> Path:
        return self.ca_dir / ISSUER_CERT

    def exists(self) -> bool:
        """True once swtpm_localca has created the CA keys and certificates."""
        return self.root_cert_path.is_file() and self.issuer_cert_path.is_file()

    def root_certificate(self) -> x509.Certificate:
        """The self-signed root: the trust anchor for emulated devices' EK certificates."""
        return _load_cert(self.root_cert_path)

    def issuer_certificate(self) -> x509.Certificate:
        """The intermediate CA that signs the EK and platform certificates."""
        return _load_cert(self.issuer_cert_path)

    def certificates_pem(self) -> bytes:
        """Root then intermediate, PEM: what a verifier (the OTA server) is given."""
        return _read_pem(self.root_cert_path) + _read_pem(self.issuer_cert_path)


def ensure_local_ca(ca_dir: Path) -> LocalCA:
    """Create ``ca_dir`` and its config files if needed; return it.

    Idempotent: files already in place with the same content are left alone,
    so a running provisioning in another process is not disturbed.
    """
    ca_dir = Path(ca_dir).resolve()
    localca_tool = shutil.which("swtpm_localca")
    if localca_tool is None:
        raise EmulatorError(
            "swtpm_localca is not installed: install the Debian package swtpm-tools"
        )
    try:
        ca_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        _write_if_changed(
            ca_dir / LOCALCA_CONFIG,
            f"statedir = {ca_dir}\n"
            f"signingkey = {ca_dir / 'signkey.pem'}\n"
            f"issuercert = {ca_dir / ISSUER_CERT}\n"
            f"certserial = {ca_dir / 'certserial'}\n",
        )
        _write_if_changed(
            ca_dir / LOCALCA_OPTIONS,
            "--platform-manufacturer edgeseal\n"
            "--platform-version 1.0\n"
            "--platform-model edgeseal-emulated\n",
        )
        _write_if_changed(
            ca_dir / SETUP_CONFIG,
            f"create_certs_tool = {localca_tool}\n"
            f"create_certs_tool_config = {ca_dir / LOCALCA_CONFIG}\n"
            f"create_certs_tool_options = {ca_dir / LOCALCA_OPTIONS}\n"
            "active_pcr_banks = sha256\n",
        )
    except OSError as exc:
        raise EmulatorError(f"cannot prepare the swtpm CA directory {ca_dir}: {exc}") from exc
    return LocalCA(ca_dir)


def provision_swtpm_state(state_dir: Path, ca_dir: Path, *, device_id: str) -> LocalCA:
    """Manufacture a TPM 2.0 state in ``state_dir`` with EK certificates from our CA.

    Runs ``swtpm_setup --tpm2 --create-ek-cert --create-platform-cert``: the
    state then holds an RSA 2048 and an ECC P-384 EK, their certificates in
    the TCG NV indices (0x01c00002, 0x01c00016) and a platform certificate,
    with only the sha256 PCR bank active. ``device_id`` becomes the
    certificates' VM id. Refuses to overwrite an existing state.
    """
    if not _DEVICE_ID_RE.fullmatch(device_id):
        raise EmulatorError(
            f"device id {device_id!r} must be 1-64 letters, digits, '.', '_' or '-'"
        )
    setup_tool = shutil.which("swtpm_setup")
    if setup_tool is None:
        raise EmulatorError("swtpm_setup is not installed: install the Debian package swtpm-tools")
    ca = ensure_local_ca(ca_dir)
    state_dir = Path(state_dir).resolve()
    if (state_dir / TPM2_STATE_FILE).exists():
        raise EmulatorError(f"{state_dir} already holds a TPM state; refusing to overwrite it")
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    cmd = [
        setup_tool,
        "--tpm2",
        "--tpmstate",
        str(state_dir),
        "--create-ek-cert",
        "--create-platform-cert",
        "--pcr-banks",
        "sha256",
        "--config",
        str(ca.setup_config),
        "--vmid",
        device_id,
        "--not-overwrite",
    ]
    env = dict(os.environ)
    env.pop("SWTPM_ROOTCA_PASSWORD", None)
    log.debug("running %s", " ".join(cmd))
    try:
        result = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=_SETUP_TIMEOUT_S,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise EmulatorError(
            f"swtpm_setup did not finish within {_SETUP_TIMEOUT_S:.0f} s for {state_dir}"
        ) from exc
    except OSError as exc:
        raise EmulatorError(f"cannot run swtpm_setup: {exc}") from exc
    output = (result.stderr + result.stdout).decode(errors="replace")
    if result.returncode != 0 or not (state_dir / TPM2_STATE_FILE).exists():
        raise EmulatorError(
            f"swtpm_setup failed for {state_dir} (exit status {result.returncode}): "
            f"{_summarise(output)}"
        )
    log.info("provisioned TPM state for %s in %s (CA %s)", device_id, state_dir, ca.ca_dir)
    return ca


def _summarise(output: str) -> str:
    """The lines of swtpm_setup's output that say what went wrong."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    # Its progress lines (the swtpm_localca command lines are kilobytes of hex)
    # say nothing about a failure.
    lines = [line for line in lines if not line.startswith("Invoking ")]
    interesting = [
        line for line in lines if re.search(r"error|fail|cannot|could not|not ", line, re.I)
    ]
    chosen = (interesting or lines)[-_SUMMARY_LINES:]
    return " | ".join(chosen) if chosen else "no output"


def _write_if_changed(path: Path, text: str) -> None:
    data = text.encode()
    try:
        if path.read_bytes() == data:
            return
    except FileNotFoundError:
        pass
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _read_pem(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise EmulatorError(
            f"{path} does not exist: the swtpm CA is created when the first emulated "
            "device is provisioned"
        ) from exc
    except OSError as exc:
        raise EmulatorError(f"cannot read {path}: {exc}") from exc


def _load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(_read_pem(path))
    except ValueError as exc:
        raise EmulatorError(f"{path} is not a PEM certificate") from exc
