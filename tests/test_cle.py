"""cross_layer_equalization: exact rescaling of Conv/Gemm/MatMul pairs, and the pairs it must leave alone."""

from __future__ import annotations

import functools

import numpy as np
import onnx
import pytest
from onnx import helper

import trtq
from trtq._ort import make_session
from trtq.config import QuantConfig
from trtq.errors import TrtqError
from trtq.exporter.passes.cle import CleOptions, cross_layer_equalization
from trtq.exporter.passes.context import PassContext

import graphs
from helpers import initializers

OPSET = 18
SEED = 0


_init = graphs.init
_model = functools.partial(graphs.single_io_model, opset=OPSET)


def _weights(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Weights whose output channels have very different ranges (what CLE is for)."""
    return rng.standard_normal(shape) * np.exp(rng.uniform(-2.0, 2.0, (shape[0],) + (1,) * (len(shape) - 1)))


def _act(kind: str, x: str, y: str) -> list[onnx.NodeProto]:
    if kind == "relu":
        return [helper.make_node("Relu", [x], [y], name="act")]
    return [helper.make_node("Clip", [x, "lo", "hi"], [y], name="act")]


def _bounds() -> list[onnx.TensorProto]:
    return [_init("lo", np.array(0.0)), _init("hi", np.array(6.0))]


def conv_act_conv(act: str = "relu", seed: int = SEED) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits = [_init("w1", _weights(rng, (8, 4, 3, 3))), _init("b1", rng.standard_normal(8)),
             _init("w2", _weights(rng, (6, 8, 3, 3))), _init("b2", rng.standard_normal(6)), *_bounds()]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             *(_act(act, "c1", "a1") if act != "none" else []),
             helper.make_node("Conv", ["a1" if act != "none" else "c1", "w2", "b2"], ["y"], name="conv2")]
    return _model(nodes, inits, [2, 4, 7, 7], [2, 6, 5, 5])


def conv_relu_maxpool_conv(seed: int = SEED) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits = [_init("w1", _weights(rng, (8, 4, 3, 3))), _init("b1", rng.standard_normal(8)),
             _init("w2", _weights(rng, (6, 8, 1, 1)))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["a1"], name="relu"),
             helper.make_node("MaxPool", ["a1"], ["p1"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p1", "w2"], ["y"], name="conv2")]
    return _model(nodes, inits, [2, 4, 6, 6], [2, 6, 3, 3])


def pointwise_depthwise_pointwise(seed: int = SEED) -> onnx.ModelProto:
    """1x1 conv → ReLU6 → depthwise 3x3 → ReLU6 → 1x1 conv (no bias), as in MobileNet/EfficientNet blocks."""
    rng = np.random.default_rng(seed)
    inits = [_init("w1", _weights(rng, (12, 4, 1, 1))), _init("b1", rng.standard_normal(12)),
             _init("wd", _weights(rng, (12, 1, 3, 3))), _init("bd", rng.standard_normal(12)),
             _init("w2", _weights(rng, (5, 12, 1, 1))), *_bounds()]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="expand"),
             helper.make_node("Clip", ["c1", "lo", "hi"], ["a1"], name="relu6_1"),
             helper.make_node("Conv", ["a1", "wd", "bd"], ["cd"], name="depthwise", group=12,
                              pads=[1, 1, 1, 1]),
             helper.make_node("Clip", ["cd", "lo", "hi"], ["ad"], name="relu6_2"),
             helper.make_node("Conv", ["ad", "w2"], ["y"], name="project")]
    return _model(nodes, inits, [2, 4, 6, 6], [2, 5, 6, 6])


def gemm_relu_gemm(seed: int = SEED) -> onnx.ModelProto:
    """Gemm (transB=1, alpha, beta, C [1, N]) → Relu → Gemm (transB=0) → MatMul + Add bias → Relu → MatMul."""
    rng = np.random.default_rng(seed)
    inits = [_init("w1", _weights(rng, (10, 6))), _init("c1", rng.standard_normal((1, 10))),
             _init("w2", _weights(rng, (10, 8))), _init("c2", rng.standard_normal(8)),
             _init("w3", _weights(rng, (8, 7))), _init("b3", rng.standard_normal(7)),
             _init("w4", _weights(rng, (7, 3)))]
    nodes = [helper.make_node("Gemm", ["x", "w1", "c1"], ["g1"], name="fc1", transB=1, alpha=0.8, beta=1.5),
             helper.make_node("Relu", ["g1"], ["a1"], name="relu1"),
             helper.make_node("Gemm", ["a1", "w2", "c2"], ["g2"], name="fc2"),
             helper.make_node("MatMul", ["g2", "w3"], ["m3"], name="fc3"),
             helper.make_node("Add", ["m3", "b3"], ["l3"], name="fc3_bias"),
             helper.make_node("Relu", ["l3"], ["a3"], name="relu3"),
             helper.make_node("MatMul", ["a3", "w4"], ["y"], name="fc4")]
    return _model(nodes, inits, [5, 6], [5, 3])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return make_session(model, optimize=False).run(None, {"x": x})[0]


def _assert_exact(before: onnx.ModelProto, after: onnx.ModelProto, scale: float = 3.0) -> None:
    rng = np.random.default_rng(1)
    shape = [d.dim_value for d in before.graph.input[0].type.tensor_type.shape.dim]
    for _ in range(3):
        x = (rng.standard_normal(shape) * scale).astype(np.float32)
        want, got = _run(before, x), _run(after, x)
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


CASES = {
    "conv-relu-conv": lambda: conv_act_conv("relu"),
    "conv-none-conv": lambda: conv_act_conv("none"),
    "conv-relu6-conv": lambda: conv_act_conv("relu6"),
    "conv-relu-maxpool-conv": conv_relu_maxpool_conv,
    "pointwise-depthwise-pointwise": pointwise_depthwise_pointwise,
    "gemm-relu-gemm-matmul": gemm_relu_gemm,
}
PAIRS = {"conv-relu-conv": 1, "conv-relu-maxpool-conv": 1, "conv-none-conv": 1, "conv-relu6-conv": 1,
         "pointwise-depthwise-pointwise": 2,
         "gemm-relu-gemm-matmul": 3}


@pytest.mark.parametrize("case", sorted(CASES))
def test_cle_is_exact_and_equalizes(case: str) -> None:
    model = CASES[case]()
    original = model.SerializeToString()
    result = cross_layer_equalization(model, PassContext())
    assert model.SerializeToString() == original, "the input model must not change"
    report = result.report
    assert len(report["pairs"]) == PAIRS[case] and report["skipped"] == []
    assert report["converged"] and report["sweeps"] >= 1
    for pair in report["pairs"]:
        assert pair["imbalance_before"] > 0.5 and pair["imbalance_after"] < 1e-3
        values = np.array(pair["scales"]["values"])
        assert values.min() == pair["scales"]["min"] and values.max() == pair["scales"]["max"]
        assert np.all(values > 0) and not np.allclose(values, 1.0)
    onnx.checker.check_model(result.model, full_check=True)
    _assert_exact(model, result.model)


def test_three_layer_chain_reaches_the_geometric_mean() -> None:
    """pw → dw → pw: every channel's three ranges end equal to (r1·r2·r3)^(1/3) (DFQ's depthwise case)."""
    model = pointwise_depthwise_pointwise()
    before, after = initializers(model), initializers(cross_layer_equalization(model, PassContext()).model)

    def ranges(w: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (np.abs(w["w1"]).max(axis=(1, 2, 3)), np.abs(w["wd"]).max(axis=(1, 2, 3)),
                np.abs(w["w2"]).max(axis=(0, 2, 3)))

    r1, r2, r3 = ranges(before)
    q1, q2, q3 = ranges(after)
    target = np.cbrt(r1.astype(np.float64) * r2 * r3)
    for q in (q1, q2, q3):
        np.testing.assert_allclose(q, target, rtol=1e-4)


def test_relu6_becomes_relu_and_per_channel_min() -> None:
    model = conv_act_conv("relu6")
    result = cross_layer_equalization(model, PassContext())
    assert _ops(result.model) == ["Conv", "Relu", "Min", "Conv"]
    assert result.report["pairs"][0]["relu6_rescaled"] and result.report["relu6"].startswith("rescaled")
    bound = next(v for k, v in initializers(result.model).items() if k.endswith("cle_bound"))
    scales = np.array(result.report["pairs"][0]["scales"]["values"])
    np.testing.assert_allclose(bound.ravel(), 6.0 / scales, rtol=1e-6)
    assert bound.shape == (8, 1, 1)
    _assert_exact(model, result.model, scale=20.0)  # large inputs: the bound is hit in most channels


def test_relu6_skip_mode_leaves_the_pair() -> None:
    model = conv_act_conv("relu6")
    result = cross_layer_equalization(model, PassContext(), CleOptions(relu6="skip"))
    assert result.model is model and result.report["pairs"] == []
    assert result.report["skipped"] == [{"layers": ["conv1", "conv2"], "reason": "ReLU6 bound"}]


def test_unknown_relu6_mode_is_a_user_error() -> None:
    with pytest.raises(TrtqError, match="relu6"):
        CleOptions(relu6="clip")


def _two_conv_graph(middle: list[onnx.NodeProto], second_input: str, extra_inits: tuple = (),
                    extra_out: onnx.NodeProto | None = None) -> onnx.ModelProto:
    rng = np.random.default_rng(SEED)
    inits = [_init("w1", _weights(rng, (4, 4, 1, 1))), _init("w2", _weights(rng, (4, 4, 1, 1))), *extra_inits]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1"), *middle,
             helper.make_node("Conv", [second_input, "w2"], ["c2"], name="conv2")]
    if extra_out is not None:
        nodes.append(extra_out)
    else:
        nodes.append(helper.make_node("Identity", ["c2"], ["y"], name="out"))
    return _model(nodes, inits, [1, 4, 3, 3], [1, 4, 3, 3])


SKIPS = {
    "residual add": (
        lambda: _two_conv_graph([helper.make_node("Add", ["c1", "x"], ["s"], name="add")], "s"),
        "residual"),
    "fan-out": (
        lambda: _two_conv_graph([], "c1", extra_out=helper.make_node("Add", ["c2", "c1"], ["y"], name="add")),
        "feeds 2 nodes"),
    "gelu": (
        lambda: _two_conv_graph([helper.make_node("Div", ["c1", "sqrt2"], ["d"], name="gelu_div"),
                                 helper.make_node("Erf", ["d"], ["e"], name="gelu_erf"),
                                 helper.make_node("Add", ["e", "one"], ["e1"], name="gelu_add"),
                                 helper.make_node("Mul", ["c1", "e1"], ["m"], name="gelu_mul"),
                                 helper.make_node("Mul", ["m", "half"], ["g"], name="gelu_half")], "g",
                                extra_inits=(_init("sqrt2", np.array(np.sqrt(2.0))),
                                             _init("one", np.array(1.0)), _init("half", np.array(0.5)))),
        "GELU"),
    "sigmoid-silu": (
        lambda: _two_conv_graph([helper.make_node("Sigmoid", ["c1"], ["sg"], name="sigmoid"),
                                 helper.make_node("Mul", ["c1", "sg"], ["m"], name="silu")], "m"),
        "Sigmoid"),
    "clip below zero": (
        lambda: _two_conv_graph([helper.make_node("Clip", ["c1", "neg", "hi"], ["k"], name="clip")], "k",
                                extra_inits=(_init("neg", np.array(-1.0)), _init("hi", np.array(1.0)))),
        "lower bound not 0"),
}


@pytest.mark.parametrize("case", sorted(SKIPS))
def test_pairs_that_do_not_commute_are_skipped(case: str) -> None:
    build, reason = SKIPS[case]
    model = build()
    result = cross_layer_equalization(model, PassContext())
    assert result.model is model and result.report["pairs"] == []
    assert [s["layers"] for s in result.report["skipped"]] == [["conv1", "conv2"]]
    assert reason in result.report["skipped"][0]["reason"]


def test_weight_shared_outside_the_pair_is_untouched() -> None:
    rng = np.random.default_rng(SEED)
    inits = [_init("w1", _weights(rng, (4, 4, 1, 1))), _init("w2", _weights(rng, (4, 4, 1, 1))),
             _init("w3", _weights(rng, (4, 4, 1, 1)))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1"),
             helper.make_node("Relu", ["c1"], ["a1"], name="relu1"),
             helper.make_node("Conv", ["a1", "w2"], ["c2"], name="conv2"),
             helper.make_node("Conv", ["x", "w3"], ["c3"], name="conv3"),
             helper.make_node("Relu", ["c3"], ["a3"], name="relu3"),
             helper.make_node("Conv", ["a3", "w1"], ["c4"], name="conv4"),  # w1 is shared with conv1
             helper.make_node("Add", ["c2", "c4"], ["y"], name="add")]
    model = _model(nodes, inits, [1, 4, 3, 3], [1, 4, 3, 3])
    result = cross_layer_equalization(model, PassContext())
    assert result.report["pairs"] == []
    assert {tuple(s["layers"]) for s in result.report["skipped"]} == {("conv1", "conv2"), ("conv3", "conv4")}
    assert all("shared" in s["reason"] for s in result.report["skipped"])
    assert result.model is model


@pytest.mark.parametrize("clip_after_pool", [False, True])
def test_pooled_conv_to_gemm_is_a_pair(clip_after_pool: bool) -> None:
    """Conv → ReLU6 → GlobalAveragePool → Flatten → Gemm keeps channel c as feature c (ReLU6 also last)."""
    rng = np.random.default_rng(SEED)
    inits = [_init("w1", _weights(rng, (6, 3, 3, 3))), _init("b1", rng.standard_normal(6)),
             _init("wf", _weights(rng, (4, 6))), _init("bf", rng.standard_normal(4)), *_bounds()]
    chain = [("Clip", ["lo", "hi"], {}), ("GlobalAveragePool", [], {}), ("Flatten", [], {})]
    if clip_after_pool:
        chain = chain[1:] + chain[:1]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c0"], name="conv", pads=[1, 1, 1, 1])]
    tensor = "c0"
    for i, (op, extra, attrs) in enumerate(chain):
        nodes.append(helper.make_node(op, [tensor, *extra], [f"c{i + 1}"], name=op.lower(), **attrs))
        tensor = f"c{i + 1}"
    nodes.append(helper.make_node("Gemm", [tensor, "wf", "bf"], ["y"], name="fc", transB=1))
    model = _model(nodes, inits, [2, 3, 5, 5], [2, 4])
    result = cross_layer_equalization(model, PassContext())
    assert [p["layers"] for p in result.report["pairs"]] == [["conv", "fc"]]
    assert result.report["pairs"][0]["activation"] == " → ".join(op for op, _, _ in chain)
    _assert_exact(model, result.model, scale=10.0)


def test_cle_runs_in_the_pipeline(conv_model, conv_calib) -> None:
    result = trtq.quantize(conv_model, conv_calib, config=QuantConfig(passes=("cle",)), progress=False)
    report = result.report["passes"]["cle"]
    assert [p["layers"] for p in report["pairs"]] == [["dwconv", "conv2"]]
    assert any(s["layers"] == ["conv1", "dwconv"] for s in report["skipped"])
    assert result.report["check"]["counts"]["warning"] == 0
    assert "cle" in result.pass_seconds


@pytest.mark.slow
def test_efficientnet_lite0_stays_exact(effnet_fp32) -> None:
    from trtq.testing.data import EVAL_PHOTOS, image_batch

    model = effnet_fp32
    result = cross_layer_equalization(model, PassContext())
    assert len(result.report["pairs"]) >= 30 and result.report["converged"]
    assert sum(p["relu6_rescaled"] for p in result.report["pairs"]) >= 30
    x = {"images": image_batch(EVAL_PHOTOS, 8)}
    want = make_session(model).run(None, x)[0]
    got = make_session(result.model).run(None, x)[0]
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-5
