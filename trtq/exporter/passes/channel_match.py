"""Find the linear consumers of an activation and the op that can absorb a per-channel scale of it.

A group is an activation X (channels on its last axis) and every MatMul/Gemm that reads it as input 0
with a constant 2-D weight (input 1; Gemm without transA) and is not excluded; the group is refused
when one of those weights is also read by a node outside it. The fold target is found by walking back
from X (algebra in `trtq.exporter.passes.channel_fold`):

- terminal ops: LayerNormalization over the last axis (``norm``), a Mul by a constant holding one
  value per channel on its last axis, as RMSNorm's γ (``mul``), a MatMul/Gemm with a constant
  weight (``linear``, output columns), a Conv with a constant weight (``conv``, output channels);
- ops a positive per-channel scale passes through: Add of a constant, Relu, Identity, Dropout,
  Reshape/Flatten/Squeeze/Unsqueeze and Transpose, GlobalAveragePool, ReduceMean over other axes,
  and MatMul(P, V) with the scale on V (constant along V's rows: ``P·(V/s) = (P·V)/s``).

Channels are tracked as an index array broadcastable to each tensor: Transpose permutes it; a
reshape maps the trailing block holding the channels onto a trailing block of the output with the
same static element count (C order keeps each element's offset within the block whatever the
leading, possibly symbolic, dimensions are). At X the index must vary along the last axis only and
be a permutation of the terminal's channels. Every tensor between the terminal and X must have no
reader outside the chain; a terminal or chain constant shared with another node, an unknown shape,
or an op outside these lists makes the target ``explicit`` (a Mul before the consumers), with the
reason recorded.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

__all__ = ["Consumer", "FoldTarget", "Group", "fill_shapes", "find_groups", "node_name", "readers",
           "trace_target"]

_SHAPE_READERS = ("Shape", "Size")
_ELEMENTWISE = ("Add", "Relu", "Identity", "Dropout")
_RESHAPES = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")
_MAX_CHAIN = 12


def node_name(node: gs.Node) -> str:
    """The node's name, or ``<op>-><first output>`` when it has none."""
    return node.name or f"{node.op}->{node.outputs[0].name}"


@dataclass
class Consumer:
    """A MatMul/Gemm reading the activation as input 0 with a constant 2-D weight as input 1."""

    node: gs.Node
    weight: gs.Constant

    @property
    def transposed(self) -> bool:
        """True when the weight is stored [N, K] (Gemm with transB=1)."""
        return self.node.op == "Gemm" and bool(self.node.attrs.get("transB", 0))

    def kn(self) -> np.ndarray:
        """The weight as float64 [K, N]."""
        w = np.asarray(self.weight.values, dtype=np.float64)
        return w.T if self.transposed else w

    def set_kn(self, w: np.ndarray) -> None:
        """Store a float64 [K, N] weight back in the weight's own layout and dtype."""
        dtype = self.weight.values.dtype
        self.weight.values = np.ascontiguousarray(w.T if self.transposed else w).astype(dtype)


@dataclass
class Group:
    """An activation and every smoothable linear consumer that reads it (they share one scale)."""

    tensor: gs.Variable
    consumers: list[Consumer] = field(default_factory=list)

    @property
    def channels(self) -> int:
        return self.consumers[0].kn().shape[0]

    @property
    def names(self) -> list[str]:
        return [node_name(c.node) for c in self.consumers]


@dataclass
class FoldTarget:
    """Where 1/s goes: ``kind`` is norm | mul | linear | conv | explicit.

    Attributes:
        node: the terminal node (None for explicit).
        chain: the ops between the terminal's output and X, in data order.
        layouts: per chain node, the terminal-channel index of each element of its output
            (broadcastable to the output); empty when the chain is.
        index: for each consumer channel j, the terminal channel it comes from.
        reason: why no fold was possible (explicit targets).
    """

    kind: str
    node: gs.Node | None = None
    chain: list[gs.Node] = field(default_factory=list)
    layouts: list[np.ndarray] = field(default_factory=list)
    index: np.ndarray | None = None
    reason: str | None = None

    def describe(self) -> dict[str, object]:
        """JSON-able account of the target."""
        out: dict[str, object] = {"kind": self.kind}
        if self.node is not None:
            out["node"] = node_name(self.node)
            out["through"] = [f"{n.op} {node_name(n)}" for n in self.chain]
        if self.reason:
            out["why_explicit"] = self.reason
        return out


def _explicit(reason: str) -> FoldTarget:
    return FoldTarget("explicit", reason=reason)


# ----------------------------------------------------------------------------- finding groups


def _as_consumer(node: gs.Node) -> Consumer | None:
    if node.op not in ("MatMul", "Gemm") or len(node.inputs) < 2:
        return None
    x, w = node.inputs[0], node.inputs[1]
    if isinstance(x, gs.Constant) or not isinstance(w, gs.Constant):
        return None
    if node.op == "Gemm" and node.attrs.get("transA", 0):
        return None
    if w.values.ndim != 2 or not np.issubdtype(w.values.dtype, np.floating):
        return None
    return Consumer(node, w)


def readers(tensor: gs.Tensor, graph: gs.Graph, allowed: Iterable[gs.Node] = (),
            ignore_ops: Sequence[str] = ()) -> list[str]:
    """Readers of `tensor` other than `allowed` nodes (and ops in `ignore_ops`); "graph output" too."""
    keep = {id(n) for n in allowed}
    out = sorted({node_name(n) for n in tensor.outputs if id(n) not in keep and n.op not in ignore_ops})
    if any(t is tensor for t in graph.outputs):
        out.append("a graph output")
    return out


def find_groups(graph: gs.Graph, exclude: Sequence[str] = ()) -> tuple[list[Group], list[dict[str, object]]]:
    """Group smoothable MatMul/Gemm nodes by the activation they read.

    Args:
        graph: the graph.
        exclude: regular expressions; matching nodes stay in floating point and are not consumers.

    Returns:
        (groups, skipped): skipped groups carry the reason (a weight read outside the group).
    """
    patterns = [re.compile(p) for p in exclude]
    groups: dict[int, Group] = {}
    for node in graph.nodes:
        consumer = _as_consumer(node)
        if consumer is None or any(p.search(node_name(node)) for p in patterns):
            continue
        groups.setdefault(id(node.inputs[0]), Group(node.inputs[0])).consumers.append(consumer)
    kept, skipped = [], []
    for group in groups.values():
        reason = _group_reason(group, graph)
        if reason is None:
            kept.append(group)
        else:
            skipped.append({"tensor": group.tensor.name, "consumers": group.names, "reason": reason})
    return kept, skipped


def _group_reason(group: Group, graph: gs.Graph) -> str | None:
    channels = {c.kn().shape[0] for c in group.consumers}
    if len(channels) != 1:
        return f"consumers disagree on the input channel count {sorted(channels)}"
    nodes = [c.node for c in group.consumers]
    for c in group.consumers:
        others = readers(c.weight, graph, nodes, _SHAPE_READERS)
        if others:
            return f"weight {c.weight.name!r} of {node_name(c.node)!r} is shared with {others}"
    return None


# ----------------------------------------------------------------------------- fold targets


def trace_target(graph: gs.Graph, group: Group) -> FoldTarget:
    """Walk back from the group's activation to the op that can absorb 1/s (see module docstring)."""
    chain: list[gs.Node] = []
    tensor = group.tensor
    for _ in range(_MAX_CHAIN):
        if not tensor.inputs:
            return _explicit(f"{tensor.name!r} is a graph input")
        node = tensor.inputs[0]
        kind = _terminal_kind(node, tensor)
        if kind is not None:
            return _finish(graph, group, node, kind, chain)
        src = _scaled_input(node)
        if src is None:
            return _explicit(f"{node.op} {node_name(node)!r} does not commute with a per-channel scale")
        others = readers(src, graph, [node])
        if others:
            return _explicit(f"{src.name!r} (before {node.op} {node_name(node)!r}) is also read by {others}")
        chain.insert(0, node)
        tensor = src
    return _explicit(f"no foldable producer within {_MAX_CHAIN} ops")


def _terminal_kind(node: gs.Node, out: gs.Tensor) -> str | None:
    if node.outputs[0] is not out:
        return None
    if node.op == "LayerNormalization" and isinstance(node.inputs[1], gs.Constant):
        return "norm"
    if node.op in ("MatMul", "Gemm") and _as_consumer(node) is not None:
        return "linear"
    if node.op == "Conv" and len(node.inputs) > 1 and isinstance(node.inputs[1], gs.Constant):
        return "conv"
    if node.op == "Mul" and sum(isinstance(t, gs.Constant) for t in node.inputs) == 1:
        const = next(t for t in node.inputs if isinstance(t, gs.Constant))
        shape = const.values.shape
        if len(shape) >= 1 and shape[-1] > 1 and all(d == 1 for d in shape[:-1]):
            return "mul"
    return None


def _scaled_input(node: gs.Node) -> gs.Variable | None:
    """The input through which a per-channel scale passes `node`, or None if it does not commute."""
    if node.op == "Add":
        variables = [t for t in node.inputs if not isinstance(t, gs.Constant)]
        return variables[0] if len(variables) == 1 and len(node.inputs) == 2 else None
    if node.op in (*_ELEMENTWISE, *_RESHAPES, "Transpose", "GlobalAveragePool", "ReduceMean"):
        return node.inputs[0] if not isinstance(node.inputs[0], gs.Constant) else None
    if node.op == "MatMul" and len(node.inputs) == 2 and not isinstance(node.inputs[1], gs.Constant):
        return node.inputs[1] if node.inputs[1] is not node.inputs[0] else None
    return None


def _terminal_params(node: gs.Node, kind: str) -> list[gs.Constant]:
    if kind == "norm":
        return [t for t in node.inputs[1:3] if isinstance(t, gs.Constant)]
    if kind == "mul":
        return [t for t in node.inputs if isinstance(t, gs.Constant)]
    return [t for t in node.inputs[1:3] if isinstance(t, gs.Constant)]


def _terminal_channels(node: gs.Node, kind: str) -> int:
    if kind == "linear":
        return Consumer(node, node.inputs[1]).kn().shape[1]
    if kind == "conv":
        return int(node.inputs[1].values.shape[0])
    if kind == "mul":
        return int(next(t for t in node.inputs if isinstance(t, gs.Constant)).values.shape[-1])
    return int(node.inputs[1].values.size)


def _finish(graph: gs.Graph, group: Group, node: gs.Node, kind: str, chain: list[gs.Node]) -> FoldTarget:
    """Check the terminal and map its channels through `chain` onto the consumers' channels."""
    reason = _terminal_reason(graph, node, kind)
    if reason is None:
        reason = _chain_param_reason(graph, chain)
    if reason is not None:
        return _explicit(reason)
    channels = _terminal_channels(node, kind)
    layout = _initial_layout(node.outputs[0], kind, channels, bool(chain))
    if layout is None:
        return _explicit(f"the rank of {node.outputs[0].name!r} is unknown")
    layouts = []
    for link in chain:
        layout = _propagate(link, layout)
        if layout is None:
            return _explicit(f"cannot map channels through {link.op} {node_name(link)!r} "
                             "(shapes unknown, or the scale would vary along a mixed axis)")
        layouts.append(layout)
    index = _final_index(layout, group.channels, channels)
    if index is None:
        return _explicit(f"the channels of {node.op} {node_name(node)!r} do not map one-to-one onto "
                         f"the {group.channels} input channels of {group.names}")
    return FoldTarget(kind, node, chain, layouts, index)


def _terminal_reason(graph: gs.Graph, node: gs.Node, kind: str) -> str | None:
    if kind == "norm":
        axis = int(node.attrs.get("axis", -1))
        rank = len(node.inputs[0].shape) if node.inputs[0].shape is not None else None
        if axis != -1 and (rank is None or axis != rank - 1):
            return f"LayerNormalization {node_name(node)!r} normalises axis {axis}, not the last"
    third = node.inputs[2] if len(node.inputs) > 2 else None
    if kind != "mul" and third is not None and third.name and not isinstance(third, gs.Constant):
        return f"{node.op} {node_name(node)!r} has a non-constant bias"
    for param in _terminal_params(node, kind):
        if not np.issubdtype(param.values.dtype, np.floating):
            return f"{node.op} parameter {param.name!r} is not floating point"
        others = readers(param, graph, [node], _SHAPE_READERS if param is node.inputs[1] else ())
        if others:
            return f"cannot fold into {node.op} {node_name(node)!r}: {param.name!r} is shared with {others}"
    return None


def _chain_param_reason(graph: gs.Graph, chain: list[gs.Node]) -> str | None:
    for link in chain:
        if link.op != "Add":
            continue
        const = next(t for t in link.inputs if isinstance(t, gs.Constant))
        others = readers(const, graph, [link])
        if others:
            return f"bias {const.name!r} of Add {node_name(link)!r} is shared with {others}"
    return None


def _rank(tensor: gs.Tensor) -> int | None:
    return len(tensor.shape) if tensor.shape is not None else None


def _initial_layout(out: gs.Tensor, kind: str, channels: int, need_rank: bool) -> np.ndarray | None:
    rank = _rank(out)
    index = np.arange(channels)
    if rank is None:
        return None if need_rank or kind == "conv" else index
    if kind == "conv":
        return index.reshape((1, channels) + (1,) * (rank - 2)) if rank >= 2 else None
    return index.reshape((1,) * (rank - 1) + (channels,))


def _propagate(node: gs.Node, layout: np.ndarray) -> np.ndarray | None:
    """The terminal-channel layout of `node`'s output given the layout of its scaled input."""
    out = node.outputs[0]
    if node.op in _ELEMENTWISE:
        return layout
    if node.op == "Transpose":
        perm = node.attrs.get("perm") or list(range(layout.ndim))[::-1]
        return layout.transpose(perm) if len(perm) == layout.ndim else None
    if node.op in _RESHAPES:
        return _reshape_layout(layout, node.inputs[0].shape, out.shape)
    if node.op == "MatMul":
        if layout.ndim < 2 or layout.shape[-2] != 1 or _rank(out) is None:
            return None
        return layout.reshape((1,) * (_rank(out) - layout.ndim) + layout.shape)
    return _pool_layout(node, layout)


def _pool_layout(node: gs.Node, layout: np.ndarray) -> np.ndarray | None:
    if node.op == "GlobalAveragePool":
        return layout if layout.ndim >= 2 and all(d == 1 for d in layout.shape[2:]) else None
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1 and isinstance(node.inputs[1], gs.Constant):
        axes = node.inputs[1].values.tolist()
    if axes is None:
        return None
    axes = [a % layout.ndim for a in np.atleast_1d(axes)]
    if any(layout.shape[a] != 1 for a in axes):
        return None
    if node.attrs.get("keepdims", 1):
        return layout
    return layout.reshape([d for i, d in enumerate(layout.shape) if i not in axes])


def _static(dims: Sequence[object]) -> bool:
    return all(isinstance(d, (int, np.integer)) and d >= 0 for d in dims)


def _reshape_layout(layout: np.ndarray, in_shape: Sequence[object] | None,
                    out_shape: Sequence[object] | None) -> np.ndarray | None:
    """Map a layout through a C-order reshape: the trailing block holding the channels must be static.

    Only the trailing axes where the layout varies need static sizes: within a trailing block of
    equal element count, C order keeps every element's offset whatever the leading dimensions are.
    """
    if in_shape is None or out_shape is None or len(in_shape) != layout.ndim:
        return None
    varying = [i for i, d in enumerate(layout.shape) if d != 1]
    k = layout.ndim - varying[0] if varying else 1
    block = list(in_shape[-k:])
    if not _static(block):
        return None
    size, m, acc = int(np.prod(block)), 0, 1
    while acc < size and m < len(out_shape):
        m += 1
        if not _static([out_shape[-m]]):
            return None
        acc *= int(out_shape[-m])
    if acc != size:
        return None
    inner = np.broadcast_to(layout.reshape(layout.shape[-k:]), block)
    inner = inner.reshape([int(d) for d in out_shape[-m:]])
    return inner.reshape((1,) * (len(out_shape) - m) + inner.shape)


def _final_index(layout: np.ndarray, k: int, channels: int) -> np.ndarray | None:
    if layout.shape[-1] != k or any(d != 1 for d in layout.shape[:-1]) or channels != k:
        return None
    index = layout.reshape(-1)
    return index if np.array_equal(np.sort(index), np.arange(k)) else None


# ----------------------------------------------------------------------------- shapes


def fill_shapes(graph: gs.Graph, model: onnx.ModelProto) -> None:
    """Give tensors without a shape the one ONNX shape inference finds (on a weightless copy)."""
    if all(t.shape is not None for t in graph.tensors().values() if isinstance(t, gs.Variable) and t.inputs):
        return
    from trtq._shapes import inferred_graph

    inferred = {vi.name: vi.type.tensor_type for vi in inferred_graph(model).value_info}
    for name, tensor in graph.tensors().items():
        info = inferred.get(name)
        if tensor.shape is not None or info is None or not info.HasField("shape") or not info.elem_type:
            continue
        tensor.dtype = onnx.helper.tensor_dtype_to_np_dtype(info.elem_type)
        dims = info.shape.dim
        tensor.shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims]
