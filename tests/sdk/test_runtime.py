"""The TFLite adapter against the real interpreter (ai-edge-litert), on models
built by modelgen and checked against modelgen's numpy reference."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pytest

from components import require_module
from edgeseal.sdk import modelgen
from edgeseal.sdk.runtime import (
    MAX_MODEL_SIZE,
    InputMismatchError,
    InvalidModelError,
    RuntimeAdapterError,
    RuntimeUnavailableError,
    TensorDetails,
    load_model,
)


@pytest.fixture(autouse=True)
def _litert(request: pytest.FixtureRequest) -> Iterator[None]:
    """Tests marked ``tflite`` run the real interpreter (skip locally, fail on CI)."""
    if request.node.get_closest_marker("tflite") is not None:
        require_module("ai_edge_litert", "ai-edge-litert")
    yield


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.mark.tflite
def test_dense_model_matches_reference() -> None:
    (layer,) = modelgen.random_layers([12, 6], seed=1)
    model = load_model(modelgen.dense_model(*layer, activation="none"))
    x = _rng(2).standard_normal((1, 12)).astype(np.float32)
    (out,) = model.run([x])
    expected = modelgen.reference_dense(x, *layer, activation="none")
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.tflite
def test_details_describe_the_model() -> None:
    layers = modelgen.random_layers([3, 5, 2], seed=1)
    model = load_model(modelgen.mlp_model(layers, batch=4), num_threads=2)
    assert model.input_details == (TensorDetails("input", (4, 3), np.dtype(np.float32)),)
    assert model.output_details == (TensorDetails("output", (4, 2), np.dtype(np.float32)),)
    assert model.runtime_name.startswith("ai-edge-litert ")


@pytest.mark.tflite
def test_relu_clips_negative_outputs_to_zero() -> None:
    # Negated identity: every positive input becomes a negative pre-activation.
    weights = -np.eye(8, dtype=np.float32)
    bias = np.zeros(8, dtype=np.float32)
    x = np.abs(_rng(3).standard_normal((1, 8))).astype(np.float32) + np.float32(0.1)
    relu = load_model(modelgen.dense_model(weights, bias, activation="relu"))
    linear = load_model(modelgen.dense_model(weights, bias, activation="none"))
    np.testing.assert_array_equal(relu.run([x])[0], np.zeros((1, 8), np.float32))
    np.testing.assert_allclose(linear.run([x])[0], -x, rtol=1e-6)


@pytest.mark.tflite
@pytest.mark.parametrize("batch", [1, 5])
def test_mlp_with_batch_matches_reference(batch: int) -> None:
    layers = modelgen.random_layers([20, 32, 16, 4], seed=4)
    model = load_model(modelgen.mlp_model(layers, batch=batch))
    x = _rng(5).standard_normal((batch, 20)).astype(np.float32)
    (out,) = model.run([x])
    assert out.shape == (batch, 4)
    np.testing.assert_allclose(out, modelgen.reference_mlp(x, layers), rtol=1e-5, atol=1e-6)
    # Each row of the batch is independent: row 0 alone gives the same answer.
    if batch > 1:
        single = load_model(modelgen.mlp_model(layers, batch=1))
        np.testing.assert_allclose(single.run([x[:1]])[0], out[:1], rtol=1e-5, atol=1e-6)


@pytest.mark.tflite
def test_random_inputs_fit_the_model_and_are_seeded() -> None:
    layers = modelgen.random_layers([6, 3], seed=6)
    model = load_model(modelgen.mlp_model(layers, batch=2))
    inputs = model.random_inputs(_rng(7))
    assert [(a.shape, a.dtype) for a in inputs] == [((2, 6), np.dtype(np.float32))]
    np.testing.assert_array_equal(inputs[0], model.random_inputs(_rng(7))[0])
    np.testing.assert_allclose(
        model.run(inputs)[0], modelgen.reference_mlp(inputs[0], layers), rtol=1e-5, atol=1e-6
    )


@pytest.mark.tflite
def test_padded_model_of_one_megabyte_loads_and_runs() -> None:
    target = 1_000_000
    model = load_model(modelgen.padded_model(target, seed=8))
    weights, bias = modelgen.padded_layer(target, seed=8)
    (x,) = model.random_inputs(_rng(9))
    np.testing.assert_allclose(
        model.run([x])[0],
        modelgen.reference_dense(x, weights, bias, activation="none"),
        rtol=1e-5,
        atol=1e-5,
    )


@pytest.fixture(scope="module")
def small_model_bytes() -> bytes:
    return modelgen.dense_model(*modelgen.random_layers([4, 2], seed=10)[0], batch=2)


@pytest.mark.tflite
@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (lambda: [np.zeros((2, 5), np.float32)], r"'input': float32\[2, 4\]: got float32\[2, 5\]"),
        (lambda: [np.zeros((2, 4), np.float64)], r"got float64\[2, 4\]"),
        (lambda: [np.zeros((4,), np.float32)], r"got float32\[4\]"),
        (lambda: [np.zeros((2, 4), np.int32)], r"got int32\[2, 4\]"),
        (lambda: [], r"takes 1 input\(s\), got 0"),
        (lambda: [np.zeros((2, 4), np.float32)] * 2, r"takes 1 input\(s\), got 2"),
        (lambda: [[[0.0] * 4] * 2], "expected a numpy array, got list"),
    ],
)
def test_mismatched_inputs_are_refused_before_invoking(
    small_model_bytes: bytes, inputs: object, message: str
) -> None:
    model = load_model(small_model_bytes)
    with pytest.raises(InputMismatchError, match=message) as info:
        model.run(inputs())  # type: ignore[operator]
    assert "ai-edge-litert" in info.value.diagnostics()
    # The model still works after a refused call.
    assert model.run([np.ones((2, 4), np.float32)])[0].shape == (2, 2)


def test_garbage_bytes_are_refused() -> None:
    with pytest.raises(InvalidModelError, match="not a TFLite model") as info:
        load_model(b"\x00" * 64)
    assert isinstance(info.value, RuntimeAdapterError)
    with pytest.raises(InvalidModelError, match="too short"):
        load_model(b"")


def test_other_file_identifier_is_refused(small_model_bytes: bytes) -> None:
    relabeled = small_model_bytes[:4] + b"TFL2" + small_model_bytes[8:]
    with pytest.raises(InvalidModelError, match="file identifier b'TFL2'"):
        load_model(relabeled)


@pytest.mark.tflite
@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_model_is_refused_naming_the_runtime(
    small_model_bytes: bytes, keep: float
) -> None:
    truncated = small_model_bytes[: int(len(small_model_bytes) * keep)]
    with pytest.raises(InvalidModelError) as info:
        load_model(truncated)
    assert info.value.runtime is not None
    assert info.value.runtime.startswith("ai-edge-litert")
    assert "ai-edge-litert" in info.value.diagnostics()


@pytest.mark.tflite
def test_garbage_after_the_identifier_is_refused_by_the_runtime() -> None:
    garbage = b"\xff\xff\xff\x7fTFL3" + bytes(range(256)) * 4
    with pytest.raises(InvalidModelError, match="refused the model") as info:
        load_model(garbage)
    assert "ai-edge-litert" in info.value.diagnostics()


def test_size_limit_is_checked_before_parsing(small_model_bytes: bytes) -> None:
    with pytest.raises(InvalidModelError, match="over the 100-byte limit"):
        load_model(small_model_bytes, max_size=100)
    assert MAX_MODEL_SIZE == 2**31 - 1


def test_only_bytes_are_accepted(small_model_bytes: bytes) -> None:
    with pytest.raises(TypeError, match="bytes"):
        load_model(bytearray(small_model_bytes))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_threads"):
        load_model(small_model_bytes, num_threads=0)
    with pytest.raises(ValueError, match="unknown runtime"):
        load_model(small_model_bytes, runtime="onnxruntime")


def test_no_runtime_installed_gives_install_hint(
    monkeypatch: pytest.MonkeyPatch, small_model_bytes: bytes
) -> None:
    # A None entry in sys.modules makes `import` raise ImportError, even for
    # modules an earlier test already imported.
    for name in (
        "ai_edge_litert",
        "ai_edge_litert.interpreter",
        "tflite_runtime",
        "tflite_runtime.interpreter",
        "tensorflow",
    ):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(RuntimeUnavailableError, match=r"no TFLite runtime: pip install") as info:
        load_model(small_model_bytes)
    assert "edgeseal[agent]" in info.value.diagnostics()


def test_importing_the_adapter_imports_no_runtime() -> None:
    code = (
        "import sys, edgeseal.sdk.runtime;"
        "bad = [n for n in sys.modules if n.split('.')[0] in "
        "('numpy', 'ai_edge_litert', 'tflite_runtime', 'tensorflow')]; print(bad); assert not bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
