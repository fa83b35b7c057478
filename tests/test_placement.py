"""Q/DQ placement follows TensorRT's recommendations (anchors-trt-modelopt.md §2.3)."""

from __future__ import annotations

import numpy as np
import onnx

from trtq.exporter.placement import plan_quantization

import graphs


def _infer(model: onnx.ModelProto) -> onnx.ModelProto:
    return onnx.shape_inference.infer_shapes(model)


def test_conv_relu6_depthwise_residual():
    plan = plan_quantization(_infer(graphs.conv_block()), "int8")
    acts = plan.activations
    # all inputs of every conv and the Gemm
    assert acts["input"] == [("conv1", 0)]
    assert acts["rd"] == [("conv2", 0)] and ("dwconv", 0) in acts["r1"]
    assert acts["flat"] == [("fc", 0)]
    # the residual input of the Add fed by conv2 is quantized (shared with dwconv's input Q/DQ)
    assert ("residual_add", 1) in acts["r1"] and plan.residual_adds == ["residual_add"]
    # nothing between conv and its activation, no Q on weighted-op outputs
    assert not {"c1", "cd", "c2", "logits"} & set(acts)
    axes = {s.tensor: s.axis for s in plan.weights}
    assert axes == {"w1": 0, "wd": 0, "w2": 0, "wf": 0}


def test_attention_mask_and_softmax_input_stay_float():
    plan = plan_quantization(_infer(graphs.attention_block()), "int8")
    acts = plan.activations
    assert set(acts) == {"x", "q", "kt", "probs", "v", "ctx"}
    assert not {"scores", "scaled", "masked", "mask", "res", "o"} & set(acts)
    assert plan.residual_adds == []  # MatMul residuals are not conv + add fusions
    assert {s.tensor: s.axis for s in plan.weights} == {"wq": 1, "wk": 1, "wv": 1, "wo": 1}


def test_exclude_regex_keeps_nodes_in_float():
    plan = plan_quantization(_infer(graphs.attention_block()), "int8", exclude=["^(qk|av)_matmul$"])
    assert {"kt", "probs"}.isdisjoint(plan.activations)
    assert {s["node"] for s in plan.skipped} == {"qk_matmul", "av_matmul"}


def test_int4_is_weight_only_on_matmul_with_divisible_k():
    plan = plan_quantization(_infer(graphs.attention_block(hidden=128)), "int4", block_size=64)
    assert plan.activations == {}
    assert {(s.tensor, s.block_axis) for s in plan.weights} == {("wq", 0), ("wk", 0), ("wv", 0), ("wo", 0)}
    reasons = {s["node"]: s["reason"] for s in plan.skipped}
    assert "activation x activation" in reasons["qk_matmul"]
    plan = plan_quantization(_infer(graphs.attention_block(hidden=96)), "int4", block_size=64)
    assert plan.weights == {} and all("multiple of block size" in s["reason"] for s in plan.skipped
                                      if s["node"].endswith("_proj"))


def test_int4_skips_convolutions():
    plan = plan_quantization(_infer(graphs.conv_block()), "int4", block_size=2)
    assert {s["node"] for s in plan.skipped} >= {"conv1", "dwconv", "conv2"}


def test_fp8_leaves_depthwise_and_few_channel_convs_in_float():
    plan = plan_quantization(_infer(graphs.conv_block(channels=32)), "fp8")
    reasons = {s["node"]: s["reason"] for s in plan.skipped}
    assert set(reasons) == {"conv1", "dwconv"}  # 3 input channels; depthwise (1 channel per group)
    assert "per group" in reasons["dwconv"]
    assert plan.quantized_nodes == ["conv2", "fc"]
    assert plan.residual_adds == ["residual_add"]


def test_online_rotation_matmuls_stay_in_float():
    from onnx import TensorProto, helper, numpy_helper

    h = numpy_helper.from_array(np.eye(4, dtype=np.float32), "h")
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "h"], ["xr"], name="trtq_rotation/down/dense"),
             helper.make_node("MatMul", ["xr", "w"], ["y"], name="down")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], [h, w])
    plan = plan_quantization(_infer(helper.make_model(g)), "int8")
    assert plan.quantized_nodes == ["down"] and list(plan.activations) == ["xr"]
    assert plan.skipped[0]["node"] == "trtq_rotation/down/dense"


def test_placement_and_check_agree_on_a_convnext_block():
    """A conv output read by the next conv and by a residual Add: no fusion exists, neither side asks for one."""
    import trtq

    model = graphs.convnext_block()
    data = {"input": np.random.RandomState(0).randn(4, 3, 8, 8).astype(np.float32)}
    for precision in ("int8", "fp8"):
        result = trtq.quantize(model, data, precision=precision, progress=False)
        assert result.report["residual_adds"] == []
        findings = trtq.check(result.model).findings
        assert [f for f in findings if f.severity != "info"] == [], precision
