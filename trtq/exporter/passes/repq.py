"""RepQ-ViT: reparameterize LayerNorm outputs so one symmetric per-tensor scale fits every channel.

RepQ-ViT (zkkli/RepQ-ViT, ``quant_model.py``; algorithms.md §6a) gives each channel c of a
LayerNorm output X its own range [m_c, M_c] and moves the channel-wise part into the LayerNorm affine
and the linear layers that read X, leaving a layer-wise quantizer. TensorRT quantizes activations
symmetrically (zero point 0), so RepQ's zero point is re-expressed as a per-channel shift δ folded
into β and the consumers' biases (algorithms.md §9.1; x = x' + δ ⇒ xW = x'W + δW):

    δ_c = (M_c + m_c)/2,   h_c = (M_c − m_c)/2,   r_c = h_c / mean_c(h),
    X' = (X − δ)/r  ∈ [−mean(h), mean(h)] in every channel,
    γ' = γ/r,   β' = (β − δ)/r,
    W' = diag(r)·W,   b' = b + δ·W     (for every consumer: X·W + b = X'·W' + b').

RepQ's r_c = Δ_c/mean(Δ) with Δ_c the channel's asymmetric step is this r_c (Δ_c ∝ M_c − m_c).
With ``shift=False`` the zero-point part is left out instead: δ = 0 and h_c = max(|m_c|, |M_c|)
(then r is SmoothQuant's scale at α = 1). Ranges are min/max over the calibration data (RepQ-ViT
picks per-channel percentiles by MSE; trtq's activation ranges are minmax by default). Readers of X
besides the consumers (BERT's residual Add) get X back as X'·r + δ (a Mul and an Add). As in
SmoothQuant, an output is left alone when the calibration data has fewer than `min_rows_per_channel`
rows per channel: equal ranges leave no headroom for values beyond a channel's calibration max. Only
activations read straight from a LayerNormalization are reparameterized; RMSNorm has no β to take δ.
INT4 is weight-only: the pass then changes nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from trtq.calibrators.stats import ChannelRangeReducer
from trtq.errors import TrtqError
from trtq.exporter.passes.base import PassResult, graph_to_model
from trtq.exporter.passes.channel_fold import apply_fold
from trtq.exporter.passes.channel_match import (
    FoldTarget,
    Group,
    fill_shapes,
    find_groups,
    node_name,
    trace_target,
)
from trtq.exporter.passes.context import PassContext
from trtq.exporter.passes.registry import register_pass
from trtq.precision import TABLE

__all__ = ["RepqOptions", "repq_reparameterize", "repq_scales"]

logger = logging.getLogger(__name__)

_INT4 = "INT4 is weight-only: no activation is quantized"
_RELATIVE_FLOOR = 1e-6  # a constant channel gets this fraction of the widest channel's half-range


@dataclass(frozen=True)
class RepqOptions:
    """Options of the `repq` pass.

    Args:
        shift: fold RepQ's asymmetric part as a per-channel shift (True) or leave it out (False).
        min_rows_per_channel: a LayerNorm output is left alone unless the calibration data gives it
            at least this many rows per channel (equal ranges leave no headroom for unseen values).
    """

    shift: bool = True
    min_rows_per_channel: float = 4.0

    def __post_init__(self) -> None:
        if self.min_rows_per_channel < 0:
            raise TrtqError(f"repq min_rows_per_channel={self.min_rows_per_channel} is negative.", "use e.g. 4.")


@register_pass("repq", order=40, options=RepqOptions(),
               summary="RepQ-ViT: LayerNorm output channel ranges folded into gamma/beta and the next layers")
def repq_reparameterize(model: onnx.ModelProto, ctx: PassContext, options: RepqOptions = RepqOptions()) -> PassResult:
    """Reparameterize every LayerNorm output read by MatMul/Gemm nodes with constant weights.

    Args:
        model: an ONNX model; it is not modified.
        ctx: pass context: the precision, --exclude and the calibration data.
        options: `RepqOptions` (the shift, the coverage needed).

    Returns:
        `PassResult`; report keys: ``precision``, ``shift``, ``reparameterized`` (per LayerNorm
        output: the LayerNorm, consumers, per-tensor amax before/after, scales r, shifts δ,
        restored readers), ``skipped`` (activation, consumers, reason).
    """
    shift, min_rows_per_channel = options.shift, options.min_rows_per_channel
    report: dict[str, Any] = {"precision": ctx.config.precision, "shift": shift,
                              "min_rows_per_channel": min_rows_per_channel, "reparameterized": [],
                              "skipped": []}
    if not TABLE[ctx.config.precision].activations:
        report["skipped"].append({"tensor": None, "reason": _INT4})
        return PassResult(model, report)
    graph = gs.import_onnx(model)
    fill_shapes(graph, model)
    groups, report["skipped"] = find_groups(graph, ctx.config.exclude)
    plans = _layernorm_groups(graph, groups, report["skipped"])
    if not plans:
        return PassResult(model, report)
    reducer = ChannelRangeReducer([g.tensor.name for g, _ in plans])
    ctx.observe(model, [reducer], "repq")
    ranges = reducer.ranges
    for group, target in plans:
        lo, hi, rows = ranges.get(group.tensor.name, (None, None, 0))
        if rows < min_rows_per_channel * group.channels:
            reason = (f"too few calibration rows: {rows} for {group.channels} channels "
                      f"(needs {min_rows_per_channel:g} per channel)")
            report["skipped"].append({"tensor": group.tensor.name, "consumers": group.names,
                                      "reason": reason})
            continue
        report["reparameterized"].append(_reparameterize(graph, group, target, lo, hi, shift))
    logger.info("repq: reparameterized %d LayerNorm output(s), skipped %d", len(report["reparameterized"]),
                len(report["skipped"]))
    if not report["reparameterized"]:
        return PassResult(model, report)
    graph.cleanup().toposort()
    return PassResult(graph_to_model(graph, model), report)


def _layernorm_groups(graph: gs.Graph, groups: list[Group],
                      skipped: list[dict[str, Any]]) -> list[tuple[Group, FoldTarget]]:
    plans = []
    for group in groups:
        target = trace_target(graph, group)
        if target.kind == "norm" and not target.chain:
            plans.append((group, target))
            continue
        why = target.reason or f"it comes from {target.kind} {node_name(target.node)!r}" + (
            f" through {len(target.chain)} op(s)" if target.chain else "")
        skipped.append({"tensor": group.tensor.name, "consumers": group.names,
                        "reason": f"not read straight from a LayerNormalization ({why})"})
    return plans


def repq_scales(lo: np.ndarray, hi: np.ndarray, shift: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """RepQ's per-channel scale r and shift δ from per-channel ranges (module docstring).

    Returns:
        (r, δ): δ is None when `shift` is False.
    """
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    if shift:
        delta, half = (hi + lo) / 2.0, (hi - lo) / 2.0
    else:
        delta, half = None, np.maximum(np.abs(lo), np.abs(hi))
    top = float(half.max())
    half = np.maximum(half, top * _RELATIVE_FLOOR if top > 0 else 1.0)
    return half / half.mean(), delta


def _reparameterize(graph: gs.Graph, group: Group, target: FoldTarget, lo: np.ndarray, hi: np.ndarray,
                    shift: bool) -> dict[str, Any]:
    scale, delta = repq_scales(lo, hi, shift)
    restored = apply_fold(graph, group, target, scale, delta, tag="repq")
    centred = (np.array([lo, hi]) - (delta if delta is not None else 0.0)) / scale
    amax, amax_after = float(np.max(np.abs([lo, hi]))), float(np.max(np.abs(centred)))
    logger.debug("repq: %s amax %.3g -> %.3g", group.tensor.name, amax, amax_after)
    return {
        "tensor": group.tensor.name,
        "layernorm": node_name(target.node),
        "consumers": group.names,
        "act_amax": amax,
        "act_amax_after": amax_after,
        "scales": scale.astype(np.float32).tolist(),
        "shifts": delta.astype(np.float32).tolist() if delta is not None else None,
        "restored": restored,
    }
