"""RepQ-ViT pass: LayerNorm outputs reparameterized exactly into symmetric, equal per-channel ranges."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import trtq
from trtq._ort import make_session, outputs_added
from trtq.config import QuantConfig
from trtq.exporter.passes.repq import RepqOptions, repq_reparameterize, repq_scales

from graphs import (
    bert_block,
    bert_data,
    init_typed,
    layernorm,
    norm_params,
    opset17_model,
    two_norm_data,
    two_norms_one_weight,
)
from helpers import assert_exact_and_helps_int8, initializers, minilm_sentences, pass_context, relative_error


@pytest.mark.parametrize("shift", [True, False])
def test_bert_block_is_exact_and_residuals_restored(shift):
    model = bert_block()
    before = model.SerializeToString()
    result = repq_reparameterize(model, pass_context(model, bert_data(64)), RepqOptions(shift=shift))
    assert model.SerializeToString() == before
    report = result.report
    assert report["shift"] is shift
    entries = {e["tensor"]: e for e in report["reparameterized"]}
    assert set(entries) == {"ln0", "ln1"}
    assert entries["ln0"]["layernorm"] == "ln0"
    assert entries["ln0"]["consumers"] == ["q_proj", "k_proj", "v_proj"]
    assert entries["ln0"]["restored"] == ["residual1"] and entries["ln1"]["restored"] == ["residual2"]
    assert (entries["ln0"]["shifts"] is not None) is shift
    skipped = {s["tensor"]: s["reason"] for s in report["skipped"]}
    assert set(skipped) == {"ctx", "gelu"}
    assert all("not read straight from a LayerNormalization" in r for r in skipped.values())
    for entry in entries.values():
        assert entry["act_amax_after"] < entry["act_amax"]
    onnx.checker.check_model(result.model, full_check=True)
    assert relative_error(model, result.model, bert_data(4, seed=7)) < 1e-5


def test_reparameterized_channels_share_one_symmetric_range():
    model, data = bert_block(), bert_data(64)
    result = repq_reparameterize(model, pass_context(model, data))
    entry = next(e for e in result.report["reparameterized"] if e["tensor"] == "ln0")
    q_proj = next(n for n in result.model.graph.node if n.name == "q_proj")
    with outputs_added(result.model, [q_proj.input[0]]) as probe:
        x = make_session(probe).run([q_proj.input[0]], data)[0].reshape(-1, 64)
    half = entry["act_amax_after"]
    np.testing.assert_allclose(x.max(axis=0), half, rtol=1e-4)
    np.testing.assert_allclose(x.min(axis=0), -half, rtol=1e-4)


def test_repq_scales_match_the_formula():
    lo, hi = np.array([-1.0, -10.0, 2.0, 0.0]), np.array([3.0, 10.0, 2.0, 0.0])
    r, delta = repq_scales(lo, hi, shift=True)
    half = np.array([2.0, 10.0, 1e-5, 1e-5])  # constant channels get 1e-6 of the widest half-range
    np.testing.assert_allclose(r, half / half.mean())
    np.testing.assert_allclose(delta, [1.0, 0.0, 2.0, 0.0])
    r, delta = repq_scales(lo, hi, shift=False)
    assert delta is None
    np.testing.assert_allclose(r * np.mean([3.0, 10.0, 2.0, 1e-5]), [3.0, 10.0, 2.0, 1e-5])


def _norm_into_bias_free_linears() -> onnx.ModelProto:
    """LayerNorm -> MatMul without a bias (the shift needs a new Add), and -> Gemm(transB) with C."""
    rs = np.random.RandomState(8)
    inits = norm_params(rs, "ln", 32, (4, 11))
    inits += [init_typed("w", rs.randn(32, 16) / 6), init_typed("gw", rs.randn(8, 32) / 6),
              init_typed("gc", rs.randn(8))]
    nodes = [
        layernorm("ln", "x", "n"),
        helper.make_node("MatMul", ["n", "w"], ["y"], name="mm"),
        helper.make_node("Gemm", ["n", "gw", "gc"], ["z"], name="gemm", transB=1, beta=0.5),
    ]
    vi = helper.make_tensor_value_info
    return opset17_model(nodes, [vi("x", TensorProto.FLOAT, ["batch", 32])],
                  [vi("y", TensorProto.FLOAT, ["batch", 16]), vi("z", TensorProto.FLOAT, ["batch", 8])],
                  inits, "ln_lin")


def test_shift_goes_into_a_new_bias_or_gemm_c():
    model = _norm_into_bias_free_linears()
    rs = np.random.RandomState(9)
    result = repq_reparameterize(model, pass_context(model, {"x": rs.randn(160, 32).astype(np.float32)}))
    (entry,) = result.report["reparameterized"]
    assert entry["consumers"] == ["mm", "gemm"] and entry["restored"] == []
    ops = [n.op_type for n in result.model.graph.node]
    assert ops.count("Add") == 1  # the MatMul's new bias; the Gemm's shift went into C
    assert relative_error(model, result.model, {"x": rs.randn(4, 32).astype(np.float32)}) < 1e-5


def test_weight_shared_outside_the_match_is_untouched_and_reported():
    model = two_norms_one_weight("weight")
    result = repq_reparameterize(model, pass_context(model, two_norm_data(128, 0)))
    assert result.report["reparameterized"] == [] and result.model is model
    assert all("'wa'" in s["reason"] and "shared" in s["reason"] for s in result.report["skipped"])
    np.testing.assert_array_equal(initializers(result.model)["wa"], initializers(model)["wa"])


def test_shared_layernorm_affine_is_not_reparameterized():
    model = two_norms_one_weight("affine")
    result = repq_reparameterize(model, pass_context(model, two_norm_data(128, 0)))
    assert result.report["reparameterized"] == []
    assert all("shared" in s["reason"] for s in result.report["skipped"])


def test_int4_changes_nothing():
    model = bert_block()
    result = repq_reparameterize(model, pass_context(model, bert_data(4), precision="int4"))
    assert result.model is model and "weight-only" in result.report["skipped"][0]["reason"]


def test_quantize_runs_repq_and_records_it():
    # RepQ moves each channel's whole range into the weights (SmoothQuant's alpha = 1): on this block's
    # Gaussian weights that costs more weight error than it saves (about 28 dB vs 31 dB without), so
    # only the plumbing and a sane fidelity are asserted here; MiniLM's figures are in the slow test.
    model = bert_block()
    calib, feeds = bert_data(64), bert_data(8, seed=9)
    config = QuantConfig(precision="int8", passes=("repq",))
    result = trtq.quantize(model, calib, config=config, progress=False)
    assert [e["tensor"] for e in result.report["passes"]["repq"]["reparameterized"]] == ["ln0", "ln1"]
    assert result.report["check"]["ok"] and "repq" in result.pass_seconds
    want = make_session(model).run(None, feeds)[0]
    got = make_session(result.model).run(None, feeds)[0]
    assert 10 * np.log10(np.sum(want**2) / np.sum((want - got) ** 2)) > 20.0


@pytest.mark.slow
def test_minilm_repq_is_exact_and_helps_int8(minilm_fp32):
    model, tokenizer = minilm_fp32
    calib, feeds = minilm_sentences(tokenizer)
    result = repq_reparameterize(model, pass_context(model, calib))
    assert len(result.report["reparameterized"]) == 12  # the embedding LayerNorm, 11 of the 12 in layers
    assert_exact_and_helps_int8(model, result.model, calib, feeds)
