"""Tiny models built in code for the tests (seeded; no downloads)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _init(name: str, arr: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(arr, dtype=np.float32), name)


def conv_block(seed: int = 0, channels: int = 16, size: int = 12) -> onnx.ModelProto:
    """conv -> relu6 (Clip) -> depthwise conv -> relu6 -> 1x1 conv -> Add(residual) -> global pool -> Gemm."""
    rs = np.random.RandomState(seed)
    c = channels
    inits = [
        _init("w1", rs.randn(c, 3, 3, 3) * 0.3), _init("b1", rs.randn(c) * 0.1),
        _init("wd", rs.randn(c, 1, 3, 3) * 0.5), _init("bd", rs.randn(c) * 0.1),
        _init("w2", rs.randn(c, c, 1, 1) * 0.2), _init("b2", rs.randn(c) * 0.1),
        _init("wf", rs.randn(10, c) * 0.3), _init("bf", rs.randn(10) * 0.1),
        _init("lo", np.array(0.0)), _init("hi", np.array(6.0)),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["c1", "lo", "hi"], ["r1"], name="relu6_1"),
        helper.make_node("Conv", ["r1", "wd", "bd"], ["cd"], name="dwconv", pads=[1, 1, 1, 1], group=c),
        helper.make_node("Clip", ["cd", "lo", "hi"], ["rd"], name="relu6_2"),
        helper.make_node("Conv", ["rd", "w2", "b2"], ["c2"], name="conv2"),
        helper.make_node("Add", ["c2", "r1"], ["sum"], name="residual_add"),
        helper.make_node("GlobalAveragePool", ["sum"], ["pool"], name="pool"),
        helper.make_node("Flatten", ["pool"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "wf", "bf"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "conv_block",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def attention_block(seed: int = 0, hidden: int = 128, seq: int = 8) -> onnx.ModelProto:
    """Linear q/k/v -> QK^T / sqrt(d) + mask (0 / -inf) -> Softmax -> V -> out proj -> residual -> LayerNorm."""
    rs = np.random.RandomState(seed)
    h = hidden
    inits = [_init(n, rs.randn(h, h) / np.sqrt(h)) for n in ("wq", "wk", "wv", "wo")]
    inits += [_init(n, rs.randn(h) * 0.02) for n in ("bq", "bk", "bv", "bo")]
    inits += [_init("gamma", np.ones(h)), _init("beta", np.zeros(h)), _init("sqrt_d", np.array(np.sqrt(h)))]
    nodes = []
    for p in ("q", "k", "v"):
        nodes += [
            helper.make_node("MatMul", ["x", f"w{p}"], [f"{p}_mm"], name=f"{p}_proj"),
            helper.make_node("Add", [f"{p}_mm", f"b{p}"], [p], name=f"{p}_bias"),
        ]
    nodes += [
        helper.make_node("Transpose", ["k"], ["kt"], name="k_transpose", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["scores"], name="qk_matmul"),
        helper.make_node("Div", ["scores", "sqrt_d"], ["scaled"], name="scale"),
        helper.make_node("Add", ["scaled", "mask"], ["masked"], name="mask_add"),
        helper.make_node("Softmax", ["masked"], ["probs"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["probs", "v"], ["ctx"], name="av_matmul"),
        helper.make_node("MatMul", ["ctx", "wo"], ["o_mm"], name="o_proj"),
        helper.make_node("Add", ["o_mm", "bo"], ["o"], name="o_bias"),
        helper.make_node("Add", ["o", "x"], ["res"], name="residual"),
        helper.make_node("LayerNormalization", ["res", "gamma", "beta"], ["y"], name="layernorm", axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "attention_block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", seq, h]),
         helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["batch", 1, seq])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", seq, h])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def conv_data(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    return {"input": np.random.RandomState(seed).randn(n, 3, 12, 12).astype(np.float32)}


def attention_data(n: int, seed: int = 0, seq: int = 8, hidden: int = 128) -> dict[str, np.ndarray]:
    rs = np.random.RandomState(seed)
    lengths = rs.randint(2, seq + 1, size=n)
    mask = np.where(np.arange(seq)[None, :] < lengths[:, None], 0.0, -np.inf).astype(np.float32)[:, None, :]
    return {"x": rs.randn(n, seq, hidden).astype(np.float32), "mask": mask}


def sqnr_db(ref: np.ndarray, out: np.ndarray) -> float:
    noise = float(((ref.astype(np.float64) - out) ** 2).sum())
    return float("inf") if noise == 0 else 10 * np.log10(float((ref.astype(np.float64) ** 2).sum()) / noise)


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    from trtq._ort import make_session

    return make_session(model).run(None, feeds)[0]


def init(name: str, value: np.ndarray) -> onnx.TensorProto:
    """A float32 initializer."""
    return _init(name, value)


def single_io_model(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], x_shape: list, y_shape: list,
                    opset: int) -> onnx.ModelProto:
    """A checked model with float input `x` and float output `y`."""
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model, full_check=True)
    return model


def convnext_block(seed: int = 0, channels: int = 32, size: int = 8) -> onnx.ModelProto:
    """stem conv -> x; x -> depthwise conv -> 1x1 conv -> Relu -> 1x1 conv -> layer-scale Mul; Add(x, that).

    The stem's output has two consumers (the depthwise conv and the residual Add), as in ConvNeXt.
    """
    rs = np.random.RandomState(seed)
    c = channels
    inits = [
        _init("w0", rs.randn(c, 3, 1, 1) * 0.3), _init("b0", rs.randn(c) * 0.1),
        _init("wd", rs.randn(c, 1, 3, 3) * 0.3), _init("bd", rs.randn(c) * 0.1),
        _init("w1", rs.randn(2 * c, c, 1, 1) * 0.2), _init("b1", rs.randn(2 * c) * 0.1),
        _init("w2", rs.randn(c, 2 * c, 1, 1) * 0.2), _init("b2", rs.randn(c) * 0.1),
        _init("gamma", np.full((c, 1, 1), 0.1)),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w0", "b0"], ["x"], name="stem"),
        helper.make_node("Conv", ["x", "wd", "bd"], ["d"], name="dwconv", pads=[1, 1, 1, 1], group=c),
        helper.make_node("Conv", ["d", "w1", "b1"], ["p1"], name="pwconv1"),
        helper.make_node("Relu", ["p1"], ["a"], name="act"),
        helper.make_node("Conv", ["a", "w2", "b2"], ["p2"], name="pwconv2"),
        helper.make_node("Mul", ["p2", "gamma"], ["s"], name="layer_scale"),
        helper.make_node("Add", ["x", "s"], ["y"], name="residual"),
    ]
    graph = helper.make_graph(
        nodes, "convnext_block",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", c, size, size])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
