"""Release custom metadata: strict schema, rollout cohorts and target selection."""

from __future__ import annotations

import contextlib
import copy
import json
from typing import Any

import pytest
from hypothesis import HealthCheck as HypothesisHealthCheck
from hypothesis import given, settings
from hypothesis import strategies as st
from release_fixtures import metadata, tensor

from edgeseal.sdk.errors import FormatError
from edgeseal.sdk.golden import MAX_GOLDEN_BYTES, GoldenTensor, HealthCheck
from edgeseal.sdk.releases import (
    EnvelopeMetadata,
    ReleaseMetadata,
    envelope_target_path,
    model_target_path,
    rollout_cohort,
    select_release,
)

# -- schema ------------------------------------------------------------------


def test_round_trip_through_json_text() -> None:
    meta = metadata()
    custom = meta.to_custom()
    text = json.dumps(custom)
    again = ReleaseMetadata.from_custom(json.loads(text))
    assert again == meta
    assert again.to_custom() == custom
    assert custom["edgeseal"]["health_check"]["tolerance"] == "0.0001"
    assert custom["edgeseal"]["schema"] == 1 and custom["edgeseal"]["kind"] == "model"
    assert meta.target_path == "detector/7/detector-7.esm"


@pytest.mark.parametrize("tolerance", [0.0, 1e-4, 1e-5, 0.5, 3.0, 1e6])
def test_custom_metadata_is_canonical_json(tolerance: float) -> None:
    """TUF signs OLPC canonical JSON, which refuses floats: the schema must not emit any."""
    from securesystemslib.formats import encode_canonical

    meta = metadata(
        health_check=HealthCheck(
            inputs=(tensor([1.0]),),
            outputs=(tensor([2.0]),),
            tolerance=tolerance,
            latency_budget_ms=5,
        )
    )
    encode_canonical(meta.to_custom())
    assert ReleaseMetadata.from_custom(meta.to_custom()).health_check.tolerance == tolerance


def test_golden_tensors_round_trip_through_numpy() -> None:
    import numpy as np

    array = np.arange(12, dtype=np.int16).reshape(3, 4)
    t = GoldenTensor.from_numpy(array)
    assert (t.dtype, t.shape, len(t.data)) == ("int16", (3, 4), 24)
    assert np.array_equal(t.to_numpy(), array)
    assert GoldenTensor.from_json(t.to_json()) == t


def _body() -> dict[str, Any]:
    return metadata().to_json()


def _set(path: str, value: Any) -> dict[str, Any]:
    body = copy.deepcopy(_body())
    *parents, last = path.split(".")
    node: Any = body
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if value is _DELETE:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return body


_DELETE = object()
_BIG_B64 = "A" * (4 * (MAX_GOLDEN_BYTES // 3 + 2))

MALFORMED = [
    ("schema", 2, "unsupported release metadata schema 2"),
    ("schema", "1", "schema"),
    ("schema", True, "schema"),
    ("kind", "envelope", "kind"),
    ("family", "Detector", "family"),
    ("family", "", "family"),
    ("family", 7, "family"),
    ("version", -1, "version"),
    ("version", 2**63, "version"),
    ("version", 7.0, "version"),
    ("version", True, "version"),
    ("hardware", [], "hardware"),
    ("hardware", "rpi5", "hardware"),
    ("hardware", ["rpi5", "rpi5"], "hardware"),
    ("hardware", ["RPi 5"], "hardware"),
    ("hardware", ["x"] * 33, "hardware"),
    ("channel", "Stable", "channel"),
    ("channel", "a" * 33, "channel"),
    ("channel", "", "channel"),
    ("rollout_percent", 101, "rollout_percent"),
    ("rollout_percent", -1, "rollout_percent"),
    ("rollout_percent", 50.0, "rollout_percent"),
    ("plaintext.digest_alg", "md5", "digest_alg"),
    ("plaintext.digest", "zz" * 32, "digest"),
    ("plaintext.digest", "ab" * 31, "digest"),
    ("plaintext.digest", "abc", "digest"),
    ("plaintext.digest", "AB" * 32, "digest"),
    ("plaintext.size", -1, "size"),
    ("plaintext.size", 2**40, "size"),
    ("plaintext.extra", 1, "unknown field"),
    ("min_agent_version", "1.x", "min_agent_version"),
    ("min_agent_version", "1.2.3.4.5", "min_agent_version"),
    ("min_agent_version", 1, "min_agent_version"),
    ("key_release", "none", "key_release"),
    ("health_check.tolerance", "nan", "tolerance"),
    ("health_check.tolerance", "-1", "tolerance"),
    ("health_check.tolerance", "1e999", "tolerance"),
    ("health_check.tolerance", "2e6", "tolerance"),
    ("health_check.tolerance", 0.1, "tolerance"),
    ("health_check.tolerance", 1, "tolerance"),
    ("health_check.latency_budget_ms", 0, "latency_budget_ms"),
    ("health_check.latency_budget_ms", 10**9, "latency_budget_ms"),
    ("health_check.inputs", [], "inputs"),
    ("health_check.outputs", [], "outputs"),
    ("health_check.inputs", "x", "inputs"),
    ("health_check.inputs.0.dtype", "complex64", "dtype"),
    ("health_check.inputs.0.dtype", "object", "dtype"),
    ("health_check.inputs.0.shape", [1, 4], "data_b64"),
    ("health_check.inputs.0.shape", [0, 3], "shape"),
    ("health_check.inputs.0.shape", [1] * 9, "shape"),
    ("health_check.inputs.0.shape", [1, -3], "shape"),
    ("health_check.inputs.0.shape", "1,3", "shape"),
    ("health_check.inputs.0.data_b64", "!!!!", "data_b64"),
    ("health_check.inputs.0.data_b64", "AAAA", "data_b64"),
    ("health_check.inputs.0.data_b64", _BIG_B64, "exceed"),
    ("health_check.inputs.0.extra", 1, "tensor"),
    ("health_check.extra", 1, "health_check"),
    ("extra", 1, "unknown field"),
    ("channel", _DELETE, "lacks channel"),
    ("health_check", _DELETE, "lacks health_check"),
]


@pytest.mark.parametrize(("path", "value", "expected"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_every_malformed_field_is_refused(path: str, value: Any, expected: str) -> None:
    body = _set(path, value)
    with pytest.raises(FormatError) as info:
        ReleaseMetadata.from_json(body)
    assert expected in info.value.diagnostics()


def test_non_canonical_base64_is_refused() -> None:
    body = _body()
    data = body["health_check"]["inputs"][0]["data_b64"]
    body["health_check"]["inputs"][0]["data_b64"] = data.rstrip("=") if "=" in data else data + "\n"
    with pytest.raises(FormatError, match="base64"):
        ReleaseMetadata.from_json(body)


def test_golden_data_is_bounded_in_total() -> None:
    import numpy as np

    half = np.zeros(MAX_GOLDEN_BYTES // 2 // 4 + 1, dtype=np.float32)  # two of them exceed
    big = GoldenTensor.from_numpy(half)
    with pytest.raises(FormatError, match="golden tensors hold"):
        HealthCheck(inputs=(big,), outputs=(big,), tolerance=0.0, latency_budget_ms=1)
    body = _body()
    body["health_check"]["inputs"] = [big.to_json()]
    body["health_check"]["outputs"] = [big.to_json()]
    with pytest.raises(FormatError):
        ReleaseMetadata.from_json(body)


def test_not_an_object_and_missing_wrapper_are_refused() -> None:
    for value in (None, [], "x", 1):
        with pytest.raises(FormatError):
            ReleaseMetadata.from_json(value)
    with pytest.raises(FormatError, match="no 'edgeseal' entry"):
        ReleaseMetadata.from_custom({"other": _body()})


def test_constructor_validates_too() -> None:
    with pytest.raises(FormatError, match="channel"):
        metadata(channel="no spaces allowed")
    with pytest.raises(FormatError, match="hardware"):
        metadata(hardware=["rpi5"])  # a list, not a tuple: the dataclass is immutable


def test_envelope_metadata_round_trip_and_refusals() -> None:
    env = EnvelopeMetadata(device="dev-0001", family="detector", version=7)
    assert EnvelopeMetadata.from_custom(env.to_custom()) == env
    assert env.target_path == "envelopes/dev-0001/detector-7.env"
    bad = env.to_json() | {"kind": "model"}
    with pytest.raises(FormatError, match="kind"):
        EnvelopeMetadata.from_json(bad)
    with pytest.raises(FormatError, match="schema"):
        EnvelopeMetadata.from_json(env.to_json() | {"schema": 3})
    with pytest.raises(FormatError, match="device"):
        envelope_target_path("../etc", "detector", 7)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HypothesisHealthCheck.too_slow])
@given(value=_json_values)
def test_parser_raises_only_format_error_on_arbitrary_json(value: Any) -> None:
    with contextlib.suppress(FormatError):
        ReleaseMetadata.from_json(value)


@settings(max_examples=300, deadline=None)
@given(
    path=st.sampled_from([m[0] for m in MALFORMED if m[1] is not _DELETE]),
    value=_json_values,
)
def test_parser_on_mutated_fields_returns_valid_metadata_or_raises(path: str, value: Any) -> None:
    body = _set(path, value)
    try:
        parsed = ReleaseMetadata.from_json(body)
    except FormatError:
        return
    # Whatever is accepted must survive its own round trip unchanged.
    assert ReleaseMetadata.from_json(json.loads(json.dumps(parsed.to_json()))) == parsed


# -- rollout cohorts ---------------------------------------------------------

DEVICES = [f"dev-{i:05d}" for i in range(10_000)]


def test_cohort_is_deterministic_and_in_range() -> None:
    first = [rollout_cohort(d, "detector", 7) for d in DEVICES[:500]]
    assert first == [rollout_cohort(d, "detector", 7) for d in DEVICES[:500]]
    assert all(0 <= c < 100 for c in first)


def test_ten_percent_rollout_reaches_about_ten_percent_the_same_every_time() -> None:
    def in_rollout(percent: int) -> set[str]:
        return {d for d in DEVICES if rollout_cohort(d, "detector", 7) < percent}

    ten = in_rollout(10)
    assert 900 <= len(ten) <= 1100
    assert in_rollout(10) == ten
    fifty = in_rollout(50)
    assert ten < fifty and 4700 <= len(fifty) <= 5300
    assert in_rollout(100) == set(DEVICES) and in_rollout(0) == set()


def test_cohort_differs_between_releases() -> None:
    a = {d for d in DEVICES[:2000] if rollout_cohort(d, "detector", 7) < 10}
    b = {d for d in DEVICES[:2000] if rollout_cohort(d, "detector", 8) < 10}
    assert a != b


def test_cohort_refuses_invalid_ids() -> None:
    with pytest.raises(FormatError):
        rollout_cohort("dev\x00x", "detector", 7)
    with pytest.raises(FormatError):
        rollout_cohort("dev-1", "Detector", 7)


# -- selection ---------------------------------------------------------------


def _candidates(*metas: ReleaseMetadata) -> list[tuple[str, ReleaseMetadata]]:
    return [(m.target_path, m) for m in metas]


def _select(cands: list[tuple[str, ReleaseMetadata]], **kw: Any) -> Any:
    args: dict[str, Any] = {
        "family": "detector",
        "hardware_class": "rpi5",
        "channel": "stable",
        "device_id": "dev-00001",
        "agent_version": "0.1.0",
        "floor_version": 5,
    }
    args.update(kw)
    return select_release(cands, **args)


def test_selects_the_newest_eligible_release() -> None:
    cands = _candidates(metadata(version=6), metadata(version=8), metadata(version=7))
    path, meta = _select(cands)
    assert (path, meta.version) == (model_target_path("detector", 8), 8)
    assert _select(list(reversed(cands)))[1].version == 8


def test_wrong_hardware_class_selects_nothing() -> None:
    cands = _candidates(metadata(version=8, hardware=("jetson-orin",)))
    assert _select(cands) is None
    assert _select(cands, hardware_class="jetson-orin") is not None


def test_other_channel_or_family_is_skipped() -> None:
    cands = _candidates(
        metadata(version=9, channel="beta"), metadata(version=10, family="other"), metadata()
    )
    assert _select(cands)[1].version == 7
    assert _select(cands, channel="beta")[1].version == 9


def test_rollout_cohort_gates_selection() -> None:
    inside = next(d for d in DEVICES if rollout_cohort(d, "detector", 8) < 10)
    outside = next(d for d in DEVICES if rollout_cohort(d, "detector", 8) >= 10)
    cands = _candidates(metadata(version=7), metadata(version=8, rollout_percent=10))
    assert _select(cands, device_id=inside)[1].version == 8
    assert _select(cands, device_id=outside)[1].version == 7
    assert _select(_candidates(metadata(version=8, rollout_percent=0))) is None


def test_agent_too_old_skips_release() -> None:
    cands = _candidates(metadata(version=7), metadata(version=8, min_agent_version="0.2"))
    assert _select(cands, agent_version="0.1.9")[1].version == 7
    assert _select(cands, agent_version="0.2.0")[1].version == 8
    assert _select(cands, agent_version="0.10.0")[1].version == 8  # numeric, not lexical
    with pytest.raises(FormatError):
        _select(cands, agent_version="0.2.0-dev")


def test_floor_version_excludes_current_and_older() -> None:
    cands = _candidates(metadata(version=5), metadata(version=7))
    assert _select(cands, floor_version=7) is None
    assert _select(cands, floor_version=6)[1].version == 7
    assert _select(_candidates(metadata(version=0)), floor_version=None)[1].version == 0


def test_target_whose_path_disagrees_with_its_metadata_is_ignored() -> None:
    meta = metadata(version=9)
    assert _select([("detector/7/detector-7.esm", meta)]) is None


def test_tensor_helper_sanity() -> None:
    assert tensor([1.0]).shape == (1, 1)
