"""Bias correction: fold the expected output shift that weight quantization causes into each layer's bias.

A layer ``y = W ⊛ x + b`` whose weight trtq quantizes to ``W_q`` (the same quantizer and axis as the
pipeline: `trtq.exporter.weights.quantize_per_channel` on the axis `plan_quantization` picks) computes, on the
calibration data, the expected shift per output channel o

    E[Δy_o] = Σ_{c,k} ΔW[o, c, k] · m[c, k],     ΔW = W_q − W,
    b'_o    = b_o − E[Δy_o]

so that the quantized layer's mean output matches the FP32 one (DFQ §4.2, "empirical" statistics).

- Conv: ``m[c, k] = E[pad(x)[c, j·stride + k·dilation]]`` averaged over samples and output positions j, the
  padding zeros included. This is the exact spatially averaged expected shift (the conv of the mean input
  map with ΔW, averaged over the output map), not the per-channel-mean approximation ``m[c, k] = E[x_c]``,
  which overstates the shift at the borders. A grouped conv reads only its group's channels.
- Gemm ``α·A·B̃ + β·C``: ``E[Δy_n] = α·Σ_k E[A_k]·ΔB̃[k, n]``; ``C' = C − E[Δy]/β`` (a C of ``−E[Δy]`` with
  ``β = 1`` is created when there is none).
- MatMul ``x·B`` (constant 2-D B): ``E[Δy_n] = Σ_k E[x_k]·ΔB[k, n]``; folded into the constant of the Add that
  follows it, or into a new Add.
The statistics stream over the calibration data (sums only, memory bounded by the model); values at or
above the mask sentinel are left out. The sums are exact: each value is rounded to a multiple of 2^-40
(about 9.1e-13) and summed as integers (`_ExactSum`), so the corrected biases, like the ranges, depend
neither on the batch size nor on the order of the samples (a float sum would: 1 ulp of a bias, seen).
Only biases change; a bias shared with another node is copied, never
changed in place. Layers left alone (INT4, ConvTranspose, a constant activation input, ...) are reported
with the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from trtq.calibrators.data import Batch
from trtq.calibrators.observer import SENTINEL, Reducer
from trtq.exporter.passes.base import PassResult, graph_to_model, unique_name
from trtq.exporter.passes.context import PassContext
from trtq.exporter.passes.registry import register_pass
from trtq.exporter.placement import WeightSlot, node_names
from trtq.exporter.weights import quantize_per_channel
from trtq.precision import TABLE

__all__ = ["TapSums", "bias_correction"]

logger = logging.getLogger(__name__)

_PASS_NAME = "bias_correction"
_AUTO_PADS = ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER")


@dataclass
class _Target:
    """A quantized layer to correct: its node, weight, quantization axis and input statistics."""

    node: gs.Node
    name: str
    weight: np.ndarray
    axis: int | None
    sums: np.ndarray | None = None  # Conv: [c_in, k…] tap sums; Gemm/MatMul: [K] feature sums
    count: float = 0.0

    @property
    def input_name(self) -> str:
        return self.node.inputs[0].name


@register_pass("bias_correction", order=90, reads_plan=True,
               summary="the expected output shift of weight quantization, measured on the data, folded into biases")
def bias_correction(model: onnx.ModelProto, ctx: PassContext) -> PassResult:
    """Fold each quantized layer's expected weight-quantization shift into its bias (module docstring).

    Args:
        model: an ONNX model; it is not modified.
        ctx: the `PassContext`: its config's precision, the run's placement (`ctx.plan`: which
            weights are quantized, on which axis), and the calibration data.

    Returns:
        `PassResult`; report keys: ``precision``, ``input_mean`` (how the input mean is taken),
        ``samples`` (calibration samples seen), ``layers`` (per corrected layer: ``node``, ``op``,
        ``max_abs_shift``, ``mean_abs_shift``, ``max_abs_bias``, ``bias`` = "updated" | "created" |
        "copied from a shared constant" | "copied from a constant behind Identity / Constant nodes"),
        ``skipped`` ({node, reason}).

    Raises:
        TrtqError: no calibration data was given.
    """
    precision = ctx.config.precision
    report: dict[str, Any] = {"precision": precision, "input_mean": _MEAN_NOTE, "samples": 0, "layers": [],
                              "skipped": []}
    if TABLE[precision].blockwise:
        report["skipped"].append({"node": "*", "reason": _INT4_NOTE})
        return PassResult(model, report)
    graph = gs.import_onnx(model)
    targets = _targets(graph, model, ctx, report["skipped"])
    if not targets:
        return PassResult(model, report)
    report["samples"] = _collect_input_stats(model, targets, ctx)
    shared = _shared_constants(graph)
    for target in targets:
        shift = _expected_shift(target, precision)
        report["layers"].append(_fold(graph, target, shift, shared))
    graph.cleanup().toposort()
    logger.info("biascorr: corrected %d layer(s), skipped %d", len(report["layers"]), len(report["skipped"]))
    return PassResult(graph_to_model(graph, model), report)


_INT4_NOTE = ("INT4 is block-wise with data-dependent clipping; "
              "biascorr corrects INT8/FP8 per-channel weights only")
_MEAN_NOTE = ("Conv: exact spatially averaged mean input per kernel tap, padding zeros included; "
              "Gemm/MatMul: per-feature mean of the input")


# --- which layers ---------------------------------------------------------------------------------

def _targets(graph: gs.Graph, model: onnx.ModelProto, ctx: PassContext,
             skipped: list[dict[str, str]]) -> list[_Target]:
    """The quantized Conv/Gemm/MatMul layers whose weight (input 1) trtq quantizes, in graph order."""
    plan = ctx.plan(model)
    slots: dict[tuple[str, int], WeightSlot] = {}
    for slot, consumers in plan.weights.items():
        for node_name, index in consumers:
            slots[(node_name, index)] = slot
    names = node_names(graph)
    quantized = set(plan.quantized_nodes)
    skipped.extend({"node": s["node"], "reason": f"not quantized: {s['reason']}"} for s in plan.skipped)
    targets = []
    for node in graph.nodes:
        name = names[id(node)]
        if name not in quantized:
            continue
        target = _target(node, name, slots)
        if isinstance(target, str):
            skipped.append({"node": name, "reason": target})
        else:
            targets.append(target)
    return targets


def _target(node: gs.Node, name: str, slots: dict[tuple[str, int], WeightSlot]) -> _Target | str:
    """`node` as a layer to correct, or why it is left alone."""
    if node.op not in ("Conv", "Gemm", "MatMul"):
        return f"{node.op} is not corrected (Conv, Gemm and MatMul are)"
    slot = slots.get((name, 1))
    if slot is None:
        return "no constant weight (an activation x activation product)"
    if (name, 0) in slots:
        return "its first input is a constant, not an activation"
    weight = node.inputs[1]
    values = weight.values if isinstance(weight, gs.Constant) else weight.inputs[0].attrs["value"].values
    if node.op != "Conv" and values.ndim != 2:
        return f"{node.op} weight of rank {values.ndim}, not 2"
    if node.op == "Conv" and node.attrs.get("auto_pad", "NOTSET") not in _AUTO_PADS:
        return f"Conv auto_pad {node.attrs['auto_pad']!r}"
    bias = node.inputs[2] if node.op != "MatMul" and len(node.inputs) > 2 and node.inputs[2].name else None
    if bias is not None and _bias_constant(bias) is None:
        return "its bias is computed in the graph, not a constant"
    return _Target(node, name, np.asarray(values), None if slot.axis == -1 else slot.axis)


# --- input statistics -----------------------------------------------------------------------------

def _collect_input_stats(model: onnx.ModelProto, targets: list[_Target], ctx: PassContext) -> int:
    """Stream the calibration data once; fill each target's input sums and count. Returns samples seen.

    A Conv input is summed over the batch only (one map per input size seen); the kernel taps are read off
    those maps at the end, so the per-batch cost is one reduction per tensor.
    """
    taps = TapSums({(t.input_name, _layout(t)) for t in targets})
    samples = ctx.observe(model, [taps], _PASS_NAME).samples
    for target in targets:
        sums = taps.sums[(target.input_name, _layout(target))]
        for shape in sorted(sums):  # a fixed order: the input sizes seen, whatever order they came in
            total, count = sums[shape].value(), sums[shape].count
            positions = 1.0
            if target.node.op == "Conv":
                total, positions = _conv_tap_sums(target.node, target.weight.shape, total)
            target.sums = total if target.sums is None else target.sums + total
            target.count += count * positions
    return samples


def _layout(target: _Target) -> str:
    """How the layer reads its input: "map" (Conv), "rows" (features last) or "transposed" (Gemm transA)."""
    if target.node.op == "Conv":
        return "map"
    return "transposed" if target.node.op == "Gemm" and target.node.attrs.get("transA", 0) else "rows"


class TapSums(Reducer):
    """Per (input tensor, layout): exact ``Σ_rows x`` and row counts, by row shape (`_ExactSum`).

    Layouts: "map" (a Conv input, summed over the batch only: one map per input size seen),
    "rows" (features last), "transposed" (Gemm transA). Sentinel and non-finite values count as 0.
    """

    def __init__(self, readers: set[tuple[str, str]]) -> None:
        self.readers = sorted(readers)
        self.tensors = tuple(sorted({name for name, _ in readers}))
        self.sums: dict[tuple[str, str], dict[tuple[int, ...], _ExactSum]] = {key: {} for key in self.readers}

    def update(self, values: Mapping[str, np.ndarray], batch: Batch, samples: int) -> None:
        for name, layout in self.readers:
            x = np.asarray(values[name])
            if layout == "transposed":
                x = x.T
            if layout != "map":
                x = x.reshape(-1, x.shape[-1])
            self.sums[(name, layout)].setdefault(x.shape[1:], _ExactSum()).add(x)

    def merge(self, other: TapSums) -> None:
        for key, by_shape in other.sums.items():
            for shape, total in by_shape.items():
                self.sums.setdefault(key, {}).setdefault(shape, _ExactSum()).merge(total)


class _ExactSum:
    """Σ over rows of arrays of one shape, exact, so independent of row order and batching.

    Each value is rounded to the nearest multiple of 2^-40 (values at or above the mask sentinel, and
    non-finite ones, count as 0): an integer below 2^140. Integers add exactly. Values below 2^22 in
    magnitude (all but extreme activations) are summed in one int64 array, moved into the limbs before it
    could overflow: about 3x the cost of a float sum. Larger ones are split into 32-bit limbs at once. The
    total is held in six limbs ``Σ_k L_k·2^(32k)``, every one but the top one in [0, 2^32) once carried:
    a unique form of the exact sum, which `value` turns into float64 by a fixed formula.
    """

    _QUANTUM = 40  # values are summed as multiples of 2^-40
    _BITS = 32
    _LIMBS = 6  # 2^191 > 2^31 rows of values below 2^140
    _CARRY_ROWS = 1 << 29  # a low limb gains < 2^32 per row: int64 holds 2^31 rows of them

    def __init__(self) -> None:
        self.count = 0
        self._limbs: np.ndarray | None = None  # [LIMBS, shape...] int64
        self._small: np.ndarray | None = None  # int64 sum of the small batches since the last flush
        self._bound = 0.0  # a bound on |_small|
        self._pending = 0  # rows added to the limbs since the last carry

    def add(self, x: np.ndarray) -> None:
        """Add the rows of x [rows, ...]."""
        x = np.asarray(x)
        high, low = (float(x.max()), float(x.min())) if x.size else (0.0, 0.0)
        if not (high < SENTINEL and low > -SENTINEL):  # also true for nan
            x = np.where(np.abs(x) < SENTINEL, x, 0.0)
            high, low = (float(x.max()), float(x.min())) if x.size else (0.0, 0.0)
        rows = x.shape[0]
        self.count += rows
        top = max(abs(high), abs(low)) * 2.0 ** self._QUANTUM + 1.0  # bound on a rounded value
        if top < 2.0 ** 62:
            if self._bound + rows * top >= 2.0 ** 63:
                self._flush()
            # scaling by a power of two is exact, in float32 too below 2^22 · 2^40
            scaled = x * np.float32(2.0 ** self._QUANTUM) if x.dtype == np.float32 else \
                x.astype(np.float64) * 2.0 ** self._QUANTUM
            y = np.rint(scaled).astype(np.int64)
            total = y[0] if rows == 1 else y.sum(axis=0)
            self._small = total if self._small is None else np.add(self._small, total, out=self._small)
            self._bound += rows * top
            return
        y = np.rint(x.astype(np.float64) * 2.0 ** self._QUANTUM)
        self._wide(x.shape[1:])
        for k in range(self._LIMBS - 1):
            upper = np.floor(y * 2.0 ** -self._BITS)
            self._limbs[k] += (y - upper * 2.0 ** self._BITS).astype(np.int64).sum(axis=0)
            y = upper
            if not y.any():
                break
        else:
            self._limbs[-1] += y.astype(np.int64).sum(axis=0)
        self._pending += rows
        if self._pending >= self._CARRY_ROWS:
            self._carry()

    def merge(self, other: _ExactSum) -> None:
        """Add the exact sum of `other` (rows of the same shape) to this one."""
        self.count += other.count
        for part in (self, other):
            if part._small is not None or part._limbs is not None:
                part._wide(part._small.shape if part._small is not None else part._limbs.shape[1:])
                part._flush()
        if other._limbs is not None:
            self._wide(other._limbs.shape[1:])
            self._limbs += other._limbs
            self._carry()

    def _wide(self, shape: tuple[int, ...]) -> np.ndarray:
        if self._limbs is None:
            self._limbs = np.zeros((self._LIMBS,) + shape, np.int64)
        return self._limbs

    def _flush(self) -> None:
        if self._small is not None:
            self._wide(self._small.shape)
            self._limbs[0] += self._small & ((1 << self._BITS) - 1)
            self._limbs[1] += self._small >> self._BITS
            self._small, self._bound = None, 0.0
            self._pending += 1
        self._carry()

    def _carry(self) -> None:
        for k in range(self._LIMBS - 1):
            self._limbs[k + 1] += self._limbs[k] >> self._BITS
            self._limbs[k] &= (1 << self._BITS) - 1
        self._pending = 0

    def value(self) -> np.ndarray:
        """The sum as float64: a fixed function of the exact integer sum.

        ``(…(L_5·2^32 + L_4)·2^32 + …)·2^32 + L_0``: its partial results are exact while below 2^53, so an
        int64 sum never moved into the limbs gives the same float from its own two limbs.
        """
        if self._limbs is None:
            if self._small is None:
                return np.zeros(())
            high = (self._small >> self._BITS).astype(np.float64)
            low = self._small & ((1 << self._BITS) - 1)
            return (high * 2.0 ** self._BITS + low) * 2.0 ** -self._QUANTUM
        self._flush()
        total = np.zeros(self._limbs.shape[1:])
        for limb in self._limbs[::-1]:
            total = total * 2.0 ** self._BITS + limb
        return total * 2.0 ** -self._QUANTUM


def _conv_tap_sums(node: gs.Node, w_shape: tuple[int, ...], total: np.ndarray) -> tuple[np.ndarray, float]:
    """Per channel c and tap k, ``Σ_j pad(total)[c, j·stride + k·dilation]``, and the number of positions j.

    `total` is an input map summed over samples, [C, spatial…].
    """
    spatial = total.shape[1:]
    kernel = w_shape[2:]
    strides = node.attrs.get("strides", [1] * len(kernel))
    dilations = node.attrs.get("dilations", [1] * len(kernel))
    begins = _pad_begins(node, spatial, kernel, strides, dilations)
    sums = total
    positions = 1
    for dim, (size, k, s, d, begin, end) in enumerate(zip(spatial, kernel, strides, dilations, *begins)):
        reads = _tap_reads(size, k, s, d, begin, end)  # [k, size]
        positions *= _out_size(size, k, s, d, begin, end)
        sums = np.moveaxis(np.tensordot(sums, reads, axes=([1 + dim], [1])), -1, 1 + dim)
    return sums, float(positions)


def _pad_begins(node: gs.Node, spatial: tuple[int, ...], kernel: tuple[int, ...], strides: list[int],
                dilations: list[int]) -> tuple[list[int], list[int]]:
    """(begin pads, end pads) per spatial axis, from ``pads`` or ``auto_pad``."""
    auto = node.attrs.get("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begins, ends = [], []
        for size, k, s, d in zip(spatial, kernel, strides, dilations):
            total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
            small = total // 2
            begins.append(small if auto == "SAME_UPPER" else total - small)
            ends.append(total - begins[-1])
        return begins, ends
    pads = node.attrs.get("pads", [0] * (2 * len(kernel))) if auto == "NOTSET" else [0] * (2 * len(kernel))
    return list(pads[: len(kernel)]), list(pads[len(kernel):])


def _out_size(size: int, k: int, s: int, d: int, begin: int, end: int) -> int:
    return (size + begin + end - (k - 1) * d - 1) // s + 1


def _tap_reads(size: int, k: int, s: int, d: int, begin: int, end: int) -> np.ndarray:
    """[k, size]: how many output positions read input position i through tap t (padding reads nothing)."""
    reads = np.zeros((k, size))
    out = np.arange(_out_size(size, k, s, d, begin, end))
    for tap in range(k):
        pos = out * s + tap * d - begin
        np.add.at(reads[tap], pos[(pos >= 0) & (pos < size)], 1.0)
    return reads


# --- the shift and the fold -----------------------------------------------------------------------

def _expected_shift(target: _Target, precision: str) -> np.ndarray:
    """``E[(W_q − W) ⊛ x]`` per output channel, with trtq's own weight quantizer."""
    w = target.weight.astype(np.float64)
    qw = quantize_per_channel(target.weight, target.axis, precision)
    scale = qw.scale.astype(np.float64)
    if target.axis is not None:
        shape = [1] * w.ndim
        shape[target.axis] = -1
        scale = scale.reshape(shape)
    delta = qw.values.astype(np.float64) * scale - w
    mean = target.sums / max(target.count, 1.0)
    node = target.node
    if node.op == "Conv":
        group = int(node.attrs.get("group", 1))
        c_out, c_in_g = w.shape[:2]
        grouped_mean = mean.reshape((group, 1, c_in_g) + mean.shape[1:])
        grouped_delta = delta.reshape((group, c_out // group, c_in_g) + delta.shape[2:])
        return (grouped_delta * grouped_mean).reshape(c_out, -1).sum(axis=1)
    if node.op == "Gemm":
        b_tilde = delta.T if node.attrs.get("transB", 0) else delta
        return float(node.attrs.get("alpha", 1.0)) * (mean @ b_tilde)
    return mean @ delta


def _shared_constants(graph: gs.Graph) -> set[int]:
    """Ids of the constants that, in the input graph, more than one node reads (or that are graph outputs)."""
    shared = {id(t) for t in graph.outputs}
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Constant) and len(tensor.outputs) > 1:
            shared.add(id(tensor))
    return shared


def _fold(graph: gs.Graph, target: _Target, shift: np.ndarray, shared: set[int]) -> dict[str, Any]:
    """Subtract `shift` from the layer's bias; returns the layer's report entry."""
    node = target.node
    if node.op == "MatMul":
        bias, how = _matmul_bias(graph, node, shift, shared)
    else:
        bias, how = _conv_gemm_bias(graph, node, shift, shared)
    return {
        "node": target.name,
        "op": node.op,
        "max_abs_shift": float(np.abs(shift).max()),
        "mean_abs_shift": float(np.abs(shift).mean()),
        "max_abs_bias": float(np.abs(bias).max()),
        "bias": how,
    }


def _conv_gemm_bias(graph: gs.Graph, node: gs.Node, shift: np.ndarray,
                    shared: set[int]) -> tuple[np.ndarray, str]:
    """Conv: ``b' = b − shift``; Gemm: ``C' = C − shift/β``. Returns the new bias and what was done."""
    beta = float(node.attrs.get("beta", 1.0)) if node.op == "Gemm" else 1.0
    current = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
    if current is None or beta == 0.0:  # β = 0: the old C never counted
        if node.op == "Gemm":
            node.attrs["beta"] = 1.0
        const = _new_constant(graph, f"{_stem(node)}.bias_corrected", -shift, node.inputs[1].dtype)
        while len(node.inputs) < 3:
            node.inputs.append(gs.Variable.empty())
        node.inputs[2] = const
        return -shift, "created"
    const = _bias_constant(current)
    values = _broadcast_last(const.values, shift.size) - shift / beta
    if const is not current:  # behind Identity / Constant nodes (TorchScript deduplicates equal initializers)
        node.inputs[2] = _new_constant(graph, f"{_stem(node)}.bias_corrected", values, const.values.dtype)
        return values, "copied from a constant behind Identity / Constant nodes"
    return values, _replace(graph, current, node, values, shared)


def _bias_constant(tensor: gs.Tensor) -> gs.Constant | None:
    """The constant a bias holds: an initializer, or one reached through Identity / Constant nodes."""
    while isinstance(tensor, gs.Variable) and len(tensor.inputs) == 1 and tensor.inputs[0].op == "Identity":
        tensor = tensor.inputs[0].inputs[0]
    if isinstance(tensor, gs.Variable) and len(tensor.inputs) == 1 and tensor.inputs[0].op == "Constant":
        tensor = tensor.inputs[0].attrs.get("value")
    return tensor if isinstance(tensor, gs.Constant) else None


def _matmul_bias(graph: gs.Graph, node: gs.Node, shift: np.ndarray,
                 shared: set[int]) -> tuple[np.ndarray, str]:
    """Fold ``−shift`` into the constant of the Add after the MatMul, or into a new Add."""
    out = node.outputs[0]
    add = out.outputs[0] if len(out.outputs) == 1 and all(t is not out for t in graph.outputs) else None
    if add is not None and add.op == "Add" and len(add.inputs) == 2:
        other = add.inputs[1] if add.inputs[0] is out else add.inputs[0]
        fits = isinstance(other, gs.Constant) and other.values.ndim >= 1
        if fits and other.values.shape[-1] in (1, shift.size):
            values = _broadcast_last(other.values, shift.size) - shift
            return values, _replace(graph, other, add, values, shared)
    bias = _new_constant(graph, f"{_stem(node)}.bias_corrected", -shift, node.inputs[1].dtype)
    mm_out = gs.Variable(unique_name(graph, f"{out.name}.unbiased"), dtype=out.dtype, shape=out.shape)
    node.outputs.clear()
    node.outputs.append(mm_out)
    add_name = f"{node.name}_bias_correction" if node.name else None
    graph.nodes.append(gs.Node("Add", add_name, inputs=[mm_out, bias], outputs=[out]))
    return -shift, "created"


def _broadcast_last(values: np.ndarray, n: int) -> np.ndarray:
    """`values` in float64 with its last axis broadcast to `n` (a scalar becomes ``[n]``)."""
    old = np.asarray(values, np.float64)
    old = old.reshape(1) if old.ndim == 0 else old
    return np.broadcast_to(old, old.shape[:-1] + (n,))


def _replace(graph: gs.Graph, const: gs.Constant, reader: gs.Node, values: np.ndarray,
             shared: set[int]) -> str:
    """Give `const` the new `values`, or, when other nodes read it too, give `reader` a corrected copy."""
    if id(const) not in shared:
        const.values = np.ascontiguousarray(values).astype(const.values.dtype)
        return "updated"
    copy = _new_constant(graph, f"{const.name}.bias_corrected", values, const.values.dtype)
    reader.inputs[next(i for i, t in enumerate(reader.inputs) if t is const)] = copy
    return "copied from a shared constant"


def _new_constant(graph: gs.Graph, stem: str, values: np.ndarray, dtype: Any) -> gs.Constant:
    return gs.Constant(unique_name(graph, stem), np.ascontiguousarray(values).astype(dtype or np.float32))


def _stem(node: gs.Node) -> str:
    weight = node.inputs[1].name
    return weight[: -len(".weight")] if weight.endswith(".weight") else weight


