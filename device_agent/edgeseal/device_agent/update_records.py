"""The small files the update cycle keeps in the state directory.

* ``failed-releases.json``: the releases that were refused or failed their
  trial, by (family, version, sealed SHA-256), so the cycle does not retry a
  broken release at every poll (a new version or new bytes retry); at most
  :data:`MAX_REMEMBERED`, the oldest forgotten first. A release an operator
  rolled back from is remembered the same way.
* ``releases/FAMILY-VERSION.json``: the signed release metadata of an
  installed release, whose health check a restart runs again.
* ``last-check.json``: what the last cycle did (``edgeseal-agent status``).

Each is written atomically; an unreadable one is ignored with a warning.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgeseal.device_agent.slots import SlotInfo
from edgeseal.device_agent.state import ensure_dir, read_json, write_json
from edgeseal.sdk.errors import FormatError
from edgeseal.sdk.releases import ReleaseMetadata

log = logging.getLogger(__name__)

FAILED_FILE = "failed-releases.json"
LAST_CHECK_FILE = "last-check.json"
RELEASES_DIR = "releases"
#: How many refused/failed releases are remembered (the oldest are forgotten first).
MAX_REMEMBERED = 32

#: (family, version, sealed SHA-256) of a release.
ReleaseKey = tuple[str, int, str]


class UpdateRecords:
    """failed-releases.json, releases/ and last-check.json of one state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)

    def remembered(self) -> set[ReleaseKey]:
        """The releases refused or failed before (empty if the file is missing or unreadable)."""
        path = self.state_dir / FAILED_FILE
        try:
            doc = read_json(path, FAILED_FILE)
            return {(str(e["family"]), int(e["version"]), str(e["sealed_sha256"])) for e in doc}
        except FileNotFoundError:
            return set()
        except (ValueError, TypeError, KeyError, OSError) as exc:
            log.warning("ignoring unreadable %s: %s", path, exc)
            return set()

    def remember_rollback(self, last_update: Mapping[str, Any] | None) -> None:
        """A release an operator rolled back from is not reinstalled by the next poll.

        ``rollback`` records it in state.json's ``last_update``; it is copied here
        before the cycle can record anything else, so it is remembered like a
        failed trial.
        """
        last = last_update or {}
        gone = last.get("rolled_back_from") if last.get("outcome") == "rolled-back" else None
        if not isinstance(gone, dict) or not gone.get("sealed_sha256"):
            return
        key = (str(gone["family"]), int(gone["model_version"]), str(gone["sealed_sha256"]))
        if key not in self.remembered():
            self.remember(key)

    def remember(self, key: ReleaseKey) -> None:
        known = [k for k in sorted(self.remembered()) if k != key][-(MAX_REMEMBERED - 1) :]
        known.append(key)
        doc = [{"family": f, "version": v, "sealed_sha256": s} for f, v, s in known]
        write_json(self.state_dir / FAILED_FILE, doc)  # type: ignore[arg-type]

    def save_release_metadata(self, meta: ReleaseMetadata) -> None:
        """Keep the signed release metadata: the health check a restart runs again."""
        ensure_dir(self.state_dir / RELEASES_DIR)
        write_json(release_metadata_path(self.state_dir, meta.family, meta.version), meta.to_json())

    def write_last_check(self, result: Mapping[str, Any]) -> None:
        """Write last-check.json; a failure to write is only logged."""
        try:
            write_json(self.state_dir / LAST_CHECK_FILE, result)
        except OSError as exc:
            log.warning("cannot write %s: %s", LAST_CHECK_FILE, exc)


def release_metadata_path(state_dir: Path, family: str, version: int) -> Path:
    return Path(state_dir) / RELEASES_DIR / f"{family}-{version}.json"


def load_release_metadata(state_dir: Path, slot: SlotInfo) -> ReleaseMetadata | None:
    """The saved signed metadata of the slot's release, if it matches the slot; else None."""
    if slot.family is None or slot.model_version is None:
        return None
    path = release_metadata_path(state_dir, slot.family, slot.model_version)
    try:
        meta = ReleaseMetadata.from_json(json.loads(path.read_bytes()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, FormatError) as exc:
        log.warning("ignoring saved release metadata %s: %s", path, exc)
        return None
    if meta.plaintext.digest.hex() != slot.plaintext_digest:
        return None
    return meta


__all__ = [
    "FAILED_FILE",
    "LAST_CHECK_FILE",
    "MAX_REMEMBERED",
    "RELEASES_DIR",
    "ReleaseKey",
    "UpdateRecords",
    "load_release_metadata",
    "release_metadata_path",
]
