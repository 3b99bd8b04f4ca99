"""Shared builders for the release tests (schema, signing, CLI)."""

from __future__ import annotations

import hashlib
from typing import Any

from edgeseal.sdk.golden import GoldenTensor, HealthCheck
from edgeseal.sdk.releases import PlaintextDigest, ReleaseMetadata


def tensor(values: list[float], dtype: str = "float32") -> GoldenTensor:
    import numpy as np

    return GoldenTensor.from_numpy(np.asarray([values], dtype=dtype))


def health() -> HealthCheck:
    return HealthCheck(
        inputs=(tensor([1.0, 2.0, 3.0]),),
        outputs=(tensor([0.5, 0.25]),),
        tolerance=1e-4,
        latency_budget_ms=200,
    )


def metadata(**changes: Any) -> ReleaseMetadata:
    fields: dict[str, Any] = {
        "family": "detector",
        "version": 7,
        "hardware": ("jetson-orin", "rpi5"),
        "channel": "stable",
        "rollout_percent": 100,
        "plaintext": PlaintextDigest("blake3", hashlib.sha256(b"model").digest(), 12345),
        "min_agent_version": "0.1.0",
        "health_check": health(),
        "key_release": "envelope",
    }
    fields.update(changes)
    return ReleaseMetadata(**fields)
