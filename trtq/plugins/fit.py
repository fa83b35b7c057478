"""Choosing the numbers of a codebook weight (format: `trtq.plugins`): scales, codebook, codes.

Notation: ``Wc`` [N, K] the canonical weight, groups g of G consecutive K positions per row (the last
one ragged), ``e[n, k] >= 0`` the importance of each position (the calibration data's mean power
``E[x_k²]`` of the input channel the weight multiplies, or 1 without data), ``s[n, g]`` the group
scales, ``c`` the codebook (L = 2**b levels). The objective is the expected squared output error
of a linear layer with uncorrelated inputs:

    E(s, c, codes) = Σ_{n,k} e[n,k] · (Wc[n,k] − s[n, g(k)] · c[code[n,k]])²

1. Scales for a fixed codebook (nf4, uniform4, uniform3, and each round of the learned ones): per
   group, ``s = fp16(r · absmax / max(c))`` for r on the INT4 clip grid (0.5 ... 1.0, 26 steps,
   `trtq.exporter.weights.INT4_CLIP_GRID`), codes by nearest level, the r with the least E kept (the
   same activation-aware MSE clip that trtq's uniform INT4 uses; r = 1 is bitsandbytes' NF4 absmax).
2. Learned codebook (codebook4, codebook3): Lloyd-Max = weighted 1-D k-means on the group-normalised
   weights ``u = Wc/s`` with weights ``ω = e·s²`` (so E = Σ ω (u − c)², exactly), from the weighted
   quantiles ``(i + ½)/L`` of u; each iteration assigns by midpoints and moves every level to its
   cell's weighted mean, until no level moves (at most 100 iterations). Alternated with step 1 for
   3 rounds (scales for the codebook, codebook for the scales), starting from ``s = absmax``.
   One codebook per tensor (R = 1): 2**b float16 numbers, nothing next to the per-group scales.
3. Codes: `reference.assign_codes` (nearest stored level, float16 codebook and scales).
4. GPTQ error feedback (MatMul weights given their input's Hessian ``H = (2/n)·Σ x·xᵀ``): with s and
   c frozen, `trtq.exporter.gptq.gptq_round` assigns input channel by input channel (act-order,
   damped Cholesky) and pushes each channel's error onto the channels not yet assigned; the result
   is kept only when its proxy error ``tr(Δᵀ·H·Δ)`` is below nearest assignment's (reported).

Determinism: float64 throughout, fixed grids and orders, no random numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trtq.errors import TrtqError
from trtq.plugins.reference import (
    NF4_LEVELS,
    UNIFORM3_LEVELS,
    UNIFORM4_LEVELS,
    assign_codes,
    dequantize_codebook,
    group_index,
    pack_codes,
)
from trtq.precision import WEIGHT_FORMAT_TABLE

__all__ = ["WEIGHT_FORMATS", "CodebookWeight", "fit_codebook_weight", "lloyd_max"]

_FIXED = {"nf4": NF4_LEVELS, "grid4": UNIFORM4_LEVELS, "grid3": UNIFORM3_LEVELS}
# codebook format (trtq.precision.WEIGHT_FORMAT_TABLE) -> (bits, fixed codebook or None for a learned one)
WEIGHT_FORMATS: dict[str, tuple[int, np.ndarray | None]] = {
    f.name: (f.bits, None if f.levels == "learned" else _FIXED[f.levels if f.levels == "nf4" else f"grid{f.bits}"])
    for f in WEIGHT_FORMAT_TABLE.values() if f.codebook
}
_ROUNDS = 3
_LLOYD_ITERS = 100


@dataclass
class CodebookWeight:
    """One weight in the codebook storage format, and what was chosen for it."""

    format: str
    bits: int
    group_size: int
    k: int
    packed: np.ndarray  # uint8 [N, bits·ceil(K/8)]
    codebook: np.ndarray  # float16 [1, 2**bits]
    scales: np.ndarray  # float16 [N, ceil(K/G)]
    info: dict[str, Any] = field(default_factory=dict)

    def dequantize(self) -> np.ndarray:
        """The float32 ``Wc`` [N, K] the stored model computes."""
        return dequantize_codebook(self.packed, self.codebook, self.scales, self.bits, self.group_size, self.k)

    @property
    def nbytes(self) -> int:
        """Bytes stored: packed codes, codebook and scales."""
        return int(self.packed.nbytes + self.codebook.nbytes + self.scales.nbytes)


def fit_codebook_weight(wc: np.ndarray, fmt: str, group_size: int, *, importance: np.ndarray | None = None,
                        hessian: np.ndarray | None = None) -> CodebookWeight:
    """Quantize ``Wc`` [N, K] to `fmt` with groups of `group_size` along K.

    Args:
        wc: the canonical weight (`reference.canonical_matrix`).
        fmt: one of `WEIGHT_FORMATS`.
        group_size: G, any positive integer (the last group may be shorter).
        importance: e, [K] or [N, K] (None: 1 everywhere).
        hessian: the input's K × K Hessian (MatMul weights with data): GPTQ assignment.
    """
    if fmt not in WEIGHT_FORMATS:
        raise TrtqError(f"unknown weight format {fmt!r}.", f"use one of: {', '.join(WEIGHT_FORMATS)}.")
    bits, fixed = WEIGHT_FORMATS[fmt]
    n, k = wc.shape
    w = np.asarray(wc, np.float64)
    e = np.ones((n, k)) if importance is None else np.broadcast_to(np.asarray(importance, np.float64), (n, k))
    if hessian is not None:
        e = np.broadcast_to(np.diag(hessian).astype(np.float64), (n, k))
    groups = _Groups(w, e + 1e-12, group_size)
    info: dict[str, Any] = {"method": "fixed-codebook" if fixed is not None else "lloyd-max"}
    if fixed is not None:
        levels = fixed.astype(np.float64)
        ratio, scales = groups.search_scales(levels)
    else:
        levels, ratio, scales, info["lloyd_iterations"] = _learn(groups, 1 << bits)
    codebook = levels.astype(np.float16)[None, :]
    scales16 = scales.astype(np.float16)
    codes = assign_codes(wc, codebook, scales16, group_size)
    if hessian is not None:
        codes, gptq_info = _gptq(w, codes, codebook, scales16, group_size, hessian)
        info.update(gptq_info)
    info["clip_ratio"] = np.round(ratio, 4)
    return CodebookWeight(fmt, bits, group_size, k, pack_codes(codes, bits), codebook, scales16, info)


class _Groups:
    """The weight as [N, n_groups, G] with zero-importance padding, and per-group absmax."""

    def __init__(self, w: np.ndarray, e: np.ndarray, group_size: int) -> None:
        n, k = w.shape
        ng = -(-k // group_size)
        self.w = np.zeros((n, ng * group_size))
        self.e = np.zeros((n, ng * group_size))
        self.w[:, :k], self.e[:, :k] = w, e
        self.w = self.w.reshape(n, ng, group_size)
        self.e = self.e.reshape(n, ng, group_size)
        self.absmax = np.maximum(np.abs(self.w).max(axis=2), np.finfo(np.float16).tiny)

    def error(self, scale: np.ndarray, levels: np.ndarray) -> np.ndarray:
        """Per-group E with nearest levels (levels sorted), scale [N, ng]."""
        u = self.w / scale[:, :, None]
        idx = np.searchsorted((levels[1:] + levels[:-1]) / 2, u)
        return (self.e * (self.w - scale[:, :, None] * levels[idx]) ** 2).sum(axis=2)

    def search_scales(self, levels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-group clip ratio r and float16-exact scale ``fp16(r·absmax/max(levels))`` of least E."""
        from trtq.exporter.weights import INT4_CLIP_GRID

        levels = np.sort(levels)
        top = float(levels.max())
        best_err = np.full(self.absmax.shape, np.inf)
        best_ratio = np.ones(self.absmax.shape)
        best_scale = np.ones(self.absmax.shape)
        for ratio in INT4_CLIP_GRID:
            scale = _fp16_scale(self.absmax * ratio / top)
            err = self.error(scale, levels)
            better = err < best_err
            best_err = np.where(better, err, best_err)
            best_ratio = np.where(better, ratio, best_ratio)
            best_scale = np.where(better, scale, best_scale)
        return best_ratio, best_scale


def _fp16_scale(s: np.ndarray) -> np.ndarray:
    """The float16 value a scale is stored as (positive, finite), back in float64."""
    f16 = np.finfo(np.float16)
    return np.clip(s, f16.smallest_normal, f16.max).astype(np.float16).astype(np.float64)


def _learn(groups: _Groups, n_levels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    """Alternate Lloyd-Max codebook and scale search; returns levels, clip ratios, scales, iterations."""
    scale = _fp16_scale(groups.absmax)
    ratio = np.ones(scale.shape)
    levels: np.ndarray | None = None
    iterations = []
    live = groups.e > 0
    for _ in range(_ROUNDS):
        u = (groups.w / scale[:, :, None])[live]
        omega = (groups.e * scale[:, :, None] ** 2)[live]
        levels, iters = lloyd_max(u, n_levels, omega, init=levels)
        levels = levels.astype(np.float16).astype(np.float64)
        iterations.append(iters)
        ratio, scale = groups.search_scales(levels)
    return np.sort(levels), ratio, scale, iterations


def lloyd_max(x: np.ndarray, n_levels: int, weights: np.ndarray | None = None,
              init: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Weighted 1-D k-means (Lloyd-Max quantizer) of `x`: sorted levels and the iterations run.

    Starts from `init` or the weighted quantiles (i + ½)/L; stops when no level moves.
    """
    order = np.argsort(x, kind="stable")
    xs = np.asarray(x, np.float64)[order]
    ws = np.ones(len(xs)) if weights is None else np.asarray(weights, np.float64)[order]
    cw = np.concatenate([[0.0], np.cumsum(ws)])
    cwx = np.concatenate([[0.0], np.cumsum(ws * xs)])
    if init is None:
        targets = (np.arange(n_levels) + 0.5) / n_levels * cw[-1]
        levels = xs[np.minimum(np.searchsorted(cw[1:], targets), len(xs) - 1)]
    else:
        levels = np.sort(np.asarray(init, np.float64))
    for it in range(1, _LLOYD_ITERS + 1):
        cuts = np.searchsorted(xs, (levels[1:] + levels[:-1]) / 2)
        bounds = np.concatenate([[0], cuts, [len(xs)]])
        mass = cw[bounds[1:]] - cw[bounds[:-1]]
        moments = cwx[bounds[1:]] - cwx[bounds[:-1]]
        new = np.where(mass > 0, moments / np.where(mass > 0, mass, 1.0), levels)
        new = np.sort(new)
        if np.array_equal(new, levels):
            return new, it
        levels = new
    return levels, _LLOYD_ITERS


def _gptq(w: np.ndarray, codes: np.ndarray, codebook: np.ndarray, scales: np.ndarray, group_size: int,
          hessian: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """GPTQ assignment with frozen codebook and scales; kept when its proxy error is lower."""
    from trtq.exporter.gptq import GptqOptions, gptq_round, proxy_error

    n, k = w.shape
    levels = codebook[0].astype(np.float32)
    col_scale = scales.astype(np.float32)[:, group_index(k, group_size)].T  # [K, N]

    def round_row(kk: int, row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        values = (col_scale[kk][:, None] * levels[None, :]).astype(np.float64)  # [N, L]
        c = np.abs(row[:, None] - values).argmin(axis=1)
        return c, values[np.arange(n), c]

    h = np.asarray(hessian, np.float64)
    gcodes, damp = gptq_round(w.T.copy(), h, GptqOptions(), round_row)
    gcodes = gcodes.T.astype(np.uint8)

    def deq(c: np.ndarray) -> np.ndarray:
        return levels[c] * col_scale.T

    err_rtn = proxy_error((w - deq(codes)).T, h)
    err_gptq = proxy_error((w - deq(gcodes)).T, h)
    kept = "gptq" if err_gptq <= err_rtn else "nearest"
    return (gcodes if kept == "gptq" else codes), {
        "gptq_damp": damp, "proxy_error_nearest": err_rtn, "proxy_error_gptq": err_gptq, "gptq_kept": kept}
