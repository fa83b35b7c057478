"""bias_correction: a weight-quantized layer's mean output per channel matches FP32; only biases change."""

from __future__ import annotations

import functools

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import trtq
from trtq._ort import make_session
from trtq.calibrators.data import open_batches
from trtq.config import QuantConfig
from trtq.errors import TrtqError
from trtq.exporter.passes.bias_correction import bias_correction
from trtq.exporter.passes.context import PassContext
from trtq.exporter.placement import plan_quantization
from trtq.exporter.qdq import insert_qdq

import graphs
import requires

OPSET = 19
SEED = 0


_init = graphs.init
_model = functools.partial(graphs.single_io_model, opset=OPSET)


def conv(bias: bool = True, group: int = 1, **attrs) -> onnx.ModelProto:
    rng = np.random.default_rng(SEED)
    inits = [_init("w", rng.standard_normal((24, 24 // group, 3, 3)) * 0.1)]
    inputs = ["x", "w"]
    if bias:
        inits.append(_init("b", rng.standard_normal(24)))
        inputs.append("b")
    node = helper.make_node("Conv", inputs, ["y"], name="conv", group=group, **attrs)
    return _model([node], inits, ["batch", 24, 9, 9], ["batch", 24, "h", "w"])


def gemm(bias: bool = True) -> onnx.ModelProto:
    rng = np.random.default_rng(SEED)
    inits = [_init("w", rng.standard_normal((6, 16)))]
    inputs = ["x", "w"]
    if bias:
        inits.append(_init("c", rng.standard_normal(6)))
        inputs.append("c")
    node = helper.make_node("Gemm", inputs, ["y"], name="fc", transB=1, alpha=0.7, beta=2.0)
    return _model([node], inits, ["batch", 16], ["batch", 6])


def matmul(bias: bool = True) -> onnx.ModelProto:
    rng = np.random.default_rng(SEED)
    inits = [_init("w", rng.standard_normal((16, 6)))]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m" if bias else "y"], name="mm")]
    if bias:
        inits.append(_init("b", rng.standard_normal(6)))
        nodes.append(helper.make_node("Add", ["m", "b"], ["y"], name="mm_bias"))
    return _model(nodes, inits, ["batch", 5, 16], ["batch", 5, 6])


def _data(model: onnx.ModelProto, n: int = 24, seed: int = 1) -> dict[str, np.ndarray]:
    """Inputs with a non-zero mean per channel (as after a ReLU), so weight rounding shifts the output."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    shape = [n] + [d.dim_value for d in dims[1:]]
    rng = np.random.default_rng(seed)
    channel_mean = rng.uniform(0.5, 2.0, shape[1] if len(shape) == 4 else shape[-1])
    mean = channel_mean.reshape(-1, 1, 1) if len(shape) == 4 else channel_mean
    return {"x": (rng.standard_normal(shape) * 0.5 + mean).astype(np.float32)}


def _ctx(model: onnx.ModelProto, data: dict[str, np.ndarray], precision: str = "int8") -> PassContext:
    return PassContext(QuantConfig(precision=precision), open_batches(data, model, batch_size=5))


def _weight_quantized(model: onnx.ModelProto, precision: str) -> onnx.ModelProto:
    """The model with only trtq's weight Q/DQ (activations stay float), as the pipeline quantizes weights."""
    plan = plan_quantization(model, precision)
    plan.activations = {}
    return insert_qdq(model, plan, {}, precision, opset=OPSET)[0]


def _channel_means(model: onnx.ModelProto, data: dict[str, np.ndarray]) -> np.ndarray:
    y = make_session(model, optimize=False).run(None, data)[0].astype(np.float64)
    axis = 1 if y.ndim == 4 else y.ndim - 1
    return np.moveaxis(y, axis, -1).reshape(-1, y.shape[axis]).mean(axis=0)


CASES = {
    "conv": lambda: conv(),
    "conv_no_bias": lambda: conv(bias=False),
    "conv_padded_strided": lambda: conv(pads=[1, 2, 0, 1], strides=[2, 2]),
    "conv_same_upper": lambda: conv(auto_pad="SAME_UPPER", strides=[2, 2]),
    "conv_same_lower": lambda: conv(auto_pad="SAME_LOWER"),
    "conv_dilated": lambda: conv(pads=[2, 1, 2, 1], dilations=[2, 1]),
    "depthwise": lambda: conv(group=24, pads=[1, 1, 1, 1]),
    "grouped": lambda: conv(group=2, pads=[1, 1, 1, 1]),
    "gemm": lambda: gemm(),
    "gemm_no_bias": lambda: gemm(bias=False),
    "matmul_add": lambda: matmul(),
    "matmul_no_bias": lambda: matmul(bias=False),
}


@pytest.mark.parametrize("precision", ["int8", "fp8"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_mean_shift_is_removed(case: str, precision: str) -> None:
    model = CASES[case]()
    data = _data(model)
    original = model.SerializeToString()
    result = bias_correction(model, _ctx(model, data, precision))
    assert model.SerializeToString() == original, "the input model must not change"
    if not plan_quantization(model, precision).quantized_nodes:  # FP8 leaves depthwise/grouped convs in float
        assert result.model is model and result.report["layers"] == []
        assert "FP8 conv" in result.report["skipped"][0]["reason"]
        return
    onnx.checker.check_model(result.model, full_check=True)
    want = _channel_means(model, data)
    before = np.abs(_channel_means(_weight_quantized(model, precision), data) - want)
    after = np.abs(_channel_means(_weight_quantized(result.model, precision), data) - want)
    assert before.max() > 1e-3
    # exact for one layer on the data it was measured on (padding included), up to float32 rounding
    assert after.max() <= 1e-3 * before.max() + 1e-5 * np.abs(want).max()
    layer = result.report["layers"][0]
    np.testing.assert_allclose(layer["max_abs_shift"], before.max(), rtol=1e-3)
    assert layer["bias"] == ("created" if case.endswith("no_bias") else "updated")


@pytest.mark.parametrize("case", sorted(CASES))
def test_only_biases_change(case: str) -> None:
    model = CASES[case]()
    result = bias_correction(model, _ctx(model, _data(model)))
    old = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    new = {i.name: numpy_helper.to_array(i) for i in result.model.graph.initializer}
    assert np.array_equal(new["w"], old["w"])
    changed = {k for k in new if k not in old or not np.array_equal(new[k], old[k])}
    nodes = result.model.graph.node
    biases = {n.input[2] for n in nodes if n.op_type in ("Conv", "Gemm") and len(n.input) > 2}
    biases |= {n.input[1] for n in nodes if n.op_type == "Add"}
    assert changed and changed <= biases
    ops_before = [n.op_type for n in model.graph.node]
    ops_after = [n.op_type for n in result.model.graph.node]
    assert ops_after == (ops_before + ["Add"] if case == "matmul_no_bias" else ops_before)
    assert [o.name for o in result.model.graph.output] == ["y"]


def test_report_contents() -> None:
    model = conv(bias=False)
    result = bias_correction(model, _ctx(model, _data(model, n=10)))
    report = result.report
    assert report["precision"] == "int8" and report["samples"] == 10 and report["skipped"] == []
    assert "padding" in report["input_mean"]
    (layer,) = report["layers"]
    assert layer["node"] == "conv" and layer["op"] == "Conv" and layer["bias"] == "created"
    assert 0 < layer["mean_abs_shift"] <= layer["max_abs_shift"] == pytest.approx(layer["max_abs_bias"])
    conv_node = result.model.graph.node[0]
    assert len(conv_node.input) == 3 and conv_node.input[2] == "w.bias_corrected"


def test_shared_bias_is_copied_not_changed() -> None:
    rng = np.random.default_rng(SEED)
    inits = [_init("w1", rng.standard_normal((4, 4, 1, 1))), _init("w2", rng.standard_normal((4, 4, 1, 1))),
             _init("b", rng.standard_normal(4))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b"], ["c1"], name="conv1"),
             helper.make_node("Conv", ["x", "w2", "b"], ["c2"], name="conv2"),
             helper.make_node("Add", ["c1", "c2"], ["y"], name="add")]
    model = _model(nodes, inits, ["batch", 4, 3, 3], ["batch", 4, 3, 3])
    result = bias_correction(model, _ctx(model, _data(model)))
    new = {i.name: numpy_helper.to_array(i) for i in result.model.graph.initializer}
    assert "b" not in new or np.array_equal(new["b"], numpy_helper.to_array(inits[2]))
    assert [layer["bias"] for layer in result.report["layers"]] == ["copied from a shared constant"] * 2
    assert len({n.input[2] for n in result.model.graph.node if n.op_type == "Conv"}) == 2


def test_bias_behind_identity_is_copied_and_a_computed_bias_skipped() -> None:
    """TorchScript's exporter reads equal biases through Identity nodes; a bias may also be an activation."""
    rng = np.random.default_rng(SEED)
    inits = [_init("w1", rng.standard_normal((6, 16))), _init("w2", rng.standard_normal((6, 16))),
             _init("w3", rng.standard_normal((6, 16))), _init("zeros", np.zeros(6)), _init("c", np.ones(6))]
    nodes = [helper.make_node("Identity", ["zeros"], ["b1"], name="dedup1"),
             helper.make_node("Identity", ["b1"], ["b2"], name="dedup2"),
             helper.make_node("Gemm", ["x", "w1", "b1"], ["g1"], name="fc1", transB=1),
             helper.make_node("Gemm", ["x", "w2", "b2"], ["g2"], name="fc2", transB=1),
             helper.make_node("Relu", ["c"], ["b3"], name="computed"),
             helper.make_node("Gemm", ["x", "w3", "b3"], ["g3"], name="fc3", transB=1),
             helper.make_node("Sum", ["g1", "g2", "g3"], ["y"], name="sum")]
    model = _model(nodes, inits, ["batch", 16], ["batch", 6])
    data = _data(model)
    result = bias_correction(model, _ctx(model, data))
    assert [(la["node"], la["bias"]) for la in result.report["layers"]] == [
        ("fc1", "copied from a constant behind Identity / Constant nodes"),
        ("fc2", "copied from a constant behind Identity / Constant nodes")]
    assert {"node": "fc3", "reason": "its bias is computed in the graph, not a constant"} in result.report["skipped"]
    new = {i.name: numpy_helper.to_array(i) for i in result.model.graph.initializer}
    assert "zeros" not in new or not new["zeros"].any()  # the shared source is never changed in place
    assert _channel_means(result.model, data).shape == (6,)  # the corrected model runs


def test_torchscript_exported_deduplicated_biases_quantize(tmp_path) -> None:
    """The reported traceback: a Conv, then two Linear(16, 4) with zero biases summed, TorchScript exporter."""
    torch = requires.module("torch")

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.a, self.b = torch.nn.Conv2d(3, 16, 3), torch.nn.Linear(16, 4), torch.nn.Linear(16, 4)
            torch.nn.init.zeros_(self.a.bias)
            torch.nn.init.zeros_(self.b.bias)

        def forward(self, x):
            h = self.conv(x).mean((2, 3))
            return self.a(h) + self.b(h)

    torch.manual_seed(0)
    path = tmp_path / "net.onnx"
    torch.onnx.export(Net().eval(), (torch.randn(1, 3, 8, 8),), str(path), dynamo=False, opset_version=17,
                      input_names=["x"], dynamic_axes={"x": {0: "batch"}})
    assert "Identity" in {n.op_type for n in onnx.load(str(path)).graph.node}
    data = {"x": np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype(np.float32)}
    for precision, layers in (("int8", 3), ("fp8", 2)):  # FP8 keeps a 3-channel conv in floating point
        result = trtq.quantize(path, data, precision=precision, progress=False)
        assert len(result.report["passes"]["bias_correction"]["layers"]) == layers


def test_excluded_and_unquantized_layers_are_left_alone() -> None:
    model = conv()
    ctx = PassContext(QuantConfig(exclude=("conv",)), open_batches(_data(model), model, batch_size=5))
    result = bias_correction(model, ctx)
    assert result.model is model and result.report["layers"] == []


def test_int4_is_reported_not_corrected() -> None:
    model = matmul()
    result = bias_correction(model, PassContext(QuantConfig(precision="int4"), None))
    assert result.model is model and "INT4" in result.report["skipped"][0]["reason"]


def test_needs_calibration_data() -> None:
    with pytest.raises(TrtqError, match="bias_correction"):
        bias_correction(conv(), PassContext(QuantConfig(), None))


def test_biascorr_runs_in_the_pipeline(conv_model, conv_calib) -> None:
    result = trtq.quantize(conv_model, conv_calib, config=QuantConfig(passes=("biascorr",)), progress=False)
    report = result.report["passes"]["bias_correction"]
    assert {layer["node"] for layer in report["layers"]} == set(result.report["quantized_nodes"])
    assert result.report["check"]["counts"]["warning"] == 0
    assert "bias_correction" in result.pass_seconds


@pytest.mark.slow
def test_efficientnet_lite0_int8_gains(effnet_fp32) -> None:
    """Every conv INT8, weights rounded to nearest: bias correction lifts the logit SQNR clearly above the
    uncorrected graph (GPTQ conv rounding and the automatic fallback are off: they would hide its effect)."""
    from trtq.testing.data import CALIB_PHOTOS, EVAL_PHOTOS, image_batch

    model = effnet_fp32
    calib = {"images": image_batch(CALIB_PHOTOS, 16)}
    x = {"images": image_batch(EVAL_PHOTOS, 16)}
    ref = make_session(model).run(None, x)[0].astype(np.float64)

    def sqnr(passes: tuple[str, ...]) -> float:
        result = trtq.quantize(model, calib, config=QuantConfig(passes=passes, fallback=False, conv_method="rtn"),
                               progress=False)
        out = make_session(result.model).run(None, x)[0]
        return 10 * np.log10((ref**2).sum() / ((ref - out) ** 2).sum())

    plain, corrected = sqnr(()), sqnr(("biascorr",))
    assert corrected >= plain + 0.7, (plain, corrected)  # 18.3 -> 19.4 dB on these 16 + 16 photos


def test_input_sums_are_exact_whatever_the_batching_and_order() -> None:
    """`_ExactSum`: bit-identical for any row order and split, and within float64 rounding of the true sum."""
    from trtq.exporter.passes.bias_correction import _ExactSum

    rng = np.random.default_rng(3)
    x = (rng.standard_normal((64, 5)) * 10.0 ** rng.integers(-12, 9, (64, 5))).astype(np.float32)
    x[3, 1], x[7, 2], x[9, 4] = np.nan, -3e30, np.inf  # excluded: count as 0
    values = []
    for order, split in ((np.arange(64), 64), (rng.permutation(64), 7), (rng.permutation(64), 1)):
        acc = _ExactSum()
        for start in range(0, 64, split):
            acc.add(x[order[start:start + split]])
        values.append(acc.value())
        assert acc.count == 64
    assert values[0].tobytes() == values[1].tobytes() == values[2].tobytes()
    finite = np.where(np.abs(x) < 1e30, x, 0.0).astype(np.float64)
    exact = np.array([sum(sorted(col, key=abs)) for col in finite.T])
    np.testing.assert_allclose(values[0], exact, rtol=1e-12, atol=1e-13)
