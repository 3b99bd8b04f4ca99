"""modelgen writes real TFLite flatbuffers: checked structurally with the schema's
own generated reader and functionally with the real interpreter against numpy."""

from __future__ import annotations

import importlib
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from components import require_module
from edgeseal.sdk import modelgen


@pytest.fixture
def schema() -> Any:
    """The TFLite schema reader that ships with ai-edge-litert (independent of modelgen)."""
    require_module("ai_edge_litert", "ai-edge-litert")
    return importlib.import_module("ai_edge_litert.schema_py_generated")


@pytest.fixture
def interpreter_class() -> Any:
    require_module("ai_edge_litert", "ai-edge-litert")
    return importlib.import_module("ai_edge_litert.interpreter").Interpreter


def _invoke(interpreter_class: Any, model: bytes, x: np.ndarray) -> np.ndarray:
    interpreter = interpreter_class(model_content=model)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    out: np.ndarray = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    return out


@pytest.mark.tflite
def test_dense_model_structure_follows_schema_v3(schema: Any) -> None:
    (layer,) = modelgen.random_layers([5, 3], seed=1)
    data = modelgen.dense_model(*layer, activation="relu", batch=2)

    assert data[4:8] == b"TFL3"
    assert schema.Model.ModelBufferHasIdentifier(data, 0)
    model = schema.Model.GetRootAs(data, 0)
    assert model.Version() == 3
    assert model.Buffers(0).DataLength() == 0, "buffer 0 must be the empty sentinel"
    code = model.OperatorCodes(0)
    assert code.BuiltinCode() == schema.BuiltinOperator.FULLY_CONNECTED
    assert code.DeprecatedBuiltinCode() == schema.BuiltinOperator.FULLY_CONNECTED

    graph = model.Subgraphs(0)
    assert graph.InputsAsNumpy().tolist() == [0]
    output = graph.Tensors(graph.Outputs(0))
    assert output.ShapeAsNumpy().tolist() == [2, 3]
    assert output.Type() == schema.TensorType.FLOAT32
    weights = graph.Tensors(graph.Operators(0).Inputs(1))
    assert weights.ShapeAsNumpy().tolist() == [3, 5]
    stored = model.Buffers(weights.Buffer()).DataAsNumpy().view("<f4").reshape(3, 5)
    np.testing.assert_array_equal(stored, layer[0])

    op = graph.Operators(0)
    assert op.BuiltinOptionsType() == schema.BuiltinOptions.FullyConnectedOptions
    options = schema.FullyConnectedOptions()
    table = op.BuiltinOptions()
    options.Init(table.Bytes, table.Pos)
    assert options.FusedActivationFunction() == schema.ActivationFunctionType.RELU


@pytest.mark.tflite
def test_constant_buffers_are_16_byte_aligned(schema: Any) -> None:
    layers = modelgen.random_layers([7, 3, 5], seed=2)
    data = modelgen.mlp_model(layers)
    model = schema.Model.GetRootAs(data, 0)
    for i in range(1, model.BuffersLength()):
        buffer = model.Buffers(i)
        # The vector's data starts right after its 4-byte length field.
        start = buffer._tab.Vector(buffer._tab.Offset(4))
        assert start % 16 == 0, f"buffer {i} starts at {start}"


def test_same_arguments_give_identical_bytes() -> None:
    first = modelgen.mlp_model(modelgen.random_layers([4, 6, 2], seed=9), batch=3)
    second = modelgen.mlp_model(modelgen.random_layers([4, 6, 2], seed=9), batch=3)
    other = modelgen.mlp_model(modelgen.random_layers([4, 6, 2], seed=10), batch=3)
    assert first == second
    assert first != other


@pytest.mark.tflite
@pytest.mark.parametrize("activation", ["none", "relu"])
def test_dense_model_matches_numpy_reference(interpreter_class: Any, activation: Any) -> None:
    (layer,) = modelgen.random_layers([16, 8], seed=3)
    x = np.random.default_rng(4).standard_normal((1, 16)).astype(np.float32)
    model = modelgen.dense_model(*layer, activation=activation)
    out = _invoke(interpreter_class, model, x)
    expected = modelgen.reference_dense(x, *layer, activation=activation)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.tflite
def test_padded_model_reaches_target_size_and_runs(interpreter_class: Any) -> None:
    target = 1 << 20
    model = modelgen.padded_model(target, seed=5)
    assert abs(len(model) - target) / target < 0.01
    weights, bias = modelgen.padded_layer(target, seed=5)
    x = np.random.default_rng(6).standard_normal((1, weights.shape[1])).astype(np.float32)
    out = _invoke(interpreter_class, model, x)
    expected = modelgen.reference_dense(x, weights, bias, activation="none")
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("target", [4096, 65536, 300_000])
def test_padded_model_sizes(target: int) -> None:
    size = len(modelgen.padded_model(target, seed=0))
    assert size <= target
    assert size >= target * 0.97


def test_reference_mlp_applies_hidden_and_output_activations() -> None:
    identity = np.eye(2, dtype=np.float32)
    shift = np.array([-1.0, 1.0], dtype=np.float32)
    layers = [(identity, shift), (identity, shift)]
    x = np.array([[0.5, 0.5]], dtype=np.float32)
    # hidden: relu([-0.5, 1.5]) = [0, 1.5]; output (none): [-1, 2.5]
    np.testing.assert_array_equal(modelgen.reference_mlp(x, layers), [[-1.0, 2.5]])
    np.testing.assert_array_equal(
        modelgen.reference_mlp(x, layers, output_activation="relu"), [[0.0, 2.5]]
    )


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ([], "at least one layer"),
        ([(np.zeros((2, 3), np.float64), np.zeros(2, np.float32))], "float32"),
        ([(np.zeros((2, 3), np.float32), np.zeros(3, np.float32))], "bias"),
        (
            [
                (np.zeros((2, 3), np.float32), np.zeros(2, np.float32)),
                (np.zeros((2, 4), np.float32), np.zeros(2, np.float32)),
            ],
            "layer 1 takes 4 inputs",
        ),
    ],
)
def test_inconsistent_layers_are_refused(layers: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        modelgen.mlp_model(layers)


def test_bad_arguments_are_refused() -> None:
    (layer,) = modelgen.random_layers([2, 2], seed=0)
    with pytest.raises(ValueError, match="activation"):
        modelgen.dense_model(*layer, activation="tanh")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch"):
        modelgen.dense_model(*layer, batch=0)
    with pytest.raises(ValueError, match="at least"):
        modelgen.padded_model(100)


def test_modelgen_does_not_import_a_tflite_runtime() -> None:
    """A release manager's machine builds models without any interpreter installed."""
    code = (
        "import sys; import edgeseal.sdk.modelgen as m;"
        "m.mlp_model(m.random_layers([2, 2], seed=0));"
        "bad = [n for n in sys.modules if n.split('.')[0] in "
        "('ai_edge_litert', 'tflite_runtime', 'tensorflow')]; print(bad); assert not bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
