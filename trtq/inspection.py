"""`trtq.inspect`: what a (QDQ) ONNX graph holds: ops, quantized tensors, placement, MACs and weight bytes.

Read statically from the graph with the check's index (`trtq.exporter.check.graph.Graph`); MACs come
from `trtq.exporter.macs.count_macs` at one sample per input (dynamic dimensions taken as 1 unless a
sample is given). Per weighted op (Conv, ConvTranspose, Gemm, MatMul) the compute precision is read from
what feeds it: a DequantizeLinear behind both the input and the weight runs in that type (`int8`, `fp8`);
one behind the weight only is weight-only (`int4 weight-only`); none is the weight's float type. Weight
bytes are those the engine stores: quantized elements at their width (INT4 packed two per byte) plus
their scales; float weights at their type's width.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx

from trtq._io import load_model
from trtq.precision import WEIGHTED_OPS

__all__ = ["InspectReport", "QuantizedTensor", "WeightedOp", "inspect", "sample_of"]

# the check's placement rules: where Q/DQ sit relative to the fusions TensorRT looks for
_PLACEMENT_RULES = ("partial-quant", "output-quantized", "residual-input", "mha-softmax-qdq", "mha-int8-placement")

_BITS = {"INT8": 8, "UINT8": 8, "FLOAT8E4M3FN": 8, "FLOAT8E5M2": 8, "FLOAT8E4M3FNUZ": 8, "FLOAT8E5M2FNUZ": 8,
         "INT4": 4, "UINT4": 4, "FLOAT4E2M1": 4, "FLOAT16": 16, "BFLOAT16": 16, "FLOAT": 32, "DOUBLE": 64}
_FLOAT_NAMES = {"FLOAT": "fp32", "FLOAT16": "fp16", "BFLOAT16": "bf16", "DOUBLE": "fp64"}


@dataclass(frozen=True)
class QuantizedTensor:
    """One quantization site: a QuantizeLinear (activation) or a DequantizeLinear of a constant (weight)."""

    tensor: str
    kind: str  # "activation" | "weight"
    precision: str  # int8, fp8, int4, ... (the precision table's name, else the ONNX type)
    granularity: str  # "tensor" | "channel" | "block"
    block_size: int
    scales: int
    scale_min: float | None
    scale_max: float | None
    read_by: tuple[str, ...]


@dataclass(frozen=True)
class WeightedOp:
    """A Conv / ConvTranspose / Gemm / MatMul: what it computes in and what sits around it."""

    node: str
    op: str
    precision: str  # compute precision: "int8", "fp8", "int4 weight-only", "fp32", ...
    input_precision: str | None  # the activation's Q/DQ type, None when not quantized
    weight_precision: str | None  # the weight's DQ type, None when not quantized or no constant weight
    weight_granularity: str | None
    output_to: tuple[str, ...]  # the ops reading its output, "Q" when it is quantized
    macs: int | None
    weight_bytes: int | None


@dataclass
class InspectReport:
    """What `inspect` read from a graph."""

    model: str | None
    opset: int
    op_counts: dict[str, int]
    tensors: list[QuantizedTensor]
    weighted_ops: list[WeightedOp]
    sample_shapes: dict[str, list[int]]
    placement_findings: list[dict[str, Any]] = field(default_factory=list)

    @property
    def macs_by_precision(self) -> dict[str, int]:
        """MACs per compute precision (ops whose MACs stay unknown are left out)."""
        return _sum_by(self.weighted_ops, "macs")

    @property
    def weight_bytes_by_precision(self) -> dict[str, int]:
        """Bytes of the weights (plus their scales) per compute precision of the op reading them."""
        return _sum_by(self.weighted_ops, "weight_bytes")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of everything above."""
        return {
            "model": self.model,
            "opset": self.opset,
            "op_counts": self.op_counts,
            "sample_shapes": self.sample_shapes,
            "macs_by_precision": self.macs_by_precision,
            "weight_bytes_by_precision": self.weight_bytes_by_precision,
            "tensors": [{**asdict(t), "read_by": list(t.read_by)} for t in self.tensors],
            "weighted_ops": [{**asdict(w), "output_to": list(w.output_to)} for w in self.weighted_ops],
            "placement_findings": self.placement_findings,
        }

    def format(self, top: int = 40) -> str:
        """Plain-text tables: op counts, precision shares, quantized tensors, weighted ops, placement findings."""
        lines = [(f"trtq inspect: {self.model or '<model>'} (opset {self.opset}, "
                 f"{sum(self.op_counts.values())} nodes)")]
        lines.append("ops: " + ", ".join(f"{op} {n}" for op, n in self.op_counts.items()))
        macs, wbytes = self.macs_by_precision, self.weight_bytes_by_precision
        total_macs, total_bytes = sum(macs.values()) or 1, sum(wbytes.values()) or 1
        shapes = ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in self.sample_shapes.items())
        lines += ["", f"per compute precision (MACs at {shapes}):",
                  f"  {'precision':<20} {'ops':>5} {'MACs':>14} {'share':>7} {'weight bytes':>14} {'share':>7}"]
        counts = Counter(w.precision for w in self.weighted_ops)
        for p in sorted(counts, key=lambda p: -macs.get(p, 0)):
            lines.append(f"  {p:<20} {counts[p]:>5} {macs.get(p, 0):>14,} {macs.get(p, 0) / total_macs:>7.1%} "
                         f"{wbytes.get(p, 0):>14,} {wbytes.get(p, 0) / total_bytes:>7.1%}")
        lines += ["", (f"quantized tensors: {len(self.tensors)} "
                  f"({sum(t.kind == 'activation' for t in self.tensors)} activations)"),
                  f"  {'tensor':<40} {'kind':<10} {'type':<8} {'granularity':<11} {'scales':>6} scale range"]
        for t in self.tensors[:top]:
            rng = "" if t.scale_min is None else f"{t.scale_min:.3g} .. {t.scale_max:.3g}"
            lines.append(f"  {_short(t.tensor):<40} {t.kind:<10} {t.precision:<8} {t.granularity:<11} "
                         f"{t.scales:>6} {rng}")
        if len(self.tensors) > top:
            lines.append(f"  ... {len(self.tensors) - top} more (--json lists all)")
        lines += ["", "weighted ops:", f"  {'node':<40} {'op':<13} {'computes in':<18} {'output to'}"]
        for w in self.weighted_ops[:top]:
            lines.append(f"  {_short(w.node):<40} {w.op:<13} {w.precision:<18} {', '.join(w.output_to)}")
        if len(self.weighted_ops) > top:
            lines.append(f"  ... {len(self.weighted_ops) - top} more (--json lists all)")
        lines += ["", f"Q/DQ placement around fusions: {len(self.placement_findings)} finding(s)"]
        lines += [f"  {f['severity']}: [{f['rule']}] {f['node']}: {f['message']}" for f in self.placement_findings]
        return "\n".join(lines)


def inspect(model: onnx.ModelProto | str | os.PathLike[str],
            sample: Mapping[str, np.ndarray] | None = None) -> InspectReport:
    """Read what a graph holds and how it is quantized (no data needed).

    Args:
        model: a ModelProto or the path of an .onnx file (never modified).
        sample: one feed for the MAC count (`{input: array}`); None: zeros of each input's shape with
            dynamic dimensions taken as 1.

    Returns:
        An `InspectReport`.

    Raises:
        TrtqError: the file is missing or not ONNX.
    """
    from trtq.exporter.check import check
    from trtq.exporter.check.graph import Graph

    path = str(model) if isinstance(model, (str, os.PathLike)) else None
    proto = load_model(model) if path is not None else model
    graph = Graph(proto, None, None)
    sample = dict(sample) if sample is not None else _zeros(proto)
    macs = _macs(proto, sample)
    tensors = sorted((_tensor(graph, q) for q in graph.sites()), key=lambda t: (t.kind, t.tensor))
    ops = [_weighted(graph, i, macs.get(graph.name(i))) for i in graph.nodes_of(*WEIGHTED_OPS)]
    findings = check(proto, rules=_PLACEMENT_RULES).to_dict()["findings"]
    counts = Counter(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}" for n in graph.nodes)
    return InspectReport(model=path, opset=graph.opset, op_counts=dict(counts.most_common()), tensors=tensors,
                         weighted_ops=ops, sample_shapes={k: list(v.shape) for k, v in sample.items()},
                         placement_findings=findings)


def sample_of(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The first sample of an .npz (one array per input, first axis = sample), for the MAC count's shapes."""
    from trtq.errors import TrtqError

    try:
        with np.load(path) as npz:
            return {k: npz[k][:1] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise TrtqError(f"{path}: cannot read it as .npz ({exc}).",
                        "pass an .npz of arrays keyed by input name (numpy.savez), or drop --data.") from exc


def _zeros(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    from trtq.calibrators.data import model_inputs

    return {s.name: np.zeros([1 if d is None else d for d in s.shape], dtype=s.dtype) for s in model_inputs(model)}


def _macs(model: onnx.ModelProto, sample: dict[str, np.ndarray]) -> dict[str, int | None]:
    from trtq.errors import TrtqError
    from trtq.exporter.macs import count_macs

    try:
        return count_macs(model, sample)
    except TrtqError:  # a graph ONNX Runtime cannot run here (plugin nodes): MACs stay unknown
        return {}


def _type_name(elem_type: int | None) -> str | None:
    from trtq.exporter.check.graph import LEGAL, type_name

    if elem_type is None:
        return None
    return LEGAL.get(elem_type) or type_name(elem_type).lower()


def _tensor(graph: Any, q: Any) -> QuantizedTensor:
    scales = graph.const_array(q.scale)
    out = graph.nodes[q.index].output[0]
    dq_outputs = [graph.nodes[c].output[0] for c in graph.consumers.get(out, []) if graph.op(c) == "DequantizeLinear"]
    readers = [graph.name(c) for t in (dq_outputs if q.is_q else [out]) for c in graph.consumers.get(t, [])]
    return QuantizedTensor(
        tensor=graph.resolve(q.data),
        kind="weight" if q.on_constant else "activation",
        precision=_type_name(q.qtype) or "?",
        granularity=q.granularity,
        block_size=q.block_size,
        scales=0 if scales is None else int(scales.size),
        scale_min=None if scales is None or not scales.size else float(scales.min()),
        scale_max=None if scales is None or not scales.size else float(scales.max()),
        read_by=tuple(sorted(set(readers))),
    )


def _weighted(graph: Any, i: int, macs: int | None) -> WeightedOp:
    node = graph.nodes[i]
    x_dq = graph.dq_behind(node.input[0])
    w_dq = graph.dq_behind(node.input[1]) if len(node.input) > 1 else None
    x_type = _type_name(graph.qinfo[x_dq].qtype) if x_dq is not None and not graph.qinfo[x_dq].on_constant else None
    w_info = graph.qinfo[w_dq] if w_dq is not None and graph.qinfo[w_dq].on_constant else None
    w_type = _type_name(w_info.qtype) if w_info else None
    if w_dq is not None and w_info is None:  # two activations (attention's batched MatMuls)
        w_type = _type_name(graph.qinfo[w_dq].qtype)
    if w_type and x_type:
        precision = w_type if w_type == x_type else f"{x_type}x{w_type}"
    elif w_type:
        precision = f"{w_type} weight-only"
    elif x_type:
        precision = f"{x_type} input only"
    else:
        precision = _FLOAT_NAMES.get(_raw_type(graph, node.input[0]), "float")
    output_to = tuple(sorted({"Q" if graph.op(c) == "QuantizeLinear" else graph.nodes[c].op_type
                              for c in graph.consumers.get(node.output[0], [])})) or ("graph output",)
    return WeightedOp(node=graph.name(i), op=node.op_type, precision=precision, input_precision=x_type,
                      weight_precision=w_type, weight_granularity=w_info.granularity if w_info else None,
                      output_to=output_to, macs=macs, weight_bytes=_weight_bytes(graph, node, w_info))


def _raw_type(graph: Any, tensor: str) -> str:
    from trtq.exporter.check.graph import type_name

    t = graph.dtype(tensor)
    return type_name(t) if t else "FLOAT"


def _weight_bytes(graph: Any, node: onnx.NodeProto, w_info: Any) -> int | None:
    """Stored bytes of the op's constant weight (and its scales); None when the weight is an activation."""
    if w_info is not None:
        data, scale = w_info.data, w_info.scale
        n = _elements(graph, data)
        scales = _elements(graph, scale)
        if n is None:
            return None
        return (n * _BITS.get(_raw_type(graph, data), 8) + 7) // 8 + (scales or 0) * (
            _BITS.get(_raw_type(graph, scale), 32) // 8)
    if len(node.input) < 2 or not graph.is_const(node.input[1]):
        return None
    n = _elements(graph, node.input[1])
    return None if n is None else n * _BITS.get(_raw_type(graph, node.input[1]), 32) // 8


def _elements(graph: Any, tensor: str) -> int | None:
    shape = graph.shape(tensor)
    if shape is None or any(d is None for d in shape):
        return None
    return int(np.prod(shape, dtype=np.int64))


def _sum_by(ops: list[WeightedOp], attr: str) -> dict[str, int]:
    totals: dict[str, int] = {}
    for w in ops:
        value = getattr(w, attr)
        if value is not None:
            totals[w.precision] = totals.get(w.precision, 0) + value
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def _short(name: str, width: int = 40) -> str:
    return name if len(name) <= width else "..." + name[-(width - 3):]
