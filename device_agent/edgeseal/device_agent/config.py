"""The device agent's configuration: one frozen dataclass, read only at the edge.

Precedence, lowest first (STYLE 10)::

    built-in defaults  <  FILE  <  FILE.d/*.toml (sorted by name)  <  EDGESEAL_AGENT_*  <  overrides

``FILE`` is TOML (default ``/etc/edgeseal/agent.toml``) and must say
``version = 1``; a drop-in may repeat ``version`` (it must then be 1) and sets
only what it names, so a provisioning tool can add ``10-device.toml`` without
rewriting the main file. Every layer refuses unknown keys by name, so a typo
(``pol_interval_s``) is an error at start, not a silently ignored setting.

Environment variables are ``EDGESEAL_AGENT_<KEY>`` in upper case, e.g.
``EDGESEAL_AGENT_POLL_INTERVAL_S=60``; ``EDGESEAL_AGENT_CONFIG`` (the file's
path) is read by the CLI, not here. This module does not read ``os.environ``:
the entry point passes it in (only entry points read the environment).

Example::

    version = 1
    device_id = "pi-0042"
    key_backend = "device:/dev/tpmrm0"      # or "emulated:/var/lib/edgeseal-emu/dev0"
    profile = "rpi4-tpm"
    family = "detector"
    channel = "stable"
    metadata_url = "https://updates.example.com/tuf/metadata/"
    target_url = "https://updates.example.com/tuf/targets/"
    console_port = "/dev/ttyS0"             # serial console for offline attestation (optional)
"""

from __future__ import annotations

import dataclasses
import logging
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeseal.device_agent.errors import AgentError
from edgeseal.sdk.releases import is_valid_device_id

log = logging.getLogger(__name__)

CONFIG_VERSION = 1
DEFAULT_CONFIG_PATH = Path("/etc/edgeseal/agent.toml")
ENV_PREFIX = "EDGESEAL_AGENT_"
#: Read by the CLI to find the file; not a configuration key.
ENV_CONFIG_PATH = "EDGESEAL_AGENT_CONFIG"
#: A configuration file is a few hundred bytes; refuse anything absurd before parsing it.
MAX_CONFIG_BYTES = 64 * 1024
MAX_DROP_INS = 64

#: Owner-range NV indices (TCG Registry of Reserved TPM 2.0 Handles), as the hardware layer.
NV_OWNER_FIRST = 0x01500000
NV_OWNER_LAST = 0x015FFFFF
#: Serial line rates the console accepts (termios speeds common to USB-serial adapters).
CONSOLE_BAUDS = (9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600, 1000000, 1500000)
KEY_BACKEND_KINDS = ("device", "swtpm", "mssim", "tabrmd", "software", "emulated")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def _package_version() -> str:
    # Not importlib.metadata: it costs the idle agent about 4 MB of RSS.
    from edgeseal.sdk import __version__

    return __version__


class ConfigError(AgentError):
    """The configuration is missing, malformed, or names a key or value we refuse."""

    def __init__(self, message: str, *, field: str | None = None, source: str | None = None):
        super().__init__(message, field=field)
        self.source = source

    def diagnostics(self) -> str:
        where = f" in {self.source}" if self.source else ""
        what = f" (key: {self.field})" if self.field else ""
        return f"configuration error{where}: {self.message}{what}"


@dataclass(frozen=True)
class AgentConfig:
    """Everything the agent is told; validated on construction (bad values raise ConfigError)."""

    version: int = CONFIG_VERSION
    device_id: str = ""
    state_dir: Path = Path("/var/lib/edgeseal")
    #: A TCTI (``device:/dev/tpmrm0``, ``swtpm:host=H,port=P``, ...), ``emulated:DIR``
    #: for an emulated device, or ``software:DIR`` (INSECURE, development only).
    key_backend: str = "device:/dev/tpmrm0"
    #: Board profile id or path (``edgeseal.hardware.profiles``); names the hardware class.
    profile: str = "x86-dtpm"
    #: The signed PCR policy the device key and key.sealed need (ignored for ``emulated:``,
    #: whose device directory holds it).
    pcr_policy_path: Path = Path("/etc/edgeseal/pcr-policy.json")
    family: str = ""
    channel: str = "stable"
    metadata_url: str = ""
    target_url: str = ""
    server_url: str = ""
    poll_interval_s: float = 3600.0
    poll_jitter_s: float = 600.0
    socket_path: Path = Path("/run/edgeseal/inference.sock")
    socket_mode: int = 0o660
    max_model_bytes: int = 512 * 1024 * 1024
    max_request_bytes: int = 64 * 1024 * 1024
    boot_attempts: int = 3
    nv_counter_index: int = 0x01500010
    max_version_step: int = 10000
    agent_version: str = dataclasses.field(default_factory=_package_version)
    #: MQTT release hints and telemetry (off when empty): ``mqtt://host:1883`` or
    #: ``mqtts://``; the user name is the device id, the password in ``mqtt_password_file``.
    mqtt_url: str = ""
    mqtt_password_file: Path = Path("/etc/edgeseal/mqtt-password")
    #: A hinted check runs up to this many seconds after the hint (a fleet does not
    #: stampede the server), and at most once per ``mqtt_hint_min_interval_s``.
    mqtt_hint_jitter_s: float = 30.0
    mqtt_hint_min_interval_s: float = 60.0
    #: Serial console answering a field technician's attestation requests
    #: (``edgeseal attest --port``); an absolute device path such as ``/dev/ttyS0``,
    #: empty = no console. The agent's user needs read/write access (group dialout).
    console_port: str = ""
    console_baud: int = 115200

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def emulated_device_dir(self) -> Path | None:
        """The emulated device's directory when ``key_backend`` is ``emulated:DIR``."""
        kind, _, rest = self.key_backend.partition(":")
        return Path(rest) if kind == "emulated" else None


_FIELDS: dict[str, dataclasses.Field[Any]] = {f.name: f for f in dataclasses.fields(AgentConfig)}
_PATHS = {"state_dir", "socket_path", "pcr_policy_path", "mqtt_password_file"}
_INTS = {
    "version",
    "socket_mode",
    "max_model_bytes",
    "max_request_bytes",
    "boot_attempts",
    "nv_counter_index",
    "max_version_step",
    "console_baud",
}
_FLOATS = {"poll_interval_s", "poll_jitter_s", "mqtt_hint_jitter_s", "mqtt_hint_min_interval_s"}


def load_config(
    path: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> AgentConfig:
    """Merge the layers (see the module docstring) into a validated :class:`AgentConfig`.

    ``path`` None means no file (defaults only); a given path must exist.
    ``env`` is the process environment when the caller wants it applied.
    ``overrides`` are command-line flags: keys as in the file, values typed or strings.
    """
    merged: dict[str, Any] = {}
    if path is not None:
        doc = _read_toml(Path(path))
        if "version" not in doc:
            raise ConfigError(
                f"the configuration must start with 'version = {CONFIG_VERSION}'",
                field="version",
                source=str(path),
            )
        merged.update(_layer(doc, str(path)))
        for drop_in in _drop_ins(Path(path)):
            merged.update(_layer(_read_toml(drop_in), str(drop_in)))
    if env is not None:
        merged.update(_env_layer(env))
    if overrides:
        merged.update(_layer(dict(overrides), "overrides", from_strings=True))
    try:
        return AgentConfig(**merged)
    except ConfigError:
        raise
    except TypeError as exc:  # pragma: no cover - _layer checks names first
        raise ConfigError(str(exc)) from exc


def _drop_ins(path: Path) -> list[Path]:
    directory = path.with_name(path.name + ".d")
    if not directory.is_dir():
        return []
    found = sorted(p for p in directory.iterdir() if p.suffix == ".toml" and p.is_file())
    if len(found) > MAX_DROP_INS:
        raise ConfigError(f"more than {MAX_DROP_INS} drop-ins", source=str(directory))
    return found


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", source=str(path)) from exc
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"larger than {MAX_CONFIG_BYTES} bytes", source=str(path))
    try:
        return tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"not valid TOML: {exc}", source=str(path)) from exc


def _layer(doc: Mapping[str, Any], source: str, *, from_strings: bool = False) -> dict[str, Any]:
    unknown = sorted(set(doc) - set(_FIELDS))
    if unknown:
        raise ConfigError(
            f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}",
            field=unknown[0],
            source=source,
        )
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if from_strings and isinstance(value, str):
            out[key] = _from_string(key, value, source)
        else:
            out[key] = _typed(key, value, source)
    if "version" in out and out["version"] != CONFIG_VERSION:
        raise ConfigError(
            f"unsupported configuration version {out['version']!r} "
            f"(this agent reads version {CONFIG_VERSION})",
            field="version",
            source=source,
        )
    return out


def _env_layer(env: Mapping[str, str]) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_CONFIG_PATH:
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key not in _FIELDS:
            raise ConfigError(f"unknown environment variable {name}", field=key, source="env")
        doc[key] = _from_string(key, value, f"env {name}")
    return _layer(doc, "env")


def _from_string(key: str, text: str, source: str) -> Any:
    """Environment and flags give strings; convert them to the key's type."""
    if key not in _FIELDS:
        raise ConfigError(f"unknown key {key}", field=key, source=source)
    try:
        if key == "socket_mode":
            return int(text, 8)
        if key in _INTS:
            return int(text, 0)
        if key in _FLOATS:
            return float(text)
    except ValueError as exc:
        raise ConfigError(f"{text!r} is not a number", field=key, source=source) from exc
    if key in _PATHS:
        return Path(text)
    return text


def _typed(key: str, value: Any, source: str) -> Any:
    """Check a TOML value's type for ``key`` (TOML has ints, floats, strings)."""
    if key in _PATHS:
        if isinstance(value, Path):
            return value
        if isinstance(value, str):
            return Path(value)
    elif key == "socket_mode" and isinstance(value, str):
        return _from_string(key, value, source)
    elif key in _INTS:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif key in _FLOATS:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif isinstance(value, str):
        return value
    raise ConfigError(f"wrong type {type(value).__name__} ({value!r})", field=key, source=source)


def _validate(cfg: AgentConfig) -> None:
    def bad(key: str, message: str) -> ConfigError:
        return ConfigError(f"{key}: {message}", field=key)

    if cfg.version != CONFIG_VERSION:
        raise bad("version", f"unsupported configuration version {cfg.version!r}")
    if cfg.device_id and not is_valid_device_id(cfg.device_id):
        raise bad("device_id", "1-128 of A-Z a-z 0-9 . _ : -, starting with a letter or digit")
    for key in ("family",):
        value = getattr(cfg, key)
        if value and not _NAME.match(value):
            raise bad(key, "1-64 of a-z 0-9 . _ -, starting with a letter or digit")
    if not _NAME.match(cfg.channel):
        raise bad("channel", "1-64 of a-z 0-9 . _ -, starting with a letter or digit")
    kind, sep, rest = cfg.key_backend.partition(":")
    if kind not in KEY_BACKEND_KINDS:
        raise bad(
            "key_backend",
            f"{cfg.key_backend!r}: expected device:/dev/tpmrm0, swtpm:host=H,port=P, "
            "mssim:..., tabrmd, emulated:/path/to/device-dir or software:/path",
        )
    if kind in ("emulated", "software") and not (sep and rest):
        raise bad("key_backend", f"{kind}: needs a directory, e.g. {kind}:/var/lib/x")
    if not cfg.profile:
        raise bad("profile", "name a board profile (e.g. rpi4-tpm) or a profile file")
    for key in ("metadata_url", "target_url", "server_url"):
        url = getattr(cfg, key)
        if url and not (url.startswith(("https://", "http://")) and len(url) > len("http://")):
            raise bad(key, f"{url!r} is not an http(s) URL")
    if not cfg.poll_interval_s > 0:
        raise bad("poll_interval_s", "must be > 0")
    if not cfg.poll_jitter_s >= 0:
        raise bad("poll_jitter_s", "must be >= 0 (a random 0..jitter is added to each interval)")
    if not 0 <= cfg.socket_mode <= 0o777:
        raise bad("socket_mode", f"{cfg.socket_mode:o} is not a file mode")
    if cfg.socket_mode & 0o007:
        raise bad("socket_mode", "the inference socket must not be world-accessible")
    for key in ("max_model_bytes", "max_request_bytes", "boot_attempts", "max_version_step"):
        if getattr(cfg, key) < 1:
            raise bad(key, "must be >= 1")
    if not NV_OWNER_FIRST <= cfg.nv_counter_index <= NV_OWNER_LAST:
        raise bad(
            "nv_counter_index",
            f"0x{cfg.nv_counter_index:08x} is outside the TPM owner NV range "
            f"0x{NV_OWNER_FIRST:08x}..0x{NV_OWNER_LAST:08x}",
        )
    if cfg.console_port and (not cfg.console_port.startswith("/") or "\0" in cfg.console_port):
        raise bad("console_port", f"{cfg.console_port!r} is not an absolute device path")
    if cfg.console_baud not in CONSOLE_BAUDS:
        raise bad("console_baud", f"{cfg.console_baud} is not one of {CONSOLE_BAUDS}")
    if not cfg.agent_version:
        raise bad("agent_version", "must not be empty")
