"""Health check of a loaded model against the release's golden inputs and outputs.

Before a new model is committed (the ``trial`` step of the install
transaction) and after every start, the agent runs the release's health-check
spec: the golden inputs must give the golden outputs within ``tolerance``
(maximum absolute error per output), with the right number, shapes and dtypes
of outputs, and the median latency of a few runs must stay within the
release's budget. Like keylime's ``Failure`` objects, the report collects
*every* failure instead of stopping at the first, so one report says all
that is wrong with a release on this hardware.

The logic is pure apart from running the model: the clock is injected, so the
latency rule is tested with a fake clock instead of sleeping.

The release metadata carries the spec as :class:`edgeseal.sdk.golden.HealthCheck`
(raw little-endian bytes per tensor); :class:`HealthCheckSpec` is its numpy
view, which :func:`run_health_check` accepts as well.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeseal.device_agent.errors import AgentError
from edgeseal.sdk.errors import EdgesealError, FormatError
from edgeseal.sdk.golden import HealthCheck
from edgeseal.sdk.runtime import InputMismatchError, TFLiteModel, load_model

logger = logging.getLogger(__name__)

__all__ = [
    "Failure",
    "HealthCheckError",
    "HealthCheckSpec",
    "HealthCheckSpecError",
    "HealthReport",
    "load_and_check",
    "run_health_check",
]


class HealthCheckSpecError(AgentError):
    """The health-check spec itself is malformed (the release's fault, found before running)."""


@dataclass(frozen=True, eq=False)
class HealthCheckSpec:
    """Golden inputs and outputs, the tolerance on outputs and the latency budget."""

    inputs: tuple[npt.NDArray[Any], ...]
    outputs: tuple[npt.NDArray[Any], ...]
    tolerance: float
    latency_budget_ms: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "outputs", tuple(self.outputs))
        for name in ("inputs", "outputs"):
            arrays = getattr(self, name)
            if not all(isinstance(a, np.ndarray) for a in arrays):
                raise HealthCheckSpecError(f"golden {name} must be numpy arrays", field=name)
        if not (math.isfinite(self.tolerance) and self.tolerance >= 0):
            raise HealthCheckSpecError(
                f"tolerance must be a finite number >= 0, got {self.tolerance}", field="tolerance"
            )
        if not (math.isfinite(self.latency_budget_ms) and self.latency_budget_ms > 0):
            raise HealthCheckSpecError(
                f"latency budget must be a finite number > 0 ms, got {self.latency_budget_ms}",
                field="latency_budget_ms",
            )

    @classmethod
    def from_release(
        cls, spec: HealthCheck | Mapping[str, Any] | HealthCheckSpec
    ) -> HealthCheckSpec:
        """The numpy view of the release's :class:`~edgeseal.sdk.golden.HealthCheck`.

        Also accepts its JSON form (parsed strictly by ``HealthCheck.from_json``).
        """
        if isinstance(spec, HealthCheckSpec):
            return spec
        try:
            check = spec if isinstance(spec, HealthCheck) else HealthCheck.from_json(spec)
        except FormatError as exc:
            raise HealthCheckSpecError(
                f"invalid health check: {exc.message}", field=exc.field
            ) from exc
        return cls(
            inputs=tuple(t.to_numpy() for t in check.inputs),
            outputs=tuple(t.to_numpy() for t in check.outputs),
            tolerance=float(check.tolerance),
            latency_budget_ms=float(check.latency_budget_ms),
        )


@dataclass(frozen=True)
class Failure:
    """One thing wrong, with a stable ``code`` and structured ``context``."""

    code: str
    message: str
    context: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class HealthReport:
    """Everything the health check found; :attr:`passed` when there is no failure."""

    failures: tuple[Failure, ...]
    max_abs_errors: tuple[float | None, ...]  # per golden output; None when not comparable
    median_latency_ms: float | None  # None when the model did not run
    runtime: str
    runs: int

    @property
    def passed(self) -> bool:
        return not self.failures

    def raise_if_failed(self) -> None:
        """Raise :class:`HealthCheckError` listing every failure, unless the check passed."""
        if self.failures:
            raise HealthCheckError(self)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, for state.json's ``last_update`` and the audit log."""
        return {
            "passed": self.passed,
            "failures": [
                {"code": f.code, "message": f.message, "context": dict(f.context)}
                for f in self.failures
            ],
            "max_abs_errors": list(self.max_abs_errors),
            "median_latency_ms": self.median_latency_ms,
            "runtime": self.runtime,
            "runs": self.runs,
        }


class HealthCheckError(AgentError):
    """The model failed its health check; ``report`` holds every failure."""

    def __init__(self, report: HealthReport) -> None:
        codes = ", ".join(f.code for f in report.failures)
        super().__init__(f"health check failed ({len(report.failures)} failure(s): {codes})")
        self.report = report

    def diagnostics(self) -> str:
        lines = [f"{self.message} on {self.report.runtime}:"]
        lines.extend(f"  - [{f.code}] {f.message}" for f in self.report.failures)
        return "\n".join(lines)


def run_health_check(
    model: TFLiteModel,
    spec: HealthCheck | HealthCheckSpec,
    *,
    runs: int = 5,
    clock: Callable[[], float] = time.perf_counter,
) -> HealthReport:
    """Run the golden inputs ``runs`` times and judge outputs and median latency.

    ``clock`` returns seconds. The outputs of the first run are compared; the
    latency is the median over all runs, so one slow warm-up run does not fail
    the check. An interpreter error (or inputs the model refuses) is a
    failure of the report, not an exception.
    """
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    spec = HealthCheckSpec.from_release(spec)
    failures: list[Failure] = []
    latencies: list[float] = []
    outputs: list[npt.NDArray[Any]] | None = None
    for attempt in range(runs):
        start = clock()
        try:
            result = model.run(list(spec.inputs))
        except InputMismatchError as exc:  # the golden inputs do not fit the model
            failures.append(Failure("input-mismatch", exc.message, {"run": attempt + 1}))
            break
        except (EdgesealError, RuntimeError, ValueError) as exc:  # the interpreter failed
            message = exc.message if isinstance(exc, EdgesealError) else str(exc)
            failures.append(
                Failure("inference", f"run {attempt + 1}: {message}", {"run": attempt + 1})
            )
            break
        latencies.append((clock() - start) * 1000.0)
        if outputs is None:
            outputs = result
    errors: tuple[float | None, ...] = (None,) * len(spec.outputs)
    if outputs is not None:
        errors = _compare_outputs(model, outputs, spec, failures)
    median = statistics.median(latencies) if latencies and outputs is not None else None
    if median is not None and median > spec.latency_budget_ms:
        failures.append(
            Failure(
                "latency",
                f"median latency {median:.3f} ms over {len(latencies)} run(s) exceeds the "
                f"budget of {spec.latency_budget_ms:g} ms",
                {"median_ms": median, "budget_ms": spec.latency_budget_ms, "runs": len(latencies)},
            )
        )
    report = HealthReport(tuple(failures), errors, median, model.runtime_name, len(latencies))
    logger.info(
        "health check %s on %s: %d failure(s), median latency %s ms",
        "passed" if report.passed else "failed",
        report.runtime,
        len(failures),
        "n/a" if median is None else f"{median:.3f}",
    )
    return report


def load_and_check(
    model_bytes: bytes,
    spec: HealthCheck | HealthCheckSpec,
    *,
    runs: int = 5,
    clock: Callable[[], float] = time.perf_counter,
    load: Callable[[bytes], TFLiteModel] = load_model,
) -> tuple[TFLiteModel | None, HealthReport]:
    """Load then check; a model the runtime refuses gives a report with a ``load`` failure."""
    spec = HealthCheckSpec.from_release(spec)
    try:
        model = load(model_bytes)
    except EdgesealError as exc:
        runtime = getattr(exc, "runtime", None) or "unknown runtime"
        failure = Failure("load", f"the model did not load: {exc.message}")
        return None, HealthReport((failure,), (None,) * len(spec.outputs), None, runtime, 0)
    return model, run_health_check(model, spec, runs=runs, clock=clock)


def _compare_outputs(
    model: TFLiteModel,
    actual: Sequence[npt.NDArray[Any]],
    spec: HealthCheckSpec,
    failures: list[Failure],
) -> tuple[float | None, ...]:
    if len(actual) != len(spec.outputs):
        failures.append(
            Failure(
                "output-count",
                f"the model gave {len(actual)} output(s), the spec expects {len(spec.outputs)}",
                {"actual": len(actual), "expected": len(spec.outputs)},
            )
        )
    names = [d.name for d in model.output_details]
    errors: list[float | None] = []
    for index, expected in enumerate(spec.outputs):
        if index >= len(actual):
            errors.append(None)
            continue
        got = actual[index]
        label = f"output {index}" + (f" {names[index]!r}" if index < len(names) else "")
        context: dict[str, Any] = {"output": index}
        if got.dtype != expected.dtype:
            failures.append(
                Failure(
                    "output-dtype",
                    f"{label}: dtype {got.dtype}, the spec expects {expected.dtype}",
                    {**context, "actual": str(got.dtype), "expected": str(expected.dtype)},
                )
            )
        if got.shape != expected.shape:
            failures.append(
                Failure(
                    "output-shape",
                    f"{label}: shape {list(got.shape)}, the spec expects {list(expected.shape)}",
                    {**context, "actual": list(got.shape), "expected": list(expected.shape)},
                )
            )
            errors.append(None)
            continue
        error = _max_abs_error(got, expected)
        errors.append(error)
        if error > spec.tolerance:
            failures.append(
                Failure(
                    "output-tolerance",
                    f"{label}: max abs error {error:.6g} exceeds the tolerance {spec.tolerance:g}",
                    {**context, "max_abs_error": error, "tolerance": spec.tolerance},
                )
            )
    return tuple(errors)


def _max_abs_error(actual: npt.NDArray[Any], expected: npt.NDArray[Any]) -> float:
    """Max |actual - expected| in float64; NaN against a number (or a NaN result) is infinite."""
    if actual.size == 0:
        return 0.0
    a = actual.astype(np.float64)
    e = expected.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        same = (a == e) | (np.isnan(a) & np.isnan(e))
        diff = np.where(same, 0.0, np.abs(a - e))
    diff = np.where(np.isnan(diff), np.inf, diff)
    return float(diff.max())
