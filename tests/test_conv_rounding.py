"""INT8 conv weights rounded on calibration data: im2col statistics, GPTQ + bias, pipeline wiring."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import trtq
from trtq.calibrators.data import open_batches
from trtq.config import QuantConfig
from trtq.errors import TrtqError
from trtq.exporter.conv_rounding import _accumulate, _conv_geometry, round_conv_weight, round_convs

import graphs
import helpers


def _reference_patches(x: np.ndarray, k: int, stride: int, pad: int) -> np.ndarray:
    """[N·Ho·Wo, C·k·k] im2col by loops, in the weight's (c, i, j) order."""
    n, _, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    rows = [xp[b, :, i * stride:i * stride + k, j * stride:j * stride + k].reshape(-1)
            for b in range(n) for i in range(ho) for j in range(wo)]
    return np.array(rows)


@pytest.mark.parametrize(("group", "stride"), [(1, 1), (1, 2), (4, 1)])
def test_patch_sums_match_an_explicit_im2col(group, stride):
    rs = np.random.RandomState(0)
    x = rs.randn(2, 4, 7, 6)
    node = helper.make_node("Conv", ["x", "w"], ["y"], group=group, pads=[1, 1, 1, 1], strides=[stride, stride])
    geo = _conv_geometry(node, (8, 4 // group, 3, 3))
    stats = _accumulate(None, x, geo)
    full = _reference_patches(x, 3, stride, 1)  # [R, 4·9]
    cg = 4 // group
    for g in range(group):
        rows = full[:, g * cg * 9:(g + 1) * cg * 9]
        aug = np.concatenate([rows, np.ones((len(rows), 1))], axis=1)
        np.testing.assert_allclose(stats.xtx[g], aug.T @ aug, rtol=1e-5, atol=1e-4)  # float32 products
    assert stats.rows == len(full)


def _layer_error(w, b, qw, new_b, patches):
    """Mean squared output error of the quantized layer (weights dequantized, bias as returned)."""
    deq = qw.values.astype(np.float64) * qw.scale.astype(np.float64)[:, None, None, None]
    y = patches @ w.reshape(len(w), -1).T + b
    yq = patches @ deq.reshape(len(w), -1).T + new_b
    return float(np.mean((y - yq) ** 2))


def test_gptq_with_bias_beats_plain_rounding_on_the_layer_output():
    rs = np.random.RandomState(1)
    x = np.abs(rs.randn(8, 6, 9, 9)) + 0.2  # post-ReLU inputs: a mean for the bias to absorb
    w, b = rs.randn(5, 6, 3, 3) * 0.2, rs.randn(5) * 0.1
    w[0, 0, 0, 0] = 3.0  # an outlier tap
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1])
    stats = _accumulate(None, x, _conv_geometry(node, w.shape))
    patches = _reference_patches(x, 3, 1, 1)
    rtn = round_conv_weight(w, b, stats, 1, gptq=False)
    best = round_conv_weight(w, b, stats, 1)
    assert rtn.info["method"] == "conv-rtn" and best.info["method"] == "conv-gptq"
    errors = best.info["proxy_error"]
    assert errors["gptq"] < 0.5 * errors["rtn"]
    assert _layer_error(w, b, best.weight, best.bias, patches) < 0.5 * _layer_error(w, b, rtn.weight, b, patches)
    assert best.weight.values.dtype == np.int8 and np.abs(best.weight.values).max() <= 127
    np.testing.assert_allclose(best.weight.scale, np.abs(w).max(axis=(1, 2, 3)) / 127, rtol=1e-6)


def test_a_bias_already_corrected_for_nearest_rounding_is_put_back_first():
    rs = np.random.RandomState(3)
    x = np.abs(rs.randn(4, 3, 6, 6)) + 0.5
    w, b = rs.randn(4, 3, 3, 3) * 0.3, rs.randn(4) * 0.1
    stats = _accumulate(None, x, _conv_geometry(helper.make_node("Conv", ["x", "w", "b"], ["y"]), w.shape))
    plain = round_conv_weight(w, b, stats, 1, gptq=False)
    mean = stats.xtx[0, :27, 27] / stats.rows
    delta = plain.weight.values * plain.weight.scale.astype(np.float64)[:, None, None, None] - w
    shifted = b - delta.reshape(4, -1) @ mean  # what bias correction writes for nearest rounding
    again = round_conv_weight(w, shifted, stats, 1, bias_corrected=True)
    first = round_conv_weight(w, b, stats, 1)
    assert np.array_equal(again.weight.values, first.weight.values)
    np.testing.assert_allclose(again.bias, first.bias, rtol=1e-5, atol=1e-6)


def test_depthwise_rounds_each_channel_on_its_own_hessian():
    rs = np.random.RandomState(2)
    x = rs.randn(4, 3, 8, 8)
    w = rs.randn(3, 1, 3, 3)
    node = helper.make_node("Conv", ["x", "w"], ["y"], group=3, pads=[1, 1, 1, 1])
    stats = _accumulate(None, x, _conv_geometry(node, w.shape))
    assert stats.xtx.shape == (3, 10, 10)
    out = round_conv_weight(w, None, stats, 3)
    assert out.weight.values.shape == w.shape
    assert out.info["proxy_error"][out.info["method"][5:]] <= out.info["proxy_error"]["rtn"]


def test_dead_input_channels_and_a_zero_weight_stay_finite():
    x = np.zeros((2, 2, 5, 5))
    x[:, 0] = 1.0  # channel 1 is never live
    w = np.zeros((2, 2, 1, 1))
    w[1, 0] = 0.5
    stats = _accumulate(None, x, _conv_geometry(helper.make_node("Conv", ["x", "w"], ["y"]), w.shape))
    out = round_conv_weight(w, np.zeros(2), stats, 1)
    assert np.all(np.isfinite(out.weight.scale)) and np.all(out.weight.scale > 0)
    assert np.all(np.isfinite(out.bias))


def test_round_convs_on_a_conv_block_is_deterministic():
    model = graphs.conv_block()
    data = graphs.conv_data(16)
    convs = {"conv1": "w1", "dwconv": "wd", "conv2": "w2"}
    first = round_convs(model, convs, open_batches(data, model, batch_size=4), 16)
    second = round_convs(model, convs, open_batches(data, model, batch_size=8), 16)
    assert sorted(first) == ["conv1", "conv2", "dwconv"]
    for name in first:
        assert np.array_equal(first[name].weight.values, second[name].weight.values)
        np.testing.assert_allclose(first[name].bias, second[name].bias, rtol=1e-6, atol=1e-7)


def test_quantize_rounds_conv_weights_by_default_and_rtn_turns_it_off():
    model, calib, held_out = graphs.conv_block(channels=32), graphs.conv_data(32), graphs.conv_data(32, seed=5)
    base = {"fallback": False, "passes": ()}
    gptq = trtq.quantize(model, calib, config=QuantConfig(**base), progress=False)
    rtn = trtq.quantize(model, calib, config=QuantConfig(**base, conv_method="rtn"), progress=False)
    methods = {t["method"] for t in gptq.report["tensors"].values() if t["kind"] == "weight"}
    assert {"conv-gptq", "max"} >= methods and "conv-gptq" in methods  # the Gemm keeps max
    assert {t["method"] for t in rtn.report["tensors"].values() if t["kind"] == "weight"} == {"max"}
    assert gptq.report["check"]["ok"]
    ref = helpers.run(model, held_out)
    gptq_db = helpers.sqnr_db(ref, helpers.run(gptq.model, held_out))
    assert gptq_db > helpers.sqnr_db(ref, helpers.run(rtn.model, held_out))
    with pytest.raises(TrtqError, match="conv weight method"):
        QuantConfig(conv_method="adaround")
    onnx.checker.check_model(gptq.model)
