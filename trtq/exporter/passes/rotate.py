"""Fold random Hadamard rotations into weights where exact, and insert online Hadamards where not.

Row-vector convention: a linear layer is ``y = x·W + b`` with ``W`` of shape ``[in, out]`` (ONNX
``MatMul(x, W)`` + ``Add(b)``). Every rotation ``R`` is orthogonal (``R·Rᵀ = I``): a Hadamard matrix
of order ``K·2^m`` with random signs, ``diag(s)·H/√n`` (`trtq.exporter.passes.hadamard`), or a Haar
random orthogonal matrix where no Hadamard matrix of that order is known. The signs come from the
run's seeded generator (``ctx.rng``); the report records the seed and every sign.

1. Value/output projections, per head (exact; QuaRot/SpinQuant "R2"). ``V = x·Wv + bv`` is split
   into ``H`` heads of ``d`` columns (head ``h`` = columns ``h·d … h·d + d − 1``, found from the
   Reshape that splits the last axis into ``(H, d)`` and the Transposes around the attention
   MatMul), ``context_h = P_h·V_h`` with ``P_h`` the softmax probabilities, and
   ``out = concat_h(context_h)·Wo + bo``. With ``R = diag(R_1, …, R_H)``, one signed Hadamard block
   per head: ``P_h·(V_h·R_h) = (P_h·V_h)·R_h`` and ``R·Rᵀ = I``, so
   ``Wv' = Wv·R``, ``bv' = bv·R``, ``Wo' = Rᵀ·Wo`` leave ``out`` unchanged.
2. Residual stream of RMSNorm pre-norm blocks (exact; QuaRot "R1"), rotated by one ``Q`` (d×d).
   ``RMSNorm(x) = x/√(mean(x²) + ε)·γ`` and ``mean((x·Q)²) = ‖x·Q‖²/d = mean(x²)``, so
   ``RMSNorm₁(x·Q) = RMSNorm₁(x)·Q`` for the unit-scale norm. First ``γ`` moves into the layers that
   read the norm (``W ← diag(γ)·W``, ``γ ← 1``); then
   writers of the stream (embedding tables, linear layers whose output is added into it):
   ``E' = E·Q``, ``W' = W·Q``, ``b' = b·Q``;
   readers (linear layers after a norm, or directly on the stream): ``W' = Qᵀ·diag(γ)·W``.
   LayerNorm subtracts the mean over the hidden axis: ``LN(x·Q) ≠ LN(x)·Q`` for a general ``Q``,
   so a stream that a LayerNorm reads or writes (post-LayerNorm BERT, where each norm's output is
   the next residual) is skipped with that reason.
3. Online Hadamard (opt-in: `rotate_online`, or ``RotateOptions.online``) before a linear layer
   whose input no offline fold can rotate: the FFN down projection (after GELU/SiLU, kind
   "ffn_down"), and the layers reading a LayerNorm output, or an RMSNorm output whose stream the
   residual fold could not rotate (kind "norm": one transform shared by Q/K/V, one for FFN up). The graph
   computes ``x' = x·T`` and the weight becomes ``W' = Tᵀ·W``, so ``x'·W' = x·W``. With
   ``n = a·b`` (``a + b`` least, both of Hadamard order), ``T = A ⊗ B``, ``A = diag(s_a)·H_a/√a``,
   ``B = diag(s_b)·H_b/√b`` (the signs of ``T`` are ``s_a ⊗ s_b``). Index ``i = p·b + q`` and
   ``X = reshape(x, [a, b])`` give ``(x·(A ⊗ B))[r·b + s] = Σ_{p,q} X[p,q]·A[p,r]·B[q,s] = (Aᵀ·X·B)[r,s]``,
   so the graph holds ``Reshape(x, [-1, a, b]) → MatMul(·, B) → MatMul(Aᵀ, ·) → Reshape(Shape(x))``:
   ``n·(a + b)`` multiply-adds per token instead of ``n²`` (1536 = 48·32: 80·1536 against 1536²).
   Sizes up to ``RotateOptions.dense_max`` use one dense ``MatMul(x, T)``. The inserted nodes'
   names start with `ROTATION_MARKER`; trtq's placement keeps them in floating point.

All rotation arithmetic runs in float64 on a working copy of each weight; every weight is cast back
to its own dtype once, at the end, so the output matches the input graph within float32 rounding.
A match is skipped, with the reason in the report, when a weight it would change is shared with a
node outside it, when an intermediate tensor has another reader, or when a shape it needs is unknown.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from trtq._shapes import inferred_graph
from trtq.errors import TrtqError
from trtq.exporter.passes import hadamard as had
from trtq.exporter.passes.base import PassResult, graph_to_model
from trtq.exporter.passes.channel_match import node_name as _name
from trtq.exporter.passes.channel_match import readers
from trtq.exporter.passes.context import PassContext
from trtq.exporter.passes.registry import register_pass
from trtq.exporter.placement import ROTATION_MARKER  # inserted nodes: "<marker>/<layer>/...", left unquantized

__all__ = [
    "OFFLINE",
    "ONLINE_ALL",
    "ONLINE_DOWN",
    "ONLINE_KINDS",
    "ROTATION_MARKER",
    "RotateOptions",
    "apply_rotations",
    "rotate",
    "rotate_online",
]

logger = logging.getLogger(__name__)

# What an online Hadamard may be inserted before: "ffn_down" = a linear layer whose input comes from
# a pointwise nonlinearity (GELU, SiLU·up, ReLU, ...); "norm" = a linear layer reading a LayerNorm /
# RMSNorm output that the residual fold did not rotate (one transform shared by Q/K/V, one for FFN up).
ONLINE_KINDS = ("ffn_down", "norm")

_SHAPE_READERS = ("Shape", "Size")
_ACTIVATIONS = ("Relu", "Gelu", "FastGelu", "Tanh", "Sigmoid", "Softplus", "LeakyRelu", "Elu", "Selu",
                "HardSwish", "HardSigmoid", "Clip", "Mish", "Swish", "Erf")


@dataclass(frozen=True)
class RotateOptions:
    """Which rotations the pass applies.

    Args:
        value_output: fold one signed Hadamard per head into each value/output projection pair.
        residual: fold one rotation into the residual stream of RMSNorm pre-norm blocks.
        online: insert online Hadamards before these kinds of linear layers (`ONLINE_KINDS`).
        dense_max: an online rotation of order up to this is one dense MatMul; larger ones are two
            small MatMuls (Kronecker factors).
    """

    value_output: bool = True
    residual: bool = True
    online: tuple[str, ...] = ()
    dense_max: int = 64

    def __post_init__(self) -> None:
        unknown = [k for k in self.online if k not in ONLINE_KINDS]
        if unknown:
            raise TrtqError(f"unknown online rotation kind(s) {', '.join(unknown)}.",
                            f"use any of: {', '.join(ONLINE_KINDS)}.")


# `rotate`: exact folds only, no added node or multiply-add.
OFFLINE = RotateOptions()
# The folds plus an online Hadamard before each FFN down projection only.
ONLINE_DOWN = RotateOptions(online=("ffn_down",))
# `rotate_online`: the folds plus an online Hadamard before every linear layer no fold rotates.
ONLINE_ALL = RotateOptions(online=ONLINE_KINDS)


@register_pass("rotate", order=20, options=OFFLINE,
               summary="exact rotation folds: per-head value/output Hadamards, RMSNorm residual streams")
def rotate(model: onnx.ModelProto, ctx: PassContext, options: RotateOptions = OFFLINE) -> PassResult:
    """Fold rotations into weights where exact: value/output pairs per head, RMSNorm residual streams.

    Adds no node and no multiply-add; see the module docstring for the algebra.

    Args:
        model: an ONNX model; it is not modified.
        ctx: the run's pass context (seed and random generator).
        options: which rotations (default `OFFLINE`: the exact folds only).

    Returns:
        `PassResult`; report keys are described in `apply_rotations`.
    """
    return apply_rotations(model, ctx, options)


@register_pass("rotate_online", order=21, options=ONLINE_ALL,
               summary="rotate plus online Hadamards before FFN down projections and LayerNorm readers")
def rotate_online(model: onnx.ModelProto, ctx: PassContext, options: RotateOptions = ONLINE_ALL) -> PassResult:
    """`rotate`, plus an online Hadamard ``x' = x·T``, ``W' = Tᵀ·W`` before every linear layer whose
    input no offline fold rotates (FFN down projections; layers reading a LayerNorm output).

    On all-MiniLM-L6-v2 it adds 8.7% to the multiply-adds per token of the linear layers.

    Args:
        model: an ONNX model; it is not modified.
        ctx: the run's pass context.
        options: which rotations (default `ONLINE_ALL`).

    Returns:
        `PassResult`; report keys are described in `apply_rotations`.
    """
    return apply_rotations(model, ctx, options)


def apply_rotations(model: onnx.ModelProto, ctx: PassContext, options: RotateOptions) -> PassResult:
    """Apply the rotations `options` asks for (module docstring: the algebra).

    Args:
        model: an ONNX model; it is not modified.
        ctx: the run's pass context (its seeded generator draws the signs).
        options: which rotations to apply.

    Returns:
        `PassResult` whose report is ``{"seed", "options", "value_output": [{"attention", "value",
        "output", "heads", "head_dim", "rotation", "factors", "signs"}], "residual_stream":
        [{"norms", "hidden", "writers", "readers", "rotation": {"kind", "size", "factors",
        "signs"}}], "online": [{"input", "kind", "consumers", "size", "mode", "factors",
        "factor_bases", "signs", "nodes", "added_macs_per_token"}],
        "added_macs_per_token", "model_macs_per_token", "added_macs_percent",
        "skipped": [{"what", "node", "reason"}]}``. MACs per token count the multiply-adds of
        MatMul/Gemm layers with a constant 2-D weight for one row of activations (attention's
        activation-by-activation MatMuls, which grow with the sequence, are not counted).
    """
    state = _State.create(model, ctx.rng)
    report: dict[str, Any] = {
        "seed": ctx.config.seed,
        "options": {**dataclasses.asdict(options), "online": list(options.online)},
        "value_output": [], "residual_stream": [], "online": [], "skipped": [],
    }
    if options.residual:
        _fold_residual_streams(state, report)
    if options.value_output:
        _fold_value_outputs(state, report)
    if options.online:
        _insert_online(state, options, report)
    report["model_macs_per_token"] = _model_macs(state.graph)
    added = sum(entry["added_macs_per_token"] for entry in report["online"])
    report["added_macs_per_token"] = added
    report["added_macs_percent"] = round(100.0 * added / max(report["model_macs_per_token"], 1), 3)
    logger.info("rotate: %d value/output pair(s), %d residual stream(s), %d online Hadamard(s) "
                "(+%d MACs/token), %d skipped", len(report["value_output"]), len(report["residual_stream"]),
                len(report["online"]), added, len(report["skipped"]))
    if not (report["value_output"] or report["residual_stream"] or report["online"]):
        return PassResult(model, report)
    state.weights.commit()
    state.graph.cleanup().toposort()
    return PassResult(graph_to_model(state.graph, model), report)


# --- shared state: the graph, inferred shapes, float64 working weights -----------------------------------


class _Weights:
    """Float64 working copies of the constants a pass rewrites, cast back once by `commit`."""

    def __init__(self) -> None:
        self._work: dict[int, tuple[gs.Constant, np.ndarray]] = {}

    def get(self, const: gs.Constant) -> np.ndarray:
        if id(const) not in self._work:
            self._work[id(const)] = (const, np.asarray(const.values, dtype=np.float64))
        return self._work[id(const)][1]

    def set(self, const: gs.Constant, value: np.ndarray) -> None:
        self._work[id(const)] = (const, value)

    def commit(self) -> None:
        for const, value in self._work.values():
            const.values = value.astype(const.values.dtype)


@dataclass
class _State:
    graph: gs.Graph
    shapes: dict[str, list[int | None]]
    rng: np.random.Generator
    weights: _Weights = field(default_factory=_Weights)
    rotated_norms: set[str] = field(default_factory=set)  # norms whose stream the residual fold rotated
    _taken: set[str] | None = None

    @classmethod
    def create(cls, model: onnx.ModelProto, rng: np.random.Generator) -> _State:
        inferred = inferred_graph(model)
        shapes: dict[str, list[int | None]] = {}
        for vi in [*inferred.input, *inferred.value_info, *inferred.output]:
            if vi.type.tensor_type.HasField("shape"):
                shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None
                                   for d in vi.type.tensor_type.shape.dim]
        return cls(gs.import_onnx(model), shapes, rng)

    def dims(self, tensor: gs.Tensor) -> list[int | None] | None:
        if isinstance(tensor, gs.Constant):
            return list(tensor.values.shape)
        return self.shapes.get(tensor.name)

    def is_output(self, tensor: gs.Tensor) -> bool:
        return any(out is tensor for out in self.graph.outputs)

    def unique_name(self, stem: str) -> str:
        """A tensor name not used in the graph yet (and reserved from now on)."""
        if self._taken is None:
            self._taken = set(self.graph.tensors())
        name, index = stem, 1
        while name in self._taken:
            name, index = f"{stem}_{index}", index + 1
        self._taken.add(name)
        return name


def _producer(tensor: gs.Tensor) -> gs.Node | None:
    return tensor.inputs[0] if tensor.inputs else None


def _float_const(tensor: gs.Tensor) -> gs.Constant | None:
    if isinstance(tensor, gs.Constant) and np.issubdtype(tensor.values.dtype, np.floating):
        return tensor
    return None


def _sole_consumer(state: _State, tensor: gs.Tensor) -> gs.Node | None:
    """The one node reading `tensor` (None when it has several readers or is a graph output)."""
    if len(tensor.outputs) != 1 or state.is_output(tensor):
        return None
    return tensor.outputs[0]


def _shared_reason(state: _State, const: gs.Constant, owners: Iterable[gs.Node]) -> str | None:
    """Why `const` may not be rewritten (read by a node outside `owners`), or None."""
    users = readers(const, state.graph, owners, _SHAPE_READERS)
    return f"weight {const.name!r} is shared with {users}" if users else None


@dataclass
class _Linear:
    """``y = x·W (+ b)``: a MatMul with a constant 2-D weight, and the Add of its constant bias if any."""

    matmul: gs.Node
    weight: gs.Constant
    bias_add: gs.Node | None = None
    bias: gs.Constant | None = None

    @property
    def output(self) -> gs.Tensor:
        return (self.bias_add or self.matmul).outputs[0]

    @property
    def nodes(self) -> list[gs.Node]:
        return [self.matmul] + ([self.bias_add] if self.bias_add is not None else [])

    def shared_reason(self, state: _State) -> str | None:
        for const in (self.weight, self.bias):
            if const is not None and (reason := _shared_reason(state, const, self.nodes)):
                return reason
        return None


def _matmul_weight(node: gs.Node) -> gs.Constant | None:
    """The constant 2-D weight of ``MatMul(activation, W)``, or None."""
    if node.op != "MatMul" or len(node.inputs) != 2 or isinstance(node.inputs[0], gs.Constant):
        return None
    weight = _float_const(node.inputs[1])
    return weight if weight is not None and weight.values.ndim == 2 else None


def _linear_at(state: _State, matmul: gs.Node) -> _Linear | None:
    """`matmul` as a linear layer, with the bias Add that alone reads its output, if any."""
    weight = _matmul_weight(matmul)
    if weight is None:
        return None
    linear = _Linear(matmul, weight)
    add = _sole_consumer(state, matmul.outputs[0])
    if add is not None and add.op == "Add" and len(add.inputs) == 2:
        other = add.inputs[1] if add.inputs[0] is matmul.outputs[0] else add.inputs[0]
        bias = _float_const(other)
        n = weight.values.shape[1]
        if bias is not None and bias.values.size == n and bias.values.shape[-1:] == (n,):
            linear.bias_add, linear.bias = add, bias
    return linear


def _linear_ending_at(state: _State, tensor: gs.Tensor) -> _Linear | None:
    """The linear layer whose output (after its bias, if any) is `tensor`, or None."""
    producer = _producer(tensor)
    if producer is None:
        return None
    if producer.op == "MatMul":
        linear = _linear_at(state, producer)
        return linear if linear is not None and linear.bias_add is None else None
    if producer.op == "Add":
        for inp in producer.inputs:
            mm = _producer(inp)
            if mm is not None and mm.op == "MatMul":
                linear = _linear_at(state, mm)
                if linear is not None and linear.bias_add is producer:
                    return linear
    return None


# --- 1. value/output projection pairs, one signed Hadamard per head --------------------------------------


@dataclass
class _HeadPair:
    attention: gs.Node
    value: _Linear
    output: gs.Node
    heads: int
    head_dim: int


def _fold_value_outputs(state: _State, report: dict[str, Any]) -> None:
    for node in list(state.graph.nodes):
        if node.op != "MatMul" or len(node.inputs) != 2 or any(_is_const(t) for t in node.inputs):
            continue
        probs = _producer(node.inputs[0])
        if probs is None or probs.op != "Softmax":
            continue
        match = _match_head_pair(state, node)
        if isinstance(match, str):
            logger.debug("value/output at %s not rotated: %s", _name(node), match)
            report["skipped"].append({"what": "value_output", "node": _name(node), "reason": match})
            continue
        report["value_output"].append(_rotate_head_pair(state, match))


def _match_head_pair(state: _State, attention: gs.Node) -> _HeadPair | str:
    """The V projection -> heads -> ``P·V`` -> merge -> output projection chain around `attention`."""
    back: list[gs.Node] = []
    tensor = attention.inputs[1]
    consumer = attention
    while True:
        if _sole_consumer(state, tensor) is not consumer:
            return f"the value tensor {tensor.name!r} has readers besides {_name(consumer)!r}"
        producer = _producer(tensor)
        if producer is None or producer.op not in ("Reshape", "Transpose"):
            break
        back.insert(0, producer)
        tensor, consumer = producer.inputs[0], producer
    value = _linear_ending_at(state, tensor)
    if value is None:
        return f"the value tensor {tensor.name!r} is not the output of a MatMul with a constant weight"
    forward: list[gs.Node] = []
    tensor = attention.outputs[0]
    while True:
        consumer = _sole_consumer(state, tensor)
        if consumer is None:
            return f"the attention output {tensor.name!r} has several readers or is a graph output"
        if consumer.op not in ("Reshape", "Transpose"):
            break
        forward.append(consumer)
        tensor = consumer.outputs[0]
    if _matmul_weight(consumer) is None or consumer.inputs[0] is not tensor:
        return f"the merged heads feed {consumer.op} {_name(consumer)!r}, not a MatMul with a constant weight"
    heads = _track_heads(state, back, forward, value.weight.values.shape[1])
    if isinstance(heads, str):
        return heads
    n_heads, head_dim = heads
    rows = consumer.inputs[1].values.shape[0]
    if rows != n_heads * head_dim:
        return f"output projection {_name(consumer)!r} has {rows} input rows, not {n_heads}x{head_dim}"
    for reason in (value.shared_reason(state), _shared_reason(state, consumer.inputs[1], [consumer])):
        if reason:
            return reason
    if consumer.inputs[1] is value.weight:
        return "the value and output projections share one weight"
    return _HeadPair(attention, value, consumer, n_heads, head_dim)


def _track_heads(state: _State, back: list[gs.Node], forward: list[gs.Node],
                 width: int) -> tuple[int, int] | str:
    """(heads, head_dim) when the chain splits the last axis into (heads, head_dim), keeps head_dim last
    and the head axis a batch axis of ``P·V``, and merges (heads, head_dim) back; else the reason."""
    head_axis: int | None = None  # counted from the right
    split: tuple[int, int] | None = None
    for node in back:
        if node.op == "Transpose":
            head_axis = _transpose_axis(node, head_axis)
            if head_axis == 0:
                return f"Transpose {_name(node)!r} moves the head_dim axis off the last position"
            continue
        if split is not None:
            return f"Reshape {_name(node)!r} reshapes the value heads again (heads merged with another axis)"
        dims = _reshape_out_dims(state, node)
        if dims is None or len(dims) < 2 or not all(isinstance(d, int) and d > 0 for d in dims[-2:]):
            return f"the head split {_name(node)!r} has no static (heads, head_dim) shape"
        if dims[-2] * dims[-1] != width:
            return f"Reshape {_name(node)!r} gives {dims[-2:]} per token, not a split of the width {width}"
        split, head_axis = (dims[-2], dims[-1]), -2
    if split is None:
        return "no Reshape splits the value projection into heads"
    if head_axis is None or head_axis > -3:
        return "the head axis is not a batch axis of the attention MatMul"
    merged = False
    for node in forward:
        if node.op == "Transpose":
            head_axis = _transpose_axis(node, head_axis)
            if head_axis == 0:
                return f"Transpose {_name(node)!r} moves the head_dim axis off the last position"
            continue
        dims = _reshape_out_dims(state, node)
        if merged or head_axis != -2 or dims is None or dims[-1] != split[0] * split[1]:
            return f"Reshape {_name(node)!r} does not merge (heads, head_dim) back into the last axis"
        merged = True
    if not merged:
        return "no Reshape merges the heads back before the output projection"
    return split


def _transpose_axis(node: gs.Node, head_axis: int | None) -> int | None:
    """Where the axis at `head_axis` (from the right) lands; 0 when the last axis does not stay last."""
    perm = list(node.attrs.get("perm", []))
    rank = len(perm)
    if not perm or perm[-1] != rank - 1:
        return 0
    if head_axis is None:
        return None
    return perm.index(rank + head_axis) - rank if rank + head_axis in perm else 0


def _reshape_out_dims(state: _State, node: gs.Node) -> list[int | None] | None:
    dims = state.dims(node.outputs[0])
    if dims is not None and all(isinstance(d, int) and d > 0 for d in dims[-2:]):
        return dims
    target = node.inputs[1] if len(node.inputs) > 1 else None
    if isinstance(target, gs.Constant):
        return [int(v) if v > 0 else None for v in np.asarray(target.values).ravel()]
    return dims


def _rotate_head_pair(state: _State, pair: _HeadPair) -> dict[str, Any]:
    h, d = pair.heads, pair.head_dim
    signs = had.random_signs(h * d, state.rng) if had.has_hadamard(d) else None
    blocks = [had.signed_hadamard(d, signs[i * d:(i + 1) * d]) if signs is not None
              else had.random_orthogonal(d, state.rng) for i in range(h)]
    rot = np.stack(blocks)  # [h, d, d]
    wv = state.weights.get(pair.value.weight)
    wv = np.einsum("khd,hde->khe", wv.reshape(-1, h, d), rot).reshape(wv.shape)
    state.weights.set(pair.value.weight, wv)
    if pair.value.bias is not None:
        bv = state.weights.get(pair.value.bias)
        state.weights.set(pair.value.bias, np.einsum("hd,hde->he", bv.reshape(h, d), rot).reshape(bv.shape))
    wo_const = pair.output.inputs[1]
    wo = state.weights.get(wo_const)
    state.weights.set(wo_const, np.einsum("hde,hdn->hen", rot, wo.reshape(h, d, -1)).reshape(wo.shape))
    logger.debug("rotated value/output %s -> %s: %d heads x %d",
                 _name(pair.value.matmul), _name(pair.output), h, d)
    return {
        "attention": _name(pair.attention), "value": _name(pair.value.matmul), "output": _name(pair.output),
        "heads": h, "head_dim": d,
        "rotation": "hadamard" if signs is not None else "random_orthogonal",
        "factors": _factors(d) if signs is not None else None,
        "signs": had.signs_hex(signs) if signs is not None else None,
    }


def _factors(n: int) -> list[int]:
    base = had.hadamard_base(n) or 1
    return [base, n // base] if base > 1 and n > base else [n]


# --- 2. residual stream of RMSNorm pre-norm blocks -------------------------------------------------------


@dataclass
class _Norm:
    """A normalization over the last axis: its input, nodes, and how its scale ``γ`` is applied."""

    kind: str  # "rms" | "layer"
    node: gs.Node  # the node named in reports (RMSNormalization / LayerNormalization / ReduceMean)
    input: gs.Tensor
    nodes: list[gs.Node]
    output: gs.Tensor  # what the layers after the norm read
    gamma: gs.Constant | None = None
    gamma_mul: gs.Node | None = None  # decomposed RMSNorm: the Mul by γ (bypassed when γ is folded)


def _find_norms(state: _State) -> list[_Norm]:
    norms: list[_Norm] = []
    for node in state.graph.nodes:
        if node.op == "LayerNormalization":
            norms.append(_Norm("layer", node, node.inputs[0], [node], node.outputs[0]))
        elif node.op == "RMSNormalization":
            norms.append(_Norm("rms", node, node.inputs[0], [node], node.outputs[0],
                               gamma=_float_const(node.inputs[1]) if len(node.inputs) > 1 else None))
        elif node.op == "ReduceMean":
            norm = _match_decomposed_norm(state, node)
            if norm is not None:
                norms.append(norm)
    return norms


def _last_axis_only(state: _State, reduce: gs.Node, x: gs.Tensor) -> bool:
    axes = reduce.attrs.get("axes")
    if axes is None and len(reduce.inputs) > 1 and isinstance(reduce.inputs[1], gs.Constant):
        axes = np.asarray(reduce.inputs[1].values).ravel().tolist()
    if axes is None or len(axes) != 1 or not reduce.attrs.get("keepdims", 1):
        return False
    dims = state.dims(x)
    return axes[0] == -1 or (dims is not None and axes[0] == len(dims) - 1)


def _match_decomposed_norm(state: _State, reduce: gs.Node) -> _Norm | None:
    """``x·(1/√(mean(x²) + ε))·γ`` (RMSNorm), or ``x − mean(x)`` (a decomposed LayerNorm)."""
    src = reduce.inputs[0]
    sq = _producer(src)
    if sq is not None and _is_square(sq) and _last_axis_only(state, reduce, sq.inputs[0]):
        return _match_rms_tail(state, reduce, sq)
    if any(c.op == "Sub" and c.inputs[0] is src and c.inputs[1] is reduce.outputs[0] for c in src.outputs):
        return _Norm("layer", reduce, src, [reduce], reduce.outputs[0])
    return None


def _is_square(node: gs.Node) -> bool:
    if node.op == "Mul" and len(node.inputs) == 2:
        return node.inputs[0] is node.inputs[1]
    if node.op == "Pow" and isinstance(node.inputs[1], gs.Constant):
        exponent = np.asarray(node.inputs[1].values).ravel()
        return exponent.size == 1 and float(exponent[0]) == 2.0
    return False


def _match_rms_tail(state: _State, reduce: gs.Node, sq: gs.Node) -> _Norm | None:
    x = sq.inputs[0]
    add = _sole_consumer(state, reduce.outputs[0])
    if add is None or add.op != "Add" or not any(_is_const(t) for t in add.inputs):
        return None
    sqrt = _sole_consumer(state, add.outputs[0])
    if sqrt is None or sqrt.op != "Sqrt" or _sole_consumer(state, sq.outputs[0]) is not reduce:
        return None
    nodes = [sq, reduce, add, sqrt]
    scale = _sole_consumer(state, sqrt.outputs[0])
    if scale is not None and scale.op == "Div" and scale.inputs[0] is x:
        normed = scale
    elif scale is not None and scale.op == "Reciprocal":
        nodes.append(scale)
        normed = _sole_consumer(state, scale.outputs[0])
        if normed is None or normed.op != "Mul" or x not in normed.inputs:
            return None
    else:
        return None
    nodes.append(normed)
    gamma_mul = _sole_consumer(state, normed.outputs[0])
    if gamma_mul is not None and gamma_mul.op == "Mul":
        other = gamma_mul.inputs[1] if gamma_mul.inputs[0] is normed.outputs[0] else gamma_mul.inputs[0]
        gamma = _float_const(other)
        if gamma is not None and gamma.values.ndim == 1:
            return _Norm("rms", reduce, x, nodes + [gamma_mul], gamma_mul.outputs[0], gamma, gamma_mul)
    return _Norm("rms", reduce, x, nodes, normed.outputs[0])


@dataclass
class _Stream:
    tensors: list[gs.Tensor] = field(default_factory=list)
    writers: list[tuple[str, Any]] = field(default_factory=list)  # ("linear", _Linear), ("embedding", Gather)
    readers: list[_Linear] = field(default_factory=list)  # linear layers reading the stream directly
    norms: list[_Norm] = field(default_factory=list)
    norm_readers: list[tuple[_Norm, _Linear]] = field(default_factory=list)

    @property
    def linear_readers(self) -> list[_Linear]:
        """Every linear layer reading the stream, directly or after a norm."""
        return [*self.readers, *(linear for _, linear in self.norm_readers)]


def _fold_residual_streams(state: _State, report: dict[str, Any]) -> None:
    norms = _find_norms(state)
    by_node = {id(n): norm for norm in norms for n in norm.nodes}
    done: set[str] = set()
    for norm in norms:
        if norm.input.name in done:
            continue
        if norm.kind == "layer":
            stream: _Stream | str = _layernorm_reason(state, norm)
        else:
            stream = _collect_stream(state, norm.input, by_node)
        if isinstance(stream, _Stream):
            stream = _check_stream(state, stream)
        if isinstance(stream, str):
            logger.debug("residual stream at %s not rotated: %s", _name(norm.node), stream)
            report["skipped"].append({"what": "residual_stream", "node": _name(norm.node), "reason": stream})
            continue
        done.update(t.name for t in stream.tensors)
        report["residual_stream"].append(_rotate_stream(state, stream))


def _layernorm_reason(state: _State, norm: _Norm) -> str:
    pre = any(_is_residual_add(c) for c in norm.input.outputs)
    where = ("LayerNorm pre-norm block (would need the mean-free LayerNorm -> RMSNorm fold, not implemented)"
             if pre else "post-LayerNorm block: the residual stream passes through this norm")
    return (f"{where}; LayerNorm subtracts the mean over the hidden axis, which does not commute with a "
            "rotation (LN(x·Q) != LN(x)·Q), so the residual stream is rotated only in RMSNorm pre-norm "
            "blocks")


def _is_residual_add(node: gs.Node) -> bool:
    return node.op == "Add" and len(node.inputs) == 2 and not any(_is_const(t) for t in node.inputs)


def _is_const(tensor: gs.Tensor) -> bool:
    return isinstance(tensor, gs.Constant)


def _collect_stream(state: _State, seed: gs.Tensor, by_node: dict[int, _Norm]) -> _Stream | str:
    """Every tensor of the residual stream through `seed`, its writers and readers; or why not."""
    stream = _Stream()
    seen: set[str] = set()
    queue = [seed]
    while queue:
        tensor = queue.pop()
        if tensor.name in seen:
            continue
        seen.add(tensor.name)
        stream.tensors.append(tensor)
        reason = _stream_producer(state, tensor, stream, queue, by_node)
        reason = reason or _stream_consumers(state, tensor, stream, queue, by_node)
        if reason:
            return reason
    return stream


def _stream_producer(state: _State, tensor: gs.Tensor, stream: _Stream, queue: list[gs.Tensor],
                     by_node: dict[int, _Norm]) -> str | None:
    producer = _producer(tensor)
    if producer is None:
        return f"the residual stream starts at graph input {tensor.name!r} (it would need an online rotation)"
    if id(producer) in by_node and by_node[id(producer)].kind == "layer":
        return _layernorm_reason(state, by_node[id(producer)])
    if _is_residual_add(producer):
        queue.extend(producer.inputs)
        return None
    linear = _linear_ending_at(state, tensor)
    if linear is not None:
        stream.writers.append(("linear", linear))
        return None
    table = _float_const(producer.inputs[0]) if producer.op == "Gather" else None
    if table is not None and table.values.ndim == 2 and int(producer.attrs.get("axis", 0)) == 0:
        stream.writers.append(("embedding", producer))
        return None
    return (f"the residual stream tensor {tensor.name!r} is written by {producer.op} {_name(producer)!r}, "
            "which cannot absorb a rotation")


def _stream_consumers(state: _State, tensor: gs.Tensor, stream: _Stream, queue: list[gs.Tensor],
                      by_node: dict[int, _Norm]) -> str | None:
    if state.is_output(tensor):
        return f"the residual stream tensor {tensor.name!r} is a graph output (it would come out rotated)"
    for consumer in tensor.outputs:
        norm = by_node.get(id(consumer))
        if norm is not None:
            if norm.kind == "layer":
                return _layernorm_reason(state, norm)
            if norm.input is not tensor:
                return f"norm {_name(norm.node)!r} reads {tensor.name!r} inside its pattern"
            if norm not in stream.norms:
                stream.norms.append(norm)
            continue
        if _is_residual_add(consumer):
            queue.append(consumer.outputs[0])
            continue
        linear = _linear_at(state, consumer) if consumer.inputs[0] is tensor else None
        if linear is not None:
            stream.readers.append(linear)
            continue
        return (f"the residual stream tensor {tensor.name!r} is read by {consumer.op} {_name(consumer)!r}, "
                "which does not commute with a rotation")
    return None


def _check_stream(state: _State, stream: _Stream) -> _Stream | str:
    """`stream` with its norms' readers filled in, or why it cannot take the fold (the norms, their
    readers, the widths, a shared weight)."""
    if not stream.norms:
        return "the stream is read by no RMSNorm"
    for norm in stream.norms:
        if norm.node.op == "RMSNormalization" and int(norm.node.attrs.get("axis", -1)) != -1:
            return (f"RMSNormalization {_name(norm.node)!r} normalizes from axis {norm.node.attrs['axis']}, "
                    "not over the last axis only")
        if norm.gamma is None and norm.node.op == "RMSNormalization":
            return f"RMSNormalization {_name(norm.node)!r} has a non-constant scale"
        if state.is_output(norm.output):
            return f"the output of norm {_name(norm.node)!r} is a graph output (it would come out rotated)"
        for consumer in norm.output.outputs:
            linear = _linear_at(state, consumer) if consumer.inputs[0] is norm.output else None
            if linear is None:
                return f"norm {_name(norm.node)!r} feeds {consumer.op} {_name(consumer)!r}, not a linear"
            stream.norm_readers.append((norm, linear))
    widths = {_writer_weight(w).values.shape[1] for w in stream.writers}
    widths |= {lin.weight.values.shape[0] for lin in stream.linear_readers}
    widths |= {norm.gamma.values.size for norm in stream.norms if norm.gamma is not None}
    if len(widths) != 1:
        return f"the writers, readers and norms of the stream disagree on its width ({sorted(widths)})"
    for kind, writer in stream.writers:
        if kind == "linear":
            reason = writer.shared_reason(state)
        else:
            reason = _shared_reason(state, writer.inputs[0], [writer])
        if reason:
            return reason
    for linear in stream.linear_readers:
        if reason := _shared_reason(state, linear.weight, [linear.matmul]):
            return reason
    return stream


def _writer_weight(writer: tuple[str, Any]) -> gs.Constant:
    kind, node = writer
    return node.weight if kind == "linear" else node.inputs[0]


def _rotate_stream(state: _State, stream: _Stream) -> dict[str, Any]:
    d = _writer_weight(stream.writers[0]).values.shape[1]
    q, record = had.random_rotation(d, state.rng)
    for kind, writer in stream.writers:
        consts = [writer.weight, writer.bias] if kind == "linear" else [writer.inputs[0]]
        for const in consts:
            if const is not None:  # E' = E·Q, W' = W·Q, b' = b·Q
                value = state.weights.get(const)
                state.weights.set(const, (value.reshape(-1, d) @ q).reshape(value.shape))
    for linear in stream.readers:  # W' = Qᵀ·W
        state.weights.set(linear.weight, q.T @ state.weights.get(linear.weight))
    for norm, linear in stream.norm_readers:  # W' = Qᵀ·diag(γ)·W
        gamma = np.ones(d) if norm.gamma is None else np.asarray(norm.gamma.values, np.float64)
        state.weights.set(linear.weight, q.T @ (gamma[:, None] * state.weights.get(linear.weight)))
    for norm in stream.norms:
        _drop_gamma(state, norm, d)
        state.rotated_norms.add(_name(norm.node))
    logger.debug("rotated a residual stream of width %d: %d writers, %d norms",
                 d, len(stream.writers), len(stream.norms))
    return {
        "norms": [_name(n.node) for n in stream.norms],
        "hidden": d,
        "writers": [_name(w.matmul if k == "linear" else w) for k, w in stream.writers],
        "readers": [_name(r.matmul) for r in stream.linear_readers],
        "rotation": record,
    }


def _drop_gamma(state: _State, norm: _Norm, width: int) -> None:
    """Make the norm unit-scale (its γ now lives in the layers that read it)."""
    if norm.node.op == "RMSNormalization":
        ones = gs.Constant(state.unique_name(f"{ROTATION_MARKER}/{_name(norm.node)}/unit_scale"),
                           np.ones(width, dtype=norm.gamma.values.dtype))
        norm.node.inputs[1] = ones
    elif norm.gamma_mul is not None:
        mul = norm.gamma_mul
        normed = mul.inputs[0] if mul.inputs[1] is norm.gamma else mul.inputs[1]
        for consumer in list(norm.output.outputs):
            consumer.inputs[0] = normed
        norm.gamma_mul.outputs.clear()
        norm.gamma_mul.inputs.clear()


# --- 3. online Hadamard before layers whose input cannot be rotated offline ------------------------------


def _insert_online(state: _State, options: RotateOptions, report: dict[str, Any]) -> None:
    for x, kind in _online_targets(state, options.online):
        consumers = [c for c in x.outputs if c.inputs[0] is x and _matmul_weight(c) is not None]
        reasons = [r for c in consumers if (r := _shared_reason(state, c.inputs[1], [c]))]
        if reasons:
            report["skipped"].append({"what": "online", "node": _name(consumers[0]), "reason": reasons[0]})
            continue
        n = consumers[0].inputs[1].values.shape[0]
        split = had.kronecker_split(n)
        if split is None:
            report["skipped"].append({"what": "online", "node": _name(consumers[0]),
                                      "reason": f"no Hadamard matrix of order {n} is known here"})
            continue
        report["online"].append(_insert_hadamard(state, x, kind, consumers, split, options.dense_max))


def _online_targets(state: _State, kinds: tuple[str, ...]) -> list[tuple[gs.Tensor, str]]:
    """Activation tensors read by linear layers whose input no offline fold rotates, with their kind."""
    targets: list[tuple[gs.Tensor, str]] = []
    seen: set[str] = set()
    norms = _find_norms(state)
    in_norm = {id(n) for norm in norms for n in norm.nodes}
    unrotated = {norm.output.name for norm in norms if _name(norm.node) not in state.rotated_norms}
    for node in list(state.graph.nodes):
        if _matmul_weight(node) is None or node.inputs[0].name in seen:
            continue
        x = node.inputs[0]
        producer = _producer(x)
        if producer is None:
            continue
        if "ffn_down" in kinds and id(producer) not in in_norm and _is_nonlinear(producer):
            kind = "ffn_down"
        elif "norm" in kinds and x.name in unrotated:
            kind = "norm"
        else:
            continue
        seen.add(x.name)
        targets.append((x, kind))
    return targets


def _is_nonlinear(node: gs.Node) -> bool:
    """A pointwise nonlinearity (GELU's x·Φ(x), SiLU's x·σ(x), a gated product, ReLU, ...)."""
    if node.op == "Mul":
        return len(node.inputs) == 2 and not any(_is_const(t) for t in node.inputs)
    return node.op in _ACTIVATIONS


def _insert_hadamard(state: _State, x: gs.Tensor, kind: str, consumers: list[gs.Node], split: tuple[int, int],
                     dense_max: int) -> dict[str, Any]:
    """Insert ``x' = x·T`` before `consumers` and fold ``Tᵀ`` into their weights (``W' = Tᵀ·W``)."""
    a, b = split
    n = a * b
    prefix = f"{ROTATION_MARKER}/{_name(consumers[0])}"
    dtype = consumers[0].inputs[1].values.dtype
    if n <= dense_max or b == 1:
        signs = [had.random_signs(n, state.rng)]
        fa, fb = had.signed_hadamard(n, signs[0]), np.ones((1, 1))
        nodes, rotated = _dense_nodes(state, prefix, x, fa, dtype)
        mode, factors, macs = "dense", [n], n * n
    else:
        signs = [had.random_signs(a, state.rng), had.random_signs(b, state.rng)]
        fa, fb = had.signed_hadamard(a, signs[0]), had.signed_hadamard(b, signs[1])
        nodes, rotated = _kronecker_nodes(state, prefix, x, fa, fb, dtype)
        mode, factors, macs = "kronecker", [a, b], n * (a + b)
    state.graph.nodes.extend(nodes)
    for consumer in consumers:
        consumer.inputs[0] = rotated
        w = state.weights.get(consumer.inputs[1])  # (A ⊗ B)ᵀ·W = Σ_{p,q} A[p,r]·B[q,s]·W[p·b+q, :]
        w = np.einsum("pr,pqk->rqk", fa, w.reshape(fa.shape[0], fb.shape[0], -1))
        state.weights.set(consumer.inputs[1], np.einsum("qs,rqk->rsk", fb, w).reshape(n, -1))
    logger.debug("online Hadamard %s (%s %s) before %s", prefix, mode, factors, [_name(c) for c in consumers])
    return {
        "input": x.name, "kind": kind, "consumers": [_name(c) for c in consumers], "size": n, "mode": mode,
        "factors": factors, "factor_bases": [_factors(f) for f in factors],
        "signs": [had.signs_hex(s) for s in signs], "nodes": [nd.name for nd in nodes],
        "added_macs_per_token": macs,
    }


def _const(state: _State, name: str, value: np.ndarray) -> gs.Constant:
    return gs.Constant(state.unique_name(name), np.ascontiguousarray(value))


def _var(state: _State, name: str, dtype: Any) -> gs.Variable:
    return gs.Variable(state.unique_name(name), dtype=dtype)


def _dense_nodes(state: _State, prefix: str, x: gs.Tensor, t: np.ndarray,
                 dtype: Any) -> tuple[list[gs.Node], gs.Variable]:
    """``x·T`` as one MatMul with a constant n×n matrix."""
    out = _var(state, f"{prefix}/rotated", dtype)
    matrix = _const(state, f"{prefix}/hadamard", t.astype(dtype))
    return [gs.Node("MatMul", name=f"{prefix}/matmul", inputs=[x, matrix], outputs=[out])], out


def _kronecker_nodes(state: _State, prefix: str, x: gs.Tensor, fa: np.ndarray, fb: np.ndarray,
                     dtype: Any) -> tuple[list[gs.Node], gs.Variable]:
    """``x·(A ⊗ B) = reshape(Aᵀ·reshape(x, [-1, a, b])·B, shape(x))``."""
    a, b = fa.shape[0], fb.shape[0]
    shape = _var(state, f"{prefix}/shape", np.int64)
    x3, xb, y3, out = (_var(state, f"{prefix}/{s}", dtype) for s in ("split", "right", "left", "rotated"))
    split = _const(state, f"{prefix}/split_shape", np.array([-1, a, b], np.int64))
    right = _const(state, f"{prefix}/hadamard_b", fb.astype(dtype))
    left = _const(state, f"{prefix}/hadamard_a_t", fa.T.astype(dtype))
    nodes = [
        gs.Node("Shape", name=f"{prefix}/shape", inputs=[x], outputs=[shape]),
        gs.Node("Reshape", name=f"{prefix}/reshape_in", inputs=[x, split], outputs=[x3]),
        gs.Node("MatMul", name=f"{prefix}/matmul_b", inputs=[x3, right], outputs=[xb]),
        gs.Node("MatMul", name=f"{prefix}/matmul_a", inputs=[left, xb], outputs=[y3]),
        gs.Node("Reshape", name=f"{prefix}/reshape_out", inputs=[y3, shape], outputs=[out]),
    ]
    return nodes, out


def _model_macs(graph: gs.Graph) -> int:
    """Multiply-adds per token of the MatMul/Gemm layers with a constant 2-D weight (rotations excluded)."""
    total = 0
    for node in graph.nodes:
        if node.op not in ("MatMul", "Gemm") or node.name.startswith(ROTATION_MARKER) or len(node.inputs) < 2:
            continue
        weight = node.inputs[1]
        if isinstance(weight, gs.Constant) and weight.values.ndim == 2:
            total += int(np.prod(weight.values.shape))
    return total
