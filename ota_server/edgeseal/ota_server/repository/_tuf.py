"""The python-tuf and securesystemslib names this package uses, in one place.

Both libraries re-export their public classes from private modules without an
``__all__``, which ``mypy --strict`` (no implicit re-export) reports at every
import. Importing them once here keeps the other modules clean; a mypy
override ``implicit_reexport = true`` for ``tuf.*``/``securesystemslib.*`` in
pyproject.toml would make this module unnecessary.
"""

from __future__ import annotations

from securesystemslib.exceptions import UnverifiedSignatureError
from securesystemslib.signer import (  # type: ignore[attr-defined]
    CryptoSigner,
    Key,
    Signature,
    Signer,
    SSlibKey,
)
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import (  # type: ignore[attr-defined]
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    SuccinctRoles,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization import DeserializationError
from tuf.api.serialization.json import JSONSerializer

__all__ = [
    "CryptoSigner",
    "DelegatedRole",
    "Delegations",
    "DeserializationError",
    "JSONSerializer",
    "Key",
    "MetaFile",
    "Metadata",
    "Root",
    "SSlibKey",
    "Signature",
    "Signer",
    "Snapshot",
    "SuccinctRoles",
    "TargetFile",
    "Targets",
    "Timestamp",
    "UnsignedMetadataError",
    "UnverifiedSignatureError",
]
