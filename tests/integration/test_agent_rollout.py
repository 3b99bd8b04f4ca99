"""A staged rollout seen by real agents: only the devices inside the percentage install.

Two emulated devices (swtpm) whose rollout cohorts differ. A release is published,
then - before the devices check - its rollout is cut to a percentage that covers
one cohort and not the other (2 of 3 signatures). The device inside installs, the
other is told it is outside the rollout; raised to 100 % (signed again), the
second installs too. Cohorts are deterministic (:func:`rollout_cohort`), so the
percentage is computed from the device ids, not guessed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from agent_fleet import FAMILY, fleet

from components import require_module
from edgeseal.sdk.releases import rollout_cohort

pytestmark = [pytest.mark.swtpm, pytest.mark.tflite]


def _two_cohorts(version: int) -> tuple[str, str, int]:
    """Device ids ``inside``, ``outside`` and a percentage with only ``inside`` in it."""
    names = [f"dev-{i}" for i in range(1, 50)]
    first = names[0]
    for other in names[1:]:
        a, b = rollout_cohort(first, FAMILY, version), rollout_cohort(other, FAMILY, version)
        if a != b:
            inside, outside = (first, other) if a < b else (other, first)
            return inside, outside, min(a, b) + 1
    raise AssertionError("no two distinct cohorts")  # pragma: no cover


def test_rollout_reaches_the_cohort_then_the_fleet(tmp_path: Path, swtpm_ca: Path) -> None:
    require_module("ai_edge_litert", "ai-edge-litert")
    inside_id, outside_id, percent = _two_cohorts(1)
    with fleet(tmp_path) as f:
        inside = f.add_device(inside_id, swtpm_ca)
        outside = f.add_device(outside_id, swtpm_ca)
        try:
            f.publish(1)
            release_id = f"{FAMILY}-1"
            record = f.rm.rollout(release_id, percent)
            assert record.state == "rollout-awaiting-signatures"
            assert record.raw["pending_rollout_percent"] == percent
            f._sign(release_id, "published")

            result = inside.check_now()
            assert (result["outcome"], result["version"]) == ("installed", 1), result
            result = outside.check_now()
            assert result["outcome"] == "no-update", result
            assert result["reason"] == "no release for this device", result

            f.rm.rollout(release_id, 100)
            f._sign(release_id, "published")
            result = outside.check_now()
            assert (result["outcome"], result["version"]) == ("installed", 1), result
            assert inside.check_now()["outcome"] == "no-update"
        finally:
            inside.device.stop()
            outside.device.stop()
