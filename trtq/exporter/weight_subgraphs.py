"""Fold the constant subgraphs that compute a weight or bias, so the planner sees them as weights.

Exporters often reach a weight through nodes: a tied LM head reads the embedding through a Transpose, a
layer applied several times (ALBERT) reads one weight through a Transpose per use, TorchScript's exporter
deduplicates equal initializers behind Identity nodes, and some weights are stored transposed. The planner
(`trtq.exporter.placement`) recognises a weight only as an initializer or a Constant node: a weight behind
a Transpose is an activation to it (INT4 skipped it as "activation x activation"; INT8/FP8 quantized it
per-tensor with calibrated ranges instead of per-channel).

This step evaluates, with ONNX Runtime (onnx-graphsurgeon's `fold_constants`), exactly the subgraphs that
feed input 0, 1 or 2 of a Conv / ConvTranspose / Gemm / MatMul and depend on constants only (no graph
input, no random op, no subgraph), and replaces each result by an initializer; a result equal to an
initializer (an Identity's input) or to another result reads that one, so a weight used twice stays one
weight. No other node changes (shape computations and the
rest of the graph are left as they are), and a model with no such subgraph is returned unchanged. The
FP32 outputs are unchanged: the same ops are evaluated once ahead of time.
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from trtq.exporter.passes.base import graph_to_model
from trtq.precision import WEIGHTED_OPS

__all__ = ["fold_weight_subgraphs"]

logger = logging.getLogger(__name__)

_RANDOM_OPS = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
                         "Multinomial", "Bernoulli", "Dropout"})


def fold_weight_subgraphs(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """Replace each constant subgraph feeding a weighted op's input by an initializer (module docstring).

    Args:
        model: an ONNX model; it is not modified.

    Returns:
        (the model, the names of the folded tensors, sorted); `model` itself when nothing folds.
    """
    graph = gs.import_onnx(model)
    nodes: dict[int, gs.Node] = {}
    memo: dict[int, bool] = {}
    targets = []
    for node in graph.nodes:
        if node.op not in WEIGHTED_OPS:
            continue
        for tensor in node.inputs[:3]:
            if isinstance(tensor, gs.Variable) and tensor.inputs and _constant_subgraph(tensor, nodes, memo):
                targets.append(tensor)
    if not targets:
        return model, []
    keys = {_key(n) for n in nodes.values()}  # fold_constants asks about nodes of a copy of the graph
    graph.toposort()
    graph.fold_constants(fold_shapes=False, recurse_subgraphs=False, flatten_subgraphs=False,
                         recurse_functions=False, partitioning="basic",
                         should_exclude_node=lambda n: _key(n) not in keys)
    folded = sorted({t.name for t in targets if isinstance(t, gs.Constant)})
    _share_equal(graph, [t for t in targets if isinstance(t, gs.Constant)])
    graph.cleanup().toposort()
    logger.info("folded %d constant weight subgraph(s) into initializers", len(folded))
    return graph_to_model(graph, model), folded


def _key(node: gs.Node) -> tuple[str, ...]:
    """A node's identity across graph copies: its output names (unique in an ONNX graph)."""
    return tuple(t.name for t in node.outputs)


def _constant_subgraph(tensor: gs.Tensor, nodes: dict[int, gs.Node], memo: dict[int, bool]) -> bool:
    """True when `tensor` depends on constants only; its producing nodes are added to `nodes`."""
    if isinstance(tensor, gs.Constant):
        return True
    if id(tensor) in memo:
        return memo[id(tensor)]
    memo[id(tensor)] = False  # a cycle, or a graph input, is not constant
    if len(tensor.inputs) != 1:
        return False
    node = tensor.inputs[0]
    if node.domain not in ("", "ai.onnx", None) or node.op in _RANDOM_OPS:
        return False
    if any(isinstance(v, gs.Graph) for v in node.attrs.values()):
        return False
    if not all(t.is_empty() or _constant_subgraph(t, nodes, memo) for t in node.inputs if isinstance(t, gs.Variable)):
        return False
    nodes[id(node)] = node
    memo[id(tensor)] = True
    return True


def _share_equal(graph: gs.Graph, folded: list[gs.Constant]) -> None:
    """Make readers of a folded value read an equal constant of the graph (an initializer keeps its name),
    or the first equal folded one by name: a weight reached twice stays one weight."""
    outputs = {id(t) for t in graph.outputs}
    folded = sorted({id(c): c for c in folded}.values(), key=lambda c: c.name)
    folded_ids = {id(c) for c in folded}
    shapes = {(c.values.dtype, c.values.shape) for c in folded}
    existing = sorted((t for t in graph.tensors().values() if isinstance(t, gs.Constant) and id(t) not in folded_ids
                       and (t.values.dtype, t.values.shape) in shapes), key=lambda c: c.name)
    first: dict[tuple[str, tuple[int, ...], str], gs.Constant] = {}
    for const in existing + folded:
        values = np.ascontiguousarray(const.values)
        key = (str(values.dtype), values.shape, hashlib.sha256(values.tobytes()).hexdigest())
        keep = first.setdefault(key, const)
        if keep is const or id(const) not in folded_ids or id(const) in outputs:
            continue
        for node in list(const.outputs):
            for i, t in enumerate(node.inputs):
                if t is const:
                    node.inputs[i] = keep
