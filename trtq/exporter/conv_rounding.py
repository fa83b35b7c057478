"""INT8 convolution weights rounded for the least output error on calibration data (GPTQ per conv).

A Conv with G groups computes, for group g and output channel n, ``y_n = Σ_k p_k·W[k, n] + b_n`` over
the im2col patch ``p`` (K = C_in/G · kh · kw taps, in the weight's (c, i, j) order; padding zeros
included, so a border output sees the zeros it really multiplies). Quantizing W per output channel
(``s_n``, INT8 symmetric, ``q = clip(rint(W/s), -127, 127)``) changes the output on the calibration
patches P (n × K) by ``P·Δ``; the layer-wise objective per group is GPTQ's

    L(Ŵ) = ½·tr(Δᵀ·H·Δ),   H = (2/n)·Σ p·pᵀ   (K × K per group; depthwise: one 9 × 9 per channel),

and the rounding is chosen to make it small, the scales staying ``s_n = max|W[:, n]| / 127``:

1. Scales: a per-channel clip chosen for the least ``Σ_k H_kk·δ_kn²`` was measured and dropped: on
   EfficientNet-Lite0 (held-out crops, weights alone INT8) it gained 0.03 dB with nearest rounding
   and cost 2.6 dB under GPTQ, which compensates rounding error but not clipping error.
2. GPTQ (`trtq.exporter.gptq`, Frantar et al. 2022) with those scales: taps in order of descending
   ``diag H`` (act-order), each rounded and its error pushed onto the taps not yet rounded through the
   Cholesky factor of ``(H + λI)⁻¹`` (λ = 1 % of the mean diagonal). Every group runs at once (the
   K-loop is shared, the groups batched), so a depthwise conv costs K = 9 steps.
3. Bias: the patch gets a constant tap 1 (the bias's input), placed last and never rounded, so the
   mean output error left after rounding moves into the bias (``b ← b + δ_bias``): the exact
   least-squares correction of the shift, which bias correction (`biascorr`) estimates for plain
   rounding. The new bias is returned for the caller to write into the graph. A bias that
   `biascorr` already shifted for plain rounding is first put back (``b = b' + ΔW_rtn·m``, m the
   patch mean), or the correction would count twice (EfficientNet-Lite0: 17.4 dB instead of 21.0).
4. The result is kept per conv only if its objective (summed over groups, bias tap included) is
   below plain rounding's with the original bias; the report says which was kept.

The statistics are sums over the first `samples` calibration samples in their fixed order (each
sample's product in float32 on at most `MAX_ROWS` evenly strided output positions, summed in
float64), so equal inputs give equal bits whatever the batch size. Memory: one sample of one conv's
patches at a time plus the K × K sums (K ≤ a few thousand for dense convs).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from trtq._ort import make_session
from trtq.exporter.weights import QuantizedWeight
from trtq.precision import TABLE

__all__ = ["MAX_ROWS", "QMAX", "ConvRounding", "ConvStats", "collect_conv_stats", "round_conv_weight", "round_convs",
           "write_biases"]

logger = logging.getLogger(__name__)

_TINY = np.finfo(np.float32).tiny
QMAX = TABLE["int8"].qmax  # the precision table's INT8 (narrow range)
MAX_ROWS = 1024  # output positions per sample and conv that enter the statistics


@dataclass
class ConvStats:
    """Σ p̃·p̃ᵀ per group of one conv's patches p̃ = [p, 1] (float64, [G, K+1, K+1]) and the row count."""

    xtx: np.ndarray
    rows: int = 0

    @property
    def hessian(self) -> np.ndarray:
        return self.xtx * (2.0 / max(self.rows, 1))


@dataclass
class ConvRounding:
    """One conv's rounded weight, its new bias, and the objective of each candidate."""

    weight: QuantizedWeight
    bias: np.ndarray | None
    info: dict[str, Any] = field(default_factory=dict)


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _conv_geometry(node: onnx.NodeProto, w_shape: tuple[int, ...]) -> dict[str, Any] | None:
    """Group, kernel, strides, pads, dilations of a 2-D Conv; None for what this module does not handle."""
    a = _attrs(node)
    if len(w_shape) != 4 or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return None
    kh, kw = w_shape[2:]
    return {"group": int(a.get("group", 1)), "kernel": (kh, kw), "strides": tuple(a.get("strides", (1, 1))),
            "pads": tuple(a.get("pads", (0, 0, 0, 0))), "dilations": tuple(a.get("dilations", (1, 1)))}


def _windows(x: np.ndarray, geo: Mapping[str, Any]) -> np.ndarray:
    """[N, C, Ho, Wo, kh, kw] im2col view (no copy) of x (NCHW) for the conv's geometry (padding zeros included)."""
    (kh, kw), (sh, sw), (dh, dw) = geo["kernel"], geo["strides"], geo["dilations"]
    pt, pl, pb, pr = geo["pads"]
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    win = np.lib.stride_tricks.sliding_window_view(xp, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    return win[:, :, ::sh, ::sw, ::dh, ::dw]


def _accumulate(stats: ConvStats | None, x: np.ndarray, geo: Mapping[str, Any],
                max_rows: int = MAX_ROWS) -> ConvStats:
    """Fold one batch of a conv's input into its per-group sums of p̃·p̃ᵀ, sample by sample.

    Each sample's output positions are thinned to at most `max_rows` (an even stride over them, in
    row-major order), and only those positions' patches are gathered; a sample's product is taken in
    float32 (BLAS) and summed in float64, so the sums depend neither on the batch size nor on the order
    within a sample.
    """
    g = geo["group"]
    for sample in np.asarray(x, np.float32)[:, None]:
        win = _windows(sample, geo)[0]  # [C, Ho, Wo, kh, kw], a view
        c, ho, wo, kh, kw = win.shape
        cg, t = c // g, kh * kw
        ys, xs = np.divmod(np.arange(0, ho * wo, max(1, -(-(ho * wo) // max_rows))), wo)
        picked = win[:, ys, xs]  # [C, R, kh, kw]: the thinned positions' patches only
        # rows per group: [G, R, K] with K in the weight's (c, i, j) order
        rows = picked.reshape(g, cg, len(ys), t).transpose(0, 2, 1, 3).reshape(g, len(ys), cg * t)
        aug = np.concatenate([rows, np.ones((g, rows.shape[1], 1), np.float32)], axis=2)
        # contiguous operands keep numpy's batched matmul on BLAS (a transposed view is a slow loop)
        xtx = (np.ascontiguousarray(np.swapaxes(aug, 1, 2)) @ aug).astype(np.float64)
        if stats is None:
            stats = ConvStats(np.zeros_like(xtx))
        stats.xtx += xtx
        stats.rows += aug.shape[1]
    assert stats is not None
    return stats


def collect_conv_stats(model: onnx.ModelProto, convs: Mapping[str, tuple[str, Mapping[str, Any]]],
                       batches: Iterable[Mapping[str, np.ndarray]], samples: int) -> dict[str, ConvStats]:
    """Per conv (node name -> (input tensor, geometry)): the patch sums over the first `samples` samples."""
    tensors = sorted({t for t, _ in convs.values()})
    if not tensors:  # ORT runs every output for an empty name list
        return {}
    session = make_session(model, outputs=tensors)
    stats: dict[str, ConvStats] = {}
    seen = 0
    for batch in batches:
        n = next(iter(batch.values())).shape[0]
        take = min(n, samples - seen)
        feed = {k: v[:take] for k, v in batch.items()}
        values = dict(zip(tensors, session.run(tensors, feed), strict=True))
        for name, (tensor, geo) in sorted(convs.items()):
            stats[name] = _accumulate(stats.get(name), values[tensor], geo)
        seen += take
        if seen >= samples:
            break
    return stats


def _objective(delta: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Per group and output channel δᵀ·H·δ for Δ [G, K, N], H [G, K, K] -> [G, N]."""
    return np.einsum("gkn,gkn->gn", h @ delta, delta)


def _rtn(w: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(w / scale), -QMAX, QMAX)


def _inverse_cholesky(h: np.ndarray, damp: float) -> np.ndarray:
    """Upper U [G, K, K] with (H + λ_g I)⁻¹ = Uᵀ·U per group (λ x10 on a failed factorisation)."""
    eye = np.eye(h.shape[-1])
    base = np.maximum(np.mean(np.diagonal(h, axis1=1, axis2=2), axis=1), 1e-12)[:, None, None]
    for attempt in range(5):
        try:
            inv = np.linalg.inv(h + damp * (10.0 ** attempt) * base * eye)
            return np.swapaxes(np.linalg.cholesky((inv + np.swapaxes(inv, 1, 2)) / 2), 1, 2)
        except np.linalg.LinAlgError:
            continue
    raise np.linalg.LinAlgError("damped conv Hessian is not positive definite")


def _gptq(w: np.ndarray, scale: np.ndarray, h: np.ndarray, damp: float) -> tuple[np.ndarray, np.ndarray]:
    """GPTQ over the augmented taps (last tap = bias, never rounded): codes [G, K, N] and bias shift [G, N].

    w: [G, K+1, N] (last row the bias), scale: [G, N], h: [G, K+1, K+1].
    """
    g, k1, n = w.shape
    k = k1 - 1
    h = h.copy()
    diag = np.diagonal(h, axis1=1, axis2=2).copy()
    dead = diag[:, :k] == 0
    for gi, ki in zip(*np.nonzero(dead), strict=True):
        h[gi, ki, :] = 0.0
        h[gi, :, ki] = 0.0
        h[gi, ki, ki] = 1.0
    order = np.argsort(-np.diagonal(h, axis1=1, axis2=2)[:, :k], axis=1, kind="stable")
    perm = np.concatenate([order, np.full((g, 1), k)], axis=1)  # the bias tap last
    hp = np.take_along_axis(np.take_along_axis(h, perm[:, :, None], axis=1), perm[:, None, :], axis=2)
    u = _inverse_cholesky(hp, damp)
    work = np.take_along_axis(w, perm[:, :, None], axis=1).copy()
    codes = np.empty((g, k, n))
    s = scale
    gi = np.arange(g)
    for i in range(k):
        codes[:, i] = np.clip(np.rint(work[:, i] / s), -QMAX, QMAX)
        e = (work[:, i] - codes[:, i] * s) / u[gi, i, i][:, None]
        work[:, i + 1:] -= u[:, i, i + 1:][:, :, None] * e[:, None, :]
    out = np.empty_like(codes)
    np.put_along_axis(out, order[:, :, None], codes, axis=1)
    return out, work[:, k] - w[:, k]


def round_conv_weight(w: np.ndarray, bias: np.ndarray | None, stats: ConvStats, group: int, *,
                      gptq: bool = True, damp: float = 0.01, bias_corrected: bool = False) -> ConvRounding:
    """Per-channel INT8 of a conv weight [C_out, C_in/G, kh, kw] rounded on the patch statistics.

    `bias_corrected`: the bias already holds bias correction's shift for nearest rounding
    (``b' = b − ΔW_rtn·m``, `biascorr`); it is undone first with the patch mean ``m`` of these
    statistics, so the target is the FP32 layer's output and the shift is not counted twice.

    Returns the `QuantizedWeight` (scales per output channel, axis 0) and the corrected bias (None
    when the conv had none and no correction was needed).
    """
    c_out = w.shape[0]
    ng = c_out // group
    k = int(np.prod(w.shape[1:]))
    h = stats.hessian  # [G, K+1, K+1]
    wg = w.astype(np.float64).reshape(group, ng, k).transpose(0, 2, 1)  # [G, K, Ng]
    b = np.zeros(c_out) if bias is None else bias.astype(np.float64)
    amax = np.abs(wg).max(axis=1)  # [G, Ng]
    scale = np.maximum(amax / QMAX, _TINY)
    if bias_corrected:
        mean = stats.xtx[:, :k, k] / max(stats.rows, 1)  # [G, K]: E[p]
        shift = np.einsum("gkn,gk->gn", _rtn(wg, scale[:, None, :]) * scale[:, None, :] - wg, mean)
        b = b + shift.reshape(c_out)
    aug = np.concatenate([wg, b.reshape(group, 1, ng)], axis=1)

    def total(codes: np.ndarray, new_b: np.ndarray) -> float:
        delta = np.concatenate([codes * scale[:, None, :], new_b[:, None, :]], axis=1) - aug
        return float(_objective(delta, h).sum())

    candidates = {"rtn": (_rtn(wg, scale[:, None, :]), b.reshape(group, ng))}
    if gptq:
        try:
            codes, shift = _gptq(aug, scale, h, damp)
            candidates["gptq"] = (codes, b.reshape(group, ng) + shift)
        except np.linalg.LinAlgError:
            logger.warning("conv GPTQ: Hessian not positive definite; plain rounding kept")
    errors = {name: total(*c) for name, c in candidates.items()}
    kept = min(errors, key=lambda name: (errors[name], name != "rtn"))
    codes, new_b = candidates[kept]
    values = codes.transpose(0, 2, 1).reshape(w.shape).astype(np.int8)
    qw = QuantizedWeight(values, scale.reshape(c_out).astype(np.float32), amax.reshape(c_out))
    qw.info = {"method": f"conv-{kept}", "proxy_error": dict(errors)}
    new_bias = new_b.reshape(c_out)
    changed = bias is not None or np.any(new_bias != 0)
    return ConvRounding(qw, new_bias.astype(np.float32) if changed else None, qw.info)


def round_convs(model: onnx.ModelProto, convs: Mapping[str, str], batches: Iterable[Mapping[str, np.ndarray]],
                samples: int, *, bias_corrected: Iterable[str] = (), **options: Any) -> dict[str, ConvRounding]:
    """Round the weights of the Convs named in `convs` (node name -> weight tensor).

    `bias_corrected`: the convs whose bias bias correction changed (see `round_conv_weight`).
    Returns node name -> `ConvRounding` for the convs this module handles (2-D, explicit pads).
    """
    corrected = set(bias_corrected)
    inits = {i.name: i for i in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    todo: dict[str, tuple[str, Mapping[str, Any]]] = {}
    for name, weight in convs.items():
        node = nodes[name]
        if weight not in inits:
            continue
        geo = _conv_geometry(node, tuple(inits[weight].dims))
        if geo is not None:
            todo[name] = (node.input[0], geo)
    stats = collect_conv_stats(model, todo, batches, samples)
    out = {}
    for name, (_, geo) in sorted(todo.items()):
        node = nodes[name]
        w = numpy_helper.to_array(inits[node.input[1]])
        bias = numpy_helper.to_array(inits[node.input[2]]) if len(node.input) > 2 and node.input[2] in inits else None
        out[name] = round_conv_weight(w, bias, stats[name], geo["group"], bias_corrected=name in corrected,
                                      **options)
    return out


def write_biases(model: onnx.ModelProto, rounded: Mapping[str, ConvRounding]) -> None:
    """Write each rounded conv's corrected bias into `model` (in place): its own initializer, a copy
    when the bias initializer is shared with another node, or a new one for a conv without bias."""
    inits = {i.name: i for i in model.graph.initializer}
    readers: dict[str, int] = {}
    for node in model.graph.node:
        for t in node.input:
            readers[t] = readers.get(t, 0) + 1
    taken = set(inits) | {t for n in model.graph.node for t in [*n.input, *n.output]}
    for node in model.graph.node:
        r = rounded.get(node.name)
        if r is None or r.bias is None:
            continue
        name = node.input[2] if len(node.input) > 2 and node.input[2] else ""
        if name and name in inits and readers.get(name, 0) == 1:
            inits[name].CopyFrom(numpy_helper.from_array(r.bias, name))
            continue
        fresh, i = f"{node.name}_bias_rounded", 1
        while fresh in taken:
            fresh, i = f"{node.name}_bias_rounded.{i}", i + 1
        taken.add(fresh)
        model.graph.initializer.append(numpy_helper.from_array(r.bias, fresh))
        if len(node.input) > 2:
            node.input[2] = fresh
        else:
            node.input.append(fresh)
