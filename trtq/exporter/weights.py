"""Weight quantizers: per-channel INT8 / FP8, and block-wise INT4 with MSE-chosen clipping.

- INT8: `s_c = max|W_c| / 127`, `W_q = clip(rint(W / s_c), -127, 127)` per output channel c.
- FP8:  `s_c = max|W_c| / 448`, `W_q = e4m3(W / s_c)` (round to nearest even, saturating).
- INT4: blocks of `B` weights along the reduction axis K; per block and output channel
  `s = r* max|W_b| / 7`, `W_q = clip(rint(W_b / s), -8, 7)`, with the clip ratio r* in [0.5, 1]
  chosen from a grid to minimise the block's squared error `sum_k e_k (W_kn - s W_q,kn)²`, where
  `e_k = E[x_k²]` is the calibration data's mean power of input channel k (activation-aware: the
  expected squared error of the layer's output) or 1 when no data is given.
Scales are float32 and strictly positive (an all-zero channel gets the smallest normal float).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trtq.precision import TABLE, FloatType

__all__ = ["INT4_CLIP_GRID", "QuantizedWeight", "quantize_int4_blockwise", "quantize_per_channel",
           "representable_scale"]

_TINY = np.finfo(np.float32).tiny
_INT4 = TABLE["int4"]
INT4_CLIP_GRID = np.linspace(0.5, 1.0, 26)


@dataclass
class QuantizedWeight:
    """Quantized values (numpy, in their ONNX storage dtype), their scales, and what was chosen.

    `info` holds further report fields of the method that produced it (e.g. GPTQ's damping).
    """

    values: np.ndarray
    scale: np.ndarray
    amax: np.ndarray
    clip_ratio: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)


def representable_scale(scale: np.ndarray, scale_type: FloatType | None) -> np.ndarray:
    """`scale` as float32 holding values of `scale_type` (the type the graph stores scales in): at least its
    smallest normal, rounded to it. None or fp32: float32 as it is."""
    if scale_type is None or scale_type.name == "fp32":
        return np.asarray(scale, np.float32)
    floor = np.maximum(np.asarray(scale, np.float64), scale_type.tiny)
    return np.asarray(np.maximum(floor.astype(scale_type.dtype).astype(np.float32), np.float32(scale_type.tiny)))


def _channel_amax(w: np.ndarray, axis: int | None) -> np.ndarray:
    if axis is None:
        return np.asarray(np.abs(w).max(), dtype=np.float64)
    others = tuple(i for i in range(w.ndim) if i != axis)
    return np.abs(w).max(axis=others).astype(np.float64)


def _broadcast(v: np.ndarray, ndim: int, axis: int | None) -> np.ndarray:
    if axis is None:
        return v
    shape = [1] * ndim
    shape[axis] = -1
    return v.reshape(shape)


def quantize_per_channel(w: np.ndarray, axis: int | None, precision: str,
                         scale_type: FloatType | None = None) -> QuantizedWeight:
    """Symmetric per-channel (axis) or per-tensor (axis None) INT8 / FP8 quantization of `w`, with scales
    representable in `scale_type` (`representable_scale`)."""
    w64 = w.astype(np.float64)
    amax = _channel_amax(w64, axis)
    spec = TABLE[precision]
    scale = representable_scale(np.maximum(amax / spec.qmax, _TINY), scale_type)
    scaled = w64 / _broadcast(scale.astype(np.float64), w.ndim, axis)
    return QuantizedWeight(spec.quantize(scaled), scale, amax)


def quantize_int4_blockwise(w: np.ndarray, block_axis: int, block_size: int,
                            importance: np.ndarray | None = None,
                            scale_type: FloatType | None = None) -> QuantizedWeight:
    """Block-wise symmetric INT4 of a 2-D weight along `block_axis`, with per-block MSE clipping.

    Returns values shaped like `w` (ml_dtypes.int4) and scales shaped like `w` with the blocked
    axis divided by `block_size`, as ONNX DequantizeLinear (opset 21, `block_size`) expects.
    `importance` (length K, optional) weights each input channel's squared error. The scales are
    representable in `scale_type` (fp16: TensorRT's W4A16 form, FP16 scales) before the codes are rounded.
    """
    wt = w.astype(np.float64)
    if block_axis == 1:
        wt = wt.T
    k, n = wt.shape
    blocks = wt.reshape(k // block_size, block_size, n)  # [nb, B, N]
    amax = np.abs(blocks).max(axis=1)  # [nb, N]
    imp = np.ones((k // block_size, block_size, 1))
    if importance is not None:
        imp = np.asarray(importance, np.float64).reshape(k // block_size, block_size, 1) + 1e-12
    best_err = np.full(amax.shape, np.inf)
    best_ratio = np.ones(amax.shape)
    for ratio in INT4_CLIP_GRID:
        s = np.maximum(amax * ratio / _INT4.qmax, _TINY)[:, None, :]
        err = (imp * (np.clip(np.rint(blocks / s), _INT4.qmin, _INT4.qmax) * s - blocks) ** 2).sum(axis=1)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_ratio = np.where(better, ratio, best_ratio)
    scale = representable_scale(np.maximum(amax * best_ratio / _INT4.qmax, _TINY), scale_type)
    q = np.clip(np.rint(blocks / scale.astype(np.float64)[:, None, :]), _INT4.qmin, _INT4.qmax).reshape(k, n)
    if block_axis == 1:
        q, scale, amax, best_ratio = q.T, scale.T, amax.T, best_ratio.T
    return QuantizedWeight(np.ascontiguousarray(q).astype(_INT4.dtype), np.ascontiguousarray(scale),
                           amax, best_ratio)
