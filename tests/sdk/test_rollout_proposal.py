"""A rollout proposal is signed only if it changes one target's ``rollout_percent``, to N.

Attacks by a compromised server riding on a rollout change, each refused before
signing: swapping the target's hashes or length, widening another field of its
release metadata (hardware, channel), another percentage than the one asked,
touching another target, adding or dropping a target, adding an unknown field.
"""

from __future__ import annotations

import copy
import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from release_fixtures import metadata
from tuf.api.metadata import Metadata, TargetFile, Targets
from tuf.api.serialization.json import CanonicalJSONSerializer

from edgeseal.sdk.signing import ExpectedChange, ProposalError, verify_proposal

NOW = datetime(2026, 1, 1, tzinfo=UTC)
PATH = "detector/7/detector-7.esm"


def _target(version: int, percent: int = 10, **meta: Any) -> TargetFile:
    content = f"sealed {version}".encode()
    m = metadata(version=version, rollout_percent=percent, **meta)
    return TargetFile(
        length=len(content),
        hashes={"sha256": hashlib.sha256(content).hexdigest()},
        path=m.target_path,
        unrecognized_fields={"custom": m.to_custom()},
    )


def _md(version: int, targets: list[TargetFile]) -> Metadata[Targets]:
    return Metadata(
        Targets(
            version=version,
            expires=NOW + timedelta(days=90),
            targets={t.path: t for t in targets},
        )
    )


def _bytes(md: Metadata[Targets]) -> bytes:
    return md.to_bytes(CanonicalJSONSerializer())


CURRENT = _md(4, [_target(6, 100), _target(7, 10)])


def _rollout(percent: int = 50) -> ExpectedChange:
    return ExpectedChange("detector", 7, "rollout", rollout_percent=percent)


def _proposal(percent: int = 50) -> Metadata[Targets]:
    md = copy.deepcopy(CURRENT)
    md.signed.version = 5
    md.signed.targets[PATH].unrecognized_fields["custom"]["edgeseal"]["rollout_percent"] = percent
    return md


def _verify(md: Metadata[Targets], expected: ExpectedChange | None = None) -> Any:
    return verify_proposal(_bytes(md), _bytes(CURRENT), expected or _rollout(), now=NOW)


def test_the_expected_rollout_change_verifies() -> None:
    summary = _verify(_proposal())
    assert (summary.action, summary.version, summary.previous_version) == ("rollout", 5, 4)
    assert (summary.previous_rollout_percent, summary.release.rollout_percent) == (10, 50)
    assert summary.unchanged_targets == 1
    assert summary.to_json()["previous_rollout_percent"] == 10
    # lowering is a change like any other
    lowered = _md(4, [_target(6, 100), _target(7, 50)])
    down = copy.deepcopy(lowered)
    down.signed.version = 5
    down.signed.targets[PATH].unrecognized_fields["custom"]["edgeseal"]["rollout_percent"] = 20
    summary = verify_proposal(_bytes(down), _bytes(lowered), _rollout(20), now=NOW)
    assert summary.previous_rollout_percent == 50


def test_another_percentage_than_expected_is_refused() -> None:
    with pytest.raises(ProposalError, match=r"custom\.rollout_percent"):
        _verify(_proposal(100))


def test_unchanged_percentage_is_refused() -> None:
    with pytest.raises(ProposalError, match="already published at 10%"):
        _verify(_proposal(10), _rollout(10))


@pytest.mark.parametrize("percent", [None, 0, 101])
def test_rollout_needs_a_valid_expected_percentage(percent: Any) -> None:
    with pytest.raises(ProposalError, match="expected percentage"):
        _verify(_proposal(), ExpectedChange("detector", 7, "rollout", rollout_percent=percent))


def test_swapped_hashes_or_length_are_refused() -> None:
    md = _proposal()
    md.signed.targets[PATH].hashes = {"sha256": "0" * 64}
    with pytest.raises(ProposalError, match=r"more of .* than its rollout_percent.*hashes"):
        _verify(md)
    md = _proposal()
    md.signed.targets[PATH].length += 1
    with pytest.raises(ProposalError, match="length"):
        _verify(md)


def test_other_release_metadata_changes_are_refused() -> None:
    md = _proposal()
    md.signed.targets[PATH].unrecognized_fields["custom"]["edgeseal"]["channel"] = "beta"
    with pytest.raises(ProposalError, match=r"custom\.channel"):
        _verify(md)
    md = _proposal()
    md.signed.targets[PATH].unrecognized_fields["extra"] = 1
    with pytest.raises(ProposalError, match="unknown fields"):
        _verify(md)


def test_another_target_touched_added_or_dropped_is_refused() -> None:
    md = _proposal()
    other = "detector/6/detector-6.esm"
    md.signed.targets[other].unrecognized_fields["custom"]["edgeseal"]["rollout_percent"] = 99
    with pytest.raises(ProposalError, match=f"changes the published target {other}"):
        _verify(md)
    md = _proposal()
    extra = _target(8)
    md.signed.targets[extra.path] = extra
    with pytest.raises(ProposalError, match="adds unexpected target"):
        _verify(md)
    md = _proposal()
    del md.signed.targets[other]
    with pytest.raises(ProposalError, match="removes or omits"):
        _verify(md)


def test_rollout_of_an_unpublished_target_is_refused() -> None:
    with pytest.raises(ProposalError, match="is not published"):
        _verify(_proposal(), ExpectedChange("detector", 9, "rollout", rollout_percent=50))
