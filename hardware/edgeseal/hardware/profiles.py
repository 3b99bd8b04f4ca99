"""Board profiles: what edgeseal needs to know about one kind of device.

A profile is data, not code: one TOML file per board in the ``profiles``
folder next to this module (``emulated``, ``jetson-orin-nano``, ...). It names
the TPM and how to reach it (TCTI), the PCR bank and the PCRs the device
decryption key's policy binds, which PCR each measured-boot component is
extended into, the AEAD releases for this board should use, and the serial
console a field technician plugs into.

Parsing is strict (an unknown or missing key, a PCR outside 0-23, an AEAD we
do not implement are refused with the file and key named) because a typo in a
profile would otherwise bind keys to the wrong PCRs and strand a fleet.

Format (``version = 1``)::

    version = 1
    id = "rpi4-tpm"                  # lower-case letters, digits, '-'
    description = "..."
    hardware_class = "rpi4"          # what a release's hardware classes match
    tpm = "discrete"                 # swtpm | ftpm | discrete
    tcti = "device:/dev/tpmrm0"      # "swtpm" for the emulated device
    aead = "chacha20-poly1305"       # or aes-256-gcm
    serial_console = "/dev/serial0"

    [pcr]
    bank = "sha256"
    policy = [0, 4, 9, 15]           # PCRs the key policy binds

    [measured_boot]                  # component -> PCR, one per BOOT_COMPONENTS
    firmware = 0
    bootloader = 4
    kernel = 9
    rootfs = 15
"""

from __future__ import annotations

import importlib.resources
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeseal.hardware.errors import HardwareError

FORMAT_VERSION = 1
MAX_PROFILE_BYTES = 64 * 1024

#: Measured-boot components, in the order a boot measures them (and in which
#: their digests are extended: PCR values depend on the order).
BOOT_COMPONENTS: tuple[str, ...] = ("firmware", "bootloader", "kernel", "rootfs")

#: PCR indices of a TPM 2.0 PC Client platform (TCG PC Client PTP: 24 PCRs).
PCR_COUNT = 24

AEADS: frozenset[str] = frozenset({"aes-256-gcm", "chacha20-poly1305"})
TPM_KINDS: frozenset[str] = frozenset({"swtpm", "ftpm", "discrete"})
#: sha256 only: manifests carry SHA-256 digests and swtpm_setup activates only
#: the sha256 bank of the emulated TPM.
PCR_BANKS: frozenset[str] = frozenset({"sha256"})
_TCTI_NAMES = frozenset({"device", "swtpm", "mssim", "tabrmd"})

_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_TOP_KEYS = frozenset(
    {
        "version",
        "id",
        "description",
        "hardware_class",
        "tpm",
        "tcti",
        "aead",
        "serial_console",
        "pcr",
        "measured_boot",
    }
)
_PCR_KEYS = frozenset({"bank", "policy"})


class ProfileError(HardwareError):
    """A board profile is missing, malformed or asks for something unsupported."""


@dataclass(frozen=True)
class BoardProfile:
    """One board's hardware facts, as loaded from its TOML profile."""

    id: str
    description: str
    hardware_class: str
    tpm: str
    tcti: str
    aead: str
    serial_console: str
    pcr_bank: str
    #: PCRs the device decryption key's (signed) PCR policy binds, ascending.
    policy_pcrs: tuple[int, ...]
    #: (component, PCR) pairs in BOOT_COMPONENTS order.
    measured_boot: tuple[tuple[str, int], ...]
    #: Where the profile was read from (for messages); not part of equality.
    source: str = field(default="", compare=False)

    @property
    def emulated(self) -> bool:
        return self.tpm == "swtpm"

    def pcr_for(self, component: str) -> int:
        """The PCR that ``component`` is measured into."""
        for name, index in self.measured_boot:
            if name == component:
                return index
        raise ProfileError(f"profile {self.id!r} has no measured-boot component {component!r}")

    @property
    def measured_pcrs(self) -> tuple[int, ...]:
        """PCRs that measured boot extends, ascending, without repeats."""
        return tuple(sorted({index for _, index in self.measured_boot}))


def list_profiles() -> list[str]:
    """Ids of the profiles shipped with edgeseal, sorted."""
    folder = importlib.resources.files("edgeseal.hardware").joinpath("profiles")
    return sorted(
        entry.name.removesuffix(".toml")
        for entry in folder.iterdir()
        if entry.name.endswith(".toml") and entry.is_file()
    )


def load_profile(name_or_path: str | Path) -> BoardProfile:
    """Load a shipped profile by id (``"rpi4-tpm"``) or any profile file by path.

    A ``Path``, or a string that contains a path separator or ends in
    ``.toml``, is read from the file system; anything else is a shipped id.
    """
    if isinstance(name_or_path, Path) or "/" in name_or_path or name_or_path.endswith(".toml"):
        path = Path(name_or_path)
        try:
            with path.open("rb") as f:
                data = f.read(MAX_PROFILE_BYTES + 1)
        except OSError as exc:
            raise ProfileError(f"cannot read board profile {path}: {exc.strerror}") from exc
        return parse_profile(data, source=str(path))
    name = name_or_path
    shipped = list_profiles()
    if name not in shipped:
        raise ProfileError(
            f"unknown board profile {name!r}; shipped profiles: {', '.join(shipped)}"
        )
    resource = importlib.resources.files("edgeseal.hardware").joinpath("profiles", f"{name}.toml")
    profile = parse_profile(resource.read_bytes(), source=f"{name}.toml")
    if profile.id != name:
        raise ProfileError(f"{name}.toml: id is {profile.id!r}, expected {name!r}")
    return profile


def parse_profile(data: bytes, *, source: str = "<profile>") -> BoardProfile:
    """Parse and validate the bytes of a profile file; ``source`` names it in errors."""
    if len(data) > MAX_PROFILE_BYTES:
        raise ProfileError(f"{source}: larger than {MAX_PROFILE_BYTES} bytes")
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ProfileError(f"{source}: not UTF-8 text") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{source}: not valid TOML: {exc}") from exc

    _check_keys(doc, _TOP_KEYS, source, "")
    version = doc["version"]
    if type(version) is not int or version != FORMAT_VERSION:
        raise ProfileError(
            f"{source}: unsupported profile format version {version!r} "
            f"(this edgeseal reads version {FORMAT_VERSION})"
        )
    profile_id = _string(doc, "id", source)
    if not _ID_RE.fullmatch(profile_id):
        raise ProfileError(
            f"{source}: id {profile_id!r} must be lower-case letters, digits and '-'"
        )
    tpm = _choice(doc, "tpm", TPM_KINDS, source)
    aead = _choice(doc, "aead", AEADS, source)
    tcti = _string(doc, "tcti", source)
    _check_tcti(tcti, source)
    if (tpm == "swtpm") != (tcti == "swtpm"):
        raise ProfileError(
            f'{source}: tcti = "swtpm" goes with tpm = "swtpm" and only with it '
            f"(got tpm {tpm!r}, tcti {tcti!r})"
        )

    pcr = _table(doc, "pcr", source)
    _check_keys(pcr, _PCR_KEYS, source, "pcr.")
    bank = _choice(pcr, "bank", PCR_BANKS, source, prefix="pcr.")
    raw_policy = pcr["policy"]
    if not isinstance(raw_policy, list) or not raw_policy:
        raise ProfileError(f"{source}: pcr.policy must be a non-empty list of PCR indices")
    policy = [_pcr_index(value, source, "pcr.policy") for value in raw_policy]
    if len(set(policy)) != len(policy):
        raise ProfileError(f"{source}: pcr.policy lists a PCR twice: {policy}")

    boot = _table(doc, "measured_boot", source)
    _check_keys(boot, frozenset(BOOT_COMPONENTS), source, "measured_boot.")
    measured = tuple(
        (c, _pcr_index(boot[c], source, f"measured_boot.{c}")) for c in BOOT_COMPONENTS
    )

    return BoardProfile(
        id=profile_id,
        description=_string(doc, "description", source),
        hardware_class=_string(doc, "hardware_class", source),
        tpm=tpm,
        tcti=tcti,
        aead=aead,
        serial_console=_string(doc, "serial_console", source),
        pcr_bank=bank,
        policy_pcrs=tuple(sorted(policy)),
        measured_boot=measured,
        source=source,
    )


def _check_keys(table: dict[str, Any], allowed: frozenset[str], source: str, prefix: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ProfileError(
            f"{source}: unknown key(s) {', '.join(prefix + k for k in unknown)}; "
            f"allowed: {', '.join(prefix + k for k in sorted(allowed))}"
        )
    missing = sorted(allowed - set(table))
    if missing:
        raise ProfileError(f"{source}: missing key(s) {', '.join(prefix + k for k in missing)}")


def _string(table: dict[str, Any], key: str, source: str, prefix: str = "") -> str:
    value = table[key]
    if not isinstance(value, str) or not value.strip():
        raise ProfileError(f"{source}: {prefix}{key} must be a non-empty string")
    return value


def _choice(
    table: dict[str, Any], key: str, allowed: frozenset[str], source: str, prefix: str = ""
) -> str:
    value = _string(table, key, source, prefix)
    if value not in allowed:
        raise ProfileError(
            f"{source}: unknown {prefix}{key} {value!r}; supported: {', '.join(sorted(allowed))}"
        )
    return value


def _table(table: dict[str, Any], key: str, source: str) -> dict[str, Any]:
    value = table[key]
    if not isinstance(value, dict):
        raise ProfileError(f"{source}: [{key}] must be a table")
    return value


def _pcr_index(value: object, source: str, where: str) -> int:
    # bool is an int in Python; `true` is not a PCR.
    if type(value) is not int or not 0 <= value < PCR_COUNT:
        raise ProfileError(
            f"{source}: {where}: bad PCR index {value!r} (a TPM 2.0 has PCRs 0-{PCR_COUNT - 1})"
        )
    return value


def _check_tcti(tcti: str, source: str) -> None:
    name = tcti.split(":", 1)[0]
    if name not in _TCTI_NAMES:
        raise ProfileError(
            f"{source}: unknown TCTI {tcti!r}; it must start with one of "
            f"{', '.join(sorted(_TCTI_NAMES))}"
        )
