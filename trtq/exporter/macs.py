"""Multiply-accumulates of the weighted ops (Conv, ConvTranspose, Gemm, MatMul): what quantizing each costs.

Per node: Conv `N·C_out·H_out·W_out · (C_in/group)·k_h·k_w` (output elements × one filter's taps);
ConvTranspose the same counted over its input; Gemm and MatMul output elements × the reduction
length K. Sensitivity fallback reports the share of MACs still quantized after it keeps layers in
floating point.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from trtq._ort import make_session
from trtq._shapes import inferred_graph
from trtq.precision import WEIGHTED_OPS

__all__ = ["count_macs"]


def count_macs(model: onnx.ModelProto, sample: Mapping[str, np.ndarray]) -> dict[str, int | None]:
    """Multiply-accumulates of every Conv/ConvTranspose/Gemm/MatMul for the input shapes of `sample`.

    Shapes come from ONNX shape inference with the graph inputs fixed to `sample`'s shapes; when
    inference leaves a needed dimension unknown, one ONNX Runtime run on `sample` reads it.

    Args:
        model: the FP32 model.
        sample: one feed (`{input: array}`; batch 1 gives MACs per sample).

    Returns:
        node name -> MACs (None when a shape stays unknown).
    """
    nodes = [n for n in model.graph.node if n.op_type in WEIGHTED_OPS]
    shapes = _inferred_shapes(model, {k: v.shape for k, v in sample.items()})
    macs = {n.name: _node_macs(n, shapes) for n in nodes}
    unknown = [n for n in nodes if macs[n.name] is None]
    if unknown:
        needed = {t for n in unknown for t in [*n.input[:2], n.output[0]] if t}
        shapes.update(_run_shapes(model, sample, needed))
        macs.update({n.name: _node_macs(n, shapes) for n in unknown})
    return macs


def _inferred_shapes(model: onnx.ModelProto,
                     input_shapes: Mapping[str, Sequence[int]]) -> dict[str, list[int | None]]:
    saved = [onnx.ValueInfoProto() for _ in model.graph.input]
    for copy, vi in zip(saved, model.graph.input, strict=True):
        copy.CopyFrom(vi)
        if vi.name in input_shapes:
            del vi.type.tensor_type.shape.dim[:]
            vi.type.tensor_type.shape.dim.extend(onnx.TensorShapeProto.Dimension(dim_value=int(d))
                                                 for d in input_shapes[vi.name])
    try:
        graph = inferred_graph(model)
    finally:
        del model.graph.input[:]
        model.graph.input.extend(saved)
    shapes = {vi.name: _dims(vi) for vi in [*graph.input, *graph.value_info, *graph.output]}
    shapes.update({i.name: list(i.dims) for i in model.graph.initializer})
    shapes.update({n.output[0]: list(numpy_helper.to_array(a.t).shape) for n in model.graph.node
                   if n.op_type == "Constant" for a in n.attribute if a.name == "value"})
    return shapes


def _dims(vi: onnx.ValueInfoProto) -> list[int | None]:
    return [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]


def _run_shapes(model: onnx.ModelProto, sample: Mapping[str, np.ndarray],
                names: set[str]) -> dict[str, list[int]]:
    inputs = {i.name for i in model.graph.input}
    exposed = sorted(names - inputs - {i.name for i in model.graph.initializer})
    values = make_session(model, outputs=exposed).run(exposed, dict(sample)) if exposed else []
    found = {n: list(v.shape) for n, v in zip(exposed, values, strict=True)}
    found.update({n: list(v.shape) for n, v in sample.items() if n in names})
    return found


def _node_macs(node: onnx.NodeProto, shapes: Mapping[str, list[int | None]]) -> int | None:
    a, w = (shapes.get(node.input[i]) if len(node.input) > i else None for i in (0, 1))
    out = shapes.get(node.output[0])
    if node.op_type == "Conv":
        dims = None if out is None or w is None else [*out, *w[1:]]
    elif node.op_type == "ConvTranspose":
        dims = None if a is None or w is None else [*a, *w[1:]]
    elif node.op_type == "Gemm":
        k_axis = 0 if any(x.name == "transA" and x.i for x in node.attribute) else -1
        dims = None if a is None or out is None else [*out, a[k_axis]]
    else:  # MatMul: every output element is a dot product over A's last axis
        dims = None if a is None or out is None else [*out, a[-1]]
    if dims is None or any(d is None or d < 0 for d in dims):
        return None
    return int(np.prod(dims, dtype=np.int64))
