"""Insert QuantizeLinear / DequantizeLinear nodes as a `QuantPlan` says.

Activations (per-tensor, symmetric, zero point 0):
    x_dq = DequantizeLinear(QuantizeLinear(x, s, 0), s, 0),  s = amax / 127 (INT8) or amax / 448 (FP8),
shared by every consumer the plan lists; other consumers keep reading x. An FP8 zero point is a
one-element 1-D tensor (not a scalar), the one form that both TensorRT's parser and a default ONNX
Runtime session (whose Clip->QuantizeLinear fusion fails on a scalar FP8 zero point) accept.
Weights are stored quantized (INT8 / FLOAT8E4M3FN per-channel, INT4 block-wise) behind a
DequantizeLinear only, as TensorRT accepts pre-quantized weights:
    W_dq = DequantizeLinear(W_q, s_c, axis=c)           or, INT4:  DequantizeLinear(W_q, S, axis=k, block_size=B)
The float weight is kept only when a consumer outside the plan still reads it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_dtypes
import numpy as np
import onnx
import onnx_graphsurgeon as gs

from trtq.exporter.gptq import gptq_int4_blockwise
from trtq.exporter.placement import QuantPlan, WeightSlot
from trtq.exporter.weights import (
    QuantizedWeight,
    quantize_int4_blockwise,
    quantize_per_channel,
    representable_scale,
)
from trtq.precision import DEFAULT_BLOCK_SIZE, FLOATS, TABLE, FloatType

__all__ = ["insert_qdq"]


def insert_qdq(
    model: onnx.ModelProto,
    plan: QuantPlan,
    activation_amax: Mapping[str, float],
    precision: str,
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    opset: int,
    importance: Mapping[str, np.ndarray] | None = None,
    quantized: dict[WeightSlot, QuantizedWeight] | None = None,
    scale_type: str = "fp32",
) -> tuple[onnx.ModelProto, dict[str, dict[str, Any]]]:
    """Return the QDQ model and, per quantized tensor, the numbers chosen for it.

    `importance` maps an INT4 weight to the mean power of each of its input channels (activation-aware
    clipping), or to its input's K × K Hessian H = (2/n)·Σ x·xᵀ (GPTQ rounding, `trtq.exporter.gptq`);
    weights without an entry are clipped for plain weight MSE.

    `quantized` memoizes the quantized weights by slot, read where present and filled otherwise, for
    calls on the same model with the same precision, block size and importance (sensitivity fallback
    quantizes every weight of the plan, then the final graph a subset: GPTQ runs once per weight).

    `scale_type` (fp32 | fp16 | bf16): every scale is chosen representable in that type, before the codes
    are rounded, for graphs whose Q/DQ end up in that type (trtq.exporter.high_precision).
    """
    floats = FLOATS[scale_type]
    importance = importance or {}
    quantized = {} if quantized is None else quantized
    graph = gs.import_onnx(model)
    nodes = {n.name: n for n in graph.nodes}
    tensors = graph.tensors()
    fresh = _Namer(set(tensors) | {n.name for n in graph.nodes})
    report: dict[str, dict[str, Any]] = {}
    int4: dict[str, np.ndarray] = {}
    for name, consumers in sorted(plan.activations.items()):
        amax = float(activation_amax[name])
        dq = _activation_qdq(graph, tensors[name], amax, precision, fresh, floats)
        for node_name, index in consumers:
            nodes[node_name].inputs[index] = dq
        report[name] = {"kind": "activation", "amax": amax, "scale": float(dq.inputs[0].inputs[1].values),
                        "consumers": sorted({c for c, _ in consumers})}
    for slot, consumers in sorted(plan.weights.items(), key=lambda kv: (kv[0].tensor, kv[0].axis)):
        weight = _constant_values(tensors[slot.tensor])
        qw = quantized.get(slot) or _quantize_weight(weight, slot, precision, block_size,
                                                      importance.get(slot.tensor), floats)
        quantized[slot] = qw
        dq = _weight_dq(graph, slot, qw, block_size, fresh)
        if qw.values.dtype == ml_dtypes.int4:
            int4[dq.inputs[0].inputs[0].name] = qw.values
        for node_name, index in consumers:
            nodes[node_name].inputs[index] = dq
        report[slot.tensor] = _weight_report(slot, qw, weight.shape, precision, block_size, consumers,
                                             aware=slot.tensor in importance)
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    graph.opset = opset
    out = gs.export_onnx(graph, do_type_check=False)
    _pack_int4(out, int4)
    _copy_model_fields(model, out, opset)
    return out, report


class _Namer:
    """Names that collide with nothing already in the graph (`x_scale` may exist in a user's model)."""

    def __init__(self, taken: set[str]) -> None:
        self._taken = taken

    def __call__(self, name: str) -> str:
        candidate, i = name, 1
        while candidate in self._taken:
            candidate, i = f"{name}.{i}", i + 1
        self._taken.add(candidate)
        return candidate


def _activation_qdq(graph: gs.Graph, x: gs.Tensor, amax: float, precision: str, fresh: _Namer,
                    scale_type: FloatType) -> gs.Variable:
    spec = TABLE[precision]
    value = np.float32(amax / spec.qmax)
    if not (np.isfinite(value) and value >= np.finfo(np.float32).tiny):  # subnormal: TensorRT cannot invert it
        raise ValueError(f"activation {x.name!r}: amax {amax!r} gives no positive normal float32 scale")
    scale = gs.Constant(fresh(f"{x.name}_scale"), representable_scale(value, scale_type))
    zero_point = spec.zero_point()
    if zero_point.dtype == np.dtype(ml_dtypes.float8_e4m3fn):
        # one-element 1-D: ONNX Runtime's Clip->QuantizeLinear fusion (on by default) rejects a scalar FP8
        # zero point and fails the session; TensorRT's parser reads only an FP8 zero point's type.
        zero_point = zero_point.reshape(1)
    zero = gs.Constant(fresh(f"{x.name}_zero_point"), zero_point)
    q = gs.Variable(fresh(f"{x.name}_quantized"), dtype=spec.dtype, shape=x.shape)
    dq = gs.Variable(fresh(f"{x.name}_dequantized"), dtype=np.float32, shape=x.shape)
    graph.nodes.append(gs.Node("QuantizeLinear", fresh(f"{x.name}_QuantizeLinear"), inputs=[x, scale, zero],
                               outputs=[q]))
    graph.nodes.append(gs.Node("DequantizeLinear", fresh(f"{x.name}_DequantizeLinear"), inputs=[q, scale, zero],
                               outputs=[dq]))
    return dq


def _constant_values(tensor: gs.Tensor) -> np.ndarray:
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    return np.asarray(tensor.inputs[0].attrs["value"].values)


def _quantize_weight(w: np.ndarray, slot: WeightSlot, precision: str, block_size: int,
                     importance: np.ndarray | None, scale_type: FloatType) -> QuantizedWeight:
    if TABLE[precision].blockwise and importance is not None and np.ndim(importance) == 2:
        return gptq_int4_blockwise(w, slot.block_axis or 0, block_size, importance, scale_type=scale_type)
    if TABLE[precision].blockwise:
        return quantize_int4_blockwise(w, slot.block_axis or 0, block_size, importance, scale_type)
    return quantize_per_channel(w, None if slot.axis < 0 else slot.axis, precision, scale_type)


def _weight_dq(graph: gs.Graph, slot: WeightSlot, qw: QuantizedWeight, block_size: int,
               fresh: _Namer) -> gs.Variable:
    suffix = "" if slot.block_axis is None and slot.axis in (0, -1) else f"_axis{slot.axis}"
    base = f"{slot.tensor}{suffix}"
    # onnx-graphsurgeon does not pack INT4: export int8 placeholders, `_pack_int4` swaps them in.
    stored = qw.values.astype(np.int8) if qw.values.dtype == ml_dtypes.int4 else qw.values
    values = gs.Constant(fresh(f"{base}_quantized"), stored)
    scale = gs.Constant(fresh(f"{base}_scale"), qw.scale)
    dq = gs.Variable(fresh(f"{base}_dequantized"), dtype=np.float32, shape=list(qw.values.shape))
    attrs: dict[str, int] = {}
    if slot.block_axis is not None:
        attrs = {"axis": slot.block_axis, "block_size": block_size}
    elif slot.axis >= 0:
        attrs = {"axis": slot.axis}
    graph.nodes.append(gs.Node("DequantizeLinear", fresh(f"{base}_DequantizeLinear"), attrs=attrs,
                               inputs=[values, scale], outputs=[dq]))
    return dq


def _pack_int4(model: onnx.ModelProto, int4: Mapping[str, np.ndarray]) -> None:
    """Replace int8 placeholders by INT4 initializers (two per byte, low nibble first)."""
    for init in model.graph.initializer:
        if init.name in int4:
            init.CopyFrom(onnx.numpy_helper.from_array(int4[init.name], init.name))


def _weight_report(slot: WeightSlot, qw: QuantizedWeight, shape: tuple[int, ...], precision: str,
                   block_size: int, consumers: list[tuple[str, int]], *, aware: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "kind": "weight",
        "method": ("activation-weighted-mse-clip" if aware else "mse-clip") if TABLE[precision].blockwise else "max",
        "shape": list(shape),
        "axis": None if slot.axis < 0 else slot.axis,
        "amax": np.round(qw.amax.astype(np.float64), 9).tolist(),
        "scale": qw.scale.astype(np.float64).tolist(),
        "consumers": sorted({c for c, _ in consumers}),
    }
    if slot.block_axis is not None:
        entry.update(block_axis=slot.block_axis, block_size=block_size,
                     clip_ratio=np.round(qw.clip_ratio, 4).tolist())
    entry.update(qw.info)
    return entry


def _copy_model_fields(src: onnx.ModelProto, dst: onnx.ModelProto, opset: int) -> None:
    dst.ir_version = max(src.ir_version, 10 if opset >= 21 else 9 if opset >= 19 else src.ir_version)
    dst.producer_name = "trtq"
    from trtq._version import __version__

    dst.producer_version = __version__
    dst.model_version = src.model_version
    del dst.metadata_props[:]
    dst.metadata_props.extend(src.metadata_props)
    for imp in dst.opset_import:
        if imp.domain in ("", "ai.onnx"):
            imp.version = opset
