"""SmoothQuant pass: exact folds (LayerNorm, V projection, Conv, RMSNorm Mul, explicit Mul), α search."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import trtq
from trtq._ort import make_session
from trtq.calibrators.data import open_batches
from trtq.config import QuantConfig
from trtq.errors import TrtqError
from trtq.exporter.passes.context import PassContext
from trtq.exporter.passes.smoothquant import ALPHAS, search_alpha, smoothquant

# --- generated graphs (bert_block is shared with test_repq.py) ----------------------------------------------

OUTLIERS = (3, 17, 40)


def _init(name: str, arr: np.ndarray, dtype: type = np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(arr, dtype=dtype), name)


def _model(nodes: list, inputs: list, outputs: list, inits: list, name: str) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _layernorm(name: str, x: str, out: str) -> onnx.NodeProto:
    return helper.make_node("LayerNormalization", [x, f"{name}_gamma", f"{name}_beta"], [out], name=name,
                            axis=-1)


def _norm_params(rs: np.random.RandomState, name: str, h: int,
                 outliers: tuple[int, ...]) -> list[onnx.TensorProto]:
    """A LayerNorm affine with a few large channels, as trained BERT LayerNorms have."""
    gamma, beta = 1.0 + 0.1 * rs.randn(h), 0.1 * rs.randn(h)
    gamma[list(outliers)] = 15.0 * (1 + rs.rand(len(outliers)))
    beta[list(outliers)] = 3.0 * rs.randn(len(outliers))
    return [_init(f"{name}_gamma", gamma), _init(f"{name}_beta", beta)]


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
    inits = [_init(n, rs.randn(h, h) / np.sqrt(h)) for n in ("wq", "wk", "wv", "wo")]
    inits += [_init(n, 0.1 * rs.randn(h)) for n in ("bq", "bk", "bv", "bo")]
    inits += [_init("w1", rs.randn(h, ffn) / np.sqrt(h)), _init("b1", 0.1 * rs.randn(ffn)),
              _init("w2", rs.randn(ffn, h) / np.sqrt(ffn)), _init("b2", 0.1 * rs.randn(h))]
    for name in ("ln0", "ln1", "ln2"):
        inits += _norm_params(rs, name, h, OUTLIERS)
    inits += [_init("head_shape", [0, 0, heads, dh], np.int64), _init("merge_shape", [0, 0, h], np.int64),
              _init("attn_scale", 1 / np.sqrt(dh)), _init("sqrt2", np.sqrt(2.0)), _init("one", 1.0),
              _init("half", 0.5)]
    nodes = [_layernorm("ln0", "x", "ln0"), *_attention_nodes(heads), _layernorm("ln1", "res1", "ln1"),
             *_ffn_nodes(), _layernorm("ln2", "res2", "y")]
    return _model(
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


def pass_context(model: onnx.ModelProto, data: dict[str, np.ndarray], precision: str = "int8",
                 exclude: tuple[str, ...] = ()) -> PassContext:
    config = QuantConfig(precision=precision, exclude=exclude)
    return PassContext(config, open_batches(data, model, batch_size=4))


def relative_error(want: onnx.ModelProto, got: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> float:
    """max |Δ| / max |y| over every graph output."""
    a, b = make_session(want).run(None, feeds), make_session(got).run(None, feeds)
    return max(float(np.abs(x - y).max() / np.abs(x).max()) for x, y in zip(a, b))


def keep_only(*names: str) -> tuple[str, ...]:
    """An --exclude pattern that leaves exactly `names` quantized."""
    return (rf"^(?!({'|'.join(names)})$)",)


# --- folding targets ---------------------------------------------------------------------------------------

FORCE = -math.inf  # min_gain that smooths even where the α search finds no gain, to test every fold


@pytest.mark.parametrize(("consumers", "kind", "through"), [
    (("q_proj", "k_proj", "v_proj"), "norm", []),
    (("o_proj",), "linear", ["Add", "Reshape", "Transpose", "MatMul", "Transpose", "Reshape"]),
    (("ffn_down",), "explicit", None),
    (("ffn_up",), "norm", []),
])
def test_each_fold_target_is_exact(consumers, kind, through):
    model = bert_block()
    data = bert_data(64)
    before = model.SerializeToString()
    result = smoothquant(model, pass_context(model, data, exclude=keep_only(*consumers)), min_gain=FORCE)
    assert model.SerializeToString() == before  # the input model is not modified
    (entry,) = result.report["smoothed"]
    assert entry["consumers"] == list(consumers)
    assert entry["fold"]["kind"] == kind
    if through is not None:
        assert [t.split()[0] for t in entry["fold"]["through"]] == through
    assert len(entry["scales"]) == (128 if consumers == ("ffn_down",) else 64) and min(entry["scales"]) > 0
    onnx.checker.check_model(result.model, full_check=True)
    assert relative_error(model, result.model, bert_data(4, seed=7)) < 1e-5


def test_layernorm_output_read_by_the_residual_is_restored():
    model = bert_block()
    result = smoothquant(model, pass_context(model, bert_data(64)), min_gain=FORCE)
    entries = {e["tensor"]: e for e in result.report["smoothed"]}
    assert set(entries) == {"ln0", "ctx", "ln1", "gelu"}
    assert entries["ln0"]["restored"] == ["residual1"] and entries["ln1"]["restored"] == ["residual2"]
    assert entries["ctx"]["fold"]["node"] == "v_proj" and entries["ctx"]["restored"] == []
    ops = [n.op_type for n in result.model.graph.node]
    assert ops.count("Mul") == [n.op_type for n in model.graph.node].count("Mul") + 3  # 2 restores + gelu
    assert relative_error(model, result.model, bert_data(4, seed=7)) < 1e-5


def _conv_head() -> onnx.ModelProto:
    rs = np.random.RandomState(2)
    inits = [_init("cw", rs.randn(16, 3, 3, 3) * 0.3), _init("cb", rs.randn(16) * 0.1),
             _init("fw", rs.randn(10, 16) * 0.3), _init("fb", rs.randn(10) * 0.1)]
    nodes = [
        helper.make_node("Conv", ["x", "cw", "cb"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], name="fc", transB=1),
    ]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])], inits, "conv_head")


def _rmsnorm_linear() -> onnx.ModelProto:
    rs = np.random.RandomState(3)
    gamma = 1.0 + 0.1 * rs.randn(32)
    gamma[[2, 9]] = 20.0
    inits = [_init("gamma", gamma), _init("eps", 1e-6), _init("w", rs.randn(32, 24) / 6)]
    nodes = [
        helper.make_node("Mul", ["x", "x"], ["sq"], name="square"),
        helper.make_node("ReduceMean", ["sq"], ["ms"], name="mean_square", axes=[-1]),
        helper.make_node("Add", ["ms", "eps"], ["mse"], name="add_eps"),
        helper.make_node("Sqrt", ["mse"], ["rms"], name="rms"),
        helper.make_node("Div", ["x", "rms"], ["normed"], name="normalise"),
        helper.make_node("Mul", ["normed", "gamma"], ["scaled"], name="rms_gamma"),
        helper.make_node("MatMul", ["scaled", "w"], ["y"], name="proj"),
    ]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 5, 32])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 5, 24])], inits,
                  "rms_linear")


@pytest.mark.parametrize(("build", "shape", "kind", "node"), [
    (_conv_head, (3, 8, 8), "conv", "conv"),
    (_rmsnorm_linear, (5, 32), "mul", "rms_gamma"),
])
def test_conv_and_rmsnorm_targets_are_exact(build, shape, kind, node):
    model = build()
    rs = np.random.RandomState(4)
    data = {"x": rs.randn(80, *shape).astype(np.float32)}  # at least 4 rows per channel
    result = smoothquant(model, pass_context(model, data), min_gain=FORCE)
    (entry,) = result.report["smoothed"]
    assert entry["fold"]["kind"] == kind and entry["fold"]["node"] == node
    assert relative_error(model, result.model, {"x": rs.randn(3, *shape).astype(np.float32)}) < 1e-5


# --- α search ----------------------------------------------------------------------------------------------


def test_alpha_search_beats_alpha_zero_on_outlier_channels():
    rs = np.random.RandomState(5)
    x = rs.randn(1024, 64)
    x[:, [5, 30]] *= 60.0  # two outlier channels dominate the per-tensor range
    w = rs.randn(64, 48) / 8
    absmax = np.abs(x).max(axis=0)
    best, errors, error_none = search_alpha(x, absmax, [w], "int8", ALPHAS)
    assert best > 0.0
    assert errors[best] < 0.5 * errors[0.0] and errors[best] < 0.5 * error_none
    best_fp8, errors_fp8, none_fp8 = search_alpha(x, absmax, [w], "fp8", ALPHAS)
    assert errors_fp8[best_fp8] <= none_fp8


def test_pass_picks_alpha_and_lowers_int8_error():
    model = bert_block()
    result = smoothquant(model, pass_context(model, bert_data(64)))
    report = result.report
    assert report["rows"] > 0 and sum(report["alpha_counts"].values()) == len(report["smoothed"])
    ln0 = next(e for e in report["smoothed"] if e["tensor"] == "ln0")
    assert ln0["alpha"] > 0.0 and ln0["error"] < ln0["error_none"] and ln0["act_amax_after"] < ln0["act_amax"]
    for entry in report["skipped"]:
        assert "not profitable" in entry["reason"]


def test_quantize_with_smoothquant_is_closer_to_fp32(tmp_path):
    model = bert_block()
    calib, feeds = bert_data(64), bert_data(8, seed=9)
    want = make_session(model).run(None, feeds)[0]

    def sqnr(passes: tuple[str, ...]) -> float:
        config = QuantConfig(precision="int8", passes=passes)
        result = trtq.quantize(model, calib, config=config, progress=False)
        got = make_session(result.model).run(None, feeds)[0]
        return float(10 * np.log10(np.sum(want**2) / np.sum((want - got) ** 2)))

    assert sqnr(("smoothquant",)) > sqnr(()) + 1.0


# --- what the pass must not touch ---------------------------------------------------------------------------


def _two_norms_one_weight(share: str) -> onnx.ModelProto:
    """Two LayerNorm -> MatMul branches sharing either the MatMul weight or the LayerNorm affine."""
    rs = np.random.RandomState(6)
    params = _norm_params(rs, "lna", 32, (1, 7)) + _norm_params(rs, "lnb", 32, (1, 7))
    inits = params + [_init("wa", rs.randn(32, 16) / 6), _init("wb", rs.randn(32, 16) / 6)]
    w_b = "wa" if share == "weight" else "wb"
    norm_b = "lna" if share == "affine" else "lnb"
    nodes = [
        _layernorm("lna", "xa", "na"),
        helper.make_node("LayerNormalization", ["xb", f"{norm_b}_gamma", f"{norm_b}_beta"], ["nb"],
                         name="lnb", axis=-1),
        helper.make_node("MatMul", ["na", "wa"], ["ya"], name="mm_a"),
        helper.make_node("MatMul", ["nb", w_b], ["yb"], name="mm_b"),
    ]
    vi = helper.make_tensor_value_info
    inputs = [vi("xa", TensorProto.FLOAT, ["batch", 32]), vi("xb", TensorProto.FLOAT, ["batch", 32])]
    return _model(nodes, inputs,
                  [vi("ya", TensorProto.FLOAT, ["batch", 16]), vi("yb", TensorProto.FLOAT, ["batch", 16])],
                  inits, "two_norms")


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def _two_norm_data(n: int, seed: int) -> dict[str, np.ndarray]:
    rs = np.random.RandomState(seed)
    return {"xa": rs.randn(n, 32).astype(np.float32), "xb": rs.randn(n, 32).astype(np.float32)}


def test_weight_shared_outside_the_match_is_untouched_and_reported():
    model = _two_norms_one_weight("weight")
    result = smoothquant(model, pass_context(model, _two_norm_data(128, 0)), min_gain=FORCE)
    assert result.report["smoothed"] == []
    skipped = {s["tensor"]: s["reason"] for s in result.report["skipped"]}
    assert set(skipped) == {"na", "nb"}
    assert all("'wa'" in r and "shared" in r for r in skipped.values())
    np.testing.assert_array_equal(_weights(result.model)["wa"], _weights(model)["wa"])


def test_shared_layernorm_affine_is_left_alone_and_an_explicit_mul_used():
    model = _two_norms_one_weight("affine")
    result = smoothquant(model, pass_context(model, _two_norm_data(128, 0)), min_gain=FORCE)
    folds = {e["tensor"]: e["fold"] for e in result.report["smoothed"]}
    assert {f["kind"] for f in folds.values()} == {"explicit"}
    assert all("shared" in f["why_explicit"] for f in folds.values())
    before, after = _weights(model), _weights(result.model)
    for name in ("lna_gamma", "lna_beta"):
        np.testing.assert_array_equal(after[name], before[name])
    assert relative_error(model, result.model, _two_norm_data(4, 3)) < 1e-5


def test_too_few_calibration_rows_per_channel_is_skipped():
    # one row per image feeds a classifier: 8 rows cannot cover 16 channels' maxima
    model = _conv_head()
    data = {"x": np.random.RandomState(4).randn(8, 3, 8, 8).astype(np.float32)}
    result = smoothquant(model, pass_context(model, data), min_gain=FORCE)
    assert result.model is model and result.report["smoothed"] == []
    (entry,) = result.report["skipped"]
    assert entry["reason"].startswith("too few calibration rows: 8 for 16 channels")


def test_int4_changes_nothing_and_no_data_is_a_clear_error():
    model = bert_block()
    result = smoothquant(model, pass_context(model, bert_data(4), precision="int4"))
    assert result.model is model and "weight-only" in result.report["skipped"][0]["reason"]
    with pytest.raises(TrtqError, match="smoothquant pass needs calibration data"):
        smoothquant(model, PassContext(QuantConfig()))


# --- a real model ------------------------------------------------------------------------------------------


def minilm_sentences(tokenizer: object) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """24 calibration and 16 evaluation sentences of 64 tokens."""
    from trtq.testing.data import sentences, token_batch

    return token_batch(tokenizer, sentences("calib", 24), 64), token_batch(tokenizer, sentences("eval", 16), 64)


def assert_exact_and_helps_int8(model: onnx.ModelProto, folded: onnx.ModelProto, calib: dict[str, np.ndarray],
                                feeds: dict[str, np.ndarray]) -> None:
    """`folded` computes what `model` does (FP32) and quantizes to INT8 at least as well (embedding cosine)."""
    from trtq.testing.data import mean_pooled

    want = make_session(model).run(None, feeds)[0]
    got = make_session(folded).run(None, feeds)[0]
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-5
    ref = mean_pooled(want, feeds["attention_mask"])

    def cosine(fp32: onnx.ModelProto) -> float:  # INT8 minmax, no further passes
        quantized = trtq.quantize(fp32, calib, config=QuantConfig(passes=()), progress=False).model
        out = mean_pooled(make_session(quantized).run(None, feeds)[0], feeds["attention_mask"])
        return float((ref * out).sum(axis=1).mean())

    assert cosine(folded) >= cosine(model)


@pytest.mark.slow
def test_minilm_smoothquant_is_exact_and_helps_int8(minilm_fp32):
    model, tokenizer = minilm_fp32
    calib, feeds = minilm_sentences(tokenizer)
    result = smoothquant(model, pass_context(model, calib))
    assert len(result.report["smoothed"]) >= 12
    assert_exact_and_helps_int8(model, result.model, calib, feeds)
