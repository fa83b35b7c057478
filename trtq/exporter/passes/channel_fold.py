"""Exact per-channel scale (and shift) folds shared by the SmoothQuant and RepQ-ViT passes.

An activation X (channels j on its last axis) read by linear consumers ``y_c = X·W_c + b_c``
(``W_c``: [K, N_c]) is replaced by ``X' = (X − δ)/s``, which the consumers undo exactly:

    y_c = X'·(diag(s)·W_c) + (b_c + δ·W_c).

X' is produced, in order of preference, by folding into what computes X:

- a LayerNormalization over the last axis:  ``γ' = γ/s``, ``β' = (β − δ)/s``;
- an RMSNorm-style Mul by a per-channel constant γ:  ``γ' = γ/s`` (δ = 0);
- the output columns of a MatMul/Gemm or output channels of a Conv: ``W'[:, c] = W[:, c]/s_c``,
  ``b' = b/s`` (δ = 0), also through a chain of ops that commute with a positive per-channel scale:
  Add of a constant (``b' = b/s``), Reshape/Flatten/Squeeze/Unsqueeze and Transpose (channels
  mapped through the static trailing dimensions, e.g. per attention head), Relu, global pooling, and
  the attention product ``P·(V/s) = (P·V)/s`` (s constant along V's rows);
- else an explicit ``X' = (X − δ)·(1/s)`` (a Mul, after an Add when δ ≠ 0) before the consumers.

Readers of X outside the consumers (a residual Add, a graph output) get X back as ``X'·s + δ``;
every intermediate tensor of a chain must have no such readers. Arithmetic is float64, cast back to
each tensor's dtype, so the rewritten graph matches the original within float32 rounding. A group is
refused when a consumer's weight is read by a node outside it; a fold target whose parameters are
shared falls back to the explicit Mul (`trtq.exporter.passes.channel_match` finds groups and targets).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_graphsurgeon as gs

from trtq.exporter.passes.base import unique_name
from trtq.exporter.passes.channel_match import Consumer, FoldTarget, Group, node_name, readers

__all__ = ["apply_fold"]

logger = logging.getLogger(__name__)


def apply_fold(graph: gs.Graph, group: Group, target: FoldTarget, scale: np.ndarray,
               shift: np.ndarray | None = None, tag: str = "smooth") -> list[str]:
    """Rewrite `graph` so the consumers read ``X' = (X − shift)/scale`` (see module docstring).

    Args:
        graph: the graph, changed in place.
        group: the activation and its consumers.
        target: from `trace_target` on the unchanged graph.
        scale: positive float64 [K].
        shift: float64 [K] or None; only LayerNormalization and explicit targets take one.
        tag: suffix for new tensor and node names.

    Returns:
        The readers of X outside the group, which now read X restored from X'.
    """
    if shift is not None and (target.chain or target.kind not in ("norm", "explicit")):
        raise ValueError(f"a shift cannot be folded into a {target.kind} target "
                         f"through {len(target.chain)} op(s)")
    _scale_consumers(graph, group, scale, shift)
    if target.kind == "explicit":
        _insert_explicit(graph, group, scale, shift, tag)
        return []
    term_scale = np.empty_like(scale)
    term_scale[target.index] = scale
    term_shift = None
    if shift is not None:
        term_shift = np.empty_like(shift)
        term_shift[target.index] = shift
    _fold_terminal(graph, target, term_scale, term_shift)
    for link, layout in zip(target.chain, target.layouts):
        if link.op == "Add":
            const = next(t for t in link.inputs if isinstance(t, gs.Constant))
            const.values = _div(const.values, term_scale[layout])
    logger.debug("%s: 1/s of %s folded into %s %s", tag, group.tensor.name, target.kind,
                 node_name(target.node))
    return _restore_readers(graph, group, scale, shift, tag)


def _div(values: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``values / scale`` broadcast, in float64, back in `values`' dtype, without adding leading dims."""
    out = np.asarray(values, np.float64) / scale
    while out.ndim > max(np.ndim(values), 1) and out.shape[0] == 1:
        out = out[0]
    return out.astype(values.dtype)


def _fold_terminal(graph: gs.Graph, target: FoldTarget, scale: np.ndarray, shift: np.ndarray | None) -> None:
    node, kind = target.node, target.kind
    if kind == "norm":
        _fold_layernorm(graph, node, scale, shift)
    elif kind == "mul":
        const = next(t for t in node.inputs if isinstance(t, gs.Constant))
        const.values = _div(const.values, scale)
    elif kind == "linear":
        consumer = Consumer(node, node.inputs[1])
        consumer.set_kn(consumer.kn() / scale[None, :])
    else:  # conv
        weight = node.inputs[1]
        w = np.asarray(weight.values, np.float64)
        weight.values = (w / scale.reshape((-1,) + (1,) * (w.ndim - 1))).astype(weight.values.dtype)
    if kind in ("linear", "conv") and len(node.inputs) > 2 and isinstance(node.inputs[2], gs.Constant):
        node.inputs[2].values = _div(node.inputs[2].values, scale)


def _fold_layernorm(graph: gs.Graph, node: gs.Node, scale: np.ndarray, shift: np.ndarray | None) -> None:
    """``γ' = γ/s``, ``β' = (β − δ)/s`` (a β is added when the LayerNorm has none and δ ≠ 0)."""
    gamma = node.inputs[1]
    dtype = gamma.values.dtype
    gamma.values = (np.asarray(gamma.values, np.float64).reshape(-1) / scale).astype(dtype)
    has_beta = len(node.inputs) > 2 and node.inputs[2].name
    beta = np.asarray(node.inputs[2].values, np.float64).reshape(-1) if has_beta else np.zeros_like(scale)
    new_beta = ((beta - (shift if shift is not None else 0.0)) / scale).astype(dtype)
    if has_beta:
        node.inputs[2].values = new_beta
    elif np.any(new_beta):
        _set_input(node, 2, _const(graph, f"{gamma.name}.beta", new_beta, dtype))


def _scale_consumers(graph: gs.Graph, group: Group, scale: np.ndarray, shift: np.ndarray | None) -> None:
    """``W' = diag(scale)·W`` once per distinct weight; ``b' = b + shift·W`` per consumer."""
    originals = {id(c.weight): c.kn() for c in group.consumers}
    for c in group.consumers:
        if shift is not None:
            _add_bias(graph, c, shift @ originals[id(c.weight)])
    done: set[int] = set()
    for c in group.consumers:
        if id(c.weight) not in done:
            c.set_kn(scale[:, None] * originals[id(c.weight)])
            done.add(id(c.weight))


def _add_bias(graph: gs.Graph, c: Consumer, delta: np.ndarray) -> None:
    """Add `delta` ([N]) to the consumer's output: into its unshared bias, else by a new Add."""
    node = c.node
    dtype = c.weight.values.dtype
    if node.op == "Gemm":
        beta = float(node.attrs.get("beta", 1.0))
        if len(node.inputs) <= 2 or not node.inputs[2].name:
            node.attrs["beta"] = 1.0
            _set_input(node, 2, _const(graph, f"{c.weight.name}.shift_bias", delta, dtype))
            return
        bias = node.inputs[2]
        if isinstance(bias, gs.Constant) and beta != 0.0 and not readers(bias, graph, [node]):
            bias.values = (np.asarray(bias.values, np.float64) + delta / beta).astype(bias.values.dtype)
            return
    add = _bias_add(graph, node)
    if add is not None:
        add.values = (np.asarray(add.values, np.float64) + delta).astype(add.values.dtype)
        return
    out = node.outputs[0]
    pre = _like(graph, out, f"{out.name}.nobias")
    node.outputs[0] = pre
    _node(graph, "Add", f"{node_name(node)}.shift_bias",
          [pre, _const(graph, f"{c.weight.name}.shift_bias", delta, dtype)], out)


def _bias_add(graph: gs.Graph, node: gs.Node) -> gs.Constant | None:
    """The unshared constant bias of the single Add that reads `node`'s output, if there is one."""
    out = node.outputs[0]
    if len(out.outputs) != 1 or any(t is out for t in graph.outputs) or out.outputs[0].op != "Add":
        return None
    add = out.outputs[0]
    consts = [t for t in add.inputs if isinstance(t, gs.Constant)]
    if len(consts) != 1 or readers(consts[0], graph, [add]) or consts[0].values.ndim > 1:
        return None
    return consts[0]


def _insert_explicit(graph: gs.Graph, group: Group, scale: np.ndarray, shift: np.ndarray | None,
                     tag: str) -> None:
    """``X' = (X − δ)·(1/s)`` by an (Add and a) Mul that only the consumers read."""
    x = group.tensor
    dtype = x.dtype or np.float32
    src = x
    if shift is not None:
        src = _like(graph, x, f"{x.name}.{tag}.centred")
        minus_shift = _const(graph, f"{x.name}.{tag}.minus_shift", -shift, dtype)
        _node(graph, "Add", f"{x.name}.{tag}.centre", [x, minus_shift], src)
    out = _like(graph, x, f"{x.name}.{tag}")
    inverse = _const(graph, f"{x.name}.{tag}.inv_s", 1.0 / scale, dtype)
    _node(graph, "Mul", f"{x.name}.{tag}.mul", [src, inverse], out)
    _reroute_consumers(group, out)


def _restore_readers(graph: gs.Graph, group: Group, scale: np.ndarray, shift: np.ndarray | None,
                     tag: str) -> list[str]:
    """X now holds X'; if anything besides the consumers reads X, give X' a new name and rebuild X."""
    x = group.tensor
    others = readers(x, graph, [c.node for c in group.consumers])
    if not others:
        return []
    dtype = x.dtype or np.float32
    producer = x.inputs[0]
    smoothed = _like(graph, x, f"{x.name}.{tag}")
    producer.outputs[next(i for i, t in enumerate(producer.outputs) if t is x)] = smoothed
    _reroute_consumers(group, smoothed)
    rescaled = _like(graph, x, f"{x.name}.{tag}.rescaled") if shift is not None else x
    restore = _const(graph, f"{x.name}.{tag}.restore_s", scale, dtype)
    _node(graph, "Mul", f"{x.name}.{tag}.restore", [smoothed, restore], rescaled)
    if shift is not None:
        _node(graph, "Add", f"{x.name}.{tag}.unshift",
              [rescaled, _const(graph, f"{x.name}.{tag}.restore_shift", shift, dtype)], x)
    return others


def _node(graph: gs.Graph, op: str, name: str, inputs: list[gs.Tensor], output: gs.Variable) -> None:
    graph.nodes.append(gs.Node(op, unique_name(graph, name), inputs=inputs, outputs=[output]))


def _const(graph: gs.Graph, name: str, values: np.ndarray, dtype: np.dtype | type) -> gs.Constant:
    return gs.Constant(unique_name(graph, name), np.asarray(values).astype(dtype))


def _like(graph: gs.Graph, tensor: gs.Tensor, name: str) -> gs.Variable:
    """A new variable named `name` (made unique) with `tensor`'s dtype, and shape when the dtype is known."""
    shape = tensor.shape if tensor.dtype else None
    return gs.Variable(unique_name(graph, name), dtype=tensor.dtype, shape=shape)


def _reroute_consumers(group: Group, tensor: gs.Variable) -> None:
    for c in group.consumers:
        c.node.inputs[0] = tensor


def _set_input(node: gs.Node, index: int, tensor: gs.Tensor) -> None:
    while len(node.inputs) < index:
        node.inputs.append(gs.Variable.empty())
    if len(node.inputs) > index:
        node.inputs[index] = tensor
    else:
        node.inputs.append(tensor)
