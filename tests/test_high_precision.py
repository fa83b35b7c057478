"""Tests of trtq.exporter.high_precision: each KEEP rule on a graph built for it, the interface, Q/DQ scales."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import trtq
from trtq.config import QuantConfig
from trtq.exporter.check import check
from trtq.exporter.high_precision import cast_high_precision
from trtq.metrics import sqnr_db

import graphs
import helpers

F, H = TensorProto.FLOAT, TensorProto.FLOAT16


def model(nodes: list[onnx.NodeProto], inits: dict[str, np.ndarray], shape: list[int], opset: int = 19,
          out_shape: list[int] | None = None) -> onnx.ModelProto:
    arrays = [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()]
    return graphs.single_io_model(nodes, arrays, shape, out_shape or shape, opset)


def cast(m: onnx.ModelProto, **kwargs: object) -> tuple[onnx.ModelProto, dict[str, object]]:
    done = cast_high_precision(m, "fp16", **kwargs)
    onnx.checker.check_model(m, full_check=True)
    return m, done.to_dict()


def elem_types(m: onnx.ModelProto) -> dict[str, int]:
    g = m.graph
    return {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.value_info, *g.output]}


def decomposed_layernorm(eps: float = 1e-12) -> onnx.ModelProto:
    """y = (x - mean) / sqrt(mean((x - mean)^2) + eps) * 1.5 + 0.1, as old exporters write LayerNorm."""
    nodes = [
        helper.make_node("ReduceMean", ["x", "axes"], ["mu"], name="mean", keepdims=1),
        helper.make_node("Sub", ["x", "mu"], ["d"], name="sub"),
        helper.make_node("Pow", ["d", "two"], ["d2"], name="pow"),
        helper.make_node("ReduceMean", ["d2", "axes"], ["var"], name="var", keepdims=1),
        helper.make_node("Add", ["var", "eps"], ["ve"], name="add_eps"),
        helper.make_node("Sqrt", ["ve"], ["sd"], name="sqrt"),
        helper.make_node("Div", ["d", "sd"], ["n"], name="div"),
        helper.make_node("Mul", ["n", "gamma"], ["ng"], name="scale"),
        helper.make_node("Add", ["ng", "beta"], ["y"], name="shift"),
    ]
    inits = {"axes": np.array([-1], np.int64), "two": np.array(2.0, np.float32),
             "eps": np.array(eps, np.float32), "gamma": np.full(64, 1.5, np.float32),
             "beta": np.full(64, 0.1, np.float32)}
    return model(nodes, inits, [4, 64])


def test_layernorm_statistics_stay_fp32_and_overflow_otherwise() -> None:
    x = {"x": (np.random.default_rng(0).standard_normal((4, 64)) * 400).astype(np.float32)}  # x^2 > 65504
    ref = helpers.run(decomposed_layernorm(), x)
    m, done = cast(decomposed_layernorm())
    assert set(done["kept_fp32"]) == {"pow", "var", "add_eps", "sqrt"}
    assert sqnr_db(ref, helpers.run(m, x)) > 40
    naive, _ = cast(decomposed_layernorm(), rule=False)
    with np.errstate(all="ignore"):
        assert sqnr_db(ref, helpers.run(naive, x)) < 10  # x^2 overflows: var = inf, y = beta


def test_summing_reduction_and_exp_stay_fp32() -> None:
    nodes = [helper.make_node("Exp", ["x"], ["e"], name="exp"),
             helper.make_node("ReduceSum", ["e", "axes"], ["s"], name="sum", keepdims=1),
             helper.make_node("Mul", ["s", "half"], ["y"], name="mul")]
    inits = {"axes": np.array([-1], np.int64), "half": np.array(0.5, np.float32)}
    x = {"x": np.full((2, 4096), 3.0, np.float32)}  # sum of e^3 over 4096 = 82 269 > 65504
    ref = helpers.run(model(nodes, inits, [2, 4096], out_shape=[2, 1]), x)
    m, done = cast(model(nodes, inits, [2, 4096], out_shape=[2, 1]))
    assert set(done["kept_fp32"]) == {"exp", "sum", "mul"}
    assert elem_types(m)["s"] == F and elem_types(m)["y"] == F
    assert sqnr_db(ref, helpers.run(m, x)) > 100  # all fp32: the only cast is the input's


def test_vanishing_constant_keeps_its_node_and_large_constants_saturate() -> None:
    nodes = [helper.make_node("Add", ["x", "tiny"], ["a"], name="add_tiny"),
             helper.make_node("Add", ["a", "mask"], ["y"], name="add_mask")]
    m, done = cast(model(nodes, {"tiny": np.array(1e-12, np.float32),
                                 "mask": np.array([0.0, -3.4e38], np.float32)}, [1, 2]))
    assert list(done["kept_fp32"]) == ["add_tiny"] and done["saturated"] == ["mask"]
    mask = next(i for i in m.graph.initializer if i.name == "mask")
    assert mask.data_type == H and numpy_helper.to_array(mask)[1] == -65504
    assert np.all(np.isfinite(helpers.run(m, {"x": np.ones((1, 2), np.float32)})))


def test_interface_stays_fp32_unless_asked() -> None:
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"), helper.make_node("Mul", ["r", "r"], ["y"], name="sq")]
    m, done = cast(model(nodes, {}, [2, 3]))
    casts = [(n.input[0], n.output[0]) for n in m.graph.node if n.op_type == "Cast"]
    assert casts == [("x", "x_to_fp16"), ("y_fp16", "y")] and done["half_nodes"] == 2
    assert elem_types(m)["x"] == F and elem_types(m)["y"] == F and elem_types(m)["r"] == H
    m2, _ = cast(model(nodes, {}, [2, 3]), keep_io=False)
    assert not any(n.op_type == "Cast" for n in m2.graph.node) and elem_types(m2)["y"] == H


def test_qdq_scales_become_half_and_tiny_scales_stay_fp32() -> None:
    def qdq(scale: float) -> onnx.ModelProto:
        nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q"),
                 helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"], name="dq"),
                 helper.make_node("Relu", ["dq"], ["y"], name="relu")]
        return model(nodes, {"s": np.array(scale, np.float32), "z": np.array(0, np.int8)}, [1, 4])

    m, done = cast(qdq(0.05))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    q, dq = (next(n for n in m.graph.node if n.name == name) for name in ("q", "dq"))
    assert q.input[0] == "x" and inits[q.input[1]].dtype == np.float32  # quantizes the float32 input as it is
    assert inits[dq.input[1]].dtype == np.float16 and elem_types(m)["dq"] == H  # dequantizes to FP16
    assert not done["kept_fp32"] and done["casts"] == 1 and check(m, trt="10.3").ok
    m, done = cast(qdq(1e-6))
    assert set(done["kept_fp32"]) == {"q", "dq"} and elem_types(m)["dq"] == F and elem_types(m)["y_fp16"] == H


def test_resize_scales_stay_fp32() -> None:
    nodes = [helper.make_node("Resize", ["x", "", "scales"], ["y"], name="up", mode="nearest")]
    m, _ = cast(model(nodes, {"scales": np.array([1, 1, 2, 2], np.float32)}, [1, 1, 2, 2],
                      out_shape=[1, 1, 4, 4]))
    scales = next(i for i in m.graph.initializer if i.name == "scales")
    assert scales.data_type == F
    x = np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2)
    assert np.array_equal(helpers.run(m, {"x": x}), np.repeat(np.repeat(x, 2, 2), 2, 3))


def test_quantize_default_is_fp16_and_fp32_leaves_the_graph() -> None:
    data = {"x": np.random.default_rng(1).standard_normal((16, 8)).astype(np.float32)}
    w = np.random.default_rng(2).standard_normal((8, 8)).astype(np.float32)
    mlp = model([helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"),
                 helper.make_node("Relu", ["h"], ["y"], name="relu")], {"w": w}, ["n", 8], opset=13,
                out_shape=["n", 8])
    half = trtq.quantize(mlp, data, config=QuantConfig(), progress=False)
    assert half.report["high_precision"]["dtype"] == "fp16" and half.report["check"]["ok"]
    assert half.model.opset_import[0].version == 19 and elem_types(half.model)["h"] == H
    full = trtq.quantize(mlp, data, config=QuantConfig(high_precision="fp32"), progress=False)
    assert full.report["high_precision"] == {"dtype": "fp32"} and full.model.opset_import[0].version == 13
    assert sqnr_db(helpers.run(full.model, data), helpers.run(half.model, data)) > 40


def test_bf16_keeps_float32_range() -> None:
    nodes = [helper.make_node("Add", ["x", "mask"], ["y"], name="add")]
    m = model(nodes, {"mask": np.array([0.0, -1e30], np.float32)}, [1, 2])  # -inf in fp16, finite in bf16
    done = cast_high_precision(m, "bf16")
    assert not done.saturated and next(i for i in m.graph.initializer).data_type == TensorProto.BFLOAT16
    with pytest.raises(ValueError, match="dtype"):
        cast_high_precision(m, "fp8")


def test_onnxruntime_runs_half_graphs_with_half_rounding() -> None:
    nodes = [helper.make_node("Add", ["x", "one"], ["a"], name="a1"),
             helper.make_node("Add", ["a", "one"], ["b"], name="a2"),
             helper.make_node("Add", ["b", "one"], ["y"], name="a3")]
    x = {"x": np.array([[2048.0]], np.float32)}
    for dtype, expected in (("fp16", 2048.0), ("bf16", 2048.0)):  # each +1 is rounded away in half storage
        m = model(nodes, {"one": np.array(1.0, np.float32)}, [1, 1])
        cast_high_precision(m, dtype)
        assert helpers.run(m, x)[0, 0] == expected  # ORT's CPU alone computes 2051 in float32


def test_tiny_weight_scales_are_raised_and_codes_rerounded() -> None:
    codes = np.array([[100, -3], [50, 7]], np.int8)  # per output channel (axis 1): scales 1e-6 and 0.01
    scale = np.array([1e-6, 0.01], np.float32)
    nodes = [helper.make_node("DequantizeLinear", ["w", "s"], ["wd"], name="w_dq", axis=1),
             helper.make_node("MatMul", ["x", "wd"], ["y"], name="mm")]
    m = model(nodes, {"w": codes, "s": scale}, [1, 2])
    ref = helpers.run(model(nodes, {"w": codes, "s": scale}, [1, 2]), {"x": np.ones((1, 2), np.float32)})
    _, done = cast(m)
    assert done["raised_scales"] == ["s"] and not done["kept_fp32"]
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    tiny = float(np.finfo(np.float16).tiny)
    assert inits["s"].dtype == np.float16 and float(inits["s"][0]) == tiny
    assert inits["w"][:, 0].tolist() == [2, 1] and inits["w"][:, 1].tolist() == [-3, 7]  # 1e-4 / 6.1e-5 -> 2
    out = helpers.run(m, {"x": np.ones((1, 2), np.float32)})
    assert abs(out[0, 0] - ref[0, 0]) <= tiny and abs(out[0, 1] - ref[0, 1]) < 1e-4


def test_explicit_opset_below_the_half_scales_names_the_fix() -> None:
    from trtq.errors import TrtqError

    w = np.random.default_rng(2).standard_normal((8, 8)).astype(np.float32)
    mlp = model([helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")], {"w": w}, ["n", 8], opset=13)
    data = {"x": np.ones((4, 8), np.float32)}
    with pytest.raises(TrtqError, match="fp16 Q/DQ scales"):
        trtq.quantize(mlp, data, config=QuantConfig(opset=17), progress=False)
    assert trtq.quantize(mlp, data, config=QuantConfig(opset=17, high_precision="fp32"), progress=False).model


def test_an_op_without_a_half_form_and_its_constants_stay_fp32() -> None:
    """Rule 7: Range has no float16 form in ONNX (YOLOv8's anchor grid); cast, the graph would not load."""
    start = helper.make_tensor("start", F, [], [0.5])
    nodes = [
        helper.make_node("Constant", [], ["s"], name="c_start", value=start),
        helper.make_node("Range", ["s", "limit", "delta"], ["grid"], name="range"),
        helper.make_node("Mul", ["x", "grid"], ["y"], name="mul"),
    ]
    m, done = cast(model(nodes, {"limit": np.array(4.5, np.float32), "delta": np.array(1.0, np.float32)}, [2, 4]))
    assert "rule 7" in done["kept_fp32"]["range"] and "rule 7" in done["kept_fp32"]["c_start"]
    assert "mul" not in done["kept_fp32"]  # the data path is still half
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    assert np.array_equal(helpers.run(m, {"x": x}), x * np.arange(0.5, 4.5, 1.0, dtype=np.float32))
