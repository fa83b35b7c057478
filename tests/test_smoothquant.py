"""SmoothQuant pass: exact folds (LayerNorm, V projection, Conv, RMSNorm Mul, explicit Mul), α search."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import trtq
from trtq._ort import make_session
from trtq.config import QuantConfig
from trtq.errors import TrtqError
from trtq.exporter.passes.context import PassContext
from trtq.exporter.passes.smoothquant import ALPHAS, SmoothQuantOptions, search_alpha, smoothquant

from graphs import bert_block, bert_data, init_typed, opset17_model, two_norm_data, two_norms_one_weight
from helpers import assert_exact_and_helps_int8, initializers, minilm_sentences, pass_context, relative_error


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
    ctx = pass_context(model, data, exclude=keep_only(*consumers))
    result = smoothquant(model, ctx, SmoothQuantOptions(min_gain=FORCE))
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
    result = smoothquant(model, pass_context(model, bert_data(64)), SmoothQuantOptions(min_gain=FORCE))
    entries = {e["tensor"]: e for e in result.report["smoothed"]}
    assert set(entries) == {"ln0", "ctx", "ln1", "gelu"}
    assert entries["ln0"]["restored"] == ["residual1"] and entries["ln1"]["restored"] == ["residual2"]
    assert entries["ctx"]["fold"]["node"] == "v_proj" and entries["ctx"]["restored"] == []
    ops = [n.op_type for n in result.model.graph.node]
    assert ops.count("Mul") == [n.op_type for n in model.graph.node].count("Mul") + 3  # 2 restores + gelu
    assert relative_error(model, result.model, bert_data(4, seed=7)) < 1e-5


def _conv_head() -> onnx.ModelProto:
    rs = np.random.RandomState(2)
    inits = [init_typed("cw", rs.randn(16, 3, 3, 3) * 0.3), init_typed("cb", rs.randn(16) * 0.1),
             init_typed("fw", rs.randn(10, 16) * 0.3), init_typed("fb", rs.randn(10) * 0.1)]
    nodes = [
        helper.make_node("Conv", ["x", "cw", "cb"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], name="fc", transB=1),
    ]
    return opset17_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])], inits, "conv_head")


def _rmsnorm_linear() -> onnx.ModelProto:
    rs = np.random.RandomState(3)
    gamma = 1.0 + 0.1 * rs.randn(32)
    gamma[[2, 9]] = 20.0
    inits = [init_typed("gamma", gamma), init_typed("eps", 1e-6), init_typed("w", rs.randn(32, 24) / 6)]
    nodes = [
        helper.make_node("Mul", ["x", "x"], ["sq"], name="square"),
        helper.make_node("ReduceMean", ["sq"], ["ms"], name="mean_square", axes=[-1]),
        helper.make_node("Add", ["ms", "eps"], ["mse"], name="add_eps"),
        helper.make_node("Sqrt", ["mse"], ["rms"], name="rms"),
        helper.make_node("Div", ["x", "rms"], ["normed"], name="normalise"),
        helper.make_node("Mul", ["normed", "gamma"], ["scaled"], name="rms_gamma"),
        helper.make_node("MatMul", ["scaled", "w"], ["y"], name="proj"),
    ]
    return opset17_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 5, 32])],
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
    result = smoothquant(model, pass_context(model, data), SmoothQuantOptions(min_gain=FORCE))
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


def test_weight_shared_outside_the_match_is_untouched_and_reported():
    model = two_norms_one_weight("weight")
    result = smoothquant(model, pass_context(model, two_norm_data(128, 0)), SmoothQuantOptions(min_gain=FORCE))
    assert result.report["smoothed"] == []
    skipped = {s["tensor"]: s["reason"] for s in result.report["skipped"]}
    assert set(skipped) == {"na", "nb"}
    assert all("'wa'" in r and "shared" in r for r in skipped.values())
    np.testing.assert_array_equal(initializers(result.model)["wa"], initializers(model)["wa"])


def test_shared_layernorm_affine_is_left_alone_and_an_explicit_mul_used():
    model = two_norms_one_weight("affine")
    result = smoothquant(model, pass_context(model, two_norm_data(128, 0)), SmoothQuantOptions(min_gain=FORCE))
    folds = {e["tensor"]: e["fold"] for e in result.report["smoothed"]}
    assert {f["kind"] for f in folds.values()} == {"explicit"}
    assert all("shared" in f["why_explicit"] for f in folds.values())
    before, after = initializers(model), initializers(result.model)
    for name in ("lna_gamma", "lna_beta"):
        np.testing.assert_array_equal(after[name], before[name])
    assert relative_error(model, result.model, two_norm_data(4, 3)) < 1e-5


def test_too_few_calibration_rows_per_channel_is_skipped():
    # one row per image feeds a classifier: 8 rows cannot cover 16 channels' maxima
    model = _conv_head()
    data = {"x": np.random.RandomState(4).randn(8, 3, 8, 8).astype(np.float32)}
    result = smoothquant(model, pass_context(model, data), SmoothQuantOptions(min_gain=FORCE))
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


@pytest.mark.slow
def test_minilm_smoothquant_is_exact_and_helps_int8(minilm_fp32):
    model, tokenizer = minilm_fp32
    calib, feeds = minilm_sentences(tokenizer)
    result = smoothquant(model, pass_context(model, calib))
    assert len(result.report["smoothed"]) >= 12
    assert_exact_and_helps_int8(model, result.model, calib, feeds)
