"""fold_batchnorm: exact folds into Conv / ConvTranspose / Gemm, and the cases it must leave alone."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtq.exporter.passes import PassContext, PassResult, fold_batchnorm

OPSET = 18
RNG_SEED = 0


def _bn_params(rng: np.random.Generator, channels: int, prefix: str = "bn") -> list[onnx.TensorProto]:
    values = {
        "scale": rng.uniform(0.5, 1.5, channels),
        "bias": rng.uniform(-1.0, 1.0, channels),
        "mean": rng.uniform(-1.0, 1.0, channels),
        "var": rng.uniform(0.2, 2.0, channels),
    }
    return [numpy_helper.from_array(v.astype(np.float32), f"{prefix}.{k}") for k, v in values.items()]


def _bn_node(x: str, y: str, prefix: str = "bn") -> onnx.NodeProto:
    inputs = [x, *(f"{prefix}.{k}" for k in ("scale", "bias", "mean", "var"))]
    return helper.make_node("BatchNormalization", inputs, [y], name=prefix, epsilon=1e-3)


def _model(nodes, inits, x_shape, y_shape, extra_inputs=()) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape), *extra_inputs],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _assert_same_outputs(
    before: onnx.ModelProto, after: onnx.ModelProto, feeds: dict[str, np.ndarray]
) -> None:
    for want, got in zip(_run(before, feeds), _run(after, feeds), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def _conv_bn(rng: np.random.Generator, *, bias: bool, group: int = 1) -> onnx.ModelProto:
    weight = numpy_helper.from_array(
        rng.standard_normal((8, 4 // group, 3, 3)).astype(np.float32), "conv.weight"
    )
    inits = [weight, *_bn_params(rng, 8)]
    inputs = ["x", "conv.weight"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "conv.bias"))
        inputs.append("conv.bias")
    conv = helper.make_node("Conv", inputs, ["c"], name="conv", pads=[1, 1, 1, 1], group=group)
    return _model([conv, _bn_node("c", "y")], inits, [2, 4, 6, 6], [2, 8, 6, 6])


def _conv_transpose_bn(rng: np.random.Generator, group: int) -> onnx.ModelProto:
    weight = rng.standard_normal((4, 6 // group, 3, 3)).astype(np.float32)
    inits = [numpy_helper.from_array(weight, "deconv.weight"), *_bn_params(rng, 6)]
    node = helper.make_node(
        "ConvTranspose", ["x", "deconv.weight"], ["c"], name="deconv", strides=[2, 2], group=group
    )
    return _model([node, _bn_node("c", "y")], inits, [2, 4, 5, 5], [2, 6, 11, 11])


def _gemm_bn(rng: np.random.Generator, trans_b: int) -> onnx.ModelProto:
    weight = rng.standard_normal((6, 5) if trans_b else (5, 6)).astype(np.float32)
    inits = [
        numpy_helper.from_array(weight, "fc.weight"),
        numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "fc.bias"),
        *_bn_params(rng, 6),
    ]
    gemm = helper.make_node(
        "Gemm", ["x", "fc.weight", "fc.bias"], ["g"], name="fc", transB=trans_b, alpha=0.7, beta=1.3
    )
    return _model([gemm, _bn_node("g", "y")], inits, [3, 5], [3, 6])


def _feeds(model: onnx.ModelProto, rng: np.random.Generator) -> dict[str, np.ndarray]:
    feeds = {}
    for value in model.graph.input:
        shape = [d.dim_value for d in value.type.tensor_type.shape.dim]
        feeds[value.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


CASES = {
    "conv": lambda rng: _conv_bn(rng, bias=True),
    "conv_no_bias": lambda rng: _conv_bn(rng, bias=False),
    "depthwise_conv": lambda rng: _conv_bn(rng, bias=True, group=4),
    "conv_transpose": lambda rng: _conv_transpose_bn(rng, group=1),
    "conv_transpose_grouped": lambda rng: _conv_transpose_bn(rng, group=2),
    "gemm": lambda rng: _gemm_bn(rng, trans_b=0),
    "gemm_trans_b": lambda rng: _gemm_bn(rng, trans_b=1),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_fold_is_exact(case: str) -> None:
    rng = np.random.default_rng(RNG_SEED)
    model = CASES[case](rng)
    original = model.SerializeToString()
    result = fold_batchnorm(model, PassContext())
    assert isinstance(result, PassResult)
    assert result.report == {"folded": ["bn"], "skipped": []}
    assert "BatchNormalization" not in _ops(result.model)
    assert len(result.model.graph.node) == 1
    assert [o.name for o in result.model.graph.output] == ["y"]
    onnx.checker.check_model(result.model, full_check=True)
    assert model.SerializeToString() == original, "the input model must not change"
    for _ in range(3):
        _assert_same_outputs(model, result.model, _feeds(model, rng))


def test_names_kept_and_bias_created() -> None:
    result = fold_batchnorm(_conv_bn(np.random.default_rng(RNG_SEED), bias=False), PassContext())
    conv = result.model.graph.node[0]
    assert list(conv.input) == ["x", "conv.weight", "conv.bias"]
    assert conv.name == "conv"
    assert {i.name for i in result.model.graph.initializer} == {"conv.weight", "conv.bias"}


def test_shared_weight_is_skipped_and_untouched() -> None:
    rng = np.random.default_rng(RNG_SEED)
    weight = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        _bn_node("c1", "b1"),
        helper.make_node("Conv", ["x", "w"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["b1", "c2"], ["y"], name="add"),
    ]
    model = _model(
        nodes, [numpy_helper.from_array(weight, "w"), *_bn_params(rng, 8)], [1, 4, 6, 6], [1, 8, 6, 6]
    )
    result = fold_batchnorm(model, PassContext())
    assert result.report["folded"] == []
    assert result.report["skipped"] == [
        {"node": "bn", "reason": "Conv parameter 'w' is shared with ['conv2']"}
    ]
    assert "BatchNormalization" in _ops(result.model)
    weights = {i.name: numpy_helper.to_array(i) for i in result.model.graph.initializer}
    np.testing.assert_array_equal(weights["w"], weight)
    _assert_same_outputs(model, result.model, _feeds(model, rng))


def test_shared_weight_does_not_block_other_folds() -> None:
    rng = np.random.default_rng(RNG_SEED)
    shared = _conv_bn(rng, bias=True)
    graph = shared.graph
    graph.node.append(
        helper.make_node("Conv", ["x", "conv.weight"], ["other"], name="conv_other", pads=[1, 1, 1, 1])
    )
    graph.node.append(helper.make_node("Add", ["y", "other"], ["z"], name="add"))
    graph.node.append(helper.make_node("Conv", ["x", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]))
    graph.initializer.append(
        numpy_helper.from_array(rng.standard_normal((8, 4, 3, 3)).astype(np.float32), "w2")
    )
    graph.initializer.extend(_bn_params(rng, 8, prefix="bn2"))
    graph.node.append(_bn_node("c2", "b2", prefix="bn2"))
    graph.node.append(helper.make_node("Add", ["z", "b2"], ["out"], name="add2"))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 8, 6, 6]))
    result = fold_batchnorm(shared, PassContext())
    assert result.report["folded"] == ["bn2"]
    assert [s["node"] for s in result.report["skipped"]] == ["bn"]
    _assert_same_outputs(shared, result.model, _feeds(shared, rng))


def test_weight_read_by_shape_still_folds() -> None:
    rng = np.random.default_rng(RNG_SEED)
    model = _conv_bn(rng, bias=True)
    model.graph.node.append(helper.make_node("Shape", ["conv.weight"], ["kernel_shape"], name="shape"))
    model.graph.output.append(helper.make_tensor_value_info("kernel_shape", TensorProto.INT64, [4]))
    result = fold_batchnorm(model, PassContext())
    assert result.report == {"folded": ["bn"], "skipped": []}
    onnx.checker.check_model(result.model, full_check=True)
    assert [i.name for i in result.model.graph.initializer].count("conv.weight") == 1
    _assert_same_outputs(model, result.model, _feeds(model, rng))


def test_bn_after_other_op_or_with_shared_output_is_skipped() -> None:
    rng = np.random.default_rng(RNG_SEED)
    weight = numpy_helper.from_array(rng.standard_normal((8, 4, 3, 3)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        _bn_node("c", "b"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        _bn_node("r", "b2", prefix="bn2"),
        helper.make_node("Add", ["b", "b2"], ["y"], name="add"),
    ]
    model = _model(
        nodes, [weight, *_bn_params(rng, 8), *_bn_params(rng, 8, "bn2")], [1, 4, 6, 6], [1, 8, 6, 6]
    )
    result = fold_batchnorm(model, PassContext())
    assert result.report["folded"] == []
    reasons = {s["node"]: s["reason"] for s in result.report["skipped"]}
    assert reasons == {
        "bn": "the output of 'conv' also feeds ['relu']",
        "bn2": "it follows Relu 'relu', not Conv/ConvTranspose/Gemm",
    }
    assert result.model is model


def test_non_constant_parameter_is_skipped() -> None:
    rng = np.random.default_rng(RNG_SEED)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"), _bn_node("c", "y")]
    model = _model(
        nodes,
        _bn_params(rng, 8),
        [1, 4, 6, 6],
        [1, 8, 4, 4],
        extra_inputs=[helper.make_tensor_value_info("w", TensorProto.FLOAT, [8, 4, 3, 3])],
    )
    result = fold_batchnorm(model, PassContext())
    assert result.report["skipped"] == [
        {"node": "bn", "reason": "Conv parameter 'w' is not a constant initializer"}
    ]


def test_no_batchnorm_returns_model_unchanged() -> None:
    rng = np.random.default_rng(RNG_SEED)
    weight = numpy_helper.from_array(rng.standard_normal((8, 4, 3, 3)).astype(np.float32), "w")
    model = _model(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], [weight], [1, 4, 6, 6], [1, 8, 4, 4]
    )
    result = fold_batchnorm(model, PassContext())
    assert result.model is model
    assert result.report == {"folded": [], "skipped": []}
