"""The emulated device: a swtpm with an EK certificate, measured boot and a bound key.

An emulated device is a directory that a whole demo fleet, a test or a
developer can create in under two seconds and that behaves, from the agent's
side, like a board with a TPM::

    device.json               id, board profile, creation time
    tpm/                      swtpm state (EK, EK certificates, device key),
                              swtpm.pid / swtpm.port / swtpm.log while running
    boot-manifest.json        what "boots": SHA-256 of firmware, bootloader,
                              kernel, rootfs (see measured_boot)
    boot.json                 which swtpm process was measured, and from what
    policy-authority.key.pem  the PCR-policy authority's PRIVATE key (0600)
    pcr-policy.json           SignedPCRPolicy for the approved manifest
    device-key.pub.pem        the device decryption key's public key

``policy-authority.key.pem`` stands in for the embedded team's offline
PCR-policy signing key. On a real device that key is never on the device: the
team signs a PCR policy for each OS image they approve and ships only the
signature (pcr-policy.json). It is kept here so that ``approve()`` can play
the embedded team's part in a demo.

Measured boot: swtpm resets every PCR to zero at each start, so ``start()``
replays the boot manifest into the PCRs (once per swtpm start). Changing the
manifest (``tamper()``) changes nothing until the next start, just as a
modified kernel on disk is measured only at the next boot; ``restart()`` is
that reboot.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgeseal.hardware.backend import KeyBackend, open_backend
from edgeseal.hardware.errors import EmulatorError
from edgeseal.hardware.files import atomic_write
from edgeseal.hardware.localca import LocalCA, provision_swtpm_state
from edgeseal.hardware.measured_boot import (
    BOOT_COMPONENTS,
    BootManifest,
    expected_pcrs,
    measure,
)
from edgeseal.hardware.policy import SignedPCRPolicy, authority_fingerprint, sign_pcr_policy
from edgeseal.hardware.profiles import BoardProfile, load_profile
from edgeseal.hardware.swtpm import SwtpmProcess

log = logging.getLogger(__name__)

DEVICE_FORMAT = "edgeseal-emulated-device"
DEVICE_VERSION = 1
DEVICE_FILE = "device.json"
TPM_DIR = "tpm"
MANIFEST_FILE = "boot-manifest.json"
BOOT_FILE = "boot.json"
AUTHORITY_KEY_FILE = "policy-authority.key.pem"
POLICY_FILE = "pcr-policy.json"
DEVICE_KEY_PUB_FILE = "device-key.pub.pem"
LOCK_FILE = ".lock"
#: device.json and boot.json are a few hundred bytes; refuse anything absurd.
_MAX_STATE_FILE_BYTES = 64 * 1024


class EmulatedDevice:
    """One emulated device in ``state_dir`` (created with :meth:`create`)."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir).resolve()
        self._swtpm = SwtpmProcess(self.state_dir / TPM_DIR)
        info = _read_json(self.state_dir / DEVICE_FILE, "device file")
        if info.get("format") != DEVICE_FORMAT or info.get("version") != DEVICE_VERSION:
            raise EmulatorError(
                f"{self.state_dir / DEVICE_FILE} is not a version {DEVICE_VERSION} "
                "emulated-device file"
            )
        try:
            self.device_id = str(info["id"])
            self.profile_name = str(info["profile"])
            self.created = str(info["created"])
        except KeyError as exc:
            raise EmulatorError(f"{self.state_dir / DEVICE_FILE} lacks {exc.args[0]!r}") from exc
        self.profile: BoardProfile = load_profile(self.profile_name)

    # -- creation ---------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        state_dir: Path,
        *,
        profile: str | Path = "emulated",
        device_id: str | None = None,
        ca_dir: Path | None = None,
        running: bool = False,
        now: dt.datetime | None = None,
    ) -> EmulatedDevice:
        """Manufacture a device: TPM state with EK certificate, keys, signed PCR policy.

        ``ca_dir`` (default ``state_dir.parent / "swtpm-ca"``) is shared by a
        fleet of emulated devices. The device is left stopped unless
        ``running`` is true.
        """
        state_dir = Path(state_dir).resolve()
        board = load_profile(profile)
        profile_ref = str(Path(profile).resolve()) if _is_path(profile) else board.id
        device_id = device_id or f"emu-{secrets.token_hex(4)}"
        ca_dir = Path(ca_dir) if ca_dir is not None else state_dir.parent / "swtpm-ca"
        try:
            state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise EmulatorError(f"cannot create {state_dir}: {exc}") from exc
        with _locked(state_dir):
            if (state_dir / DEVICE_FILE).exists() or (state_dir / TPM_DIR).exists():
                raise EmulatorError(
                    f"{state_dir} already holds an emulated device (or a failed attempt at "
                    "one): remove the directory to create a new device there"
                )
            provision_swtpm_state(state_dir / TPM_DIR, ca_dir, device_id=device_id)
            authority = ec.generate_private_key(ec.SECP256R1())
            _atomic_write(
                state_dir / AUTHORITY_KEY_FILE,
                authority.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ),
                mode=0o600,
            )
            _atomic_write(state_dir / MANIFEST_FILE, BootManifest.default().to_bytes())
            created = (now or dt.datetime.now(dt.UTC)).isoformat(timespec="seconds")
            device_doc = {
                "format": DEVICE_FORMAT,
                "version": DEVICE_VERSION,
                "id": device_id,
                "profile": profile_ref,
                "created": created,
                "ca_dir": str(Path(ca_dir).resolve()),
            }
            _atomic_write(state_dir / DEVICE_FILE, _json_bytes(device_doc))
        device = cls(state_dir)
        try:
            device.start()
            with device.backend() as backend:
                public = backend.create_device_key(authority.public_key())
            _atomic_write(
                state_dir / DEVICE_KEY_PUB_FILE,
                public.public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                ),
            )
            device.approve()
        except BaseException:
            device.stop()
            raise
        if not running:
            device.stop()
        log.info("created emulated device %s (%s) in %s", device_id, board.id, state_dir)
        return device

    # -- power ------------------------------------------------------------------------

    def start(self) -> str:
        """Power on: start swtpm (detached) and measure the boot manifest; return the TCTI.

        Idempotent: on a running, already measured device this returns the
        TCTI and extends nothing (a second measurement would change the PCRs).
        """
        with _locked(self.state_dir):
            if self._swtpm.running():
                if self._measured_boot_done():
                    return self._swtpm.tcti
                # A start() died between swtpm start and the end of measured
                # boot: the PCRs may be half-extended. Reset by restarting.
                log.warning("swtpm of %s was not measured; restarting it", self.device_id)
                self._swtpm.stop()
            manifest = self.manifest()
            tcti = self._swtpm.start(detach=True)
            try:
                with open_backend(tcti) as backend:
                    backend.flush_transients()
                    measure(backend, manifest, self.profile)
                boot = {
                    "pid": self._swtpm.pid(),
                    "port": self._swtpm.port,
                    "manifest": manifest.to_json()["components"],
                }
                _atomic_write(self.state_dir / BOOT_FILE, _json_bytes(boot))
            except BaseException:
                self._swtpm.stop()
                (self.state_dir / BOOT_FILE).unlink(missing_ok=True)
                raise
            log.info("started emulated device %s: %s", self.device_id, tcti)
            return tcti

    def stop(self) -> None:
        """Power off: stop swtpm. Its state (keys, NV) persists; PCRs reset at next start."""
        with _locked(self.state_dir):
            self._swtpm.stop()
            (self.state_dir / BOOT_FILE).unlink(missing_ok=True)

    def restart(self) -> str:
        """Reboot: stop, start, measure the current manifest. Returns the new TCTI."""
        self.stop()
        return self.start()

    def running(self) -> bool:
        return self._swtpm.running()

    @property
    def tcti(self) -> str:
        """The TCTI of the running device (TPMUnavailableError when stopped)."""
        return self._swtpm.tcti

    def backend(self) -> KeyBackend:
        """An open key backend on the running device's TPM; the caller closes it."""
        if not self.running():
            raise EmulatorError(
                f"emulated device {self.device_id} is not running: start it first "
                f"(edgeseal-agent emulate start --dir {self.state_dir})"
            )
        return open_backend(self._swtpm.tcti)

    # -- boot manifest and policy ----------------------------------------------------

    def manifest(self) -> BootManifest:
        """The boot manifest the next start measures."""
        try:
            data = (self.state_dir / MANIFEST_FILE).read_bytes()
        except OSError as exc:
            raise EmulatorError(f"cannot read the boot manifest: {exc}") from exc
        return BootManifest.from_bytes(data)

    def tamper(self, component: str, digest: bytes | None = None) -> bytes:
        """Replace ``component``'s digest in the manifest (random unless given).

        Like swapping the kernel on disk: it takes effect at the next
        :meth:`start` / :meth:`restart`, when the new digest is measured.
        Returns the new digest.
        """
        new_digest = digest if digest is not None else secrets.token_bytes(32)
        manifest = self.manifest().with_component(component, new_digest)
        _atomic_write(self.state_dir / MANIFEST_FILE, manifest.to_bytes())
        log.info("boot manifest of %s: %s changed", self.device_id, component)
        return new_digest

    def approve(self) -> SignedPCRPolicy:
        """Sign the PCR policy for the current manifest, as an approved OS update does.

        Signs the values measured boot of the current manifest will produce
        (computed, not read), so an update can be approved before its reboot.
        """
        policy = sign_pcr_policy(
            self._authority_key(), expected_pcrs(self.manifest(), self.profile)
        )
        _atomic_write(self.state_dir / POLICY_FILE, policy.to_bytes())
        return policy

    def signed_policy(self) -> SignedPCRPolicy:
        """The approved PCR policy, to pass as ``approved=`` to ecdh_zgen / unseal."""
        try:
            data = (self.state_dir / POLICY_FILE).read_bytes()
        except OSError as exc:
            raise EmulatorError(f"cannot read the signed PCR policy: {exc}") from exc
        return SignedPCRPolicy.from_bytes(data)

    def device_key_public(self) -> ec.EllipticCurvePublicKey:
        """The device decryption key's public key as recorded at creation."""
        key = serialization.load_pem_public_key((self.state_dir / DEVICE_KEY_PUB_FILE).read_bytes())
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise EmulatorError(f"{DEVICE_KEY_PUB_FILE} is not an EC public key")
        return key

    def local_ca(self) -> LocalCA:
        """The CA that certified this device's EK."""
        info = _read_json(self.state_dir / DEVICE_FILE, "device file")
        return LocalCA(Path(str(info["ca_dir"])))

    def _authority_key(self) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key(
            (self.state_dir / AUTHORITY_KEY_FILE).read_bytes(), password=None
        )
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise EmulatorError(f"{AUTHORITY_KEY_FILE} is not an EC private key")
        return key

    def _measured_boot_done(self) -> bool:
        try:
            boot = _read_json(self.state_dir / BOOT_FILE, "boot record")
        except EmulatorError:
            return False
        return bool(boot.get("pid") == self._swtpm.pid() and boot.get("port") == self._swtpm.port)

    # -- status -----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Everything a person asks about the device, as JSON-ready values."""
        manifest = self.manifest()
        policy = self.signed_policy()
        running = self.running()
        info: dict[str, Any] = {
            "id": self.device_id,
            "profile": self.profile.id,
            "hardware_class": self.profile.hardware_class,
            "state_dir": str(self.state_dir),
            "created": self.created,
            "running": running,
            "tcti": self._swtpm.tcti if running else None,
            "manifest": {name: manifest.components[name].hex() for name in BOOT_COMPONENTS},
            "policy": {
                "authority": authority_fingerprint(policy.authority),
                "pcrs": {str(i): d.hex() for i, d in policy.values.digests.items()},
            },
            "booted_manifest": None,
            "pending_reboot": False,
            "pcrs": None,
            "policy_matches": None,
            "changed_pcrs": [],
            "changed_components": [],
        }
        if not running:
            return info
        with contextlib.suppress(EmulatorError):
            booted = _read_json(self.state_dir / BOOT_FILE, "boot record").get("manifest")
            info["booted_manifest"] = booted
            info["pending_reboot"] = booted != info["manifest"]
        with self.backend() as backend:
            current = backend.pcr_read(list(policy.values.indices))
        changed = policy.changed_pcrs(current)
        info["pcrs"] = {str(i): d.hex() for i, d in current.digests.items()}
        info["policy_matches"] = not changed
        info["changed_pcrs"] = changed
        info["changed_components"] = [
            name for name, index in self.profile.measured_boot if index in changed
        ]
        return info


# -- files ----------------------------------------------------------------------------


def _is_path(profile: str | Path) -> bool:
    return isinstance(profile, Path) or "/" in profile or profile.endswith(".toml")


def _json_bytes(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, indent=2, sort_keys=True).encode("utf-8") + b"\n"


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            data = f.read(_MAX_STATE_FILE_BYTES + 1)
    except FileNotFoundError as exc:
        raise EmulatorError(f"{path.parent} is not an emulated device (no {path.name})") from exc
    except OSError as exc:
        raise EmulatorError(f"cannot read the {what} {path}: {exc}") from exc
    if len(data) > _MAX_STATE_FILE_BYTES:
        raise EmulatorError(f"the {what} {path} is larger than {_MAX_STATE_FILE_BYTES} bytes")
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise EmulatorError(f"the {what} {path} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise EmulatorError(f"the {what} {path} is not a JSON object")
    return doc


def _atomic_write(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    try:
        atomic_write(path, data, mode=mode)
    except OSError as exc:
        raise EmulatorError(f"cannot write {path}: {exc}") from exc


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    """Serialise power changes of one device across processes (no double measurement)."""
    try:
        fd = os.open(state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise EmulatorError(f"cannot lock {state_dir}: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
