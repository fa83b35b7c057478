"""Tests of trtq.exporter.check: a correct QDQ graph passes, each rule fires on a graph broken for it."""

from __future__ import annotations

import json
import re

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtq.config import TARGETS, Target
from trtq.errors import TrtqError
from trtq.exporter import check as check_module
from trtq.exporter.check import RULES, CheckReport, Finding, check
from trtq.exporter.high_precision import cast_high_precision

FP8 = ml_dtypes.float8_e4m3fn
INT4 = ml_dtypes.int4


class Builder:
    """onnx.helper graphs in the shape trtq writes them: Q/DQ nodes `<base>_q` / `<base>_dq`."""

    def __init__(self, dtype: type = np.int8) -> None:
        self.dtype = dtype
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.rng = np.random.default_rng(0)

    def input(self, name: str, shape: list[int], elem: int = TensorProto.FLOAT) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem, shape))
        return name

    def output(self, name: str, shape: list[int]) -> None:
        self.outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))

    def const(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], name: str, **attrs: object) -> str:
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def qdq(self, x: str, base: str, scale: float = 0.05, dtype: type | None = None) -> str:
        dtype = dtype or self.dtype
        s = self.const(f"{base}_scale", np.array(scale, np.float32))
        z = self.const(f"{base}_zp", np.array(0, dtype))
        q = self.node("QuantizeLinear", [x, s, z], f"{base}_q")
        return self.node("DequantizeLinear", [q, s, z], f"{base}_dq")

    def weight(
        self, base: str, shape: tuple[int, ...], axis: int, dtype: type | None = None, block: int = 0
    ) -> str:
        dtype = dtype or self.dtype
        values = self.rng.integers(-7, 8, shape).astype(np.float32).astype(dtype)
        scale_shape = list(shape)
        if block:
            scale_shape[axis] //= block
        else:
            scale_shape = [shape[axis]]
        w = self.const(f"{base}_w", values)
        s = self.const(f"{base}_scale", np.full(scale_shape, 0.01, np.float32))
        z = self.const(f"{base}_zp", np.zeros(scale_shape, dtype))
        attrs = {"axis": axis, **({"block_size": block} if block else {})}
        return self.node("DequantizeLinear", [w, s, z], f"{base}_dq", **attrs)

    def model(self, opset: int = 19) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "g", self.inputs, self.outputs, self.inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def qdq_model(dtype: type = np.int8, opset: int = 19, head_size: int = 16) -> onnx.ModelProto:
    """Conv-ReLU-Conv-Add residual block plus one attention head group with a mask, quantized as trtq does."""
    b = Builder(dtype)
    image = b.qdq(b.input("image", [1, 16, 8, 8]), "image")
    conv1 = b.node(
        "Conv",
        [image, b.weight("conv1.weight", (16, 16, 3, 3), 0), b.const("conv1.bias", np.zeros(16, np.float32))],
        "conv1",
        pads=[1, 1, 1, 1],
    )
    relu1 = b.qdq(b.node("Relu", [conv1], "relu1"), "relu1")
    conv2 = b.node(
        "Conv",
        [relu1, b.weight("conv2.weight", (16, 16, 3, 3), 0), b.const("conv2.bias", np.zeros(16, np.float32))],
        "conv2",
        pads=[1, 1, 1, 1],
    )
    b.node("Relu", [b.node("Add", [conv2, image], "residual_add")], "conv_out")
    b.output("conv_out", [1, 16, 8, 8])

    hidden = b.qdq(b.input("hidden", [1, 16, 64]), "hidden")
    heads = {}
    for p, perm in (("query", [0, 2, 1, 3]), ("key", [0, 2, 3, 1]), ("value", [0, 2, 1, 3])):
        proj = b.node("MatMul", [hidden, b.weight(f"{p}.weight", (64, 64), 1)], f"{p}_proj")
        split = b.node(
            "Reshape",
            [proj, b.const(f"{p}_shape", np.array([1, 16, 64 // head_size, head_size], np.int64))],
            f"{p}_split",
        )
        heads[p] = b.qdq(b.node("Transpose", [split], f"{p}_heads", perm=perm), f"{p}_heads")
    scores = b.node("MatMul", [heads["query"], heads["key"]], "attn_qk")
    scaled = b.node(
        "Div", [scores, b.const("attn_scale_value", np.array(head_size**0.5, np.float32))], "attn_scale"
    )
    masked = b.node("Add", [scaled, b.input("mask", [1, 1, 16, 16])], "attn_mask_add")
    probs = b.node("Softmax", [masked], "attn_softmax", axis=-1)
    context = b.node("MatMul", [b.qdq(probs, "attn_probs", 1 / 127), heads["value"]], "attn_pv")
    merged = b.node("Transpose", [context], "ctx_transpose", perm=[0, 2, 1, 3])
    merged = b.node("Reshape", [merged, b.const("ctx_shape", np.array([1, 16, 64], np.int64))], "ctx_merge")
    out = b.node("MatMul", [b.qdq(merged, "ctx"), b.weight("out.weight", (64, 64), 1)], "out_proj")
    b.node("Add", [out, b.const("out.bias", np.zeros(64, np.float32))], "attn_out")
    b.output("attn_out", [1, 16, 64])
    return b.model(opset)


def matmul_model(
    k: int = 64,
    n: int = 64,
    weight: type = np.int8,
    block: int = 0,
    act: type | None = np.int8,
    opset: int = 19,
) -> onnx.ModelProto:
    """x[4, k] (optionally Q/DQ) @ DQ(w[k, n]) — per-channel, or block-wise along K when `block`."""
    b = Builder(weight)
    x = b.input("x", [4, k])
    x = b.qdq(x, "x", dtype=act) if act is not None else x
    w = b.weight("w", (k, n), 0 if block else 1, block=block)
    b.node("MatMul", [x, w], "matmul")
    b.output("matmul", [4, n])
    return b.model(opset)


def conv_model(cin: int, cout: int, group: int = 1, kernel: int = 3) -> onnx.ModelProto:
    b = Builder()
    x = b.qdq(b.node("Relu", [b.input("x", [1, cin, 8, 8])], "stem"), "x")
    w = b.weight("w", (cout, cin // group, kernel, kernel), 0)
    b.node("Conv", [x, w], "conv", group=group, pads=[kernel // 2] * 4)
    b.output("conv", [1, cout, 8, 8])
    return b.model()


def node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def set_init(model: onnx.ModelProto, name: str, array: np.ndarray) -> None:
    inits = model.graph.initializer
    index = next(i for i, t in enumerate(inits) if t.name == name)
    inits[index].CopyFrom(numpy_helper.from_array(np.asarray(array), name))


def insert_qdq(
    model: onnx.ModelProto, consumer: str, position: int, base: str, dtype: type = np.int8
) -> None:
    """Put a Q/DQ pair `<base>_q` / `<base>_dq` on input `position` of node `consumer`."""
    target = node(model, consumer)
    tensor = target.input[position]
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(0.05, np.float32), f"{base}_scale"),
            numpy_helper.from_array(np.array(0, dtype), f"{base}_zp"),
        ]
    )
    q = helper.make_node(
        "QuantizeLinear", [tensor, f"{base}_scale", f"{base}_zp"], [f"{base}_q"], name=f"{base}_q"
    )
    dq = helper.make_node(
        "DequantizeLinear", [f"{base}_q", f"{base}_scale", f"{base}_zp"], [f"{base}_dq"], name=f"{base}_dq"
    )
    target.input[position] = f"{base}_dq"
    nodes = list(model.graph.node)
    at = nodes.index(target)
    del model.graph.node[:]
    model.graph.node.extend([*nodes[:at], q, dq, *nodes[at:]])


def found(report: CheckReport, rule: str, node_name: str, severity: str | None = None) -> Finding:
    """The finding of `rule` at `node_name`; fails with the whole report otherwise."""
    for f in report.findings:
        if f.rule == rule and f.node == node_name and (severity is None or f.severity == severity):
            assert f.fix.strip() and f.message.strip()
            return f
    raise AssertionError(f"no {rule} finding at {node_name}:\n{report.format()}")


def rules_of(report: CheckReport, severity: str | None = None) -> set[str]:
    return {f.rule for f in report.findings if severity is None or f.severity == severity}


# --- the correct graph --------------------------------------------------------------------------------------


def test_correct_int8_graph_is_valid_onnx_and_runs() -> None:
    import onnxruntime as ort

    model = qdq_model()
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {
        i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
        for i in model.graph.input
    }
    outputs = session.run(None, feeds)
    assert all(np.all(np.isfinite(o)) for o in outputs)


def test_correct_int8_graph_has_no_errors_or_warnings() -> None:
    report = check(qdq_model())
    assert report.ok and not report.warnings, report.format()
    assert rules_of(report) == {"fp32-region"}  # the only note: non-quantized regions stay float32


def half(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph as `trtq quantize` writes it by default: unquantized layers in FP16 (--high-precision fp16)."""
    cast_high_precision(model, "fp16")
    return model


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_correct_int8_graph_passes_on_every_target(target: str) -> None:
    report = check(half(qdq_model()), target)
    expected = {"orin-int8-attention"} if target == "orin" else set()  # TensorRT 10.3 on Orin: no INT8 MHA
    assert report.ok and rules_of(report, "warning") == expected, report.format()


def test_modelopt_style_qdq_on_fp32_weights_is_accepted() -> None:
    b = Builder()
    x = b.qdq(b.input("x", [1, 16, 8, 8]), "x")
    w = b.const("w_fp32", np.ones((32, 16, 3, 3), np.float32))
    s = b.const("w_scale", np.full(32, 0.01, np.float32))
    z = b.const("w_zp", np.zeros(32, np.int8))
    wq = b.node("QuantizeLinear", [w, s, z], "w_q", axis=0)
    wdq = b.node("DequantizeLinear", [wq, s, z], "w_dq", axis=0)
    b.node("Conv", [x, b.node("Identity", [wdq], "w_identity")], "conv", pads=[1, 1, 1, 1])
    b.output("conv", [1, 32, 8, 8])
    report = check(b.model(13))
    assert report.ok and not report.warnings, report.format()


def test_check_reads_a_path_and_leaves_the_model_unchanged(tmp_path) -> None:
    model = qdq_model()
    before = model.SerializeToString()
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    assert check(path).ok and check(str(path)).ok
    check(model, "orin")
    assert model.SerializeToString() == before


# --- hard rules ---------------------------------------------------------------------------------------------


def test_zero_point_nonzero() -> None:
    model = qdq_model()
    set_init(model, "relu1_zp", np.int8(5))
    found(check(model), "zero-point", "relu1_q", "error")


@pytest.mark.parametrize("case", ["uint8", "no-zero-point", "int16", "uint8-weight", "int32-bias"])
def test_quant_type(case: str) -> None:
    model = qdq_model(opset=21 if case == "int16" else 19)
    at = "relu1_q"
    if case == "uint8":
        set_init(model, "relu1_zp", np.uint8(0))
    elif case == "no-zero-point":
        del node(model, "relu1_q").input[2]
        del node(model, "relu1_dq").input[2]
    elif case == "int16":
        set_init(model, "relu1_zp", np.int16(0))
    elif case == "uint8-weight":
        set_init(model, "conv2.weight_w", np.zeros((16, 16, 3, 3), np.uint8))
        set_init(model, "conv2.weight_zp", np.zeros(16, np.uint8))
        at = "conv2.weight_dq"
    else:  # onnxruntime's quantize_static default: DequantizeLinear on INT32 biases
        model.graph.initializer.extend(
            [
                numpy_helper.from_array(np.zeros(16, np.int32), "conv1.bias_q"),
                numpy_helper.from_array(np.full(16, 1e-4, np.float32), "conv1.bias_scale"),
            ]
        )
        dq = helper.make_node(
            "DequantizeLinear", ["conv1.bias_q", "conv1.bias_scale"], ["b"], "conv1.bias_dq", axis=0
        )
        model.graph.node.insert(0, dq)
        node(model, "conv1").input[2] = "b"
        at = "conv1.bias_dq"
    found(check(model), "quant-type", at, "error")


def test_fp8_format_e5m2() -> None:
    model = qdq_model()
    set_init(model, "relu1_zp", np.array(0, ml_dtypes.float8_e5m2))
    found(check(model), "fp8-format", "relu1_q", "error")


def test_scale_not_constant() -> None:
    model = qdq_model()
    inits = model.graph.initializer
    del inits[next(i for i, t in enumerate(inits) if t.name == "relu1_scale")]
    model.graph.input.append(helper.make_tensor_value_info("relu1_scale", TensorProto.FLOAT, []))
    found(check(model), "scale-constant", "relu1_q", "error")


@pytest.mark.parametrize("value", [0.0, -0.1, np.inf, np.nan, 9.3e-41])  # 9.3e-41: subnormal
def test_scale_value(value: float) -> None:
    model = qdq_model()
    set_init(model, "relu1_scale", np.float32(value))
    found(check(model), "scale-value", "relu1_q", "error")


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_scale_dtype(dtype: type) -> None:
    model = qdq_model()
    set_init(model, "image_scale", np.array(0.05, dtype))  # image is a float32 graph input
    found(check(model), "scale-dtype", "image_q", "error")


def test_one_element_scale_with_axis_is_per_tensor() -> None:
    model = qdq_model()
    set_init(model, "relu1_scale", np.full(1, 0.05, np.float32))
    set_init(model, "relu1_zp", np.zeros(1, np.int8))
    for name in ("relu1_q", "relu1_dq"):
        node(model, name).attribute.append(helper.make_attribute("axis", 1))
    assert check(model).ok


def test_per_channel_activation() -> None:
    model = qdq_model()
    set_init(model, "relu1_scale", np.full(16, 0.05, np.float32))
    set_init(model, "relu1_zp", np.zeros(16, np.int8))
    for name in ("relu1_q", "relu1_dq"):
        node(model, name).attribute.append(helper.make_attribute("axis", 1))
    found(check(model), "per-channel-activation", "relu1_q", "error")


@pytest.mark.parametrize("trt, fires", [("10.16", True), ("11", False)])
def test_block_quant_int8_needs_trt_11(trt: str, fires: bool) -> None:
    report = check(matmul_model(block=32, opset=21), trt=trt)
    assert ("block-quant" in rules_of(report, "error")) is fires, report.format()
    if fires:
        found(report, "block-quant", "w_dq")


def test_block_quant_on_activation() -> None:
    model = matmul_model(opset=21)
    set_init(model, "x_scale", np.full((4, 2), 0.05, np.float32))
    set_init(model, "x_zp", np.zeros((4, 2), np.int8))
    for name in ("x_q", "x_dq"):
        node(model, name).attribute.extend(
            [helper.make_attribute("axis", 1), helper.make_attribute("block_size", 32)]
        )
    found(check(model, trt="11"), "block-quant", "x_q", "error")


def test_int4_weight_only_graph_is_accepted() -> None:
    report = check(half(matmul_model(weight=INT4, block=32, act=None, opset=21)), "ampere")
    assert report.ok and not report.warnings, report.format()


def test_int4_dequantized_to_fp32_is_a_warning() -> None:
    report = check(matmul_model(weight=INT4, block=32, act=None, opset=21), "ampere")
    assert "FP32 GEMM" in found(report, "int4-fp32", "w_dq", "warning").message


def test_int4_activation() -> None:
    found(check(matmul_model(weight=INT4, block=32, act=INT4, opset=21)), "int4-activation", "x_q", "error")


def test_int4_odd_last_dimension() -> None:
    found(
        check(matmul_model(n=63, weight=INT4, block=32, act=None, opset=21)), "int4-odd-dim", "w_dq", "error"
    )


def test_conv_precision_int4_weight() -> None:
    model = qdq_model(opset=21)
    set_init(model, "conv2.weight_w", np.zeros((16, 16, 3, 3), INT4))
    set_init(model, "conv2.weight_zp", np.zeros(16, INT4))
    found(check(model), "conv-precision", "conv2", "error")


@pytest.mark.parametrize(
    "case, at",
    [
        ("fp8-opset-17", "relu1_q"),
        ("int4-block-opset-20", "w_dq"),
        ("per-channel-opset-12", "conv1.weight_dq"),
    ],
)
def test_qdq_opset(case: str, at: str) -> None:
    if case == "fp8-opset-17":
        model = qdq_model(opset=17)
        set_init(model, "relu1_zp", np.array(0, FP8))
    elif case == "int4-block-opset-20":
        model = matmul_model(weight=INT4, block=32, act=None, opset=20)
    else:
        model = qdq_model(opset=12)
    found(check(model), "qdq-opset", at, "error")


def test_dynamic_quantize_linear() -> None:
    model = qdq_model()
    model.graph.node.append(
        helper.make_node("DynamicQuantizeLinear", ["hidden"], ["dq_y", "dq_s", "dq_z"], name="dynamic_q")
    )
    found(check(model), "dynamic-quantize", "dynamic_q", "error")


def test_q_consumed_by_a_conv() -> None:
    model = qdq_model()
    node(model, "conv2").input[0] = "relu1_q"
    found(check(model), "q-consumer", "relu1_q", "error")


def test_dq_of_a_graph_input() -> None:
    model = qdq_model()
    model.graph.input.append(helper.make_tensor_value_info("codes", TensorProto.INT8, [16]))
    model.graph.node.append(
        helper.make_node(
            "DequantizeLinear", ["codes", "relu1_scale", "relu1_zp"], ["codes_dq"], name="codes_dq"
        )
    )
    found(check(model), "dq-input", "codes_dq", "error")


# --- target and TensorRT version ----------------------------------------------------------------------------


def test_fp8_on_orin_is_an_error_naming_the_target() -> None:
    report = check(qdq_model(FP8), "orin")
    f = found(report, "target-precision", "image_q", "error")
    assert "orin" in f.message and not report.ok


@pytest.mark.parametrize("target", ["hopper", Target("ada"), Target("thor", "11")])
def test_fp8_on_an_fp8_target_is_ok(target: Target | str) -> None:
    report = check(half(qdq_model(FP8)), target)
    assert report.ok and not report.warnings, report.format()


def test_fp4_on_hopper_is_an_error() -> None:
    model = matmul_model(weight=ml_dtypes.float4_e2m1fn, block=16, act=None, opset=23)
    found(check(model, "hopper", "11"), "target-precision", "w_dq", "error")
    assert "target-precision" not in rules_of(check(model, "blackwell", "11"))


@pytest.mark.parametrize("target, trt, severity", [("orin", "11", "warning"), ("thor", "10.3", "error")])
def test_target_trt(target: str, trt: str, severity: str) -> None:
    found(check(qdq_model(), target, trt), "target-trt", "<model>", severity)


def test_opset_range() -> None:
    found(check(qdq_model(opset=21), trt="10.3"), "opset-range", "<model>", "error")
    found(check(qdq_model(opset=25), trt="10.16"), "opset-range", "<model>", "error")
    assert "opset-range" not in rules_of(check(qdq_model(opset=25), trt="11"))  # the 11.x parser: 9-25
    assert "opset-range" not in rules_of(check(qdq_model(opset=20), "orin"))


def test_int4_on_orin_opset_21_is_a_warning_not_an_error() -> None:
    report = check(matmul_model(weight=INT4, block=32, act=None, opset=21), "orin")
    found(report, "opset-range", "<model>", "warning")
    assert report.ok, report.format()


# --- placement rules ----------------------------------------------------------------------------------------


def test_partial_quant() -> None:
    model = qdq_model()
    model.graph.initializer.append(
        numpy_helper.from_array(np.ones((16, 16, 3, 3), np.float32), "conv2.weight_fp")
    )
    node(model, "conv2").input[1] = "conv2.weight_fp"
    found(check(model), "partial-quant", "conv2", "warning")


def test_output_quantized_before_relu() -> None:
    model = qdq_model()
    insert_qdq(model, "relu1", 0, "conv1_out")
    found(check(model), "output-quantized", "conv1_out_q", "warning")


def test_residual_input_not_quantized() -> None:
    model = qdq_model()
    node(model, "residual_add").input[1] = "image"
    found(check(model), "residual-input", "residual_add", "warning")


@pytest.mark.parametrize(
    "consumer, position, base", [("attn_softmax", 0, "scores"), ("attn_mask_add", 1, "mask")]
)
def test_mha_softmax_qdq(consumer: str, position: int, base: str) -> None:
    model = qdq_model()
    insert_qdq(model, consumer, position, base)
    found(check(model), "mha-softmax-qdq", f"{base}_dq", "warning")


def test_mha_int8_placement_without_qdq_after_softmax() -> None:
    model = qdq_model()
    node(model, "attn_pv").input[0] = "attn_softmax"
    found(check(model), "mha-int8-placement", "attn_qk", "info")


def test_mha_int8_head_size_not_fusable() -> None:
    report = check(qdq_model(head_size=8))
    assert "head size 8" in found(report, "mha-int8-placement", "attn_qk", "info").message
    found(report, "small-gemm", "attn_qk", "info")  # K = 8 as well


def test_small_gemm() -> None:
    found(check(matmul_model(n=8)), "small-gemm", "matmul", "info")
    assert "small-gemm" not in rules_of(check(matmul_model(n=16)))


@pytest.mark.parametrize(
    "cin, cout, group, fires", [(4, 4, 1, True), (16, 16, 16, False), (3, 16, 1, False), (16, 32, 1, False)]
)
def test_small_conv(cin: int, cout: int, group: int, fires: bool) -> None:
    report = check(conv_model(cin, cout, group))
    assert ("small-conv" in rules_of(report)) is fires, report.format()
    if fires:
        found(report, "small-conv", "conv", "info")


def test_fp32_region_counts_float32_nodes_not_casts() -> None:
    model = qdq_model()
    found(check(model), "fp32-region", "relu1", "info")  # the first float32 compute node
    found(check(model, trt="11"), "fp32-region", "relu1", "warning")  # TensorRT 11: strongly typed only
    model.graph.node.append(helper.make_node("Cast", ["attn_out"], ["attn_out_fp16"], to=TensorProto.FLOAT16))
    found(check(model), "fp32-region", "relu1", "info")  # one Cast does not make the rest FP16
    assert "fp32-region" not in rules_of(check(half(model), trt="11"))


# --- API ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("content", [None, b"not an onnx file"])
def test_missing_or_invalid_file_raises(tmp_path, content: bytes | None) -> None:
    path = tmp_path / "model.onnx"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(TrtqError):
        check(path)


@pytest.mark.parametrize("kwargs", [{"target": "xavier"}, {"trt": "9.0"}, {"rules": ["no-such-rule"]}])
def test_bad_arguments_raise(kwargs: dict) -> None:
    with pytest.raises(TrtqError):
        check(qdq_model(), **kwargs)


def test_rules_selects_one_rule() -> None:
    model = qdq_model()
    set_init(model, "relu1_zp", np.int8(5))
    node(model, "residual_add").input[1] = "image"
    assert rules_of(check(model, rules=["zero-point"])) == {"zero-point"}


def test_format_and_to_dict_round_trip_through_json() -> None:
    model = qdq_model()
    set_init(model, "relu1_zp", np.int8(5))
    node(model, "residual_add").input[1] = "image"
    report = check(model, "orin", "11")
    data = report.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["ok"] is False and data["counts"]["error"] == len(report.errors) >= 1
    assert [f["rule"] for f in data["findings"]] == [f.rule for f in report.findings]
    text = report.format()
    json.dumps(text)
    lines = text.splitlines()
    assert len(lines) == len(report.findings) + 2  # header, findings, summary
    assert "FAILED" in lines[-1] and "orin" in lines[-1]
    assert "trtq check" in check(qdq_model()).format().splitlines()[-1]


def test_findings_are_sorted_errors_first() -> None:
    model = qdq_model()
    set_init(model, "relu1_zp", np.int8(5))
    node(model, "residual_add").input[1] = "image"
    severities = [f.severity for f in check(model).findings]
    assert severities == sorted(severities, key=("error", "warning", "info").index)


def test_unnamed_nodes_get_optype_index_names() -> None:
    model = qdq_model()
    set_init(model, "relu1_zp", np.int8(5))
    index = next(i for i, n in enumerate(model.graph.node) if n.name == "relu1_q")
    model.graph.node[index].name = ""
    found(check(model), "zero-point", f"QuantizeLinear#{index}")


def test_every_rule_is_documented_and_unique() -> None:
    ids = [r.id for r in RULES]
    assert len(ids) == len(set(ids))
    doc = check_module.__doc__ or ""
    for rule in RULES:
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", rule.id)
        assert re.search(rf"^{rule.id} +(error|warning|info) ", doc, re.MULTILINE)
        assert rule.severity in ("error", "warning", "info")


# --- version-dependent rules (issue 11's read of TensorRT 10.3 / 10.13 / 10.16 / 11.1 and the parser) ---------


@pytest.mark.parametrize("trt, fires", [(None, True), ("10.3", True), ("10.16", False), ("11", False)])
def test_scale_dtype_float32_scale_on_fp16_input_up_to_10_12(trt: str | None, fires: bool) -> None:
    model = half(qdq_model())
    set_init(model, "relu1_scale", np.float32(0.05))  # relu1 is FP16 now; its Q keeps a float32 scale
    assert ("scale-dtype" in rules_of(check(model, trt=trt), "error")) is fires


@pytest.mark.parametrize("trt, fires", [("10.3", True), ("10.16", False), ("11", False)])
def test_block_quant_fp8_from_10_13(trt: str, fires: bool) -> None:
    report = check(matmul_model(weight=FP8, block=32, act=FP8, opset=21), trt=trt)
    assert ("block-quant" in rules_of(report, "error")) is fires, report.format()


def int4_rank3(axis: int) -> onnx.ModelProto:
    """DQ of a [2, 64, 64] INT4 constant blocked along `axis` (size 32 blocks), feeding a MatMul."""
    shape = [2, 64, 64]
    scale_shape = [s // 32 if k == axis else s for k, s in enumerate(shape)]
    inits = [numpy_helper.from_array(np.ones(shape, INT4), "w"),
             numpy_helper.from_array(np.full(scale_shape, 0.01, np.float16), "s")]
    nodes = [helper.make_node("DequantizeLinear", ["w", "s"], ["wd"], name="w_dq", axis=axis, block_size=32),
             helper.make_node("MatMul", ["x", "wd"], ["y"], name="mm")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2, 4, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [2, 4, 64])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def test_block_quant_int4_rank_and_blocked_axis() -> None:
    assert "2-D tensors only" in found(check(int4_rank3(1), trt="10.3"), "block-quant", "w_dq", "error").message
    assert "block-quant" not in rules_of(check(int4_rank3(1), trt="10.16"))  # second to last: fine
    assert "last or the second to last" in found(check(int4_rank3(0), trt="10.16"), "block-quant", "w_dq").message


@pytest.mark.parametrize("trt, fires", [(None, True), ("10.3", True), ("10.16", False), ("11", False)])
def test_int4_odd_dim_per_parser_version(trt: str | None, fires: bool) -> None:
    report = check(half(matmul_model(n=63, weight=INT4, block=32, act=None, opset=21)), trt=trt)
    assert ("int4-odd-dim" in rules_of(report, "error")) is fires, report.format()  # 64 x 63: even count


def test_strongly_typed_note_on_10x_only() -> None:
    model = half(matmul_model(weight=INT4, block=32, act=None, opset=21))
    assert "--stronglyTyped" in found(check(model, trt="10.16"), "strongly-typed", "<model>", "info").fix
    assert "strongly-typed" not in rules_of(check(model, trt="11"))
    assert "strongly-typed" not in rules_of(check(qdq_model(), trt="10.3"))  # INT8 + FP32: weakly typed works


def test_fp8_grouped_conv_and_deconvolution() -> None:
    b = Builder(FP8)
    x = b.qdq(b.node("Relu", [b.input("x", [1, 64, 8, 8])], "stem"), "x")
    b.node("Conv", [x, b.weight("wg", (64, 32, 3, 3), 0)], "grouped", group=2, pads=[1, 1, 1, 1])
    y = b.qdq("grouped", "y")
    b.node("ConvTranspose", [y, b.weight("wt", (64, 64, 2, 2), 1)], "deconv", strides=[2, 2])
    b.output("deconv", [1, 64, 16, 16])
    report = check(b.model(), "hopper")
    assert "group 2, 32 channels" in found(report, "fp8-conv", "grouped", "warning").message
    found(report, "fp8-conv", "deconv", "warning")


def test_orin_int8_attention_offers_the_exclude() -> None:
    model = half(qdq_model())
    hit = found(check(model, "orin"), "orin-int8-attention", "attn_qk", "warning")
    assert "#4167" in hit.message and "--exclude '^(attn_qk|attn_pv)$'" in hit.fix
    assert "orin-int8-attention" not in rules_of(check(model, "orin", "10.16")) | rules_of(check(model, "thor"))
