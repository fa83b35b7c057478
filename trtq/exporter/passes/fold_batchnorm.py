"""Fold inference-mode BatchNormalization into the Conv, ConvTranspose or Gemm that feeds it.

BatchNormalization computes, per channel ``c``,
``y = γ·(x − μ)/σ + β`` with ``σ = sqrt(var + ε)``. Write ``s = γ/σ``. When ``x`` is the output
of a linear op ``x = W ⊛ u + b`` used by nothing else, ``y = (W·s) ⊛ u + (b − μ)·s + β``, so:

- Conv, weight ``W[c_out, c_in/g, k…]``: ``W'[c] = W[c]·s[c]`` and ``b' = (b − μ)·s + β``
  (``b = 0`` when the Conv has no bias).
- ConvTranspose, weight ``W[c_in, c_out/g, k…]``: output channel ``o = i·(c_out/g) + j`` reads
  ``W[i·(c_in/g) : (i+1)·(c_in/g), j]``, so ``W'[gi, :, j] = W[gi, :, j]·s[i·(c_out/g) + j]`` on
  ``W`` viewed as ``[g, c_in/g, c_out/g, k…]``; ``b' = (b − μ)·s + β``.
- Gemm, ``x = α·A·B̃ + β_g·C`` with ``B̃ = B`` (``transB=0``) or ``Bᵀ`` (``transB=1``): column ``n``
  of ``B̃`` is scaled, ``B'[:, n] = B[:, n]·s[n]`` or ``B'[n, :] = B[n, :]·s[n]``;
  ``C' = (β_g·C − μ)·s + β`` and the Gemm's ``beta`` becomes 1.

The arithmetic runs in float64 and is cast back to the weight's dtype, so the folded graph matches
the original within float32 rounding. A BatchNormalization is skipped, with the reason in the
report, when its producer is another op, when that producer's output has other consumers, when a
parameter is not a constant initializer, or when the producer's weight or bias is shared with a
node outside the match (folding would change that other node); Shape/Size nodes that read the
weight do not count, since the fold keeps its shape.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from trtq.exporter.passes.base import PassResult, graph_to_model
from trtq.exporter.passes.context import PassContext
from trtq.exporter.passes.registry import register_pass

__all__ = ["fold_batchnorm"]

logger = logging.getLogger(__name__)

_FOLDABLE = ("Conv", "ConvTranspose", "Gemm")
_SHAPE_READERS = ("Shape", "Size")


@register_pass("fold_batchnorm", order=5,
               summary="BatchNormalization folded into the Conv/ConvTranspose/Gemm before it (exact)")
def fold_batchnorm(model: onnx.ModelProto, ctx: PassContext) -> PassResult:
    """Fold every BatchNormalization that follows a Conv, ConvTranspose or Gemm into its weights.

    Args:
        model: an ONNX model; it is not modified.
        ctx: pass context; unused by this pass.

    Returns:
        `PassResult` whose model has the folds applied (the input model itself when nothing was
        folded) and whose report is ``{"folded": [BatchNormalization node names],
        "skipped": [{"node": name, "reason": why}]}``.
    """
    del ctx
    report: dict[str, Any] = {"folded": [], "skipped": []}
    if not any(node.op_type == "BatchNormalization" for node in model.graph.node):
        return PassResult(model, report)
    graph = gs.import_onnx(model)
    for bn in [node for node in graph.nodes if node.op == "BatchNormalization"]:
        name = _node_name(bn)
        reason = _skip_reason(bn, graph)
        if reason is not None:
            logger.debug("not folding %s: %s", name, reason)
            report["skipped"].append({"node": name, "reason": reason})
            continue
        producer = bn.inputs[0].inputs[0]
        _fold(bn, producer, graph)
        logger.debug("folded %s into %s %s", name, producer.op, _node_name(producer))
        report["folded"].append(name)
    logger.info(
        "fold_batchnorm: folded %d BatchNormalization node(s), skipped %d",
        len(report["folded"]),
        len(report["skipped"]),
    )
    if not report["folded"]:
        return PassResult(model, report)
    graph.cleanup()
    return PassResult(graph_to_model(graph, model), report)


def _node_name(node: gs.Node) -> str:
    return node.name or f"{node.op}->{node.outputs[0].name}"


def _skip_reason(bn: gs.Node, graph: gs.Graph) -> str | None:
    """Why `bn` cannot be folded, or None when it can."""
    if bn.attrs.get("training_mode", 0):
        return "training_mode=1 (batch statistics, not running statistics)"
    if any(out.outputs for out in bn.outputs[1:]):
        return "its running-statistics outputs are used"
    if not bn.inputs[0].inputs:
        return "its input is a graph input, not the output of a Conv/ConvTranspose/Gemm"
    producer = bn.inputs[0].inputs[0]
    if producer.op not in _FOLDABLE:
        return f"it follows {producer.op} {_node_name(producer)!r}, not Conv/ConvTranspose/Gemm"
    others = sorted({_node_name(n) for n in bn.inputs[0].outputs if n is not bn})
    if any(out is bn.inputs[0] for out in graph.outputs):
        others.append("a graph output")
    if others:
        return f"the output of {_node_name(producer)!r} also feeds {others}"
    return _param_reason(bn, producer, graph.outputs) or _shape_reason(bn, producer)


def _param_reason(bn: gs.Node, producer: gs.Node, graph_outputs: list[gs.Tensor]) -> str | None:
    """Why the BatchNormalization's or producer's parameters rule out the fold, or None."""
    for param in bn.inputs[1:5]:
        if not isinstance(param, gs.Constant):
            return f"BatchNormalization parameter {param.name!r} is not a constant initializer"
    for param in producer.inputs[1 : 3 if _has_bias(producer) else 2]:
        if not isinstance(param, gs.Constant):
            return f"{producer.op} parameter {param.name!r} is not a constant initializer"
        if not np.issubdtype(param.values.dtype, np.floating):
            return f"{producer.op} parameter {param.name!r} has dtype {param.values.dtype}, not float"
        # Shape/Size read only the weight's shape, which the fold keeps.
        readers = _SHAPE_READERS if param is producer.inputs[1] else ()
        users = sorted({_node_name(n) for n in param.outputs if n is not producer and n.op not in readers})
        if any(out is param for out in graph_outputs):
            users.append("a graph output")
        if users:
            return f"{producer.op} parameter {param.name!r} is shared with {users}"
    return None


def _shape_reason(bn: gs.Node, producer: gs.Node) -> str | None:
    """Why the weight and BatchNormalization shapes do not line up, or None."""
    channels = bn.inputs[1].values.size
    weight = producer.inputs[1].values
    if producer.op == "Conv":
        out = weight.shape[0]
    elif producer.op == "ConvTranspose":
        group = int(producer.attrs.get("group", 1))
        if weight.shape[0] % group:
            return f"ConvTranspose input channels {weight.shape[0]} not divisible by group {group}"
        out = weight.shape[1] * group
    else:
        if weight.ndim != 2:
            return f"Gemm weight has rank {weight.ndim}, not 2"
        out = weight.shape[0] if producer.attrs.get("transB", 0) else weight.shape[1]
    if out != channels:
        return f"{producer.op} has {out} output channels but BatchNormalization has {channels}"
    return None


def _fold(bn: gs.Node, producer: gs.Node, graph: gs.Graph) -> None:
    """Rewrite `producer`'s weight and bias and make it produce `bn`'s output in its place."""
    gamma, beta, mean, var = (np.asarray(t.values, dtype=np.float64) for t in bn.inputs[1:5])
    scale = gamma / np.sqrt(var + float(bn.attrs.get("epsilon", 1e-5)))
    weight = producer.inputs[1]
    dtype = weight.values.dtype
    new_weight = _scale_weight(producer, np.asarray(weight.values, dtype=np.float64), scale)
    new_bias = (_bias(producer, mean.size) - mean) * scale + beta
    weight.values = new_weight.astype(dtype)  # in place: only this node (and Shape/Size) use it
    if _has_bias(producer):
        producer.inputs[2].values = new_bias.astype(dtype)
    else:
        bias = gs.Constant(_unique_bias_name(weight.name, graph), new_bias.astype(dtype))
        if len(producer.inputs) > 2:
            producer.inputs[2] = bias
        else:
            producer.inputs.append(bias)
    if producer.op == "Gemm":
        producer.attrs["beta"] = 1.0
    bn_out = bn.outputs[0]
    bn.outputs.clear()
    bn.inputs.clear()
    producer.outputs[0] = bn_out


def _scale_weight(producer: gs.Node, weight: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``W·s`` along the producer's output-channel axis (see the module docstring)."""
    if producer.op == "Conv":
        return weight * scale.reshape((-1,) + (1,) * (weight.ndim - 1))
    if producer.op == "ConvTranspose":
        group = int(producer.attrs.get("group", 1))
        c_in, c_out_g = weight.shape[:2]
        kernel = weight.shape[2:]
        grouped = weight.reshape((group, c_in // group, c_out_g, *kernel))
        s = scale.reshape((group, 1, c_out_g) + (1,) * len(kernel))
        return (grouped * s).reshape(weight.shape)
    if producer.attrs.get("transB", 0):
        return weight * scale[:, None]
    return weight * scale[None, :]


def _bias(producer: gs.Node, channels: int) -> np.ndarray:
    """The producer's additive term before folding: ``b``, or ``β_g·C`` for Gemm, or zeros."""
    if not _has_bias(producer):
        return np.zeros(channels, dtype=np.float64)
    bias = np.asarray(producer.inputs[2].values, dtype=np.float64)
    if producer.op == "Gemm":
        bias = bias * float(producer.attrs.get("beta", 1.0))
    return bias


def _has_bias(producer: gs.Node) -> bool:
    return len(producer.inputs) > 2 and bool(producer.inputs[2].name)


def _unique_bias_name(weight_name: str, graph: gs.Graph) -> str:
    stem = weight_name[: -len("weight")] if weight_name.endswith("weight") else weight_name + "."
    taken = set(graph.tensors())
    name, index = f"{stem}bias", 1
    while name in taken:
        name, index = f"{stem}bias_{index}", index + 1
    return name
