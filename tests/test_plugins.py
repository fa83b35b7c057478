"""trtq.plugins: fitting, the ONNX face in ONNX Runtime against the numpy reference, and the pipeline."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from trtq.config import ActQuantConfig, QuantConfig
from trtq.errors import TrtqError
from trtq.plugins.fit import fit_codebook_weight, lloyd_max
from trtq.plugins.onnx_face import FACE_KEY, LogParams, WeightSite, insert_faces
from trtq.plugins.reference import (
    NF4_LEVELS,
    canonical_matrix,
    dequantize_codebook,
    fake_quantize_log,
    from_canonical,
    unpack_codes,
)

from graphs import attention_block, attention_data, conv_block, conv_data
from helpers import run, sqnr_db


def test_lloyd_max_on_a_gaussian_gives_the_known_levels():
    x = np.random.default_rng(0).standard_normal(400_000)
    levels4, _ = lloyd_max(x, 4)
    levels8, _ = lloyd_max(x, 8)
    # Max (1960): optimal 4- and 8-level quantizers of N(0, 1)
    np.testing.assert_allclose(levels4, [-1.510, -0.4528, 0.4528, 1.510], atol=0.02)
    np.testing.assert_allclose(levels8, [-2.152, -1.344, -0.756, -0.2451, 0.2451, 0.756, 1.344, 2.152], atol=0.03)
    weighted, _ = lloyd_max(np.array([0.0, 1.0, 10.0, 11.0]), 2, weights=np.array([1.0, 3.0, 1.0, 1.0]))
    np.testing.assert_allclose(weighted, [0.75, 10.5])


def test_fit_formats_order_and_fixed_codebooks():
    w = np.random.default_rng(1).standard_normal((48, 200)).astype(np.float32)  # K = 200: ragged last group
    err = {}
    for fmt in ("nf4", "codebook4", "uniform4", "codebook3", "uniform3"):
        cw = fit_codebook_weight(w, fmt, 64)
        assert cw.scales.shape == (48, 4) and cw.scales.dtype == np.float16 and cw.codebook.dtype == np.float16
        err[fmt] = float(((cw.dequantize() - w) ** 2).mean())
    np.testing.assert_array_equal(fit_codebook_weight(w, "nf4", 64).codebook[0], NF4_LEVELS.astype(np.float16))
    assert err["codebook4"] < err["uniform4"] and err["nf4"] < err["uniform4"]
    assert err["codebook3"] < err["uniform3"] < err["uniform4"] * 6
    with pytest.raises(TrtqError):
        fit_codebook_weight(w, "nf5", 64)


def test_importance_and_gptq_lower_the_output_error():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((256, 64)) * np.linspace(0.1, 3.0, 64)  # uneven input channels
    w = rng.standard_normal((64, 32))  # MatMul [K, N]
    wc = canonical_matrix(w, "MatMul")
    h = 2.0 * x.T @ x / len(x)
    plain = fit_codebook_weight(wc, "codebook4", 16)
    aware = fit_codebook_weight(wc, "codebook4", 16, importance=np.diag(h))
    gptq = fit_codebook_weight(wc, "codebook4", 16, hessian=h)

    def out_err(cw):
        return float(((x @ (from_canonical(cw.dequantize(), "MatMul", w.shape) - w)) ** 2).mean())

    assert out_err(gptq) < out_err(aware) < out_err(plain)
    assert gptq.info["gptq_kept"] == "gptq" and gptq.info["proxy_error_gptq"] < gptq.info["proxy_error_nearest"]


def _mixed_model(w: np.ndarray, cv: np.ndarray) -> onnx.ModelProto:
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y0"], name="mm"),
             helper.make_node("Softmax", ["y0"], ["p"], name="sm", axis=-1),
             helper.make_node("Identity", ["p"], ["y"], name="id"),
             helper.make_node("Conv", ["img", "cv"], ["z"], name="conv")]
    graph = helper.make_graph(
        nodes, "mixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, w.shape[0]]),
         helper.make_tensor_value_info("img", TensorProto.FLOAT, [1, cv.shape[1], 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, w.shape[1]]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, cv.shape[0], 4, 4])],
        [onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(cv, "cv")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize(("fmt", "group"), [("codebook3", 16), ("nf4", 7)])
def test_onnx_face_equals_the_numpy_reference_in_ort(fmt, group):
    import onnxruntime as ort
    import torch

    rng = np.random.default_rng(3)
    w = rng.standard_normal((61, 10)).astype(np.float32)  # K = 61: ragged groups, padded code rows
    cv = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    cw = fit_codebook_weight(canonical_matrix(w, "MatMul"), fmt, group)
    cc = fit_codebook_weight(canonical_matrix(cv, "Conv"), fmt, group)
    log = LogParams("logsqrt2", 4, 0.9, 0.5)
    model = insert_faces(_mixed_model(w, cv), {"w": (cw, WeightSite("MatMul", False, w.shape)),
                                               "cv": (cc, WeightSite("Conv", False, cv.shape))},
                         {"p": (log, [("id", 0)])})
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = rng.standard_normal((3, 61)).astype(np.float32)
    img = rng.standard_normal((1, 3, 6, 6)).astype(np.float32)
    y, z = session.run(None, {"x": x, "img": img})
    logits = x @ from_canonical(cw.dequantize(), "MatMul", w.shape)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    np.testing.assert_allclose(y, fake_quantize_log(probs, 0.9, 0.5, 0.0, 4), rtol=1e-5, atol=1e-7)
    weight = torch.tensor(from_canonical(cc.dequantize(), "Conv", cv.shape))
    ref_z = torch.nn.functional.conv2d(torch.tensor(img), weight)
    np.testing.assert_allclose(z, ref_z.numpy(), rtol=1e-5, atol=1e-5)
    # the weight face's Wc is bit-exact: read it back from ORT
    wc_name = next(o for n in model.graph.node for o in n.output if o.endswith("w_codebook_dequantized"))
    extra = onnx.ModelProto()
    extra.CopyFrom(model)
    extra.graph.output.append(helper.make_tensor_value_info(wc_name, TensorProto.FLOAT, None))
    wc_ort = ort.InferenceSession(extra.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        [wc_name], {"x": x, "img": img})[0]
    np.testing.assert_array_equal(wc_ort, cw.dequantize())
    faces = [json.loads(n.doc_string)[FACE_KEY] for n in model.graph.node if FACE_KEY in n.doc_string]
    assert sorted(f["op_type"] for f in faces) == ["CodebookDequantize", "CodebookDequantize", "LogFakeQuantize"]
    face = next(f for f in faces if f["output"] == wc_name)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    codes, book, scales = (inits[n] for n in face["inputs"])
    a = face["attrs"]
    assert (a["plugin_namespace"], a["plugin_version"], a["k"], a["group_size"]) == ("trtq", "1", 61, group)
    np.testing.assert_array_equal(dequantize_codebook(codes, book, scales, a["bits"], group, 61), cw.dequantize())
    assert unpack_codes(codes, a["bits"], 61).max() < 2 ** a["bits"]


def test_log_face_matches_reference_on_edge_values():
    import onnxruntime as ort

    x = np.concatenate([np.array([0.0, -1.0, 5.0, 1e-30, np.float32(0.9) * 2 ** -3], np.float32),
                        np.random.default_rng(4).random(2000).astype(np.float32) ** 4])[None, :]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"], name="id")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(x.shape))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    for p in (LogParams("adalog", 8, 0.9, 13 / 37, 0.17), LogParams("log2", 3, 0.5, 1.0)):
        face = insert_faces(model, {}, {"x": (p, [("id", 0)])})
        y = ort.InferenceSession(face.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        ref = fake_quantize_log(x, p.scale, p.step, p.shift, p.bits)
        # Log/Exp may differ from numpy's by an ulp: a code may flip only at a rounding boundary
        assert np.mean(np.abs(y - ref) > 1e-6) < 1e-3
        np.testing.assert_allclose(y[0, :5], ref[0, :5], rtol=1e-6, atol=1e-7)


def test_quantize_codebook_end_to_end_conv_and_attention():
    import trtq

    conv, cdata = conv_block(), conv_data(8)
    ref = run(conv, conv_data(2, seed=1))
    sq = {}
    for fmt in ("codebook4", "uniform4"):
        r = trtq.quantize(conv, cdata, config=QuantConfig(precision="int4", weight_format=fmt, block_size=32),
                          progress=False)
        sq[fmt] = sqnr_db(ref, run(r.model, conv_data(2, seed=1)))
        entry = r.report["tensors"]["w1"]
        assert entry["format"] == fmt and entry["activation_aware"] and len(entry["codebook"][0]) == 16
        stored = r.report["summary"]["codebook_weight_bytes"]
        assert stored["stored"] < stored["float32"] / 4
        assert any(f["rule"] == "nonuniform-face" for f in r.report["check"]["findings"])
    assert sq["codebook4"] > sq["uniform4"] > 15
    attn, adata = attention_block(hidden=64), attention_data(8, hidden=64)
    cfg = QuantConfig(precision="int4", weight_format="codebook3", block_size=32)
    a = trtq.quantize(attn, adata, config=cfg, progress=False)
    b = trtq.quantize(attn, adata, config=cfg, progress=False)
    assert a.model.SerializeToString() == b.model.SerializeToString()  # deterministic
    assert json.dumps(a.report, sort_keys=True) == json.dumps(b.report, sort_keys=True)
    assert a.report["tensors"]["wq"]["gptq_kept"] in ("gptq", "nearest")
    feeds = attention_data(2, seed=1, hidden=64)
    assert sqnr_db(run(attn, feeds), run(a.model, feeds)) > 8


def test_quantize_log_activations_replace_uniform_qdq():
    import trtq

    m, data = attention_block(hidden=64), attention_data(8, hidden=64)
    cfg = QuantConfig(precision="int8", act_quant=ActQuantConfig("adalog", bits=4))
    r = trtq.quantize(m, data, config=cfg, progress=False)
    entry = r.report["tensors"]["probs"]
    assert entry["quantizer"] == "log" and entry["after"] == "softmax" and 10 <= entry["adalog_q"] <= 137
    assert r.report["summary"]["log_activations"] == 1
    reads = [n for n in r.model.graph.node if "probs" in n.input]
    assert all(n.name.startswith("trtq_logquant/probs/") for n in reads)
    feeds = attention_data(2, seed=1, hidden=64)
    assert sqnr_db(run(m, feeds), run(r.model, feeds)) > 15


def test_config_errors_name_the_fix():
    with pytest.raises(TrtqError, match="--precision int4"):
        QuantConfig(precision="int8", weight_format="nf4")
    with pytest.raises(TrtqError, match="--act-quant"):
        ActQuantConfig("log10")
    with pytest.raises(TrtqError):
        QuantConfig(precision="int4", weight_format="codebook4", fallback_budget=2)
    cfg = QuantConfig(precision="int4", weight_format="codebook3", act_quant=ActQuantConfig("log2", 4, ("probs",)))
    assert QuantConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    import trtq

    with pytest.raises(TrtqError, match="calib-data"):
        trtq.quantize(attention_block(hidden=64), None, progress=False,
                      config=QuantConfig(precision="int4", block_size=32, act_quant=ActQuantConfig("log2")))
