"""Cross-layer equalization (DFQ): rescale the channels between two linear layers to match their ranges.

Two layers joined by an activation ``f`` that commutes with positive per-channel scaling
(identity, ReLU, LeakyReLU, PReLU: ``f(z/s) = f(z)/s`` for ``s > 0``) compute the same function after

    W1' = diag(s)⁻¹·W1      (output channel c of layer 1 divided by s_c),    b1' = b1/s
    W2' = W2·diag(s)        (input channel c of layer 2 multiplied by s_c)

since ``W2·diag(s)·f(diag(s)⁻¹(W1·x + b1)) = W2·f(W1·x + b1)``. With ``r1_c = max|W1[c, …]|`` and
``r2_c = max|W2[:, c, …]|``, DFQ (Nagel et al. 2019, eq. 8) picks ``s_c = sqrt(r1_c / r2_c)``, which makes
both ranges ``sqrt(r1_c·r2_c)``.

- ReLU6 = Clip(0, M) does not commute (its bound would become M/s_c per channel), but
  ``clip(z, 0, M) = s·min(relu(z/s), M/s)``: with ``relu6="rescale"`` (the default) the Clip becomes
  ``Relu`` followed by ``Min(x, M/s)`` with a per-channel constant (exact); with ``relu6="skip"`` the
  pair is left alone ("ReLU6 bound").
- Conv weights ``W[c_out, c_in/g, k…]``: input channel ``c = i·(c_in/g) + j`` of group ``i`` is read by
  ``W[i·(c_out/g) : (i+1)·(c_out/g), j]``. A depthwise conv (g = c_in) has one input channel per output
  channel, so in a pointwise → depthwise → pointwise chain both pairs scale the same depthwise filters
  (``W_dw[c]·s12_c/s23_c``); sweeping the pairs until the scales stop changing reaches DFQ's three-layer
  equalization ``r1' = r2' = r3' = (r1·r2·r3)^(1/3)`` (each pair keeps the product of its two ranges).
- Gemm ``α·A·B̃ + β·C`` (``B̃ = B`` or ``Bᵀ``): output channel n is column n of ``B̃`` and ``C[…, n]``; input
  channel k is row k of ``B̃`` (the next Gemm must have ``transA = 0``). MatMul with a constant 2-D ``B``:
  the same, with its bias in a following ``Add`` of a constant.
- MaxPool / AveragePool act per channel (``max(x/s) = max(x)/s``), and global pooling
  (GlobalAveragePool, ReduceMean over all spatial axes) with the Flatten/Reshape to ``[N, C]`` after it
  keeps channel c as feature c, so Conv → act → MaxPool → Conv and Conv → act → pool → Gemm are pairs too.

Scales are multiplied over the sweeps and applied once, in float64, then cast back to the weights'
dtype. A channel with a zero range in either layer keeps ``s_c = 1``. A pair is skipped, with the reason
in the report, when a tensor between the layers has another consumer or is a graph output, when the
activation does not commute (GELU, SiLU, a residual Add, ...), when a parameter is not a float
initializer, or when a weight or bias is shared with a node outside the pair (Shape/Size readers of a
weight do not count).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from trtq.errors import TrtqError
from trtq.exporter.passes.base import PassResult, graph_to_model, unique_name
from trtq.exporter.passes.channel_match import readers
from trtq.exporter.passes.context import PassContext
from trtq.exporter.passes.registry import register_pass
from trtq.exporter.placement import node_names

__all__ = ["CleOptions", "cross_layer_equalization"]

logger = logging.getLogger(__name__)

_LINEAR = ("Conv", "Gemm", "MatMul")
_HOMOGENEOUS = ("Relu", "LeakyRelu", "PRelu")  # f(z/s) = f(z)/s for s > 0
_POOLS = ("GlobalAveragePool", "ReduceMean")  # global: channel c of the map becomes feature c
_LOCAL_POOLS = ("MaxPool", "AveragePool")  # per channel: max(x/s) = max(x)/s, mean(x/s) = mean(x)/s
_FLATTEN = ("Flatten", "Reshape")
_SHAPE_READERS = ("Shape", "Size")
_ELEMENTWISE = frozenset({"Add", "Sub", "Mul", "Div", "Erf", "Tanh", "Sigmoid", "Pow", "Sqrt", "Gelu",
                          "HardSwish", "HardSigmoid", "Elu", "Selu", "Softplus", "Clip", "Relu", "LeakyRelu",
                          "PRelu", "Max", "Min"})
_SATURATING = ("Sigmoid", "Tanh", "HardSwish", "HardSigmoid", "Softplus", "Elu", "Selu")
_TINY = 1e-30
_RELU6_MODES = ("rescale", "skip")


@dataclass(frozen=True)
class CleOptions:
    """Options of the `cle` pass.

    Args:
        relu6: "rescale" (Clip(0, M) → Relu + per-channel Min, exact) or "skip" (leave ReLU6 pairs alone).
        max_sweeps: most sweeps over all pairs.
        tol: stop when every scale of a sweep is within ``exp(±tol)`` of 1.

    Raises:
        TrtqError: `relu6` is not one of "rescale", "skip", or a count is not positive.
    """

    relu6: str = "rescale"
    max_sweeps: int = 200
    tol: float = 1e-6

    def __post_init__(self) -> None:
        if self.relu6 not in _RELU6_MODES:
            raise TrtqError(f"relu6={self.relu6!r} is not a CLE mode.", f"use one of {', '.join(_RELU6_MODES)}.")
        if self.max_sweeps < 1 or not self.tol > 0:
            raise TrtqError(f"cle max_sweeps={self.max_sweeps}, tol={self.tol}: both must be positive.",
                            "use e.g. max_sweeps=200, tol=1e-6.")


@dataclass
class _Layer:
    """A Conv, Gemm or MatMul with a constant weight, and the constant holding its bias (if any)."""

    node: gs.Node
    name: str
    weight: gs.Constant
    bias: gs.Constant | None = None
    bias_node: gs.Node | None = None  # the Add that holds a MatMul's bias
    output: gs.Tensor | None = None  # the tensor after the bias

    @property
    def params(self) -> list[tuple[gs.Constant, gs.Node]]:
        """(constant, the node that must be its only reader)."""
        out = [(self.weight, self.node)]
        if self.bias is not None:
            out.append((self.bias, self.bias_node or self.node))
        return out


@dataclass
class _Pair:
    """Layer 1 → activation → layer 2, with the cumulative scale ``s`` of the channels between them."""

    first: _Layer
    second: _Layer
    nodes: list[gs.Node]  # the nodes between the layers (activation, pooling, flatten)
    bound: float | None  # the Clip upper bound M to rescale per channel (ReLU6), or None
    scale: np.ndarray = field(default_factory=lambda: np.ones(0))

    @property
    def label(self) -> list[str]:
        return [self.first.name, self.second.name]

    @property
    def activation(self) -> str:
        ops = [n.op for n in self.nodes]
        return " → ".join(ops) if ops else "none"


@register_pass("cle", order=10, options=CleOptions(),
               summary="cross-layer equalization of Conv/Gemm/MatMul chains (ReLU/ReLU6 rescaled exactly)")
def cross_layer_equalization(model: onnx.ModelProto, ctx: PassContext,
                             options: CleOptions = CleOptions()) -> PassResult:
    """Equalize the weight ranges of consecutive Conv/Gemm/MatMul layers (see the module docstring).

    Args:
        model: an ONNX model; it is not modified.
        ctx: pass context; unused (CLE needs no data).
        options: `CleOptions` (ReLU6 handling, sweeps, tolerance).

    Returns:
        `PassResult`; report keys: ``relu6`` (what was done with ReLU6 pairs), ``sweeps``, ``converged``,
        ``last_step`` (max |log s| of the last sweep), ``pairs`` (per pair: ``layers``, ``activation``,
        ``relu6_rescaled``, ``scales`` {min, max, mean, values}, ``imbalance_before`` / ``imbalance_after``
        = max_c |ln(r1_c / r2_c)|), ``skipped`` ({layers or node, reason}).
    """
    del ctx
    relu6, max_sweeps, tol = options.relu6, options.max_sweeps, options.tol
    graph = gs.import_onnx(model)
    pairs, skipped = _find_pairs(graph, relu6)
    report: dict[str, Any] = {"relu6": _relu6_note(relu6), "sweeps": 0, "converged": True, "last_step": 0.0,
                              "pairs": [], "skipped": skipped}
    if not pairs:
        logger.info("cle: no pair to equalize (%d skipped)", len(skipped))
        return PassResult(model, report)
    weights = {id(layer.weight): np.asarray(layer.weight.values, np.float64)
               for p in pairs for layer in (p.first, p.second)}
    before = [_imbalance(p, weights) for p in pairs]
    report["sweeps"], report["last_step"] = _equalize(pairs, weights, max_sweeps, tol)
    report["converged"] = report["last_step"] <= tol
    for pair, imbalance in zip(pairs, before):
        report["pairs"].append(_pair_report(pair, imbalance, _imbalance(pair, weights)))
    _write(graph, pairs, weights)
    graph.cleanup().toposort()
    logger.info("cle: equalized %d pair(s) in %d sweep(s), skipped %d",
                len(pairs), report["sweeps"], len(skipped))
    return PassResult(graph_to_model(graph, model), report)


def _relu6_note(relu6: str) -> str:
    if relu6 == "rescale":
        return "rescaled: Clip(0, M) → Relu + Min(x, M/s) per channel (exact)"
    return "skipped: pairs joined by Clip(0, M) are left alone"


# --- finding pairs -------------------------------------------------------------------------------

def _find_pairs(graph: gs.Graph, relu6: str) -> tuple[list[_Pair], list[dict[str, Any]]]:
    """Every layer → activation → layer chain, and the chains that cannot be equalized, with reasons."""
    names = node_names(graph)
    outputs = {id(t) for t in graph.outputs}
    pairs: list[_Pair] = []
    skipped: list[dict[str, Any]] = []
    for node in graph.nodes:
        first = _layer(node, names, outputs)
        if not isinstance(first, _Layer):
            continue
        found = _follow(first, names, outputs, relu6)
        if isinstance(found, _Pair):
            pairs.append(found)
        elif found is not None:
            skipped.append(found)
    pairs, shared = _drop_shared(pairs, graph)
    return pairs, skipped + shared


def _layer(node: gs.Node, names: dict[int, str], outputs: set[int]) -> _Layer | str | None:
    """`node` as a layer CLE can scale, a reason why not, or None when it is not a linear op."""
    if node.op not in _LINEAR or len(node.inputs) < 2:
        return None
    name = names[id(node)]
    weight = node.inputs[1]
    if not isinstance(weight, gs.Constant):
        return f"{name}: its weight is not a constant initializer"
    if not np.issubdtype(weight.values.dtype, np.floating):
        return f"{name}: its weight has dtype {weight.values.dtype}"
    if node.op == "Conv" and weight.values.ndim < 3:
        return f"{name}: Conv weight of rank {weight.values.ndim}"
    if node.op in ("Gemm", "MatMul") and weight.values.ndim != 2:
        return f"{name}: {node.op} weight of rank {weight.values.ndim}, not 2"
    layer = _Layer(node, name, weight, output=node.outputs[0])
    if node.op in ("Conv", "Gemm") and len(node.inputs) > 2 and node.inputs[2].name:
        layer.bias = node.inputs[2]
        if not isinstance(layer.bias, gs.Constant) or not np.issubdtype(layer.bias.values.dtype, np.floating):
            return f"{name}: its bias is not a float constant initializer"
    if node.op == "MatMul":
        _attach_matmul_bias(layer, outputs)
    return layer


def _attach_matmul_bias(layer: _Layer, outputs: set[int]) -> None:
    """MatMul → Add(constant of last dim 1 or N): the Add's constant is the layer's bias."""
    out = layer.node.outputs[0]
    if len(out.outputs) != 1 or id(out) in outputs or out.outputs[0].op != "Add":
        return
    add = out.outputs[0]
    other = [t for t in add.inputs if t is not out]
    n = layer.weight.values.shape[1]
    if len(other) != 1 or not isinstance(other[0], gs.Constant):
        return
    values = other[0].values
    if np.issubdtype(values.dtype, np.floating) and values.ndim >= 1 and values.shape[-1] in (1, n):
        layer.bias, layer.bias_node, layer.output = other[0], add, add.outputs[0]


def _sole_consumer(tensor: gs.Tensor, outputs: set[int]) -> gs.Node | str:
    """The only node reading `tensor`, or why there is not exactly one."""
    if id(tensor) in outputs:
        return f"{tensor.name!r} is a graph output"
    if len(tensor.outputs) != 1:
        ops = ", ".join(n.op for n in tensor.outputs)
        return f"{tensor.name!r} feeds {len(tensor.outputs)} nodes ({ops})"
    return tensor.outputs[0]


def _follow(first: _Layer, names: dict[int, str], outputs: set[int],
            relu6: str) -> _Pair | dict[str, Any] | None:
    """The pair that starts at `first`, a skip record, or None when no linear layer follows closely."""
    between: list[gs.Node] = []
    bound: float | None = None
    tensor = first.output
    for _ in range(5):
        consumer = _sole_consumer(tensor, outputs)
        if isinstance(consumer, str):
            return _skip_if_layer_near(first, tensor, consumer, names)
        second = _layer(consumer, names, outputs)
        if second is not None:
            return _make_pair(first, second, consumer, tensor, between, bound, names)
        reason = _passthrough_reason(consumer, between, relu6)
        if reason is not None:
            return _skip_if_layer_near(first, tensor, reason, names)
        if consumer.op == "Clip":
            bound = _clip_bounds(consumer)[1]
            bound = None if bound is None or not np.isfinite(bound) else bound
        between.append(consumer)
        tensor = consumer.outputs[0]
    return None


def _make_pair(first: _Layer, second: _Layer | str, consumer: gs.Node, tensor: gs.Tensor,
               between: list[gs.Node], bound: float | None, names: dict[int, str]) -> _Pair | dict[str, Any]:
    """The pair `first` → `between` → `second`, or a skip record when their channels do not line up."""
    label = [first.name, names[id(consumer)]]
    if isinstance(second, str):
        return {"layers": label, "reason": second}
    if consumer.inputs[0] is not tensor:
        return {"layers": label, "reason": f"{second.name} reads the activation as its weight, not its input"}
    if consumer.op == "Gemm" and consumer.attrs.get("transA", 0):
        return {"layers": label, "reason": f"{second.name} is a Gemm with transA=1"}
    pooled = any(n.op in _POOLS for n in between)
    if first.node.op == "Conv" and pooled != (consumer.op != "Conv"):
        return {"layers": label, "reason": "Conv → Gemm/MatMul without a global pool, or a pool then a Conv"}
    if first.node.op != "Conv" and consumer.op == "Conv":
        return {"layers": label, "reason": "a Gemm/MatMul output feeds a Conv"}
    n_out, n_in = _out_channels(first), _in_channels(second)
    if n_out != n_in:
        return {"layers": label, "reason": f"{n_out} output channels but {n_in} input channels"}
    if first.weight is second.weight:
        return {"layers": label, "reason": "both layers use the same weight"}
    return _Pair(first, second, between, bound, np.ones(n_out))


def _passthrough_reason(node: gs.Node, between: list[gs.Node], relu6: str) -> str | None:
    """Why `node` cannot sit between two equalized layers (None: it commutes with channel scaling)."""
    ops = [n.op for n in between]
    pooled = any(op in _POOLS for op in ops)
    if node.op in (*_HOMOGENEOUS, "Clip") and not any(op in (*_HOMOGENEOUS, "Clip") for op in ops):
        return _clip_reason(node, relu6) if node.op == "Clip" else None
    if node.op in _LOCAL_POOLS and not pooled and len(node.outputs) == 1:
        return None
    if node.op in _POOLS and not pooled:
        return _pool_reason(node)
    if node.op in _FLATTEN and ops and ops[-1] in _POOLS:
        return _flatten_reason(node)
    if node.op == "Add" and any(isinstance(t, gs.Constant) for t in node.inputs):
        return "an Add of a constant between them (only a MatMul's bias Add is folded)"
    if node.op == "Add":
        return "an Add of another branch (a residual) joins between them"
    if node.op in ("Erf", "Gelu"):
        return "GELU between them does not commute with channel scaling"
    return f"{node.op} between them is not Relu, LeakyRelu, PRelu, Clip(0, M) or a pool"


def _clip_reason(node: gs.Node, relu6: str) -> str | None:
    """Why a Clip does not commute with channel scaling (None: Clip(0, M) or Clip(0, ∞) in rescale mode)."""
    low, high = _clip_bounds(node)
    if (low is not None and np.isnan(low)) or (high is not None and np.isnan(high)):
        return "Clip bounds that are not constants"
    if low is None or low != 0.0:
        return f"Clip({low}, {high}) does not commute with channel scaling (lower bound not 0)"
    if high is not None and np.isfinite(high) and relu6 == "skip":
        return "ReLU6 bound"
    return None


def _clip_bounds(node: gs.Node) -> tuple[float | None, float | None]:
    """(min, max) of a Clip; None for an absent bound, nan for a bound that is not a constant."""
    if "min" in node.attrs or "max" in node.attrs:  # opset < 11
        return float(node.attrs.get("min", -np.inf)), float(node.attrs.get("max", np.inf))
    bounds: list[float | None] = []
    for index in (1, 2):
        tensor = node.inputs[index] if len(node.inputs) > index else None
        if tensor is None or not tensor.name:
            bounds.append(None)
        elif isinstance(tensor, gs.Constant) and tensor.values.size == 1:
            bounds.append(float(tensor.values.reshape(())))
        else:
            bounds.append(float("nan"))
    return bounds[0], bounds[1]


def _pool_reason(node: gs.Node) -> str | None:
    """None for a global pool (GlobalAveragePool, ReduceMean over every spatial axis), else why not."""
    if node.op == "GlobalAveragePool":
        return None
    rank = len(node.inputs[0].shape) if node.inputs[0].shape is not None else None
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1 and isinstance(node.inputs[1], gs.Constant):
        axes = node.inputs[1].values.tolist()
    if rank is None or axes is None or sorted(a % rank for a in axes) != list(range(2, rank)):
        return "a ReduceMean that is not over all spatial axes"
    return None


def _flatten_reason(node: gs.Node) -> str | None:
    """None for a Flatten(axis=1) or a Reshape to ``[N, C]`` of a pooled ``[N, C, 1, …]`` map, else why not."""
    if node.op == "Flatten":
        return None if node.attrs.get("axis", 1) == 1 else "a Flatten with axis != 1"
    shape = node.inputs[1]
    if isinstance(shape, gs.Constant) and shape.values.size == 2 and shape.values[0] in (-1, 0):
        return None
    return "a Reshape that is not to [N, C]"


def _skip_if_layer_near(first: _Layer, tensor: gs.Tensor, reason: str,
                        names: dict[int, str]) -> dict[str, Any] | None:
    """A skip record when a linear layer with a constant weight follows within a few elementwise ops.

    The reason names the non-commuting activation of the region when there is one (GELU's
    Div-Erf-Add-Mul-Mul reads its input twice, so "feeds 2 nodes" would hide what is in the way).
    """
    frontier, seen, ops, found = [tensor], set(), [], None
    for _ in range(6):
        nxt = []
        for node in (n for t in frontier for n in t.outputs):
            if id(node) in seen:
                continue
            seen.add(id(node))
            if node.op in _LINEAR and len(node.inputs) > 1 and isinstance(node.inputs[1], gs.Constant):
                found = found or node
            elif node.op in _ELEMENTWISE:
                ops.append(node.op)
                nxt.extend(node.outputs)
        frontier = nxt
    if found is None:
        return None
    return {"layers": [first.name, names[id(found)]], "reason": _region_reason(ops, reason)}


def _region_reason(ops: list[str], reason: str) -> str:
    """Name the activation that blocks the pair (GELU, Sigmoid/SiLU, ...) when the region holds one."""
    if "Erf" in ops or "Gelu" in ops:
        return f"GELU ({', '.join(ops)}) between them does not commute with channel scaling"
    blocking = [op for op in ops if op in _SATURATING]
    if blocking:
        return f"{blocking[0]} ({', '.join(ops)}) between them does not commute with channel scaling"
    return reason


def _drop_shared(pairs: list[_Pair], graph: gs.Graph) -> tuple[list[_Pair], list[dict[str, Any]]]:
    """Drop pairs whose weights or biases are read by a node outside their own layer."""
    kept, skipped = [], []
    for pair in pairs:
        reason = None
        for layer in (pair.first, pair.second):
            for const, owner in layer.params:
                if readers(const, graph, [owner], _SHAPE_READERS):
                    reason = f"{const.name!r} of {layer.name} is shared with a node outside the pair"
        if reason:
            skipped.append({"layers": pair.label, "reason": reason})
        else:
            kept.append(pair)
    return kept, skipped


# --- channel geometry ----------------------------------------------------------------------------

def _group(layer: _Layer) -> int:
    return int(layer.node.attrs.get("group", 1)) if layer.node.op == "Conv" else 1


def _gemm_trans_b(layer: _Layer) -> bool:
    return layer.node.op == "Gemm" and bool(layer.node.attrs.get("transB", 0))


def _out_channels(layer: _Layer) -> int:
    shape = layer.weight.values.shape
    if layer.node.op == "Conv":
        return shape[0]
    return shape[0] if _gemm_trans_b(layer) else shape[1]


def _in_channels(layer: _Layer) -> int:
    shape = layer.weight.values.shape
    if layer.node.op == "Conv":
        return shape[1] * _group(layer)
    return shape[1] if _gemm_trans_b(layer) else shape[0]


def _conv_in_index(w: np.ndarray, group: int) -> np.ndarray:
    """[c_out, c_in/g]: the input channel each weight column of a grouped conv reads."""
    c_out, c_in_g = w.shape[:2]
    block = np.arange(c_out) // (c_out // group)
    return block[:, None] * c_in_g + np.arange(c_in_g)[None, :]


def _out_ranges(layer: _Layer, w: np.ndarray) -> np.ndarray:
    """``r_c = max|W[c, …]|`` per output channel."""
    if layer.node.op == "Conv":
        return np.abs(w).reshape(w.shape[0], -1).max(axis=1)
    return np.abs(w).max(axis=1 if _gemm_trans_b(layer) else 0)


def _in_ranges(layer: _Layer, w: np.ndarray) -> np.ndarray:
    """``r_c = max|W[:, c, …]|`` per input channel (grouped convs: over the filters that read c)."""
    if layer.node.op == "Conv":
        per_column = np.abs(w).reshape(w.shape[0], w.shape[1], -1).max(axis=2)
        ranges = np.zeros(_in_channels(layer))
        np.maximum.at(ranges, _conv_in_index(w, _group(layer)).ravel(), per_column.ravel())
        return ranges
    return np.abs(w).max(axis=0 if _gemm_trans_b(layer) else 1)


def _scale_out(layer: _Layer, w: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``W`` with output channel c multiplied by ``s_c``."""
    if layer.node.op == "Conv":
        return w * s.reshape((-1,) + (1,) * (w.ndim - 1))
    return w * (s[:, None] if _gemm_trans_b(layer) else s[None, :])


def _scale_in(layer: _Layer, w: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``W`` with input channel c multiplied by ``s_c``."""
    if layer.node.op == "Conv":
        factor = s[_conv_in_index(w, _group(layer))]
        return w * factor.reshape(factor.shape + (1,) * (w.ndim - 2))
    return w * (s[None, :] if _gemm_trans_b(layer) else s[:, None])


# --- equalizing ----------------------------------------------------------------------------------

def _pair_scale(pair: _Pair, weights: dict[int, np.ndarray]) -> np.ndarray:
    """DFQ's ``s = sqrt(r1 / r2)``; 1 where either range is zero."""
    r1 = _out_ranges(pair.first, weights[id(pair.first.weight)])
    r2 = _in_ranges(pair.second, weights[id(pair.second.weight)])
    ok = (r1 > _TINY) & (r2 > _TINY)
    return np.where(ok, np.sqrt(np.where(ok, r1, 1.0) / np.where(ok, r2, 1.0)), 1.0)


def _imbalance(pair: _Pair, weights: dict[int, np.ndarray]) -> float:
    """max_c |ln(r1_c / r2_c)| over channels where both ranges are non-zero."""
    return float(2.0 * np.abs(np.log(_pair_scale(pair, weights))).max())


def _equalize(pairs: list[_Pair], weights: dict[int, np.ndarray], max_sweeps: int,
              tol: float) -> tuple[int, float]:
    """Sweep the pairs until no scale moves by more than `tol` (in log); update `weights` and the scales."""
    step = 0.0
    for sweep in range(1, max_sweeps + 1):
        step = 0.0
        for pair in pairs:
            s = _pair_scale(pair, weights)
            w1, w2 = id(pair.first.weight), id(pair.second.weight)
            weights[w1] = _scale_out(pair.first, weights[w1], 1.0 / s)
            weights[w2] = _scale_in(pair.second, weights[w2], s)
            pair.scale = pair.scale * s
            step = max(step, float(np.abs(np.log(s)).max()))
        if step <= tol:
            return sweep, step
    return max_sweeps, step


def _write(graph: gs.Graph, pairs: list[_Pair], weights: dict[int, np.ndarray]) -> None:
    """Store the scaled weights, divide the first layers' biases, and rewrite rescaled ReLU6 bounds."""
    for pair in pairs:
        for layer in (pair.first, pair.second):
            layer.weight.values = weights[id(layer.weight)].astype(layer.weight.values.dtype)
    for pair in pairs:
        if pair.first.bias is not None:
            _scale_bias(pair.first, 1.0 / pair.scale)
        if pair.bound is not None:
            _rescale_clip(graph, pair)


def _scale_bias(layer: _Layer, s: np.ndarray) -> None:
    """Multiply channel c of the layer's bias by ``s_c`` (a bias broadcast over channels is expanded)."""
    bias = layer.bias
    values = np.asarray(bias.values, np.float64)
    if layer.node.op == "Conv":
        bias.values = (values * s).astype(bias.values.dtype)
        return
    if values.ndim == 0:
        values = values.reshape(1)
    values = np.broadcast_to(values, values.shape[:-1] + (s.size,))
    bias.values = np.ascontiguousarray(values * s).astype(bias.values.dtype)


def _rescale_clip(graph: gs.Graph, pair: _Pair) -> None:
    """Clip(0, M) → Relu + Min(x, M/s): ``clip(z, 0, M) = s·min(relu(z/s), M/s)``."""
    index = next(i for i, n in enumerate(pair.nodes) if n.op == "Clip")
    clip = pair.nodes[index]
    dtype = pair.first.weight.values.dtype
    flat = pair.first.node.op != "Conv" or any(n.op in _FLATTEN for n in pair.nodes[:index])
    shape = (-1,) if flat else (-1,) + (1,) * (pair.first.weight.values.ndim - 2)
    bound = gs.Constant(unique_name(graph, f"{clip.outputs[0].name}.cle_bound"),
                        (pair.bound / pair.scale).reshape(shape).astype(dtype))
    out = clip.outputs[0]
    relu_out = gs.Variable(unique_name(graph, f"{out.name}.cle_relu"), dtype=out.dtype, shape=out.shape)
    clip.op = "Relu"
    clip.attrs.clear()
    while len(clip.inputs) > 1:
        clip.inputs.pop()
    clip.outputs.clear()
    clip.outputs.append(relu_out)
    name = f"{clip.name}_cle_min" if clip.name else None
    graph.nodes.append(gs.Node("Min", name, inputs=[relu_out, bound], outputs=[out]))


def _pair_report(pair: _Pair, before: float, after: float) -> dict[str, Any]:
    """The report entry of one equalized pair (its scales in full)."""
    s = pair.scale
    return {
        "layers": pair.label,
        "activation": pair.activation,
        "relu6_rescaled": pair.bound is not None,
        "scales": {"min": float(s.min()), "max": float(s.max()), "mean": float(s.mean()),
                   "values": s.tolist()},
        "imbalance_before": before,
        "imbalance_after": after,
    }
