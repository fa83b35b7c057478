"""The non-uniform quantizers in `trtq.quantize`: which tensors, with what data, and their report entries.

- Codebook weights (`QuantConfig.weight_format` other than int4, weight-only): every constant weight
  of MatMul, Gemm and Conv (ConvTranspose stays in floating point), whatever K (the last group may be
  ragged), in the canonical ``[N, K]`` view of `trtq.plugins`. Importance given calibration data:
  MatMul and Gemm (transA = 0) inputs give GPTQ their Hessian ``H = (2/n)·Σ x·xᵀ`` over unpadded
  tokens when ``int4_method = gptq`` (its diagonal weights the codebook and scale fit), else their
  channel power ``E[x_k²]``; a Conv's position (c, y, x) of row n gets the power of the input channel
  that row's group reads at c.
- Log activations (`QuantConfig.act_quant`): the tensors named, or by default every output of
  Softmax or of a GELU (a Gelu node, or a Mul fed within three nodes by Erf or Tanh) that a MatMul
  reads. Shift c: GELU's −min on post-GELU tensors, 0 on tensors that are never negative, else the
  observed −min. Scale s from the quantiles {0.999, 0.9999, 0.99999, 1} of x + c and step a (1 for
  log2, ½ for logsqrt2, q/37 for q in 10..137 for adalog) are chosen together for the least mean
  squared error of `reference.fake_quantize_log` on a seeded sample of at most 2**17 values per
  tensor (AdaLog searches on the consumer's output error instead; this is the tensor's own error).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from trtq.calibrators.data import Batch, BatchStream
from trtq.calibrators.observer import SENTINEL, Reducer
from trtq.config import ActQuantConfig, QuantConfig
from trtq.errors import TrtqError
from trtq.exporter.placement import QuantPlan, WeightSlot
from trtq.plugins.fit import CodebookWeight, fit_codebook_weight
from trtq.plugins.onnx_face import LogParams, WeightSite
from trtq.plugins.reference import GELU_SHIFT, canonical_matrix, fake_quantize_log

__all__ = [
    "ADALOG_R", "CodebookPlan", "ValueSample", "act_consumers", "default_act_tensors", "fit_log_activations",
    "plan_codebook",
    "quantize_codebook", "search_log", "weight_report",
]

_SAMPLE = 1 << 17
_PER_BATCH = 1 << 14
_QUANTILES = (0.999, 0.9999, 0.99999, 1.0)
ADALOG_R = 37


@dataclass
class CodebookPlan:
    """Codebook weights to write: their sites, and the activation each multiplies (axis: -1 or 1)."""

    plan: QuantPlan
    sites: dict[str, WeightSite] = field(default_factory=dict)
    inputs: dict[str, tuple[str, int]] = field(default_factory=dict)
    groups: dict[str, int] = field(default_factory=dict)  # Conv group count


def _constant(graph_tensor: gs.Tensor) -> np.ndarray | None:
    if isinstance(graph_tensor, gs.Constant):
        return np.asarray(graph_tensor.values)
    if len(graph_tensor.inputs) == 1 and graph_tensor.inputs[0].op == "Constant":
        return np.asarray(graph_tensor.inputs[0].attrs["value"].values)
    return None


def _site(node: gs.Node, w: np.ndarray) -> tuple[WeightSite | None, str]:
    if node.op == "Conv" and w.ndim >= 3:
        return WeightSite("Conv", False, w.shape), ""
    if node.op in ("MatMul", "Gemm") and w.ndim == 2:
        return WeightSite(node.op, bool(node.op == "Gemm" and node.attrs.get("transB", 0)), w.shape), ""
    return None, f"no constant weight a codebook format stores ({node.op})"


def plan_codebook(model: onnx.ModelProto, exclude: tuple[str, ...] = ()) -> CodebookPlan:
    """Every constant MatMul / Gemm / Conv weight (input 1) not excluded, read only by such ops alike."""
    graph = gs.import_onnx(model)
    patterns = [re.compile(p) for p in exclude]
    out = CodebookPlan(QuantPlan())
    for node in graph.nodes:
        if node.op not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            continue
        if any(p.search(node.name) for p in patterns):
            out.plan.skipped.append({"node": node.name, "op": node.op, "reason": "matched --exclude"})
            continue
        w = _constant(node.inputs[1]) if len(node.inputs) > 1 else None
        site, reason = _site(node, w) if w is not None and w.dtype in (np.float32, np.float16) else (None, "")
        name = node.inputs[1].name if len(node.inputs) > 1 else ""
        if site is None or out.sites.get(name, site) != site:
            out.plan.skipped.append({"node": node.name, "op": node.op,
                                     "reason": reason or "no constant float weight, or one shared differently"})
            continue
        out.sites[name] = site
        out.plan.weights.setdefault(WeightSlot(name, 0), []).append((node.name, 1))
        out.plan.quantized_nodes.append(node.name)
        if node.op == "Conv":
            out.groups[name] = int(node.attrs.get("group", 1))
        x = node.inputs[0]
        if _constant(x) is None and not (node.op == "Gemm" and node.attrs.get("transA", 0)):
            out.inputs.setdefault(name, (x.name, 1 if node.op == "Conv" else -1))
    return out


def _conv_importance(power: np.ndarray, shape: tuple[int, ...], groups: int) -> np.ndarray:
    """[N, K] importance of a Conv weight [O, I/g, *kernel] from its input's per-channel power [I]."""
    o, i_g = shape[0], shape[1]
    volume = int(np.prod(shape[2:]))
    group = np.arange(o) // (o // groups)
    channel = group[:, None] * i_g + np.arange(i_g * volume)[None, :] // volume
    return power[channel]


def _importance(model: onnx.ModelProto, cp: CodebookPlan, batches: BatchStream | None, method: str,
                progress: bool) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(importance per weight, Hessian per weight) from the calibration data (empty without data)."""
    if batches is None or not cp.inputs:
        return {}, {}
    from trtq.calibrators.observer import observe, token_mask_input
    from trtq.calibrators.stats import ChannelStatsReducer, GramReducer

    linear = {w: x for w, (x, axis) in cp.inputs.items() if axis == -1} if method == "gptq" else {}
    grams = GramReducer(sorted(set(linear.values())), mask=token_mask_input(model))
    channels = ChannelStatsReducer({x: axis for w, (x, axis) in cp.inputs.items() if w not in linear})
    observe(model, batches, [r for r in (grams, channels) if r.tensors], desc="calibrate: importance",
            progress=progress)  # one pass over the data for both
    moments = grams.result()
    hessians = {w: moments[x].hessian for w, x in linear.items()}
    stats = channels.result()
    importance = {}
    for w, (x, axis) in cp.inputs.items():
        if w in hessians:
            continue
        power = stats[x].sqmean
        site = cp.sites[w]
        importance[w] = _conv_importance(power, site.shape, cp.groups[w]) if axis == 1 else power
    return importance, hessians


def quantize_codebook(model: onnx.ModelProto, cp: CodebookPlan, batches: BatchStream | None, cfg: QuantConfig,
                      progress: bool) -> tuple[dict[str, tuple[CodebookWeight, WeightSite]], dict[str, dict[str, Any]]]:
    """Fit every planned weight to `cfg.weight_format`; the weights and their report entries."""
    importance, hessians = _importance(model, cp, batches, cfg.int4_method, progress)
    inits = {t.name: t for t in model.graph.initializer}
    graph = gs.import_onnx(model) if any(w not in inits for w in cp.sites) else None
    weights: dict[str, tuple[CodebookWeight, WeightSite]] = {}
    report: dict[str, dict[str, Any]] = {}
    for name, site in sorted(cp.sites.items()):
        if name in inits:
            w = onnx.numpy_helper.to_array(inits[name])
        else:
            w = _constant(graph.tensors()[name])  # type: ignore[union-attr]
        wc = canonical_matrix(np.asarray(w, np.float32), site.op, site.trans_b)
        cw = fit_codebook_weight(wc, cfg.weight_format, cfg.block_size, importance=importance.get(name),
                                 hessian=hessians.get(name))
        weights[name] = (cw, site)
        report[name] = weight_report(cw, site, cp.plan.weights[WeightSlot(name, 0)],
                                     aware=name in importance or name in hessians)
    return weights, report


def weight_report(cw: CodebookWeight, site: WeightSite, consumers: list[tuple[str, int]], *,
                  aware: bool) -> dict[str, Any]:
    """The sidecar entry of a codebook weight: every number chosen, and the bytes stored."""
    info = dict(cw.info)
    ratio = info.pop("clip_ratio")
    n, k = cw.packed.shape[0], cw.k
    return {
        "kind": "weight", "format": cw.format, "bits": cw.bits, "op": site.op, "shape": list(site.shape),
        "canonical_shape": [n, k], "group_size": cw.group_size, "activation_aware": aware,
        "codebook": cw.codebook.astype(np.float64).tolist(), "scales": cw.scales.astype(np.float64).tolist(),
        "clip_ratio": ratio.tolist(), "bytes": cw.nbytes, "float32_bytes": 4 * n * k,
        "consumers": sorted({c for c, _ in consumers}), **info,
    }


# ---------------------------------------------------------------- log activations


def _is_gelu(node: gs.Node | None, depth: int = 3) -> bool:
    if node is None or depth < 0:
        return False
    if node.op in ("Gelu", "Erf", "Tanh"):
        return node.op == "Gelu" or depth < 3
    if node.op not in ("Mul", "Add", "Div"):
        return False
    return any(_is_gelu(t.inputs[0] if t.inputs else None, depth - 1) for t in node.inputs)


def default_act_tensors(model: onnx.ModelProto) -> dict[str, str]:
    """Post-Softmax and post-GELU tensors read by a MatMul: tensor -> "softmax" | "gelu"."""
    graph = gs.import_onnx(model)
    out: dict[str, str] = {}
    for node in graph.nodes:
        if node.op != "MatMul":
            continue
        for x in node.inputs:
            producer = x.inputs[0] if x.inputs else None
            if producer is not None and producer.op == "Softmax":
                out[x.name] = "softmax"
            elif producer is not None and _is_gelu(producer):
                out[x.name] = "gelu"
    return out


def act_consumers(model: onnx.ModelProto, tensors: list[str]) -> dict[str, list[tuple[str, int]]]:
    """Every (node, input index) reading each tensor."""
    out: dict[str, list[tuple[str, int]]] = {t: [] for t in tensors}
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name in out:
                out[name].append((node.name, i))
    missing = [t for t, c in out.items() if not c]
    if missing:
        raise TrtqError(f"act-quant tensor(s) {', '.join(missing)} are read by no node of the model.",
                        "name activation tensors that some node reads (see the model in Netron).")
    return out


def _sample(model: onnx.ModelProto, names: list[str], batches: BatchStream, seed: int) -> dict[str, np.ndarray]:
    """A seeded sample of at most 2**17 finite values per tensor (at most 2**14 per batch)."""
    from trtq.calibrators.observer import observe

    sample = ValueSample(names, np.random.default_rng(seed))
    observe(model, batches, [sample], desc="act-quant: values")
    return sample.result()


class ValueSample(Reducer):
    """Per tensor, the batches' finite values (no mask sentinel), at most `_PER_BATCH` drawn per batch
    (seeded, in order); `result` keeps the first `_SAMPLE`. Merging appends the other's later batches."""

    def __init__(self, names: list[str], rng: np.random.Generator) -> None:
        self.tensors = tuple(names)
        self.rng = rng
        self.parts: dict[str, list[np.ndarray]] = {n: [] for n in names}

    def update(self, values: Mapping[str, np.ndarray], batch: Batch, samples: int) -> None:
        for name in self.tensors:
            x = np.asarray(values[name], np.float32).ravel()
            x = x[np.abs(x) < SENTINEL]  # the observer's rule: no NaN, infinity or mask sentinel
            if len(x) > _PER_BATCH:
                x = x[np.sort(self.rng.choice(len(x), _PER_BATCH, replace=False))]
            self.parts[name].append(x)

    def merge(self, other: ValueSample) -> None:
        for name, parts in other.parts.items():
            self.parts[name] += parts

    def result(self) -> dict[str, np.ndarray]:
        return {n: np.concatenate(p)[:_SAMPLE] if p else np.zeros(0, np.float32) for n, p in self.parts.items()}


def _steps(method: str) -> list[float]:
    from trtq.precision import LOG_STEPS

    step = LOG_STEPS[method]
    return [step] if step is not None else [q / ADALOG_R for q in range(10, 138)]


def search_log(x: np.ndarray, method: str, bits: int, shift: float) -> tuple[LogParams, float]:
    """The (scale, step) of least MSE on the sample `x`, and that MSE."""
    y = x.astype(np.float64) + shift
    scales = sorted({float(np.quantile(y, q)) for q in _QUANTILES if np.quantile(y, q) > 0})
    if not scales:
        raise TrtqError(f"a {method} tensor is never above {-shift:g} on the calibration data.",
                        "leave it out of --act-quant-tensors.")
    best: tuple[float, LogParams] | None = None
    for step in _steps(method):
        for s in scales:
            p = LogParams(method, bits, float(np.float32(s)), float(np.float32(step)), float(np.float32(shift)))
            err = float(np.mean((fake_quantize_log(x, p.scale, p.step, p.shift, bits).astype(np.float64) - x) ** 2))
            if best is None or err < best[0]:
                best = (err, p)
    return best[1], best[0]  # type: ignore[index]


def fit_log_activations(model: onnx.ModelProto, aq: ActQuantConfig, batches: BatchStream | None, seed: int,
                        ) -> tuple[dict[str, tuple[LogParams, list[tuple[str, int]]]], dict[str, dict[str, Any]]]:
    """Choose the log quantizer of each tensor `aq` names; (tensor -> (params, consumers), report)."""
    if batches is None:
        raise TrtqError("--act-quant needs calibration data to choose each tensor's scale and base.",
                        "pass --calib-data.")
    kinds = default_act_tensors(model)
    names = sorted(aq.tensors) if aq.tensors is not None else sorted(kinds)
    if not names:
        raise TrtqError("the model has no post-Softmax or post-GELU tensor read by a MatMul for --act-quant.",
                        "name the tensors with --act-quant-tensors.")
    consumers = act_consumers(model, names)
    samples = _sample(model, names, batches, seed)
    out: dict[str, tuple[LogParams, list[tuple[str, int]]]] = {}
    report: dict[str, dict[str, Any]] = {}
    for name in names:
        x = samples[name]
        if kinds.get(name) == "gelu":
            shift = GELU_SHIFT
        else:
            shift = 0.0 if x.size == 0 or x.min() >= 0 else float(-x.min())
        params, mse = search_log(x, aq.method, aq.bits, shift)
        out[name] = (params, consumers[name])
        report[name] = {"kind": "activation", "quantizer": "log", **params.to_dict(),
                        "base": 2.0 ** params.step, "adalog_q": round(params.step * ADALOG_R)
                        if aq.method == "adalog" else None, "mse": mse, "samples": int(x.size),
                        "after": kinds.get(name), "consumers": sorted({c for c, _ in consumers[name]})}
    return out, report
