"""Cast the unquantized regions of a graph to FP16 or BF16, keeping in FP32 what half precision breaks.

Why: a strongly typed TensorRT network (always, from TensorRT 11) runs every layer in the type its ONNX
tensors have, so a QDQ graph whose unquantized layers are float32 builds FP32 layers; no builder flag
lowers them. This pass writes the half precision into the graph, as ModelOpt's AutoCast does.

Algebra. Let H be the half type (float16: 5-bit exponent, 10-bit mantissa, finite range +-65504,
smallest subnormal 2^-24; bfloat16: float32's exponent range, 7-bit mantissa) and r(x) rounding to H.
Every node whose float tensors are float32 is assigned a precision p(n) in {H, fp32}:

    p(n) = fp32  when n is in KEEP (the rule below), or `nodes` is given and n is not in it
    p(n) = H     otherwise

A node with p(n) = H reads and writes H: its float32 initializers (weights, biases, Q/DQ scales, mask
constants) become r(w), saturated to +-max(H) rather than overflowing to inf; a float Constant's value
and a Cast-to-float's target become H. A QuantizeLinear reading a float32 tensor (a graph input, an
output of a float32 node) stays float32 and only its DQ is H: no Cast before it. Where a tensor crosses
between precisions one Cast is inserted
and shared by every reader on the other side. Q/DQ nodes in an H region get H scales, so the DQ output
is H and the quantized layer's output is H (TensorRT: "if the scale data type is kHALF or kBF16, it must
match the input data type", NvInfer.h); H scales need opset >= 19. The model's interface stays float32
(a Cast after each float input, before each float output) unless `keep_io=False`.

KEEP, the stated rule (each item tested in tests/test_high_precision.py):
  1. Summing reductions, whose result grows with the reduced count n (n * |x| overflows float16 from
     65504) and whose H accumulation error grows with n: ReduceSum, ReduceSumSquare, ReduceL1, ReduceL2,
     ReduceLogSum, ReduceLogSumExp, ReduceProd, CumSum, and the elementwise ops that then combine the
     sum only with constants (a division by n, a square root). Means, maxima and pooling stay in H.
  2. Normalization statistics of decomposed LayerNorm / RMSNorm: x^2 (Pow with exponent 2, or Mul(x, x))
     that feeds a ReduceMean, that ReduceMean, and the ops combining it only with constants after it
     (+ epsilon, Sqrt, Reciprocal).
     x^2 overflows float16 from |x| > 255.9, which post-attention residuals reach (TensorRT warns of
     exactly this for FP16 LayerNorm); epsilons such as 1e-12 are below float16's smallest subnormal.
     The fused LayerNormalization op stays in H: ONNX computes its statistics in `stash_type`
     (float32 by default), as TensorRT's INormalizationLayer does.
  3. Exp outside Softmax (e^x overflows float16 from x > 11.09); Softmax itself stays in H (it
     subtracts the row maximum first).
  4. A node reading a float constant whose non-zero values all round to 0 in H (|w| < 2^-24 in
     float16): the constant would vanish (an epsilon). A weight losing a few tiny entries is cast.
  5. Activation Q/DQ whose scale has a value below H's smallest normal number (6.1e-5 in float16):
     the scale would lose precision or flush to 0. They stay float32 behind Casts. A weight's DQ
     instead gets such scale entries raised to that normal number s' and its codes re-rounded,
     q' = clip(rint(q s / s')): the weight is then |w - q' s'| <= s'/2 off, where a subnormal scale
     would be off by its own rounding (up to 2^-25 absolute, i.e. 100% for scales near 2^-24).
  6. The Resize/Upsample scales and roi inputs, which ONNX types as float32 whatever the data type.
  7. An op whose ONNX schema (at the model's opset) has no half form for a float input or output, e.g.
     Range (float, double and integers only: YOLOv8's anchor grid), and the Constant nodes feeding it:
     in H the graph would not load; the constants stay exact.

`nodes=` restricts the cast to named nodes (sensitivity fallback: the layers kept out of INT8/FP8).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from trtq._shapes import add_inferred_shapes, tensor_types
from trtq.precision import FLOATS, FloatType

__all__ = ["HALF", "HighPrecisionReport", "cast_high_precision", "deliberate_fp32", "keep_fp32"]

HALF = ("fp16", "bf16")  # the FLOATS the pass casts to

_SUMS = frozenset({"ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp",
                   "ReduceProd", "CumSum"})
_STAT_CHAIN = frozenset({"Add", "Sub", "Mul", "Div", "Sqrt", "Reciprocal"})
_FP32_INPUTS = {"Resize": (1, 2), "Upsample": (1,)}  # roi / scales: float32 in ONNX whatever T is
_NEUTRAL = frozenset({"Shape", "Size"})  # read metadata only: any type will do
_QDQ = ("QuantizeLinear", "DequantizeLinear")
_F32 = TensorProto.FLOAT


@dataclass
class HighPrecisionReport:
    """What `cast_high_precision` did, for the sidecar.

    Args:
        dtype: fp16 | bf16.
        half_nodes: nodes now computing in `dtype`.
        kept_fp32: node -> why it stays float32 (rules 1-6 of the module docstring).
        casts: Cast nodes inserted.
        saturated: initializers with values beyond the half range, saturated to +-max.
        raised_scales: weight scales with entries raised to the half type's smallest normal (rule 5).
        keep_io: the model's inputs and outputs stayed float32.
    """

    dtype: str
    half_nodes: int = 0
    kept_fp32: dict[str, str] = field(default_factory=dict)
    casts: int = 0
    saturated: list[str] = field(default_factory=list)
    raised_scales: list[str] = field(default_factory=list)
    keep_io: bool = True

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"dtype": self.dtype, "half_nodes": self.half_nodes, "kept_fp32": dict(self.kept_fp32),
                "casts": self.casts, "saturated": list(self.saturated), "raised_scales": list(self.raised_scales),
                "keep_io": self.keep_io}


def cast_high_precision(model: onnx.ModelProto, dtype: str = "fp16", nodes: Iterable[str] | None = None,
                        keep: Mapping[str, str] | None = None, keep_io: bool = True,
                        rule: bool = True) -> HighPrecisionReport:
    """Cast `model`'s float32 compute to `dtype` (fp16 | bf16) by the module's rule. In place.

    Args:
        model: a float or QDQ model (node names unique; `trtq.quantize` names every node).
        dtype: fp16 | bf16.
        nodes: cast only these nodes (None: every node the rule allows).
        keep: more nodes to keep float32, with the reason.
        keep_io: keep float inputs and outputs float32 (Casts at the boundary).
        rule: apply the KEEP rule (False: cast everything the other arguments allow; to measure the rule).

    Returns:
        What was done (also what stayed float32 and why).
    """
    if dtype not in HALF:
        raise ValueError(f"dtype must be one of {', '.join(HALF)}, not {dtype!r}")
    half = FLOATS[dtype]
    g = model.graph
    del g.value_info[:]  # stale after the cast; re-inferred at the end
    types = tensor_types(model)
    inits = {i.name: i for i in g.initializer}
    report = HighPrecisionReport(dtype, keep_io=keep_io)
    wanted = None if nodes is None else set(nodes)
    floats = {t for t, ty in types.items() if ty == _F32}
    keep = {**(keep_fp32(model, dtype, floats, inits) if rule else {}), **(keep or {})}
    report.kept_fp32 = {n: why for n, why in keep.items() if wanted is None or n in wanted}
    precision: dict[str, str] = {}  # node name -> "half" | "fp32" | "neutral"
    fp32_tensors = {vi.name for vi in g.input} if keep_io else set()
    for node in g.node:
        touches = [t for t in (*node.input, *node.output) if t in floats]
        if not touches or node.op_type in _NEUTRAL or (node.op_type == "Cast" and node.output[0] not in floats):
            precision[node.name] = "neutral"
        elif node.name in keep or (wanted is not None and node.name not in wanted):
            precision[node.name] = "fp32"
        elif node.op_type == "QuantizeLinear" and node.input[0] in fp32_tensors:
            precision[node.name] = "fp32"  # quantizes the float32 tensor as it is: no Cast before it
        else:
            precision[node.name] = "half"
        if precision[node.name] == "fp32":
            fp32_tensors.update(node.output)
    _Rewriter(model, precision, floats, inits, half, keep_io, report).run()
    add_inferred_shapes(model)
    return report


def deliberate_fp32(model: onnx.ModelProto) -> dict[str, str]:
    """The float32 nodes of `model` that the KEEP rule keeps on purpose (for `trtq check`), with the reason."""
    types = tensor_types(model)
    inits = {i.name: i for i in model.graph.initializer}
    return keep_fp32(model, "fp16", {t for t, ty in types.items() if ty == _F32}, inits)


def keep_fp32(model: onnx.ModelProto, dtype: str, floats: set[str],
              inits: dict[str, TensorProto]) -> dict[str, str]:
    """The nodes rules 1-5 of the module docstring keep in float32, with the reason."""
    g = model.graph
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    constants = _constant_values(g, inits)
    producers = {o: n for n in g.node for o in n.output}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    tiny, normal = FLOATS[dtype].smallest, FLOATS[dtype].tiny
    keep: dict[str, str] = {}
    for node in g.node:
        op = node.op_type
        if op in _SUMS:
            keep[node.name] = f"{op}: a summing reduction (rule 1)"
            _keep_chain(node, consumers, constants, keep, "a summing reduction (rule 1)")
        elif op == "Exp":
            keep[node.name] = "Exp overflows half precision from x > 11 (rule 3)"
        elif op in _QDQ and node.input[0] not in inits and len(node.input) > 1 \
                and (s := constants.get(node.input[1])) is not None \
                and s.size and float(np.min(np.abs(s))) < normal:
            keep[node.name] = f"scale {float(np.min(np.abs(s))):.3g} below the half type's smallest normal (rule 5)"
        else:
            vanish = [t for t in node.input if (v := constants.get(t)) is not None and t in floats
                      and np.any(v != 0) and np.all(np.abs(v[v != 0]) < tiny)]
            if vanish and op not in _QDQ:
                keep[node.name] = f"constant '{vanish[0]}' rounds to 0 in half precision (rule 4)"
        if node.name not in keep and (missing := _no_half_form(node, floats, dtype, opset)):
            keep[node.name] = f"{op} has no {dtype} form in ONNX ({missing}; rule 7)"
            for t in node.input:
                if (src := producers.get(t)) is not None and src.op_type == "Constant":
                    keep[src.name] = f"constant read by {op} '{node.name}', which stays float32 (rule 7)"
        if _is_square(node, constants) and any(c.op_type == "ReduceMean" for c in consumers.get(node.output[0], [])):
            keep[node.name] = "x^2 of normalization statistics (rule 2)"
            for mean in (c for c in consumers[node.output[0]] if c.op_type == "ReduceMean"):
                keep[mean.name] = "variance of normalization statistics (rule 2)"
                _keep_chain(mean, consumers, constants, keep, "normalization statistics (rule 2)")
    return keep


def _no_half_form(node: onnx.NodeProto, floats: set[str], dtype: str, opset: int) -> str:
    """The first float tensor of `node` whose ONNX type constraint excludes the half type ("" if none)."""
    if node.domain not in ("", "ai.onnx"):
        return ""
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, "")
    except onnx.defs.SchemaError:
        return ""
    allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
    want = "tensor(float16)" if dtype == "fp16" else "tensor(bfloat16)"
    for formal, actual in ((schema.inputs, node.input), (schema.outputs, node.output)):
        for i, tensor in enumerate(actual):
            if not tensor or tensor not in floats or not formal:
                continue
            param = formal[min(i, len(formal) - 1)]  # a variadic last parameter covers the rest
            types = allowed.get(param.type_str)
            if types is not None and want not in types:
                return f"'{tensor}' is typed {param.type_str}: {', '.join(sorted(types))}"
    return ""


def _keep_chain(node: onnx.NodeProto, consumers: dict[str, list[onnx.NodeProto]], constants: dict[str, np.ndarray],
                keep: dict[str, str], why: str) -> None:
    """Follow the elementwise ops that combine a kept statistic only with constants (epsilon, 1/n, sqrt)."""
    frontier = [node]
    while frontier:
        current = frontier.pop()
        for c in consumers.get(current.output[0], []):
            others = [t for t in c.input if t and t != current.output[0]]
            if c.op_type in _STAT_CHAIN and c.name not in keep and all(t in constants for t in others):
                keep[c.name] = f"{c.op_type} on {why}"
                frontier.append(c)


def _is_square(node: onnx.NodeProto, constants: dict[str, np.ndarray]) -> bool:
    if node.op_type == "Mul":
        return len(node.input) == 2 and node.input[0] == node.input[1]
    if node.op_type == "Pow" and len(node.input) == 2:
        exponent = constants.get(node.input[1])
        return exponent is not None and exponent.size == 1 and float(exponent.ravel()[0]) == 2.0
    return False


def _constant_values(g: onnx.GraphProto, inits: dict[str, TensorProto]) -> dict[str, np.ndarray]:
    """Float constants (initializers and Constant nodes) as float64 arrays."""
    values: dict[str, np.ndarray] = {}
    for name, t in inits.items():
        if t.data_type in (_F32, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16):
            values[name] = numpy_helper.to_array(t).astype(np.float64)
    for n in g.node:
        if n.op_type == "Constant" and n.output:
            for a in n.attribute:
                if a.name == "value" and a.t.data_type in (_F32, TensorProto.FLOAT16, TensorProto.DOUBLE):
                    values[n.output[0]] = numpy_helper.to_array(a.t).astype(np.float64)
                elif a.name in ("value_float", "value_floats"):
                    values[n.output[0]] = np.asarray(helper.get_attribute_value(a), np.float64)
    return values


class _Rewriter:
    """Applies a node -> precision assignment: converts constants, retypes Casts, inserts boundary Casts."""

    def __init__(self, model: onnx.ModelProto, precision: dict[str, str], floats: set[str],
                 inits: dict[str, TensorProto], half: FloatType, keep_io: bool, report: HighPrecisionReport) -> None:
        self.model, self.g = model, model.graph
        self.precision, self.floats, self.inits = precision, floats, inits
        self.half, self.half_type, self.keep_io, self.report = half, half.onnx_type, keep_io, report
        self.suffix = half.name
        self.casts: dict[tuple[str, int], str] = {}
        self.new_nodes: dict[str, list[onnx.NodeProto]] = {}  # tensor -> Casts to insert after its producer
        self.half_inits: dict[str, str] = {}

    def run(self) -> None:
        g = self.g
        produced_half = {o for n in g.node if self.precision[n.name] == "half" for o in n.output if o in self.floats}
        if not self.keep_io:
            for vi in g.input:
                if vi.name in self.floats and vi.name not in self.inits:
                    vi.type.tensor_type.elem_type = self.half_type
                    produced_half.add(vi.name)
        self.dtype_of = {t: (self.half_type if t in produced_half else _F32) for t in self.floats}
        outputs = {o.name for o in g.output}
        renamed = self._rename_half_outputs(outputs, produced_half)
        init_readers = self._init_readers()
        for node in g.node:
            p = self.precision[node.name]
            if p == "neutral":
                continue
            self.report.half_nodes += p == "half"
            if p == "half":
                self._retype(node)
            for k, t in enumerate(node.input):
                if not t or t not in self.floats:
                    continue
                need = _F32 if p == "fp32" or k in _FP32_INPUTS.get(node.op_type, ()) else self.half_type
                if t in self.inits:
                    if need != _F32:
                        node.input[k] = self._half_init(t, init_readers[t])
                elif self.dtype_of.get(t, _F32) != need:
                    node.input[k] = self._cast(t, need)
        for original, internal in renamed.items():
            self._emit(internal, helper.make_node("Cast", [internal], [original], name=f"{original}_to_fp32", to=_F32))
        if not self.keep_io:
            for vi in g.output:
                if self.dtype_of.get(vi.name) == self.half_type:
                    vi.type.tensor_type.elem_type = self.half_type
        self._insert_casts()

    def _rename_half_outputs(self, outputs: set[str], produced_half: set[str]) -> dict[str, str]:
        """Graph outputs written in half: the producer writes `<name>_<dtype>`, a Cast writes the output."""
        renamed = {}
        if not self.keep_io:
            return renamed
        for name in outputs & produced_half:
            internal = f"{name}_{self.suffix}"
            for node in self.g.node:
                node.output[:] = [internal if o == name else o for o in node.output]
                node.input[:] = [internal if i == name else i for i in node.input]
            self.floats.add(internal)
            self.dtype_of[internal] = self.half_type
            self.dtype_of[name] = _F32
            self.casts[(internal, _F32)] = name
            renamed[name] = internal
        return renamed

    def _init_readers(self) -> dict[str, set[str]]:
        readers: dict[str, set[str]] = {}
        for node in self.g.node:
            for k, t in enumerate(node.input):
                if t in self.inits:
                    half = self.precision[node.name] == "half" and k not in _FP32_INPUTS.get(node.op_type, ())
                    readers.setdefault(t, set()).add("half" if half else "fp32")
        return readers

    def _retype(self, node: onnx.NodeProto) -> None:
        """A half node's float Cast target and float Constant values become the half type."""
        if node.op_type == "DequantizeLinear" and node.input[0] in self.inits and node.input[1] in self.inits:
            self._raise_tiny_scales(node)
        for a in node.attribute:
            if node.op_type == "Cast" and a.name == "to" and a.i == _F32:
                a.i = self.half_type
            elif node.op_type in ("Constant", "ConstantOfShape") and a.name == "value" and a.t.data_type == _F32:
                a.t.CopyFrom(self._to_half(numpy_helper.to_array(a.t), a.t.name))
            elif node.op_type == "Constant" and a.name in ("value_float", "value_floats"):
                value = np.asarray(helper.get_attribute_value(a), np.float32)
                node.attribute.remove(a)
                node.attribute.append(helper.make_attribute("value", self._to_half(value, "")))
                break
        for o in node.output:
            if o in self.floats:
                self.dtype_of[o] = self.half_type

    def _raise_tiny_scales(self, node: onnx.NodeProto) -> None:
        """Rule 5 for a weight's DQ: scale entries below the half type's smallest normal are raised to it."""
        scale_proto, codes_proto = self.inits[node.input[1]], self.inits[node.input[0]]
        scale = numpy_helper.to_array(scale_proto).astype(np.float64)
        tiny = self.half.tiny
        if scale.size == 0 or float(scale.min()) >= tiny:
            return
        codes = numpy_helper.to_array(codes_proto)
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        axis = attrs.get("axis", 1) % max(codes.ndim, 1)
        full = scale
        if scale.ndim == 1 and scale.size > 1:  # per channel
            full = scale.reshape([-1 if k == axis else 1 for k in range(codes.ndim)])
        elif scale.ndim == codes.ndim and attrs.get("block_size"):
            full = np.repeat(scale, int(attrs["block_size"]), axis=axis)[tuple(slice(0, n) for n in codes.shape)]
        raised = np.maximum(full, tiny)
        info = np.iinfo(np.int8) if codes.dtype == np.int8 else None
        low, high = (info.min + 1, info.max) if info else (-8, 7)
        new_codes = np.clip(np.rint(codes.astype(np.float64) * full / raised), low, high).astype(codes.dtype)
        codes_proto.CopyFrom(numpy_helper.from_array(new_codes, codes_proto.name))
        scale_proto.CopyFrom(numpy_helper.from_array(np.maximum(scale, tiny).astype(np.float32), scale_proto.name))
        self.report.raised_scales.append(node.input[1])

    def _to_half(self, values: np.ndarray, name: str) -> TensorProto:
        limit = self.half.max
        if np.any(np.abs(values[np.isfinite(values)]) > limit):
            self.report.saturated.append(name)
        clipped = np.where(np.isfinite(values), np.clip(values, -limit, limit), values)
        return numpy_helper.from_array(clipped.astype(self.half.dtype), name)

    def _half_init(self, name: str, readers: set[str]) -> str:
        """The half version of initializer `name`: converted in place when only half nodes read it."""
        if name in self.half_inits:
            return self.half_inits[name]
        proto = self.inits[name]
        if readers == {"half"}:
            proto.CopyFrom(self._to_half(numpy_helper.to_array(proto), name))
            self.half_inits[name] = name
        else:
            twin = f"{name}_{self.suffix}"
            self.g.initializer.append(self._to_half(numpy_helper.to_array(proto), twin))
            self.half_inits[name] = twin
        return self.half_inits[name]

    def _cast(self, tensor: str, to: int) -> str:
        key = (tensor, to)
        if key not in self.casts:
            out = f"{tensor}_to_{self.suffix if to != _F32 else 'fp32'}"
            self.casts[key] = out
            self._emit(tensor, helper.make_node("Cast", [tensor], [out], name=out, to=to))
        return self.casts[key]

    def _emit(self, after: str, node: onnx.NodeProto) -> None:
        self.new_nodes.setdefault(after, []).append(node)
        self.report.casts += 1

    def _insert_casts(self) -> None:
        """Put each Cast right after its input's producer (graph inputs' Casts first): a valid topological order."""
        order = [c for t in [vi.name for vi in self.g.input] for c in self.new_nodes.pop(t, [])]
        for node in self.g.node:
            order.append(node)
            for o in node.output:
                order.extend(self.new_nodes.pop(o, []))
        order.extend(c for cs in self.new_nodes.values() for c in cs)  # initializers cast at run time (none expected)
        del self.g.node[:]
        self.g.node.extend(order)
