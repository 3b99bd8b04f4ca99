"""edgeseal.sdk: sealed-model format, key envelopes and the other pure building blocks.

The names below are imported lazily (PEP 562), so ``import edgeseal.sdk`` costs
nothing until a recipe is used; the crypto backend loads on first use.
"""

from __future__ import annotations

#: The one place the version is written (pyproject.toml reads it from here).
__version__ = "0.1.0"

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgeseal.sdk.envelope import (
        Recipient,
        SoftwareRecipient,
        open_envelope,
        seal_envelope,
    )
    from edgeseal.sdk.errors import (
        EdgesealError,
        EnvelopeError,
        FormatError,
        IntegrityError,
        SealError,
    )
    from edgeseal.sdk.sealed import (
        ContentKey,
        OpenedModel,
        SealedModelHeader,
        SealedModelInfo,
        inspect_sealed_model,
        open_sealed_model,
        seal_model,
    )

_EXPORTS = {
    "ContentKey": "edgeseal.sdk.sealed",
    "OpenedModel": "edgeseal.sdk.sealed",
    "SealedModelHeader": "edgeseal.sdk.sealed",
    "SealedModelInfo": "edgeseal.sdk.sealed",
    "inspect_sealed_model": "edgeseal.sdk.sealed",
    "open_sealed_model": "edgeseal.sdk.sealed",
    "seal_model": "edgeseal.sdk.sealed",
    "Recipient": "edgeseal.sdk.envelope",
    "SoftwareRecipient": "edgeseal.sdk.envelope",
    "open_envelope": "edgeseal.sdk.envelope",
    "seal_envelope": "edgeseal.sdk.envelope",
    "EdgesealError": "edgeseal.sdk.errors",
    "EnvelopeError": "edgeseal.sdk.errors",
    "FormatError": "edgeseal.sdk.errors",
    "IntegrityError": "edgeseal.sdk.errors",
    "SealError": "edgeseal.sdk.errors",
}

__all__ = [
    "__version__",
    "ContentKey",
    "EdgesealError",
    "EnvelopeError",
    "FormatError",
    "IntegrityError",
    "OpenedModel",
    "Recipient",
    "SealError",
    "SealedModelHeader",
    "SealedModelInfo",
    "SoftwareRecipient",
    "inspect_sealed_model",
    "open_envelope",
    "open_sealed_model",
    "seal_envelope",
    "seal_model",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'edgeseal.sdk' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
