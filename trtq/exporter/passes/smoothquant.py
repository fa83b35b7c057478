"""SmoothQuant: migrate activation outliers into the weights of the linear layers that read them.

For an activation X read by linear consumers ``y_c = X·W_c`` (``W_c``: [K, N_c]; input channels
j = 1…K on X's last axis), all consumers share one scale per channel (mit-han-lab/smoothquant,
``smooth.py``; algorithms.md §4a), floored at its median:

    w_j = max(1e-5, max_c max_n |W_c[j, n]|),    s̃_j = max(1e-5, max|X_j|^α / w_j^(1−α)),
    s_j = max(s̃_j, median(s̃)),
    X' = X/s,    W_c' = diag(s)·W_c,    so X'·W_c' = X·W_c.

The floor (not in the reference code) keeps the migration to what SmoothQuant is for, shrinking
outlier channels: a channel quiet on the calibration data is not boosted, so a value beyond its
calibration max on unseen data is not clipped by the flattened per-tensor range. 1/s is folded into
what computes X (LayerNorm γ, β; an RMSNorm Mul; a preceding MatMul/Gemm's output columns or Conv's
output channels, through Reshape/Transpose/P·V) or applied by an explicit Mul; readers of X besides
the consumers (a residual Add) get X back by a Mul by s (`trtq.exporter.passes.channel_fold`).

α is chosen per activation from a grid, together with "no smoothing" (s = 1), to minimise on a
seeded sample of calibration rows

    E(α) = mean_c ||X·W_c − Q_a(X/s)·Q_w(diag(s)·W_c)||² / ||X·W_c||²,

with trtq's own quantizers in the run's precision: Q_a per-tensor with amax = max_j max|X_j|/s_j over
the whole calibration set (what minmax calibration then picks), Q_w per output channel (max). An
activation stays as it is when the best α lowers E by less than `min_gain` (relative), or when the
calibration data has fewer than `min_rows_per_channel` rows per channel: with n rows an unseen row
exceeds about K/(n+1) channel maxima, and smoothing takes away the headroom that absorbed them (a
CNN classifier sees one row per image). INT4 is weight-only (no activation is quantized): the pass
then changes nothing.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from trtq.calibrators.methods import fake_quant
from trtq.calibrators.stats import ChannelStatsReducer, ReservoirReducer
from trtq.errors import TrtqError
from trtq.exporter.passes.base import PassResult, graph_to_model
from trtq.exporter.passes.channel_fold import apply_fold
from trtq.exporter.passes.channel_match import FoldTarget, Group, fill_shapes, find_groups, trace_target
from trtq.exporter.passes.context import PassContext
from trtq.exporter.passes.registry import register_pass
from trtq.exporter.weights import quantize_per_channel
from trtq.precision import TABLE

__all__ = ["ALPHAS", "SmoothQuantOptions", "search_alpha", "smoothing_scale", "smoothquant"]

logger = logging.getLogger(__name__)

ALPHAS = tuple(round(a, 2) for a in np.linspace(0.0, 1.0, 21))
_FLOOR = 1e-5
_INT4 = "INT4 is weight-only: no activation is quantized"


@dataclass(frozen=True)
class SmoothQuantOptions:
    """Options of the `smoothquant` pass.

    Args:
        alphas: the migration strengths tried per activation (each in [0, 1]).
        max_rows: activation rows sampled per tensor for the α search.
        min_gain: the least relative error reduction over no smoothing worth a change.
        min_rows_per_channel: an activation is left alone unless the calibration data gives it at
            least this many rows per input channel (module docstring).
    """

    alphas: tuple[float, ...] = ALPHAS
    max_rows: int = 512
    min_gain: float = 0.01
    min_rows_per_channel: float = 4.0

    def __post_init__(self) -> None:
        if not self.alphas or not all(0.0 <= a <= 1.0 for a in self.alphas):
            raise TrtqError(f"smoothquant alphas {self.alphas} must be one or more values in [0, 1].",
                            "pass e.g. alphas=0.5,0.6,0.7.")
        if self.max_rows < 1 or self.min_rows_per_channel < 0:
            raise TrtqError(f"smoothquant max_rows={self.max_rows}, min_rows_per_channel="
                            f"{self.min_rows_per_channel}: rows must be positive.", "use e.g. max_rows=512.")


@register_pass("smoothquant", order=30, options=SmoothQuantOptions(),
               summary="SmoothQuant scale migration, alpha searched per layer, folded into LayerNorm or weights")
def smoothquant(model: onnx.ModelProto, ctx: PassContext,
                options: SmoothQuantOptions = SmoothQuantOptions()) -> PassResult:
    """Smooth every activation that MatMul/Gemm nodes with constant weights read (module docstring).

    Args:
        model: an ONNX model; it is not modified.
        ctx: pass context: the precision, --exclude and the calibration data.
        options: `SmoothQuantOptions` (the alphas tried, rows, minimum gain and coverage).

    Returns:
        `PassResult`; report keys: ``precision``, ``alphas``, ``rows``, ``min_gain``,
        ``min_rows_per_channel``, ``smoothed`` (per activation: consumers, fold target, α, error,
        error without smoothing, error per α, per-tensor amax before/after, scales s, restored
        readers), ``skipped`` (activation, consumers, reason), ``alpha_counts``.
    """
    precision = ctx.config.precision
    alphas, max_rows = options.alphas, options.max_rows
    min_gain, min_rows_per_channel = options.min_gain, options.min_rows_per_channel
    report: dict[str, Any] = {"precision": precision, "alphas": list(alphas), "rows": 0, "min_gain": min_gain,
                              "min_rows_per_channel": min_rows_per_channel, "smoothed": [], "skipped": [],
                              "alpha_counts": {}}
    if not TABLE[precision].activations:
        report["skipped"].append({"tensor": None, "reason": _INT4})
        return PassResult(model, report)
    graph = gs.import_onnx(model)
    fill_shapes(graph, model)
    groups, report["skipped"] = find_groups(graph, ctx.config.exclude)
    if not groups:
        return PassResult(model, report)
    axes = {g.tensor.name: -1 for g in groups}
    channels = ChannelStatsReducer(axes)
    sample = ReservoirReducer(axes, max_rows, np.random.default_rng(ctx.config.seed))
    ctx.observe(model, [channels, sample], "smoothquant")  # one pass over the data for both
    stats, rows = channels.result(), sample.rows
    report["rows"] = max((len(r) for r in rows.values()), default=0)
    targets = [trace_target(graph, g) for g in groups]  # on the unchanged graph
    for group, target in zip(groups, targets):
        name = group.tensor.name
        reason = _coverage_reason(int(stats[name].count.min()), group.channels, min_rows_per_channel)
        if reason is None and (name not in rows or not len(rows[name])):
            reason = "no finite calibration rows"
        if reason is not None:
            report["skipped"].append(_entry(group, reason))
            continue
        entry = _smooth_one(graph, group, target, stats[name].absmax, rows[name], precision, alphas, min_gain)
        report["smoothed" if "scales" in entry else "skipped"].append(entry)
    report["alpha_counts"] = dict(sorted(Counter(f"{e['alpha']:.2f}" for e in report["smoothed"]).items()))
    logger.info("smoothquant: smoothed %d activation(s), skipped %d; alphas %s", len(report["smoothed"]),
                len(report["skipped"]), report["alpha_counts"])
    if not report["smoothed"]:
        return PassResult(model, report)
    graph.cleanup().toposort()
    return PassResult(graph_to_model(graph, model), report)


def _coverage_reason(seen: int, channels: int, per_channel: float) -> str | None:
    """Why `seen` calibration rows are too few to trust per-channel maxima of `channels` channels."""
    if seen >= per_channel * channels:
        return None
    return (f"too few calibration rows: {seen} for {channels} channels (needs {per_channel:g} per channel); "
            f"an unseen row would exceed about {channels / (seen + 1):.2g} channel maxima, which smoothing "
            "clips (no outlier channel is left to give the per-tensor range headroom)")


def _entry(group: Group, reason: str, **extra: Any) -> dict[str, Any]:
    return {"tensor": group.tensor.name, "consumers": group.names, "reason": reason, **extra}


def _smooth_one(graph: gs.Graph, group: Group, target: FoldTarget, absmax: np.ndarray, rows: np.ndarray,
                precision: str, alphas: tuple[float, ...], min_gain: float) -> dict[str, Any]:
    """Search α for one activation and fold the winner; the report entry (with a reason if skipped)."""
    weights = _distinct_weights(group)
    best, errors, error_none = search_alpha(rows, absmax, weights, precision, alphas)
    common = {"errors": {f"{a:.2f}": e for a, e in errors.items()}, "error_none": error_none,
              "fold": target.describe()}
    if not errors[best] < error_none * (1.0 - min_gain):
        logger.debug("smoothquant: %s not smoothed (best alpha %.2f: %.3g vs %.3g)", group.tensor.name, best,
                     errors[best], error_none)
        reason = (f"not profitable: the best alpha ({best:.2f}) lowers the error by less than {min_gain:.0%} "
                  f"({errors[best]:.4g} vs {error_none:.4g} without smoothing)")
        return _entry(group, reason, **common)
    scale = smoothing_scale(absmax, weights, best)
    restored = apply_fold(graph, group, target, scale, tag="smoothquant")
    logger.debug("smoothquant: %s alpha %.2f error %.3g -> %.3g via %s", group.tensor.name, best, error_none,
                 errors[best], target.kind)
    return {"tensor": group.tensor.name, "consumers": group.names, "alpha": best, "error": errors[best],
            **common, "act_amax": float(absmax.max()), "act_amax_after": float(np.max(absmax / scale)),
            "scales": scale.astype(np.float32).tolist(), "restored": restored}


def _distinct_weights(group: Group) -> list[np.ndarray]:
    seen: dict[int, np.ndarray] = {}
    for c in group.consumers:
        seen.setdefault(id(c.weight), c.kn())
    return list(seen.values())


def smoothing_scale(absmax: np.ndarray, weights: list[np.ndarray], alpha: float) -> np.ndarray:
    """SmoothQuant's ``s = max(1e-5, max|X|^α / max(1e-5, max|W_row|)^(1−α))`` over all consumers."""
    w_max = np.maximum(np.max([np.abs(w).max(axis=1) for w in weights], axis=0), _FLOOR)
    a_max = np.asarray(absmax, np.float64)
    scale = np.maximum(a_max**alpha / w_max ** (1.0 - alpha), _FLOOR)
    return np.maximum(scale, np.median(scale))


def search_alpha(rows: np.ndarray, absmax: np.ndarray, weights: list[np.ndarray], precision: str,
                 alphas: tuple[float, ...]) -> tuple[float, dict[float, float], float]:
    """The α of `alphas` with the least quantized-output error on `rows` (module docstring, E(α)).

    Args:
        rows: activation rows [R, K].
        absmax: per-channel max |X| over the whole calibration set [K].
        weights: the consumers' weights, each [K, N].
        precision: int8 | fp8.
        alphas: candidates.

    Returns:
        (best α, error per α, error without smoothing).
    """
    x = np.asarray(rows, np.float32)
    refs = [x @ w.astype(np.float32) for w in weights]

    def error(scale: np.ndarray) -> float:
        return _output_error(x, weights, refs, scale, float(np.max(absmax / scale)), precision)

    errors = {float(a): error(smoothing_scale(absmax, weights, a)) for a in alphas}
    best = min(errors, key=lambda a: (errors[a], a))
    return best, errors, error(np.ones_like(np.asarray(absmax, np.float64)))


def _output_error(x: np.ndarray, weights: list[np.ndarray], refs: list[np.ndarray], scale: np.ndarray,
                  amax: float, precision: str) -> float:
    """mean_c ||ref_c − Q_a(x/s)·Q_w(diag(s)·W_c)||² / ||ref_c||² with per-tensor activation `amax`."""
    xq = fake_quant(x / scale.astype(np.float32), amax, precision).astype(np.float32)
    total = 0.0
    for w, ref in zip(weights, refs):
        q = quantize_per_channel(scale[:, None] * w, 1, precision)
        wq = q.values.astype(np.float32) * q.scale[None, :]
        total += _sqnorm(ref - xq @ wq) / max(_sqnorm(ref), 1e-30)
    return total / len(weights)


def _sqnorm(a: np.ndarray) -> float:
    """Sum of squares (a BLAS dot product: fast, float32 accumulation is ample for comparing α)."""
    flat = a.reshape(-1)
    return float(np.dot(flat, flat))
