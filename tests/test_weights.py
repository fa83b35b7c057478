"""Weight quantizers: per-channel INT8/FP8 and block-wise INT4 with (activation-aware) MSE clipping."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from trtq.exporter.weights import quantize_int4_blockwise, quantize_per_channel


def _w(shape=(256, 48), seed=0) -> np.ndarray:
    rs = np.random.RandomState(seed)
    return (rs.standard_t(3, size=shape) * rs.uniform(0.1, 2.0, size=(1, shape[1]))).astype(np.float32)


def test_int8_per_channel_round_trip():
    w = _w()
    qw = quantize_per_channel(w, 1, "int8")
    assert qw.values.dtype == np.int8 and qw.scale.shape == (48,)
    np.testing.assert_allclose(qw.scale, np.abs(w).max(axis=0) / 127, rtol=1e-6)
    assert np.all(np.abs(qw.values.astype(np.float32) * qw.scale - w) <= qw.scale / 2 + 1e-7)


def test_fp8_per_channel_values_are_e4m3():
    w = _w()
    qw = quantize_per_channel(w, 1, "fp8")
    assert qw.values.dtype == ml_dtypes.float8_e4m3fn
    assert np.abs(qw.values.astype(np.float32)).max() == pytest.approx(448.0)


def _err(w, qw, block_axis, importance=None):
    scale = np.repeat(qw.scale, w.shape[block_axis] // qw.scale.shape[block_axis], axis=block_axis)
    diff = (qw.values.astype(np.float64) * scale - w) ** 2
    if importance is not None:
        diff = diff * importance[:, None]
    return diff.sum()


@pytest.mark.parametrize("block_axis", [0, 1])
def test_int4_blockwise_shapes_and_mse_clipping(block_axis):
    w = _w() if block_axis == 0 else _w().T.copy()
    qw = quantize_int4_blockwise(w, block_axis, 64)
    assert qw.values.dtype == ml_dtypes.int4 and qw.values.shape == w.shape
    assert qw.scale.shape == ((4, 48) if block_axis == 0 else (48, 4))
    assert qw.values.astype(np.int8).min() >= -8 and qw.values.astype(np.int8).max() <= 7
    no_clip = quantize_int4_blockwise(w, block_axis, 64)
    no_clip.scale = (qw.amax / 7).astype(np.float32)
    no_clip.values = np.clip(np.rint(w / np.repeat(no_clip.scale, 64, axis=block_axis)), -8, 7)
    assert _err(w, qw, block_axis) <= _err(w, no_clip, block_axis)
    assert (qw.clip_ratio < 1).any()  # heavy-tailed weights: clipping pays off somewhere


def test_int4_activation_aware_clipping_lowers_output_error():
    w = _w()
    importance = np.random.RandomState(1).lognormal(0, 2, size=256)
    plain = quantize_int4_blockwise(w, 0, 64)
    aware = quantize_int4_blockwise(w, 0, 64, importance)
    assert _err(w, aware, 0, importance) < _err(w, plain, 0, importance)
