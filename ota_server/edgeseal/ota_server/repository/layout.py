"""Names and paths of the repository: family names, target paths, metadata files.

Pure functions, no I/O. Every target path a client will ever ask for is
validated here before anything is signed: a path that escapes its directory
(``..``, absolute, backslash), hides characters (control bytes) or lies outside
the role that would sign it is refused with an error naming the path.

TUF path patterns (spec 4.5, python-tuf ``DelegatedRole.is_delegated_path``)
match segment by segment: ``detector/*`` matches ``detector/x`` but not
``detector/7/detector-7.esm``. A family role therefore delegates both
``<family>/*`` and ``<family>/*/*``, and ``envelopes`` delegates ``envelopes/*/*``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from edgeseal.ota_server.errors import InvalidNameError

#: the online role holding the hashed bins of per-device envelopes
ENVELOPES = "envelopes"
TOP_LEVEL_ROLES = frozenset({"root", "targets", "snapshot", "timestamp"})
RESERVED_NAMES = TOP_LEVEL_ROLES | {ENVELOPES}

FAMILY_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
ENVELOPE_RE = re.compile(r"^envelopes/([^/]+)/([^/]+)-([0-9]{1,9})\.env$")
MAX_TARGET_PATH = 512
MAX_SEGMENT = 255


def validate_family_name(family: str) -> str:
    """Return ``family`` if it may name a delegated role, else raise."""
    if not isinstance(family, str) or not FAMILY_RE.fullmatch(family):
        raise InvalidNameError(
            f"invalid family name {family!r}: expected ^[a-z0-9][a-z0-9._-]{{0,63}}$",
            field="family",
        )
    if family in RESERVED_NAMES or family.startswith(ENVELOPES):
        # 'envelopes-xx' would collide with a hashed-bin role name in the client's trusted set
        raise InvalidNameError(
            f"invalid family name {family!r}: reserved TUF role name", field="family"
        )
    return family


def validate_target_path(path: str) -> str:
    """Return ``path`` if it is a canonical relative target path, else raise.

    Refused: empty, absolute, backslashes, control characters, empty/``.``/``..``
    segments, over-long paths.
    """
    if not isinstance(path, str) or not path:
        raise InvalidNameError("empty target path", field="target_path")
    shown = repr(path[:MAX_TARGET_PATH])
    if len(path) > MAX_TARGET_PATH:
        raise InvalidNameError(
            f"target path {shown} is longer than {MAX_TARGET_PATH}", field="target_path"
        )
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in path):
        raise InvalidNameError(
            f"target path {shown} contains control characters", field="target_path"
        )
    if "\\" in path:
        raise InvalidNameError(f"target path {shown} contains a backslash", field="target_path")
    if path.startswith("/"):
        raise InvalidNameError(f"target path {shown} is absolute", field="target_path")
    for segment in path.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidNameError(
                f"target path {shown} has an empty, '.' or '..' segment", field="target_path"
            )
        if len(segment) > MAX_SEGMENT:
            raise InvalidNameError(
                f"target path {shown} has a segment longer than {MAX_SEGMENT}",
                field="target_path",
            )
    return path


def family_paths(family: str) -> list[str]:
    """The TUF path patterns delegated to a family role."""
    return [f"{family}/*", f"{family}/*/*"]


ENVELOPES_PATHS = ["envelopes/*/*"]


def validate_family_target(family: str, path: str) -> str:
    """A valid target path inside ``<family>/`` (one or two further segments)."""
    validate_target_path(path)
    parts = path.split("/")
    if parts[0] != family or len(parts) not in (2, 3):
        raise InvalidNameError(
            f"target path {path!r} is outside {family}/* and {family}/*/*, "
            f"the paths delegated to family {family!r}",
            field="target_path",
        )
    return path


@dataclass(frozen=True)
class EnvelopePath:
    """The parts of ``envelopes/<device_id>/<family>-<version>.env``."""

    device: str
    family: str
    version: int

    @property
    def path(self) -> str:
        return f"{ENVELOPES}/{self.device}/{self.family}-{self.version}.env"

    def custom(self) -> dict[str, object]:
        """The custom metadata the contract puts on an envelope target."""
        return {
            "edgeseal": {
                "schema": 1,
                "kind": "envelope",
                "device": self.device,
                "family": self.family,
                "version": self.version,
            }
        }


def parse_envelope_path(path: str) -> EnvelopePath:
    """Parse and validate an envelope target path, else raise naming it."""
    validate_target_path(path)
    match = ENVELOPE_RE.fullmatch(path)
    if match is None:
        raise InvalidNameError(
            f"envelope target path {path!r} is not envelopes/<device_id>/<family>-<version>.env",
            field="target_path",
        )
    device, family, version = match.group(1), match.group(2), int(match.group(3))
    validate_family_name(family)
    return EnvelopePath(device=device, family=family, version=version)


def metadata_filename(role: str, version: int) -> str:
    """File name of a role's metadata under consistent snapshots (spec 5.2)."""
    if role == "timestamp":
        return "timestamp.json"
    return f"{version}.{role}.json"


def target_blob_path(target_path: str, sha256: str) -> str:
    """Where a target file is stored: ``<dir>/<sha256>.<name>`` (consistent snapshots)."""
    head, _, name = target_path.rpartition("/")
    return f"{head}/{sha256}.{name}" if head else f"{sha256}.{name}"
