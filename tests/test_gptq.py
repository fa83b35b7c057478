"""GPTQ for block-wise INT4 weights: proxy and output error against plain rounding, masks, determinism."""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import trtq
from trtq.calibrators.data import open_batches
from trtq.calibrators.observer import token_mask_input
from trtq.calibrators.stats import collect_second_moments
from trtq.config import QuantConfig
from trtq.errors import TrtqError
from trtq.exporter.gptq import GptqOptions, gptq_int4_blockwise, proxy_error
from trtq.exporter.weights import quantize_int4_blockwise

K, N, SEQ = 256, 64, 16


def _weight(seed: int = 0, shape: tuple[int, int] = (K, N)) -> np.ndarray:
    rs = np.random.RandomState(seed)
    return (rs.standard_t(4, size=shape) * 0.05).astype(np.float32)


def _rows(n: int, seed: int = 1, k: int = K) -> np.ndarray:
    """Correlated inputs with uneven channel power (what makes GPTQ's error feedback pay)."""
    rs = np.random.RandomState(seed)
    mix = 0.5 * np.eye(k) + rs.randn(k, k) / np.sqrt(k)
    return (rs.randn(n, k) @ mix * rs.lognormal(0, 1, size=k)).astype(np.float32)


def _hessian(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return 2.0 * x.T @ x / len(x)


def _dequant(qw, block_axis: int, block_size: int = 128) -> np.ndarray:
    return qw.values.astype(np.float64) * np.repeat(qw.scale.astype(np.float64), block_size, axis=block_axis)


def _model(mask: bool = False) -> onnx.ModelProto:
    """x [batch, seq, K] -> MatMul(w1) -> Relu -> MatMul(w2) -> y (x attention_mask when `mask`)."""
    inits = [onnx.numpy_helper.from_array(_weight(0, (K, K)), "w1"),
             onnx.numpy_helper.from_array(_weight(1, (K, N)), "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y" if not mask else "y_raw"], name="fc2")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", SEQ, K])]
    if mask:
        inits.append(onnx.numpy_helper.from_array(np.array([-1], np.int64), "last"))
        nodes += [helper.make_node("Cast", ["attention_mask"], ["m"], name="cast", to=TensorProto.FLOAT),
                  helper.make_node("Unsqueeze", ["m", "last"], ["m3"], name="unsqueeze"),
                  helper.make_node("Mul", ["y_raw", "m3"], ["y"], name="apply_mask")]
        inputs.append(helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", SEQ]))
    graph = helper.make_graph(nodes, "mlp", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                                                    ["batch", SEQ, N])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _data(n: int = 24, seed: int = 2, mask: bool = False) -> dict[str, np.ndarray]:
    data = {"x": _rows(n * SEQ, seed).reshape(n, SEQ, K)}
    if mask:
        lengths = np.random.RandomState(seed).randint(3, SEQ + 1, size=n)
        data["attention_mask"] = (np.arange(SEQ)[None, :] < lengths[:, None]).astype(np.int64)
    return data


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_lowers_proxy_and_output_error(act_order):
    w, x = _weight(), _rows(2048)
    h = _hessian(x)
    rtn = quantize_int4_blockwise(w, 0, 128, importance=np.diag(h).copy())
    qw = gptq_int4_blockwise(w, 0, 128, h, GptqOptions(act_order=act_order))
    assert qw.values.dtype == ml_dtypes.int4 and qw.values.shape == w.shape
    np.testing.assert_array_equal(qw.scale, rtn.scale)  # scales are fixed before GPTQ
    assert qw.info["gptq_kept"] == "gptq" and qw.info["gptq_act_order"] is act_order
    assert qw.info["proxy_error_gptq"] < 0.8 * qw.info["proxy_error_rtn"]
    assert qw.info["proxy_error_gptq"] == pytest.approx(proxy_error(w - _dequant(qw, 0), h))
    out_err = ((x @ (w - _dequant(qw, 0))) ** 2).sum()
    assert out_err < ((x @ (w - _dequant(rtn, 0))) ** 2).sum()


def test_gptq_transposed_weight_matches():
    w, h = _weight(), _hessian(_rows(1024))
    a = gptq_int4_blockwise(w, 0, 128, h)
    b = gptq_int4_blockwise(np.ascontiguousarray(w.T), 1, 128, h)
    np.testing.assert_array_equal(a.values.astype(np.int8), b.values.astype(np.int8).T)
    np.testing.assert_array_equal(a.scale, b.scale.T)


def test_gptq_dead_input_channel():
    x = _rows(1024)
    x[:, 5] = 0.0
    w, h = _weight(), _hessian(x)
    qw = gptq_int4_blockwise(w, 0, 128, h, GptqOptions(act_order=True))
    assert qw.info["gptq_dead_channels"] == 1 and np.isfinite(qw.info["proxy_error_gptq"])
    # no error reaches a dead channel: its row is plain rounding with the block's scale
    rtn = quantize_int4_blockwise(w, 0, 128, importance=np.diag(h).copy())
    np.testing.assert_array_equal(qw.values.astype(np.int8)[5], rtn.values.astype(np.int8)[5])


def test_gptq_survives_rank_deficient_hessian():
    w, x = _weight(), _rows(40)  # 40 rows, K = 256: singular H, damping keeps it solvable
    qw = gptq_int4_blockwise(w, 0, 128, _hessian(x))
    assert qw.info["gptq_damp"] > 0 and np.isfinite(qw.info["proxy_error_gptq"])


def test_second_moments_drop_padded_tokens():
    model, data = _model(mask=True), _data(mask=True)
    assert token_mask_input(model) == "attention_mask"
    batches = open_batches(data, model, batch_size=5)
    moments = collect_second_moments(model, ["x", "r"], batches, mask="attention_mask", progress=False)
    rows = data["x"][data["attention_mask"] != 0].astype(np.float64)
    assert moments["x"].rows == len(rows) < data["x"].shape[0] * SEQ
    np.testing.assert_allclose(moments["x"].xtx, rows.T @ rows, rtol=1e-10)
    np.testing.assert_allclose(moments["x"].hessian, _hessian(rows), rtol=1e-10)
    # summed in chunks of K rows whatever the batching: bit-identical for another batch size
    again = collect_second_moments(model, ["x", "r"], open_batches(data, model, batch_size=1),
                                   mask="attention_mask", progress=False)
    for name in ("x", "r"):
        np.testing.assert_array_equal(again[name].xtx, moments[name].xtx)


def test_quantize_int4_gptq_end_to_end(tmp_path):
    model, data = _model(mask=True), _data(mask=True)
    out = {}
    for method in ("rtn", "gptq"):
        cfg = QuantConfig(precision="int4", int4_method=method)
        out[method] = trtq.quantize(model, data, tmp_path / f"{method}.onnx", config=cfg, progress=False)
    entry = out["gptq"].report["tensors"]["w1"]
    assert entry["method"] == "gptq" and entry["gptq_damp"] > 0 and entry["gptq_kept"] == "gptq"
    assert entry["proxy_error_gptq"] < entry["proxy_error_rtn"]
    assert out["rtn"].report["tensors"]["w1"]["method"] == "activation-weighted-mse-clip"
    assert out["gptq"].report["config"]["int4_method"] == "gptq"
    assert not trtq.check(out["gptq"].model).errors
    ref = trtq._ort.make_session(model).run(None, data)[0]
    err = {m: float(((trtq._ort.make_session(r.model, exact_qdq=True).run(None, data)[0] - ref) ** 2).sum())
           for m, r in out.items()}
    assert err["gptq"] < err["rtn"]


def test_quantize_int4_gptq_is_deterministic(tmp_path):
    model, data = _model(), _data()
    paths = []
    for i in range(2):
        path = tmp_path / f"q{i}.onnx"
        trtq.quantize(model, data, path, precision="int4", seed=0, progress=False)
        paths.append(path)
    assert paths[0].read_bytes() == paths[1].read_bytes()
    sidecars = [json.loads(trtq._io.sidecar_path(p).read_text()) for p in paths]
    assert sidecars[0]["tensors"] == sidecars[1]["tensors"]


def test_int4_method_is_validated():
    with pytest.raises(TrtqError, match="unknown INT4 method .awq.") as err:
        QuantConfig(precision="int4", int4_method="awq")
    assert "--int4-method" in err.value.fix
    assert QuantConfig.from_dict(QuantConfig(int4_method="rtn").to_dict()).int4_method == "rtn"


def test_int4_gemm_weights_use_the_calibration_data(tmp_path):
    """A torch Linear exports as Gemm (transB=1): with data its weight gets GPTQ, and the sidecar counts
    the samples GPTQ read."""
    x = _rows(64)
    w = _weight(shape=(N, K))  # [N, K], transB
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["y"], name="fc", transB=1)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", N])],
        [onnx.numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    plain = trtq.quantize(model, None, tmp_path / "plain.onnx", precision="int4", progress=False)
    gptq = trtq.quantize(model, {"x": x}, tmp_path / "gptq.onnx", precision="int4", progress=False)
    assert gptq.report["tensors"]["w"]["method"] == "gptq"
    assert gptq.report["summary"]["calibration_samples"] == 64
    assert plain.report["summary"]["calibration_samples"] == 0
    assert (tmp_path / "plain.onnx").read_bytes() != (tmp_path / "gptq.onnx").read_bytes()
    ref = x @ w.T
    err = {name: float(((trtq._ort.make_session(r.model, exact_qdq=True).run(None, {"x": x})[0] - ref) ** 2).sum())
           for name, r in (("plain", plain), ("gptq", gptq))}
    assert err["gptq"] < err["plain"]
