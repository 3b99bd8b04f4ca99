"""The health check on real TFLite models: golden outputs, every failure collected, latency rule."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from components import require_module
from edgeseal.device_agent.errors import AgentError
from edgeseal.device_agent.health import (
    HealthCheckError,
    HealthCheckSpec,
    HealthCheckSpecError,
    load_and_check,
    run_health_check,
)
from edgeseal.sdk import modelgen
from edgeseal.sdk.golden import GoldenTensor, HealthCheck
from edgeseal.sdk.runtime import TFLiteModel, load_model

SIZES = [6, 16, 4]


pytestmark = pytest.mark.tflite


@pytest.fixture(autouse=True)
def _runtime() -> None:
    require_module("ai_edge_litert", "ai-edge-litert")


@pytest.fixture
def layers() -> list[modelgen.Layer]:
    return modelgen.random_layers(SIZES, seed=11)


@pytest.fixture
def model(layers: list[modelgen.Layer]) -> TFLiteModel:
    return load_model(modelgen.mlp_model(layers, batch=2))


def golden(layers: list[modelgen.Layer], *, seed: int = 3) -> HealthCheckSpec:
    x = np.random.default_rng(seed).standard_normal((2, SIZES[0])).astype(np.float32)
    y = modelgen.reference_mlp(x, layers)
    return HealthCheckSpec(inputs=(x,), outputs=(y,), tolerance=1e-4, latency_budget_ms=10_000)


def fake_clock(step_ms: float) -> Callable[[], float]:
    """Each call advances by ``step_ms``: every run then takes exactly ``step_ms``."""
    ticks: Iterator[int] = iter(range(10**6))
    return lambda: next(ticks) * step_ms / 1000.0


def test_passes_on_the_real_model_with_reference_outputs(
    model: TFLiteModel, layers: list[modelgen.Layer]
) -> None:
    report = run_health_check(model, golden(layers), runs=3)
    assert report.passed, report.failures
    report.raise_if_failed()
    assert report.runs == 3
    assert report.runtime == model.runtime_name
    assert report.median_latency_ms is not None and report.median_latency_ms >= 0
    (error,) = report.max_abs_errors
    assert error is not None and error <= 1e-4
    assert report.to_dict()["passed"] is True


def test_wrong_model_fails_with_the_output_and_its_error(model: TFLiteModel) -> None:
    other = modelgen.random_layers(SIZES, seed=99)
    report = run_health_check(model, golden(other), runs=1)
    assert not report.passed
    (failure,) = report.failures
    assert failure.code == "output-tolerance"
    assert failure.context["output"] == 0
    assert "output 0 'output'" in failure.message
    assert failure.context["max_abs_error"] == report.max_abs_errors[0]
    assert report.max_abs_errors[0] is not None and report.max_abs_errors[0] > 1e-2


class TwoOutputs:
    """A real model run twice, presented as a model with two outputs (the runtime's API)."""

    def __init__(self, model: TFLiteModel) -> None:
        self.model = model
        self.runtime_name = model.runtime_name
        self.output_details = model.output_details * 2

    def run(self, inputs: list[Any]) -> list[Any]:
        (y,) = self.model.run(inputs)
        return [y, y.copy()]


def test_every_failure_is_collected_in_one_report(
    model: TFLiteModel, layers: list[modelgen.Layer]
) -> None:
    spec = golden(layers)
    (x,), (y,) = spec.inputs, spec.outputs
    wrong = HealthCheckSpec(
        inputs=(x,),
        outputs=(y + 0.5, y - 0.25),  # both outputs off, by different amounts
        tolerance=1e-3,
        latency_budget_ms=20,
    )
    report = run_health_check(TwoOutputs(model), wrong, runs=5, clock=fake_clock(25))  # type: ignore[arg-type]
    codes = [f.code for f in report.failures]
    assert codes == ["output-tolerance", "output-tolerance", "latency"]
    assert [f.context["output"] for f in report.failures[:2]] == [0, 1]
    assert report.max_abs_errors == pytest.approx((0.5, 0.25), abs=1e-4)
    assert report.median_latency_ms == pytest.approx(25)
    with pytest.raises(HealthCheckError) as info:
        report.raise_if_failed()
    assert isinstance(info.value, AgentError)
    text = info.value.diagnostics()
    assert text.count("[output-tolerance]") == 2
    assert "[latency] median latency 25.000 ms over 5 run(s) exceeds the budget of 20 ms" in text


def test_latency_is_the_median_so_one_slow_warm_up_run_passes(
    model: TFLiteModel, layers: list[modelgen.Layer]
) -> None:
    spec = golden(layers)
    spec = HealthCheckSpec(spec.inputs, spec.outputs, spec.tolerance, latency_budget_ms=10)
    times = iter([0.0, 1.0, 1.0, 1.005, 2.0, 2.005, 3.0, 3.005])  # 1000 ms, then 5 ms each
    report = run_health_check(model, spec, runs=4, clock=lambda: next(times))
    assert report.passed, report.failures
    assert report.median_latency_ms == pytest.approx(5, abs=1e-6)


def test_wrong_output_count_shape_and_dtype(
    model: TFLiteModel, layers: list[modelgen.Layer]
) -> None:
    spec = golden(layers)
    (x,), (y,) = spec.inputs, spec.outputs
    wrong = HealthCheckSpec(
        inputs=(x,),
        outputs=(y.astype(np.float16).reshape(4, 2), y),  # dtype and shape off; one too many
        tolerance=1e-4,
        latency_budget_ms=1e6,
    )
    report = run_health_check(model, wrong, runs=1)
    assert [f.code for f in report.failures] == ["output-count", "output-dtype", "output-shape"]
    assert report.max_abs_errors == (None, None)


def test_golden_inputs_that_do_not_fit_the_model(model: TFLiteModel) -> None:
    spec = HealthCheckSpec(
        inputs=(np.zeros((2, 5), np.float32),),
        outputs=(np.zeros((2, 4), np.float32),),
        tolerance=0,
        latency_budget_ms=1,
    )
    report = run_health_check(model, spec)
    assert [f.code for f in report.failures] == ["input-mismatch"]
    assert "got float32[2, 5]" in report.failures[0].message
    assert report.median_latency_ms is None


class FailingInterpreter:
    """A real interpreter whose invoke fails, as a crashing delegate would."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def invoke(self) -> None:
        raise RuntimeError("Node number 0 (FULLY_CONNECTED) failed to invoke.")


def test_interpreter_exception_is_a_failure_of_the_report(
    model: TFLiteModel, layers: list[modelgen.Layer]
) -> None:
    broken = TFLiteModel(FailingInterpreter(model._interpreter), model.runtime_name)
    report = run_health_check(broken, golden(layers), runs=3)
    assert [f.code for f in report.failures] == ["inference"]
    assert "FULLY_CONNECTED) failed to invoke" in report.failures[0].message
    assert report.runs == 0
    assert report.median_latency_ms is None
    with pytest.raises(HealthCheckError, match="inference"):
        report.raise_if_failed()


def test_nan_output_is_never_within_tolerance(model: TFLiteModel) -> None:
    from edgeseal.device_agent.health import _max_abs_error

    assert _max_abs_error(np.float32([np.nan, 1]), np.float32([0, 1])) == np.inf
    assert _max_abs_error(np.float32([np.nan, np.inf]), np.float32([np.nan, np.inf])) == 0.0
    assert _max_abs_error(np.int8([-128]), np.int8([127])) == 255.0


def test_load_failure_is_reported(layers: list[modelgen.Layer]) -> None:
    model, report = load_and_check(b"\0\0\0\0TFL3garbage", golden(layers))
    assert model is None
    assert [f.code for f in report.failures] == ["load"]


def test_spec_from_the_release_health_check(
    model: TFLiteModel, layers: list[modelgen.Layer]
) -> None:
    spec = golden(layers)
    release = HealthCheck(
        inputs=tuple(GoldenTensor.from_numpy(a) for a in spec.inputs),
        outputs=tuple(GoldenTensor.from_numpy(a) for a in spec.outputs),
        tolerance=1e-4,
        latency_budget_ms=200,
    )
    parsed = HealthCheckSpec.from_release(release)
    np.testing.assert_array_equal(parsed.inputs[0], spec.inputs[0])
    assert parsed.latency_budget_ms == 200.0
    # run_health_check takes the release's type directly, and its JSON form converts too.
    assert run_health_check(model, release, runs=1).passed
    assert HealthCheckSpec.from_release(release.to_json()).tolerance == 1e-4


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tolerance": None}, "tolerance"),
        ({"latency_budget_ms": 0}, "latency_budget_ms"),
        ({"inputs": [{"dtype": "float64", "shape": [1], "data_b64": "AAAAAAAAAAA="}]}, "dtype"),
        ({"inputs": [{"dtype": "float32", "shape": [2], "data_b64": "AAAAAA=="}]}, "8 bytes"),
        ({"inputs": [{"dtype": "float32", "shape": [1], "data_b64": "!!"}]}, "base64"),
    ],
)
def test_malformed_spec_is_refused(change: dict[str, Any], message: str) -> None:
    valid = HealthCheck(
        inputs=(GoldenTensor.from_numpy(np.zeros(1, np.float32)),),
        outputs=(GoldenTensor.from_numpy(np.zeros(1, np.float32)),),
        tolerance=0.1,
        latency_budget_ms=5,
    )
    raw: dict[str, Any] = {**valid.to_json(), **change}
    assert HealthCheckSpec.from_release(valid.to_json()).tolerance == 0.1
    with pytest.raises(HealthCheckSpecError, match=message) as info:
        HealthCheckSpec.from_release(raw)
    assert isinstance(info.value, AgentError)


@pytest.mark.parametrize(
    ("tolerance", "budget"), [(float("nan"), 1.0), (-1.0, 1.0), (0.0, 0.0), (0.0, float("inf"))]
)
def test_numpy_spec_bounds(tolerance: float, budget: float) -> None:
    with pytest.raises(HealthCheckSpecError):
        HealthCheckSpec((), (), tolerance, budget)
