"""The server's configuration and the layout of its data directory.

``DIR/server.toml`` holds a :class:`ServerConfig` (``version = 1`` from day
one, so a later reader can refuse or migrate an older file by name). It is
read only at the edge (the CLI and :func:`edgeseal.ota_server.app.create_app`);
everything below takes the frozen dataclass.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from edgeseal.ota_server.service_errors import ConfigError
from edgeseal.sdk.errors import FormatError
from edgeseal.sdk.files import atomic_write
from edgeseal.sdk.hazmat.format import NAME_RULE, is_valid_name
from edgeseal.sdk.mqtt_messages import MQTTEndpoint, parse_mqtt_url

CONFIG_VERSION = 1
CONFIG_FILE = "server.toml"
DB_FILE = "server.db"
KEYS_DIR = "keys"
REPOSITORY_DIR = "repository"
UPLOADS_DIR = "uploads"
AUDIT_HEAD_FILE = "audit-head.json"
LOCK_FILE = "repository.lock"
EK_CA_DIR = "ek-ca"

#: PCRs a device quotes at enrollment, by hardware class (``"default"``: every other
#: class). They must equal the ``[pcr] policy`` of the board profiles in
#: ``hardware/edgeseal/hardware/profiles/*.toml`` - the server may not import those
#: (layering), so ``server.toml`` repeats them. Today every profile uses 0, 4, 9, 15
#: except ``x86_64`` (x86-dtpm), which adds PCR 7 (Secure Boot state).
DEFAULT_ATTESTATION_PCRS: Mapping[str, tuple[int, ...]] = {
    "default": (0, 4, 9, 15),
    "x86_64": (0, 4, 7, 9, 15),
}
#: PCR indices of a TPM 2.0 PC Client platform (TCG PC Client PFP, 0..23).
MAX_PCR_INDEX = 23
#: ``mqtt_bind`` values that listen on every address: they name no host a device can use.
WILDCARD_BINDS = frozenset({"", "0.0.0.0", "::"})  # noqa: S104 - names, not binds

#: Default rate limits of the attested key-release routes (requests a minute).
DEFAULT_KEY_RELEASE_PER_ADDRESS = 60
DEFAULT_KEY_RELEASE_PER_DEVICE = 10
#: Largest rate limit ``server.toml`` may set (requests a minute).
MAX_RATE_LIMIT = 1_000_000

MiB = 1024 * 1024
GiB = 1024 * MiB
MAX_CONFIG_FILE = 64 * 1024


@dataclass(frozen=True)
class ServerConfig:
    """Everything ``server.toml`` can say. Defaults are what ``init`` writes."""

    version: int = CONFIG_VERSION
    bind: str = "127.0.0.1"
    port: int = 8443
    #: Hashed-bin bits of the ``envelopes`` delegation (8 -> 256 bins).
    bin_bits: int = 8
    #: Largest management JSON body read (bytes).
    max_json_body: int = MiB
    #: Largest sealed model accepted by an upload (bytes); streamed to disk.
    max_upload: int = 2 * GiB
    #: Seconds between two checks whether online roles need re-signing.
    refresh_interval: int = 600
    root_expiry_days: int = 365
    targets_expiry_days: int = 90
    family_expiry_days: int = 90
    envelopes_expiry_days: int = 30
    snapshot_expiry_days: int = 7
    timestamp_expiry_days: int = 1
    #: Port of the MQTT broker (mosquitto) ``run`` starts for release hints and
    #: telemetry; 0 means no broker. It binds to ``mqtt_bind``.
    mqtt_port: int = 0
    mqtt_bind: str = "127.0.0.1"
    #: Where *devices* reach that broker (``mqtt://host:port`` or ``mqtts://``), as
    #: enrollment tells them. Empty: ``mqtt://<mqtt_bind>:<mqtt_port>``, or, when
    #: ``mqtt_bind`` is a wildcard address, the host name the enrolling device used to
    #: reach this server (see :meth:`device_mqtt_url`). Set it when devices reach the
    #: broker under another name (NAT, DNS, a TLS-terminating proxy, a broker cluster).
    mqtt_public_url: str = ""
    #: Rate limits of the token-less attested key-release routes (``POST /v1/keys/challenge``
    #: and ``/v1/keys/release``), in requests a minute, each also the burst allowed at
    #: once; 0 turns that limit off. ``key_release_per_address``: both routes together, per
    #: client address (IPv6: per /64) - behind a reverse proxy that is the proxy's address,
    #: so raise it there and limit per client in the proxy; raise it too when many devices
    #: share one NAT address. ``key_release_per_device``: challenges per device id (each
    #: release consumes a challenge, so that bounds the device's quote checks too). Over a
    #: limit the answer is 429 with ``Retry-After``, which the agent retries later.
    key_release_per_address: int = DEFAULT_KEY_RELEASE_PER_ADDRESS
    key_release_per_device: int = DEFAULT_KEY_RELEASE_PER_DEVICE
    #: The ``[attestation_pcrs]`` table: see :data:`DEFAULT_ATTESTATION_PCRS`.
    attestation_pcrs: Mapping[str, tuple[int, ...]] = field(
        default_factory=lambda: dict(DEFAULT_ATTESTATION_PCRS)
    )

    def __post_init__(self) -> None:
        if self.version != CONFIG_VERSION:
            raise ConfigError(
                f"server.toml version {self.version} is not supported; this edgeseal reads "
                f"version {CONFIG_VERSION}",
                field="version",
            )
        object.__setattr__(self, "attestation_pcrs", _pcr_table(self.attestation_pcrs))
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _NON_INT_FIELDS:
                continue
            if type(value) is not int or value < 0:
                raise ConfigError(f"{f.name} must be a non-negative integer", field=f.name)
        if not 1 <= self.port <= 65535 and self.port != 0:
            raise ConfigError("port must be 0..65535", field="port")
        if not 0 <= self.mqtt_port <= 65535:
            raise ConfigError("mqtt_port must be 0..65535 (0: no broker)", field="mqtt_port")
        if not isinstance(self.mqtt_public_url, str):
            raise ConfigError("mqtt_public_url must be a string", field="mqtt_public_url")
        if self.mqtt_public_url:
            try:
                parse_mqtt_url(self.mqtt_public_url)
            except FormatError as exc:
                raise ConfigError(
                    f"mqtt_public_url: {exc.message} (e.g. mqtt://broker.example.com:1883)",
                    field="mqtt_public_url",
                ) from None
        if not 0 <= self.bin_bits <= 14:
            raise ConfigError("bin_bits must be 0..14", field="bin_bits")
        for name in ("key_release_per_address", "key_release_per_device"):
            if getattr(self, name) > MAX_RATE_LIMIT:
                raise ConfigError(
                    f"{name} must be 0..{MAX_RATE_LIMIT} requests a minute (0: no limit)",
                    field=name,
                )
        if self.max_json_body < 1024 or self.max_upload < 1024:
            raise ConfigError("body limits must be at least 1024 bytes", field="max_upload")

    @classmethod
    def from_toml(cls, text: str) -> ServerConfig:
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"server.toml is not valid TOML: {exc}") from None
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"unknown setting(s) in server.toml: {', '.join(unknown)}")
        if "version" not in raw:
            raise ConfigError("server.toml has no version key", field="version")
        values: dict[str, Any] = dict(raw)
        return cls(**values)

    def to_toml(self) -> str:
        lines = ["# edgeseal OTA server configuration"]
        for key, value in asdict(self).items():
            if key == "attestation_pcrs":
                continue
            lines.append(f'{key} = "{value}"' if isinstance(value, str) else f"{key} = {value}")
        lines += ["", "# PCRs quoted at enrollment, by hardware class (= the board profiles)"]
        lines.append("[attestation_pcrs]")
        for hardware_class, pcrs in sorted(self.attestation_pcrs.items()):
            lines.append(f'"{hardware_class}" = [{", ".join(str(i) for i in pcrs)}]')
        return "\n".join(lines) + "\n"

    def pcrs_for(self, hardware_class: str) -> tuple[int, ...]:
        """The PCR indices a device of ``hardware_class`` quotes at enrollment."""
        table = self.attestation_pcrs
        return table.get(hardware_class, table["default"])

    def device_mqtt_url(self, request_host: str | None = None) -> str:
        """The broker URL devices are given at enrollment (this server runs a broker).

        ``mqtt_public_url`` when set; else ``mqtt://<mqtt_bind>:<mqtt_port>``; else
        (``mqtt_bind`` is a wildcard such as ``0.0.0.0``) the broker port on
        ``request_host``, the host name the device used to reach this server: ``run``
        starts the broker on the same machine. :class:`ConfigError` when none applies.
        """
        if self.mqtt_public_url:
            return self.mqtt_public_url
        host = self.mqtt_bind if self.mqtt_bind not in WILDCARD_BINDS else request_host
        try:
            if host:
                return parse_mqtt_url(MQTTEndpoint(host, self.mqtt_port).url).url
        except FormatError:
            pass
        raise ConfigError(
            f"mqtt_bind {self.mqtt_bind!r} names no address devices can use: set "
            "mqtt_public_url in server.toml (e.g. mqtt://broker.example.com:1883)",
            field="mqtt_public_url",
        )


_NON_INT_FIELDS = frozenset({"bind", "mqtt_bind", "mqtt_public_url", "attestation_pcrs"})


def _pcr_table(value: object) -> dict[str, tuple[int, ...]]:
    """The ``[attestation_pcrs]`` table, checked and normalized (sorted index tuples)."""
    name = "attestation_pcrs"
    if not isinstance(value, Mapping) or "default" not in value:
        raise ConfigError(f"{name} must be a table with a 'default' entry", field=name)
    table: dict[str, tuple[int, ...]] = {}
    for hardware_class, pcrs in value.items():
        if hardware_class != "default" and not is_valid_name(hardware_class):
            raise ConfigError(f"{name}: a hardware class must be {NAME_RULE}", field=name)
        if (
            not isinstance(pcrs, list | tuple)
            or not 1 <= len(pcrs) <= MAX_PCR_INDEX + 1
            or any(type(i) is not int or not 0 <= i <= MAX_PCR_INDEX for i in pcrs)
            or len(set(pcrs)) != len(pcrs)
        ):
            raise ConfigError(
                f"{name}.{hardware_class} must list distinct PCR indices 0..{MAX_PCR_INDEX}",
                field=f"{name}.{hardware_class}",
            )
        table[hardware_class] = tuple(sorted(pcrs))
    return table


@dataclass(frozen=True)
class DataDir:
    """The paths of one server data directory (see docs/dev/ota-contracts.md)."""

    root: Path

    @property
    def config_file(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def db_file(self) -> Path:
        return self.root / DB_FILE

    @property
    def keys(self) -> Path:
        return self.root / KEYS_DIR

    @property
    def repository(self) -> Path:
        return self.root / REPOSITORY_DIR

    @property
    def metadata(self) -> Path:
        return self.repository / "metadata"

    @property
    def targets(self) -> Path:
        return self.repository / "targets"

    @property
    def uploads(self) -> Path:
        return self.root / UPLOADS_DIR

    @property
    def audit_head(self) -> Path:
        return self.root / AUDIT_HEAD_FILE

    @property
    def broker(self) -> Path:
        return self.root / "broker"

    @property
    def lock_file(self) -> Path:
        return self.root / LOCK_FILE

    @property
    def ek_ca(self) -> Path:
        """The EK CA certificates (PEM) enrollment trusts (``edgeseal-server ek-ca add``)."""
        return self.root / EK_CA_DIR

    def create_dirs(self) -> None:
        """Create the directory tree with private permissions where it matters."""
        self.root.mkdir(parents=True, exist_ok=True)
        # Searchable, not listable: mosquitto, which drops to its own user when started
        # as root, must reach broker/ (0750 root:mosquitto). Everything secret in here
        # is 0600 or in a 0700 directory; the repository is public anyway.
        self.root.chmod(0o711)
        self.keys.mkdir(mode=0o700, exist_ok=True)
        self.keys.chmod(0o700)
        self.uploads.mkdir(mode=0o700, exist_ok=True)
        self.repository.mkdir(exist_ok=True)

    def require_initialized(self) -> None:
        if not self.config_file.is_file() or not self.db_file.is_file():
            raise ConfigError(
                f"{self.root} is not an initialized edgeseal server data directory "
                "(run `edgeseal-server init` first)"
            )


def load_config(data: DataDir) -> ServerConfig:
    data.require_initialized()
    try:
        with data.config_file.open("rb") as handle:
            raw = handle.read(MAX_CONFIG_FILE + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read {data.config_file}: {exc.strerror}") from None
    if len(raw) > MAX_CONFIG_FILE:
        raise ConfigError(f"{data.config_file} is larger than {MAX_CONFIG_FILE} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{data.config_file} is not UTF-8") from None
    return ServerConfig.from_toml(text)


def write_config(data: DataDir, config: ServerConfig) -> None:
    atomic_write(data.config_file, config.to_toml().encode(), mode=0o600)
