"""Range methods: statistics of one tensor -> the amax its scale is built from.

TensorRT semantics (algorithms.md §8): INT8 `x_q = RTNE(clip(x/s, -128, 127))`, `s = amax/127`;
FP8 E4M3 `s = amax/448`. Histograms hold |x| over [0, amax_observed] in equal bins.

- minmax:     amax = max |x|.
- percentile: amax = edges[searchsorted(cdf, p/100)] (the p-th percentile of |x|).
- entropy:    TensorRT's KL calibration: for each candidate bin count i >= 128, P = hist[:i] with the
              tail folded into bin i-1, Q = P merged into 128 levels and expanded back over P's non-empty
              bins; amax = edges[i*] for the last i minimising KL(P || Q).
- mse:        amax = argmin over bin centres c of sum(count * (fake_quant(centres, c) - centres)^2), the
              fake quantizer being the target precision's own (INT8 narrow range, or FP8 E4M3).
"""

from __future__ import annotations

import numpy as np

from trtq.calibrators.stats import TensorStats
from trtq.precision import TABLE

__all__ = ["compute_amax", "entropy_amax", "fake_quant", "mse_amax", "percentile_amax"]


def fake_quant(x: np.ndarray, amax: float | np.ndarray, precision: str) -> np.ndarray:
    """Quantize-dequantize `x` with the symmetric scale built from `amax` (float64 in, float64 out)."""
    amax = np.maximum(amax, 1e-30)
    spec = TABLE[precision]
    return spec.grid(x * (spec.qmax / amax)) * (amax / spec.qmax)


def percentile_amax(hist: np.ndarray, edges: np.ndarray, percentile: float) -> float:
    """The `percentile`-th percentile of |x| read off the histogram (right edge of its bin)."""
    cdf = np.cumsum(hist, dtype=np.float64)
    if cdf[-1] == 0:
        return float(edges[-1])
    idx = int(np.searchsorted(cdf / cdf[-1], percentile / 100.0))
    return float(edges[min(idx + 1, len(edges) - 1)])


def entropy_amax(hist: np.ndarray, edges: np.ndarray, num_levels: int = 128, start_bin: int = 128) -> float:
    """TensorRT / pytorch-quantization KL-divergence calibration (algorithms.md §8, "Entropy")."""
    bins = hist.astype(np.float64)
    if len(bins) < 2 or bins.sum() == 0:
        return float(edges[-1])
    bins[0] = bins[1]  # suppress the spike at zero (post-ReLU)
    total_tail = np.concatenate([np.cumsum(bins[::-1])[::-1], [0.0]])  # tail[i] = bins[i:].sum()
    best_i, best_kl = len(bins), np.inf
    for i in range(min(start_bin, len(bins)), len(bins) + 1):
        p = bins[:i].copy()
        p[i - 1] += total_tail[i]
        nonzero = bins[:i] != 0
        group = (np.arange(i) * num_levels) // i  # which of the num_levels groups each bin falls into
        sums = np.bincount(group, weights=bins[:i], minlength=num_levels)
        counts = np.bincount(group, weights=nonzero, minlength=num_levels)
        q = np.where(nonzero, sums[group] / np.maximum(counts[group], 1), 0.0)
        kl = _kl(p, q)
        if kl <= best_kl:  # ties -> the larger threshold
            best_i, best_kl = i, kl
    return float(edges[best_i])


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    ps, qs = p.sum(), q.sum()
    if ps == 0 or qs == 0:
        return np.inf
    p, q = p / ps, q / qs
    mask = p > 0
    if np.any(q[mask] == 0):
        return np.inf
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


def mse_amax(hist: np.ndarray, edges: np.ndarray, precision: str, start_bin: int = 128) -> float:
    """The bin centre that minimises the histogram-weighted squared error of `fake_quant`."""
    centres = (edges[1:] + edges[:-1]) / 2
    weights = hist.astype(np.float64)
    if weights.sum() == 0:
        return float(edges[-1])
    keep = weights > 0
    c, w = centres[keep], weights[keep]
    candidates = centres[min(start_bin, len(centres) - 1):]
    best, best_err = float(edges[-1]), np.inf
    for chunk in np.array_split(candidates, max(1, len(candidates) // 128)):
        err = ((fake_quant(c[None, :], chunk[:, None], precision) - c[None, :]) ** 2 * w).sum(axis=1)
        j = int(np.argmin(err))
        if err[j] < best_err:
            best, best_err = float(chunk[j]), float(err[j])
    return best



def compute_amax(stats: TensorStats, method: str, precision: str, *, percentile: float = 99.99) -> float:
    """The amax `method` chooses for `stats` (histogram methods need `stats.hist`)."""
    if method == "minmax" or stats.amax <= 0.0:
        return stats.amax
    if stats.hist is None:
        raise ValueError(f"method {method!r} needs a histogram for {stats.name}")
    edges = stats.edges
    if method == "percentile":
        return percentile_amax(stats.hist, edges, percentile)
    if method == "entropy":
        return entropy_amax(stats.hist, edges)
    if method == "mse":
        return mse_amax(stats.hist, edges, precision)
    raise ValueError(f"unknown calibration method {method!r}")
