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


# --- transformer blocks: a post-LayerNorm BERT layer, two LayerNorm branches ------------------------------

OUTLIERS = (3, 17, 40)


def init_typed(name: str, arr: np.ndarray, dtype: type = np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(arr, dtype=dtype), name)


def opset17_model(nodes: list, inputs: list, outputs: list, inits: list, name: str) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def layernorm(name: str, x: str, out: str) -> onnx.NodeProto:
    return helper.make_node("LayerNormalization", [x, f"{name}_gamma", f"{name}_beta"], [out], name=name,
                            axis=-1)


def norm_params(rs: np.random.RandomState, name: str, h: int,
                 outliers: tuple[int, ...]) -> list[onnx.TensorProto]:
    """A LayerNorm affine with a few large channels, as trained BERT LayerNorms have."""
    gamma, beta = 1.0 + 0.1 * rs.randn(h), 0.1 * rs.randn(h)
    gamma[list(outliers)] = 15.0 * (1 + rs.rand(len(outliers)))
    beta[list(outliers)] = 3.0 * rs.randn(len(outliers))
    return [init_typed(f"{name}_gamma", gamma), init_typed(f"{name}_beta", beta)]


def _attention_nodes(heads: int) -> list[onnx.NodeProto]:
    nodes = []
    for p, perm in (("q", [0, 2, 1, 3]), ("k", [0, 2, 3, 1]), ("v", [0, 2, 1, 3])):
        nodes += [
            helper.make_node("MatMul", ["ln0", f"w{p}"], [f"{p}_mm"], name=f"{p}_proj"),
            helper.make_node("Add", [f"{p}_mm", f"b{p}"], [f"{p}_lin"], name=f"{p}_bias"),
            helper.make_node("Reshape", [f"{p}_lin", "head_shape"], [f"{p}_heads"], name=f"{p}_split"),
            helper.make_node("Transpose", [f"{p}_heads"], [f"{p}_t"], name=f"{p}_transpose", perm=perm),
        ]
    return nodes + [
        helper.make_node("MatMul", ["q_t", "k_t"], ["scores"], name="qk_matmul"),
        helper.make_node("Mul", ["scores", "attn_scale"], ["scaled"], name="qk_scale"),
        helper.make_node("Add", ["scaled", "mask"], ["masked"], name="mask_add"),
        helper.make_node("Softmax", ["masked"], ["probs"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["probs", "v_t"], ["ctx_heads"], name="av_matmul"),
        helper.make_node("Transpose", ["ctx_heads"], ["ctx_t"], name="ctx_transpose", perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["ctx_t", "merge_shape"], ["ctx"], name="ctx_merge"),
        helper.make_node("MatMul", ["ctx", "wo"], ["o_mm"], name="o_proj"),
        helper.make_node("Add", ["o_mm", "bo"], ["o"], name="o_bias"),
        helper.make_node("Add", ["o", "ln0"], ["res1"], name="residual1"),
    ]


def _ffn_nodes() -> list[onnx.NodeProto]:
    return [
        helper.make_node("MatMul", ["ln1", "w1"], ["up_mm"], name="ffn_up"),
        helper.make_node("Add", ["up_mm", "b1"], ["up"], name="ffn_up_bias"),
        helper.make_node("Div", ["up", "sqrt2"], ["g1"], name="gelu_div"),
        helper.make_node("Erf", ["g1"], ["g2"], name="gelu_erf"),
        helper.make_node("Add", ["g2", "one"], ["g3"], name="gelu_add"),
        helper.make_node("Mul", ["g3", "half"], ["g4"], name="gelu_half"),
        helper.make_node("Mul", ["up", "g4"], ["gelu"], name="gelu_mul"),
        helper.make_node("MatMul", ["gelu", "w2"], ["down_mm"], name="ffn_down"),
        helper.make_node("Add", ["down_mm", "b2"], ["down"], name="ffn_down_bias"),
        helper.make_node("Add", ["down", "ln1"], ["res2"], name="residual2"),
    ]


def bert_block(seed: int = 0, hidden: int = 64, heads: int = 4, ffn: int = 128) -> onnx.ModelProto:
    """A post-LayerNorm BERT layer: LayerNorm -> Q/K/V (per-head Reshape/Transpose) -> attention ->
    out-proj -> residual -> LayerNorm -> FFN (Erf GELU) -> residual -> LayerNorm."""
    rs = np.random.RandomState(seed)
    h, dh = hidden, hidden // heads
    inits = [init_typed(n, rs.randn(h, h) / np.sqrt(h)) for n in ("wq", "wk", "wv", "wo")]
    inits += [init_typed(n, 0.1 * rs.randn(h)) for n in ("bq", "bk", "bv", "bo")]
    inits += [init_typed("w1", rs.randn(h, ffn) / np.sqrt(h)), init_typed("b1", 0.1 * rs.randn(ffn)),
              init_typed("w2", rs.randn(ffn, h) / np.sqrt(ffn)), init_typed("b2", 0.1 * rs.randn(h))]
    for name in ("ln0", "ln1", "ln2"):
        inits += norm_params(rs, name, h, OUTLIERS)
    inits += [init_typed("head_shape", [0, 0, heads, dh], np.int64), init_typed("merge_shape", [0, 0, h], np.int64),
              init_typed("attn_scale", 1 / np.sqrt(dh)), init_typed("sqrt2", np.sqrt(2.0)), init_typed("one", 1.0),
              init_typed("half", 0.5)]
    nodes = [layernorm("ln0", "x", "ln0"), *_attention_nodes(heads), layernorm("ln1", "res1", "ln1"),
             *_ffn_nodes(), layernorm("ln2", "res2", "y")]
    return opset17_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", h]),
         helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["batch", 1, 1, "seq"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", h])],
        inits, "bert_block",
    )


def bert_data(n: int, seed: int = 1, hidden: int = 64, seq: int = 8) -> dict[str, np.ndarray]:
    rs = np.random.RandomState(seed)
    x = rs.randn(n, seq, hidden).astype(np.float32)
    x[:, :, list(OUTLIERS)] *= 8.0
    mask = np.zeros((n, 1, 1, seq), np.float32)
    mask[: n // 2, ..., -2:] = -10000.0  # half the samples pad their last two tokens
    return {"x": x, "mask": mask}




def two_norms_one_weight(share: str) -> onnx.ModelProto:
    """Two LayerNorm -> MatMul branches sharing either the MatMul weight or the LayerNorm affine."""
    rs = np.random.RandomState(6)
    params = norm_params(rs, "lna", 32, (1, 7)) + norm_params(rs, "lnb", 32, (1, 7))
    inits = params + [init_typed("wa", rs.randn(32, 16) / 6), init_typed("wb", rs.randn(32, 16) / 6)]
    w_b = "wa" if share == "weight" else "wb"
    norm_b = "lna" if share == "affine" else "lnb"
    nodes = [
        layernorm("lna", "xa", "na"),
        helper.make_node("LayerNormalization", ["xb", f"{norm_b}_gamma", f"{norm_b}_beta"], ["nb"],
                         name="lnb", axis=-1),
        helper.make_node("MatMul", ["na", "wa"], ["ya"], name="mm_a"),
        helper.make_node("MatMul", ["nb", w_b], ["yb"], name="mm_b"),
    ]
    vi = helper.make_tensor_value_info
    inputs = [vi("xa", TensorProto.FLOAT, ["batch", 32]), vi("xb", TensorProto.FLOAT, ["batch", 32])]
    return opset17_model(nodes, inputs,
                  [vi("ya", TensorProto.FLOAT, ["batch", 16]), vi("yb", TensorProto.FLOAT, ["batch", 16])],
                  inits, "two_norms")


def two_norm_data(n: int, seed: int) -> dict[str, np.ndarray]:
    rs = np.random.RandomState(seed)
    return {"xa": rs.randn(n, 32).astype(np.float32), "xb": rs.randn(n, 32).astype(np.float32)}

def pooled_classifier(seed: int = 0, channels: int = 16, hidden: int = 128) -> onnx.ModelProto:
    """input [batch, 3, h, w] (any size) -> conv -> relu -> global pool -> Gemm(hidden) -> relu -> Gemm(10).

    The second Gemm's K = `hidden` = 128 is one INT4 block, so every precision has something to quantize.
    """
    rs = np.random.RandomState(seed)
    c, h = channels, hidden
    inits = [
        _init("w1", rs.randn(c, 3, 3, 3) * 0.3), _init("b1", rs.randn(c) * 0.1),
        _init("wf1", rs.randn(h, c) * 0.3), _init("bf1", rs.randn(h) * 0.1),
        _init("wf2", rs.randn(10, h) * 0.1), _init("bf2", rs.randn(10) * 0.1),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("GlobalAveragePool", ["r1"], ["pool"], name="pool"),
        helper.make_node("Flatten", ["pool"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "wf1", "bf1"], ["f1"], name="fc1", transB=1),
        helper.make_node("Relu", ["f1"], ["r2"], name="relu2"),
        helper.make_node("Gemm", ["r2", "wf2", "bf2"], ["logits"], name="fc2", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "pooled_classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
