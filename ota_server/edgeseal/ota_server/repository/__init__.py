"""The TUF repository of the OTA server (python-tuf 7 metadata, consistent snapshots).

Trust layout (docs/dev/ota-contracts.md): offline ``root`` and top-level
``targets``; one delegated role per model family signed k-of-n by its release
managers; an online ``envelopes`` role with hashed bins for per-device
envelopes; online ``snapshot`` and ``timestamp``.
"""

from __future__ import annotations

from edgeseal.ota_server.repository.delegations import FamilyDelegation
from edgeseal.ota_server.repository.expiry import Expiry
from edgeseal.ota_server.repository.layout import (
    ENVELOPES,
    EnvelopePath,
    parse_envelope_path,
    target_blob_path,
    validate_family_name,
    validate_target_path,
)
from edgeseal.ota_server.repository.repository import Repository

__all__ = [
    "ENVELOPES",
    "EnvelopePath",
    "Expiry",
    "FamilyDelegation",
    "Repository",
    "parse_envelope_path",
    "target_blob_path",
    "validate_family_name",
    "validate_target_path",
]
