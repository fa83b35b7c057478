"""End to end: quantize tiny models for every precision; contracts of outputs, reports and errors."""

from __future__ import annotations

import hashlib
import json

import ml_dtypes
import numpy as np
import onnx
import pytest

import trtq
from trtq.config import QuantConfig, Target
from trtq.errors import TrtqError

import graphs
import helpers
import requires


def _nodes(model: onnx.ModelProto, op: str) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == op]


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy", "mse"])
def test_int8_conv_block(conv_model, conv_calib, tmp_path, method):
    out = tmp_path / "q.onnx"
    result = trtq.quantize(conv_model, conv_calib, out, precision="int8", calib_method=method, progress=False)
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    feeds = graphs.conv_data(16, seed=9)
    assert helpers.sqnr_db(helpers.run(graphs.conv_block(), feeds), helpers.run(model, feeds)) > 25
    inits = helpers.initializers(model)
    for q in _nodes(model, "QuantizeLinear"):  # symmetric per-tensor activations, scale = amax / 127
        assert inits[q.input[2]].dtype == np.int8 and inits[q.input[2]] == 0 and inits[q.input[1]].shape == ()
        tensor = result.report["tensors"][q.input[0]]
        assert inits[q.input[1]] == pytest.approx(tensor["scale"], rel=1e-6)  # fp16 (the default high precision)
        assert tensor["scale"] == pytest.approx(tensor["amax"] / 127, rel=2**-11)
        assert tensor["method"] == method and tensor["samples"] == 32
    weights = [d for d in _nodes(model, "DequantizeLinear") if d.input[0] in inits]
    assert len(weights) == 4 and all(inits[d.input[0]].dtype == np.int8 for d in weights)
    dw = next(d for d in weights if d.input[0].startswith("wd"))
    assert inits[dw.input[1]].shape == (16,)  # depthwise: per-channel over its 16 channels
    assert not any(o in {"c1", "cd", "c2"} for q in _nodes(model, "QuantizeLinear") for o in q.input[:1])
    assert result.report["residual_adds"] == ["residual_add"]
    assert json.loads((tmp_path / "q.trtq.json").read_text()) == result.report


def test_int8_attention_with_infinite_mask(attention_model, attention_calib, tmp_path):
    result = trtq.quantize(attention_model, attention_calib, tmp_path / "q.onnx", progress=False)
    model = onnx.load(str(tmp_path / "q.onnx"))
    quantized = {q.input[0] for q in _nodes(model, "QuantizeLinear")}
    assert quantized == {"x", "q", "kt", "probs", "v", "ctx"}
    feeds = graphs.attention_data(8, seed=5)
    ref, out = helpers.run(graphs.attention_block(), feeds), helpers.run(model, feeds)
    assert np.isfinite(out).all() and helpers.sqnr_db(ref, out) > 20
    assert result.report["check"]["ok"] and result.report["check"]["counts"]["error"] == 0


def test_fp8(attention_model, attention_calib, tmp_path):
    trtq.quantize(attention_model, attention_calib, tmp_path / "q.onnx", precision="fp8", target="hopper",
                  progress=False)
    model = onnx.load(str(tmp_path / "q.onnx"))
    assert model.opset_import[0].version >= 19
    inits = helpers.initializers(model)
    for q in _nodes(model, "QuantizeLinear"):
        assert inits[q.input[2]].dtype == ml_dtypes.float8_e4m3fn
        assert inits[q.input[1]] > 0
    feeds = graphs.attention_data(8, seed=5)
    assert helpers.sqnr_db(helpers.run(graphs.attention_block(), feeds), helpers.run(model, feeds)) > 20


@pytest.mark.parametrize("name", ["conv", "attention"])
def test_fp8_loads_in_a_default_onnxruntime_session(name, tmp_path):
    """A plain `InferenceSession` (default options: ORT's Clip->QuantizeLinear fusion on) loads trtq's FP8
    graph and computes what the exact Q/DQ session computes."""
    import onnxruntime as ort

    model, data = ((graphs.conv_block(channels=32), graphs.conv_data(8)) if name == "conv"
                   else (graphs.attention_block(), graphs.attention_data(8)))
    config = QuantConfig(precision="fp8", target=Target("hopper"), high_precision="fp32")
    q = trtq.quantize(model, data, config=config, progress=False).model
    session = ort.InferenceSession(q.SerializeToString(), providers=["CPUExecutionProvider"])
    # ORT's default fusions (LayerNorm, ...) round differently: float32 rounding apart
    np.testing.assert_allclose(session.run(None, data)[0], helpers.run(q, data), rtol=1e-4, atol=1e-4)
    # the default FP16 graph loads too (its numbers differ by FP16 rounding: ORT's CPU runs FP16 in FP32)
    half = trtq.quantize(model, data, precision="fp8", target="hopper", progress=False).model
    out = ort.InferenceSession(half.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, data)[0]
    assert np.all(np.isfinite(out))


def test_int4_weight_only_blockwise(attention_model, tmp_path):
    result = trtq.quantize(attention_model, None, tmp_path / "q.onnx", precision="int4",
                           config=QuantConfig(precision="int4", block_size=32), progress=False)
    model = onnx.load(str(tmp_path / "q.onnx"))
    assert model.opset_import[0].version >= 21 and not _nodes(model, "QuantizeLinear")
    int4 = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT4]
    assert len(int4) == 4 and all(len(i.raw_data) == 128 * 128 // 2 for i in int4)  # packed two per byte
    dq = _nodes(model, "DequantizeLinear")[0]
    attrs = {a.name: a.i for a in dq.attribute}
    assert attrs == {"axis": 0, "block_size": 32}
    inits = helpers.initializers(model)
    assert inits[dq.input[1]].shape == (4, 128)
    # ONNX Runtime's dequantization equals trtq's own numbers
    q = inits[dq.input[0]].astype(np.float32)
    entry = result.report["tensors"][dq.input[0].replace("_axis1_quantized", "").replace("_quantized", "")]
    scale = np.asarray(entry["scale"], np.float32)
    np.testing.assert_allclose(np.repeat(scale, 32, axis=0) * q, _dequant(model, dq), rtol=1e-6)
    feeds = graphs.attention_data(8, seed=5)
    assert helpers.sqnr_db(helpers.run(graphs.attention_block(), feeds), helpers.run(model, feeds)) > 15


def _dequant(model: onnx.ModelProto, dq: onnx.NodeProto) -> np.ndarray:
    from onnx import helper

    sub = helper.make_model(
        helper.make_graph([dq], "dq", [], [helper.make_tensor_value_info(dq.output[0], onnx.TensorProto.FLOAT, None)],
                          [i for i in model.graph.initializer if i.name in dq.input]),
        opset_imports=[helper.make_opsetid("", 21)],
    )
    return helpers.run(sub, {})


def test_same_inputs_give_byte_identical_outputs(conv_model, conv_calib, tmp_path):
    digests = []
    for run in ("a", "b"):
        out = tmp_path / run / "q.onnx"
        trtq.quantize(conv_model, conv_calib, out, calib_method="entropy", seed=3, progress=False)
        digests.append([hashlib.sha256(p.read_bytes()).hexdigest() for p in (out, out.with_suffix(".trtq.json"))])
    assert digests[0] == digests[1]


def test_input_is_never_modified(conv_model, conv_calib, tmp_path):
    before = hashlib.sha256(conv_model.read_bytes()).hexdigest()
    trtq.quantize(conv_model, conv_calib, tmp_path / "q.onnx", progress=False)
    assert hashlib.sha256(conv_model.read_bytes()).hexdigest() == before
    with pytest.raises(TrtqError, match="overwrite"):
        trtq.quantize(conv_model, conv_calib, conv_model, progress=False)


def test_report_records_every_chosen_number(conv_model, conv_calib, tmp_path):
    report = trtq.quantize(conv_model, conv_calib, tmp_path / "q.onnx", progress=False).report
    assert set(report["versions"]) >= {"trtq", "onnx", "onnxruntime"}
    assert report["config"]["precision"] == "int8" and report["input"]["sha256"]
    w = report["tensors"]["w1"]
    assert w["kind"] == "weight" and len(w["scale"]) == 16 and len(w["amax"]) == 16
    a = report["tensors"]["input"]
    assert {"amax", "scale", "samples", "excluded_nonfinite", "method"} <= set(a)


def test_calibrate_returns_ranges(conv_model, conv_calib):
    ranges = trtq.calibrate(conv_model, conv_calib, calib_method="minmax", progress=False)
    assert set(ranges) == {"input", "r1", "rd", "flat"}
    assert ranges["input"]["scale"] == pytest.approx(ranges["input"]["amax"] / 127)


def test_torch_module_is_exported_first(tmp_path):
    torch = requires.module("torch")
    module = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).eval()
    data = [{"input": np.random.RandomState(i).randn(4, 32).astype(np.float32)} for i in range(3)]
    result = trtq.quantize(module, data, tmp_path / "q.onnx", example_inputs=(torch.zeros(1, 32),), progress=False)
    assert result.report["summary"]["quantized_nodes"] == 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"precision": "int3"}, "unknown precision"),
        ({"calib_method": "magic"}, "unknown calibration method"),
        ({"precision": "fp8", "target": "orin"}, "cannot run on target 'orin'"),
        ({"exclude": [".*"]}, "no quantizable op"),
        ({"exclude": ["("]}, "not a valid regular expression"),
    ],
)
def test_user_errors(conv_model, conv_calib, tmp_path, kwargs, match):
    with pytest.raises(TrtqError, match=match) as err:
        trtq.quantize(conv_model, conv_calib, tmp_path / "q.onnx", progress=False, **kwargs)
    assert err.value.fix and not (tmp_path / "q.onnx").exists() and not (tmp_path / "q.trtq.json").exists()


def test_model_without_quantizable_ops(tmp_path):
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    with pytest.raises(TrtqError, match="no quantizable op"):
        trtq.quantize(helper.make_model(g), {"x": np.zeros((2, 1, 4), np.float32)[:, 0]}, progress=False)


def test_torch_conv_bn_relu6_add_placement(tmp_path):
    torch = requires.module("torch")
    from torch import nn

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU6())
            self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.ReLU6())
            self.pw = nn.Sequential(nn.Conv2d(16, 16, 1), nn.BatchNorm2d(16))

        def forward(self, x):
            y = self.stem(x)
            return y + self.pw(self.dw(y))

    torch.manual_seed(0)
    module = Block().eval()
    with torch.no_grad():
        for bn in (m for m in module.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    data = {"x": np.random.RandomState(0).randn(16, 3, 12, 12).astype(np.float32)}
    result = trtq.quantize(module, data, tmp_path / "q.onnx", example_inputs=(torch.zeros(1, 3, 12, 12),),
                           progress=False)
    model = onnx.load(str(tmp_path / "q.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert "BatchNormalization" not in ops and ops.count("Conv") == 3
    producers = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type in ("Clip", "Relu"):  # conv + activation stays fused: no Q/DQ in between
            assert producers[node.input[0]].op_type == "Conv"
        if node.op_type == "Conv":
            assert producers[node.input[0]].op_type == "DequantizeLinear"
            assert producers[node.input[1]].op_type == "DequantizeLinear"
    add = next(n for n in model.graph.node if n.op_type == "Add")
    assert sorted(producers[i].op_type for i in add.input) == ["Conv", "DequantizeLinear"]
    assert result.report["summary"]["residual_adds_quantized"] == 1
    assert result.report["check"]["counts"]["warning"] == 0
    feeds = {"x": np.random.RandomState(1).randn(4, 3, 12, 12).astype(np.float32)}
    ref = module(torch.from_numpy(feeds["x"])).detach().numpy()
    assert helpers.sqnr_db(ref, helpers.run(model, feeds)) > 25


def test_qdq_names_never_collide_with_existing_tensors(tmp_path):
    from onnx import TensorProto, helper

    model = graphs.attention_block()
    # a user tensor already called like trtq's scale for "x": Identity x -> x_scale, added to the output
    model.graph.node.insert(0, helper.make_node("Identity", ["x"], ["x_scale"], name="user_identity"))
    model.graph.node.append(helper.make_node("Add", ["y", "x_scale"], ["y2"], name="user_add"))
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("y2", TensorProto.FLOAT, ["batch", 8, 128]))
    result = trtq.quantize(model, graphs.attention_data(8), progress=False)
    feeds = graphs.attention_data(4, seed=5)
    assert helpers.sqnr_db(helpers.run(model, feeds), helpers.run(result.model, feeds)) > 20


def test_int4_nothing_to_quantize_names_what_int4_quantizes(conv_model):
    """INT4 quantizes MatMul/Gemm weights only: its message must not offer convolutions."""
    with pytest.raises(TrtqError) as err:
        trtq.quantize(conv_model, None, precision="int4", progress=False)
    message = str(err.value)
    assert "MatMul/Gemm with constant 2-D weights whose K is a multiple of the block size (128)" in message
    assert "Conv" not in message.split(". Fix:")[0] and "int8 or fp8" in err.value.fix
