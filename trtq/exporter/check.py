"""Static TensorRT-compatibility check of a QDQ ONNX graph, per target and TensorRT version, without a GPU.

Each rule is one function in `RULES`; `check` runs them all, or the ids given in `rules=`. Sources:
"anchors" = shared/reference/anchors-trt-modelopt.md (§2.1 hard rules, §2.3 placement recommendations and
fused MHA, §1.2 ModelOpt placement, §4 Jetson); NvInfer.h = TensorRT header, IQuantizeLayer/IDequantizeLayer;
operators.md = onnx-tensorrt docs/operators.md; parser = onnx-tensorrt onnxOpImporters.cpp, QDQ importer.

rule id                 severity  finds                                            source
----------------------  -------  -----------------------------------------------  -------------------------
zero-point              error    a zero point that is not a constant 0            NvInfer.h; operators.md
quant-type              error    UINT8 (also a Q with no zero point), INT16,      operators.md; parser
                                 UINT16, UINT4: TensorRT has INT8/FP8/INT4/FP4
fp8-format              error    FP8 other than FLOAT8E4M3FN (E5M2, *FNUZ)        operators.md
scale-constant          error    a scale that is not a build-time constant        Quantize.html
scale-value             error    a scale value <= 0, inf or nan                   NvInfer.h
scale-dtype             error    a scale not float32/fp16/bf16; fp16/bf16 not     NvInfer.h strong typing
                                 matching the Q input
per-channel-activation  error    per-channel scales not on a constant             NvInfer.h
block-quant             error    block scales on an activation; FP8/FP4/INT8      Quantize.html; NvInfer.h
                                 blocks before TensorRT 11 (10.x: INT4 only)
int4-activation         error    INT4 on an activation (INT4 is weight-only)      quantized-types doc
int4-odd-dim            error    an INT4 tensor with an odd last dimension        parser (INT4 packing)
conv-precision          error    Conv/ConvTranspose input not INT8/FP8            ModelOpt torch_onnx
qdq-opset               error    opset below a Q/DQ feature's: axis 13, FP8 19,   ONNX spec; ModelOpt
                                 fp16 scales 19, INT4 21, block_size 21, FP4 23
target-precision        error    FP8/FP4/INT4 on a target that lacks it           anchors 4; TARGETS
opset-range             error    opset outside the parser's (10.3: 9-20; 10.16    operators.md
                        warning  and 11: 9-24); warning: opset 21 forced by INT4
dynamic-quantize        error    a DynamicQuantizeLinear node                     operators.md
q-consumer              error    a Q output read by anything but a DQ             operators.md
dq-input                error    a DQ reading neither a Q nor a constant          operators.md
partial-quant           warning  a weighted op with some, not all, inputs         placement rec. 1
                                 quantized (bias excluded; INT4 W4A16 is fine)
output-quantized        warning  Q on a weighted op's output that feeds an        placement rec. 2, 3
                                 activation (Relu, Clip, SiLU Mul, ...) or Add
residual-input          warning  Add after a quantized Conv whose other           placement rec. 4
                                 input is not dequantized
mha-softmax-qdq         warning  Q/DQ on Softmax's input or on the mask/scale     MHA fusion; ModelOpt
                                 ops between attention MatMul and Softmax
mha-int8-placement      info     INT8 attention lacking Q/DQ before BMM1, after   MHA fusion
                                 Softmax, before BMM2; head not 16/32/64; S>512
small-gemm              info     quantized MatMul/Gemm with K or N < 16           ModelOpt
small-conv              info     quantized Conv with < 16 channels (FP8 <= 16),   ModelOpt convs_to_exclude
                                 ModelOpt's exceptions (depthwise, first layer)
fp32-region             info     float32 compute outside Q/DQ, no fp16 Cast       strong typing
target-trt              warning  orin + TensorRT 11 (AGX Orin, JetPack 7.2.2+)    anchors 4
                        error    thor + TensorRT 10.3 (JetPack 6 is Orin-only)

Only the main graph is read (not If/Loop subgraphs or local functions); Q/DQ means the default-domain ops.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any, NamedTuple

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from trtq._io import load_model
from trtq._shapes import inferred_graph
from trtq.config import Target
from trtq.errors import TrtqError
from trtq.targets import JETPACKS, TARGETS, TRT_RELEASES, TRT_VERSIONS, trt_support

__all__ = ["RULES", "SEVERITIES", "CheckReport", "Finding", "Rule", "check"]

SEVERITIES = ("error", "warning", "info")
_MODEL = "<model>"  # node name of a finding about the whole model

_Q, _DQ = "QuantizeLinear", "DequantizeLinear"
_WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")  # inputs 0 and 1 are quantized, 2 (bias) is not
_CONVS = ("Conv", "ConvTranspose")
_COMMUTING = frozenset({"Identity", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze"})
_ACTIVATIONS = frozenset(
    {"Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "LeakyRelu", "Tanh", "Elu", "Gelu"}
)
_MHA_CHAIN = frozenset({"Add", "Sub", "Mul", "Div", "Where", "Cast", "Reshape", "Identity"})
# ops with no float arithmetic worth an fp16 cast: data movement, shapes, casts, logic
_DATA_MOVEMENT = ("Shape", "Size", "Gather", "GatherElements", "GatherND", "Slice", "Concat", "Split", "Pad")
_NO_ARITHMETIC = ("Constant", "ConstantOfShape", "Cast", "CastLike", "Expand", "Tile", "Range", "NonZero")
_LOGIC = ("Where", "Equal", "Less", "Greater", "Not", "And", "Or")
_NOT_COMPUTE = frozenset({_Q, _DQ, *_COMMUTING, *_DATA_MOVEMENT, *_NO_ARITHMETIC, *_LOGIC})

_T = TensorProto
_LEGAL = {_T.INT8: "int8", _T.FLOAT8E4M3FN: "fp8", _T.INT4: "int4", _T.FLOAT4E2M1: "fp4"}
_OTHER_FP8 = frozenset({_T.FLOAT8E4M3FNUZ, _T.FLOAT8E5M2, _T.FLOAT8E5M2FNUZ})
_TYPE_MIN_OPSET = {  # first opset whose QuantizeLinear / DequantizeLinear take the type
    **dict.fromkeys((_T.FLOAT8E4M3FN, *_OTHER_FP8), 19),
    **dict.fromkeys((_T.INT4, _T.UINT4, _T.INT16, _T.UINT16), 21),
    _T.FLOAT4E2M1: 23,
}
_SCALE_TYPES = frozenset({_T.FLOAT, _T.FLOAT16, _T.BFLOAT16})
_HALF_TYPES = frozenset({_T.FLOAT16, _T.BFLOAT16})
_BLOCK_ANY_TYPE_TRT = ("11",)  # TensorRT 11: block quantization of FP8 / FP4 / INT8 too; 10.x: INT4 only
_STUB_ELEMENTS = 4096  # initializers larger than this reach shape inference as shape-only stubs


@dataclass(frozen=True)
class Finding:
    """One problem the check found.

    Args:
        severity: 'error' (TensorRT refuses or miscomputes), 'warning' (slower, or higher precision than
            asked), 'info' (worth knowing).
        rule: short kebab-case rule id, a key of the module docstring's table.
        node: the node at fault (its name, `<OpType>#<index>` when unnamed), or `<model>`.
        message: what is wrong.
        fix: what to change.
    """

    severity: str
    rule: str
    node: str
    message: str
    fix: str

    def to_dict(self) -> dict[str, str]:
        """The finding as a JSON-able dict."""
        return asdict(self)


@dataclass
class CheckReport:
    """Everything `check` found, in rule order, errors first.

    Args:
        findings: the findings.
        target: the target checked against (None: TensorRT's rules only).
        trt: the TensorRT version checked against (None: the newest, for version-dependent rules).
    """

    findings: list[Finding] = field(default_factory=list)
    target: str | None = None
    trt: str | None = None

    @property
    def errors(self) -> list[Finding]:
        """Findings TensorRT would refuse or miscompute."""
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        """Findings that cost speed or precision."""
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def ok(self) -> bool:
        """True when there is no error."""
        return not self.errors

    def counts(self) -> dict[str, int]:
        """Number of findings per severity."""
        return {s: sum(f.severity == s for f in self.findings) for s in SEVERITIES}

    def to_dict(self) -> dict[str, Any]:
        """The report as a JSON-able dict."""
        return {
            "ok": self.ok,
            "target": self.target,
            "trt": self.trt,
            "counts": self.counts(),
            "findings": [f.to_dict() for f in self.findings],
        }

    def format(self) -> str:
        """A readable table, one line per finding, then a summary line."""
        rows = [("SEVERITY", "RULE", "NODE", "MESSAGE / FIX")]
        rows += [(f.severity, f.rule, f.node, f"{f.message} Fix: {f.fix}") for f in self.findings]
        widths = [min(40, max(len(r[k]) for r in rows)) for k in range(3)]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)) + "  " + r[3] for r in rows
        ]
        counts = self.counts()
        lines.append(
            f"trtq check (target {self.target or 'any'}, TensorRT {self.trt or 'any'}): "
            f"{counts['error']} error(s), {counts['warning']} warning(s), {counts['info']} info — "
            f"{'OK' if self.ok else 'FAILED'}"
        )
        return "\n".join(lines if self.findings else lines[-1:])


@dataclass(frozen=True)
class _QInfo:
    """What one QuantizeLinear / DequantizeLinear node does."""

    index: int
    is_q: bool
    data: str
    scale: str
    zero_point: str | None
    qtype: int | None  # the quantized ONNX type (UINT8 for a Q without zero point, as ONNX says)
    block_size: int
    granularity: str  # "tensor" | "channel" | "block"
    on_constant: bool
    source_q: int | None  # for a DQ: the Q feeding it


class _Graph:
    """Read-only index of a model's main graph: producers, consumers, constants, types, shapes, Q/DQ nodes."""

    def __init__(self, model: onnx.ModelProto, target: Target | None, trt: str | None) -> None:
        self.model = model
        self.target = target
        self.trt = trt
        self.nodes = list(model.graph.node)
        self.opset = _default_opset(model)
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[int]] = {}
        self.constants: dict[str, TensorProto] = {t.name: t for t in model.graph.initializer}
        for i, node in enumerate(self.nodes):
            for out in node.output:
                if out:
                    self.producer[out] = i
            for inp in node.input:
                if inp:
                    self.consumers.setdefault(inp, []).append(i)
            if node.op_type == "Constant" and _is_onnx(node) and node.output:
                tensor = _constant_value(node)
                if tensor is not None:
                    self.constants[node.output[0]] = tensor
        self.graph_inputs = {v.name for v in model.graph.input} - set(self.constants)
        self.graph_outputs = {v.name for v in model.graph.output}
        self.types, self.shapes = _types_and_shapes(model)
        self.qinfo: dict[int, _QInfo] = {}
        for op in (_Q, _DQ):  # every Q first, so a DQ can read the Q that feeds it
            for i, node in enumerate(self.nodes):
                if node.op_type == op and _is_onnx(node) and len(node.input) >= 2:
                    self.qinfo[i] = self._read_qdq(i)

    def name(self, i: int | None) -> str:
        """The node's name, `<OpType>#<index>` when it has none, or `<model>` for None."""
        if i is None:
            return _MODEL
        node = self.nodes[i]
        return node.name or f"{node.op_type}#{i}"

    def op(self, i: int | None) -> str | None:
        """The op type of node `i` (default domain only; None for other domains or no node)."""
        if i is None or not _is_onnx(self.nodes[i]):
            return None
        return self.nodes[i].op_type

    def resolve(self, tensor: str) -> str:
        """Follow Identity nodes back to the tensor they copy."""
        for _ in range(16):
            p = self.producer.get(tensor)
            if p is None or self.op(p) != "Identity":
                break
            tensor = self.nodes[p].input[0]
        return tensor

    def is_const(self, tensor: str) -> bool:
        """True for an initializer or Constant output (through Identity)."""
        return self.resolve(tensor) in self.constants

    def is_build_time_const(self, tensor: str, depth: int = 0) -> bool:
        """True for a constant, or a DQ of constants (as NVFP4's double-quantized scales are)."""
        tensor = self.resolve(tensor)
        if tensor in self.constants:
            return True
        p = self.producer.get(tensor)
        if p is None or self.op(p) != _DQ or depth > 4:
            return False
        return all(self.is_build_time_const(t, depth + 1) for t in self.nodes[p].input if t)

    def const_array(self, tensor: str) -> np.ndarray | None:
        """A constant's values as float64, or None when not constant or not loaded (external data)."""
        proto = self.constants.get(self.resolve(tensor))
        if proto is None:
            return None
        try:
            return np.asarray(numpy_helper.to_array(proto)).astype(np.float64)
        except (ValueError, OSError, onnx.checker.ValidationError):  # external data absent, or empty
            return None

    def dtype(self, tensor: str) -> int | None:
        """The tensor's ONNX element type, when known."""
        resolved = self.resolve(tensor)
        if resolved in self.constants:
            return self.constants[resolved].data_type
        if self.types.get(tensor):
            return self.types[tensor]
        p = self.producer.get(tensor)
        if p in self.qinfo and self.qinfo[p].is_q:
            return self.qinfo[p].qtype
        if p in self.qinfo:
            return self.dtype(self.qinfo[p].scale)
        return None

    def shape(self, tensor: str) -> tuple[int | None, ...] | None:
        """The tensor's shape (None for unknown dims), when known."""
        resolved = self.resolve(tensor)
        if resolved in self.constants:
            return tuple(self.constants[resolved].dims)
        if tensor in self.shapes:
            return self.shapes[tensor]
        p = self.producer.get(tensor)
        if p is not None and self.op(p) in (_Q, _DQ):
            return self.shape(self.nodes[p].input[0])
        return None

    def dq_behind(self, tensor: str) -> int | None:
        """The DQ that produces `tensor`, looking through ops Q/DQ commute with (Reshape, Transpose, ...)."""
        for _ in range(8):
            p = self.producer.get(tensor)
            if p is None:
                return None
            if self.op(p) == _DQ:
                return p
            if self.op(p) not in _COMMUTING:
                return None
            tensor = self.nodes[p].input[0]
        return None

    def nodes_of(self, *ops: str) -> Iterator[int]:
        """Indices of the default-domain nodes of the given op types."""
        for i in range(len(self.nodes)):
            if self.op(i) in ops:
                yield i

    def inputs(self, i: int, *positions: int) -> list[str]:
        """The node's non-empty inputs at `positions`."""
        node = self.nodes[i]
        return [node.input[k] for k in positions if k < len(node.input) and node.input[k]]

    def sites(self) -> Iterator[_QInfo]:
        """One entry per quantization: every Q, and every DQ not fed by a Q (a quantized constant)."""
        return (q for q in self.qinfo.values() if q.is_q or q.source_q is None)

    def owners(self, attr: str) -> Iterator[_QInfo]:
        """Q/DQ owning their `attr` tensor ('scale' or 'zero_point'); a DQ sharing its Q's is skipped."""
        for q in self.qinfo.values():
            if q.source_q is not None and getattr(self.qinfo[q.source_q], attr) == getattr(q, attr):
                continue
            yield q

    def _read_qdq(self, i: int) -> _QInfo:
        node = self.nodes[i]
        is_q = node.op_type == _Q
        data, scale = node.input[0], node.input[1]
        zero_point = node.input[2] if len(node.input) > 2 and node.input[2] else None
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        source = self.producer.get(self.resolve(data))
        source_q = source if not is_q and source in self.qinfo and self.qinfo[source].is_q else None
        if is_q:
            qtype = attrs.get("output_dtype") or (self.dtype(zero_point) if zero_point else _T.UINT8)
            on_constant = self.is_const(data)
        elif source_q is not None:
            qtype, on_constant = self.qinfo[source_q].qtype, self.qinfo[source_q].on_constant
        else:
            qtype = self.dtype(data) or (self.dtype(zero_point) if zero_point else None)
            on_constant = self.is_build_time_const(data)
        block_size = int(attrs.get("block_size", 0) or 0)
        return _QInfo(
            index=i,
            is_q=is_q,
            data=data,
            scale=scale,
            zero_point=zero_point,
            qtype=qtype,
            block_size=block_size,
            granularity=_granularity(self.shape(scale), block_size),
            on_constant=on_constant,
            source_q=source_q,
        )


class _Hit(NamedTuple):
    """What a rule function yields: node index (None: the whole model), message, fix, severity override."""

    node: int | None
    message: str
    fix: str
    severity: str | None = None


@dataclass(frozen=True)
class Rule:
    """One check: its id, the severity it reports (unless a hit overrides it), a summary, its function."""

    id: str
    severity: str
    summary: str
    func: Callable[[_Graph], Iterable[_Hit]]

    def run(self, g: _Graph) -> list[Finding]:
        """The rule's findings on an indexed graph."""
        return [
            Finding(hit.severity or self.severity, self.id, g.name(hit.node), hit.message, hit.fix)
            for hit in self.func(g)
        ]


_REGISTRY: list[Rule] = []


def _rule(rule_id: str, severity: str, summary: str) -> Callable[[Callable[[_Graph], Iterable[_Hit]]], Any]:
    """Register a rule function under `rule_id` (the order of registration is the order of `RULES`)."""

    def register(func: Callable[[_Graph], Iterable[_Hit]]) -> Callable[[_Graph], Iterable[_Hit]]:
        _REGISTRY.append(Rule(rule_id, severity, summary, func))
        return func

    return register


def check(
    model: onnx.ModelProto | str | os.PathLike[str],
    target: Target | str | None = None,
    trt: str | None = None,
    *,
    rules: Iterable[str] | None = None,
) -> CheckReport:
    """Check a QDQ ONNX graph against TensorRT's explicit-quantization rules, statically.

    Args:
        model: a ModelProto or the path of an .onnx file (never modified).
        target: a `Target` or a target name ('orin', 'thor', 'ampere', 'ada', 'hopper', 'blackwell');
            None checks TensorRT's rules only (no precision limits of a device).
        trt: TensorRT version ('10.3', '10.16', '11'); overrides `target.trt`. None: the target's default
            version, or the newest TensorRT for version-dependent rules when there is no target either.
        rules: run only these rule ids (default: all of `RULES`).

    Returns:
        The report; `report.ok` is False when any finding is an error.

    Raises:
        TrtqError: the file is missing or not ONNX, or the target, TensorRT version or a rule id is unknown.
    """
    resolved_target = _resolve_target(target, trt)
    version = trt if trt is not None else (resolved_target.trt_version if resolved_target else None)
    selected = _select_rules(rules)
    if isinstance(model, (str, os.PathLike)):
        model = load_model(model)
    elif not isinstance(model, onnx.ModelProto):
        raise TypeError(f"check() takes an onnx.ModelProto or a path, not {type(model).__name__}.")
    graph = _Graph(model, resolved_target, version)
    findings = [f for rule in selected for f in rule.run(graph)]
    findings.sort(key=lambda f: SEVERITIES.index(f.severity))
    return CheckReport(findings, resolved_target.name if resolved_target else None, version)


# --- rules: hard TensorRT rules (errors) --------------------------------------------------------------------


@_rule("zero-point", "error", "zero points are constant 0")
def _zero_point(g: _Graph) -> Iterator[_Hit]:
    fix = "re-quantize symmetrically: zero point 0 and scale = amax / 127 (INT8) or amax / 448 (FP8)."
    for q in g.owners("zero_point"):
        if q.zero_point is None:
            continue
        if not g.is_const(q.zero_point):
            yield _Hit(q.index, f"zero point '{q.zero_point}' is not a constant.", fix)
            continue
        values = g.const_array(q.zero_point)
        if values is not None and np.any(values != 0):
            bad = values[values != 0].ravel()
            message = f"zero point '{q.zero_point}' holds {bad[0]:g} ({bad.size} non-zero value(s))"
            yield _Hit(q.index, message + "; TensorRT supports only symmetric quantization.", fix)


@_rule("quant-type", "error", "quantized types are INT8, FP8, INT4 or FP4")
def _quant_type(g: _Graph) -> Iterator[_Hit]:
    fix = "quantize symmetrically to INT8 (an INT8 zero point 0), or to FP8 E4M3FN / INT4 weights."
    for q in g.sites():
        if q.qtype is None or q.qtype in _LEGAL or q.qtype in _OTHER_FP8:
            continue
        if q.is_q and q.zero_point is None and q.qtype == _T.UINT8:
            message = (
                "QuantizeLinear has no zero point, so ONNX quantizes to UINT8 (ONNX Runtime clips negatives "
                "to 0) while TensorRT reads it as INT8: the two compute different models."
            )
        elif q.qtype == _T.INT32:
            message = (
                f"'{q.data}' is stored as INT32 (a quantized bias); TensorRT takes biases in float only."
            )
            yield _Hit(q.index, message, "keep biases float (onnxruntime: extra_options QuantizeBias=False).")
            continue
        else:
            message = (
                f"quantizes to {_type_name(q.qtype)}; TensorRT quantizes only to INT8, FP8 E4M3, INT4 "
                "(weights) and FP4, with zero point 0 (UINT8 and UINT4 mean asymmetric ranges)."
            )
        yield _Hit(q.index, message, fix)


@_rule("fp8-format", "error", "FP8 is FLOAT8E4M3FN")
def _fp8_format(g: _Graph) -> Iterator[_Hit]:
    for q in g.sites():
        if q.qtype in _OTHER_FP8:
            message = f"quantizes to {_type_name(q.qtype)}; TensorRT's FP8 is E4M3 (FLOAT8E4M3FN) only."
            yield _Hit(q.index, message, "use FLOAT8E4M3FN with scale = amax / 448.")


@_rule("scale-constant", "error", "scales are build-time constants")
def _scale_constant(g: _Graph) -> Iterator[_Hit]:
    for q in g.owners("scale"):
        if not g.is_build_time_const(q.scale):
            message = f"scale '{q.scale}' is computed at run time; TensorRT needs a build-time constant."
            yield _Hit(q.index, message, "store the scale as an initializer (or a Constant node).")


@_rule("scale-value", "error", "scales are positive and finite")
def _scale_value(g: _Graph) -> Iterator[_Hit]:
    fix = (
        "recalibrate: an all-zero or non-finite range gives no valid scale; exclude the tensor or clamp "
        "amax to a small positive value."
    )
    for q in g.owners("scale"):
        values = g.const_array(q.scale)
        if values is None:
            continue
        if values.size == 0:
            yield _Hit(q.index, f"scale '{q.scale}' is empty.", fix)
        elif not np.all(np.isfinite(values) & (values > 0)):
            bad = values[~(np.isfinite(values) & (values > 0))].ravel()
            message = f"scale '{q.scale}' holds {bad[0]:g} ({bad.size} value(s) not positive and finite)."
            yield _Hit(q.index, message, fix)


@_rule("scale-dtype", "error", "scales are float32 (fp16/bf16 only matching the input)")
def _scale_dtype(g: _Graph) -> Iterator[_Hit]:
    for q in g.owners("scale"):
        scale_type = g.dtype(q.scale)
        if scale_type is None:
            continue
        if scale_type == _T.FLOAT8E8M0 and q.granularity == "block" and q.qtype == _T.FLOAT8E4M3FN:
            continue  # MXFP8; block-quant checks the TensorRT version
        if scale_type not in _SCALE_TYPES:
            message = (
                f"scale '{q.scale}' is {_type_name(scale_type)}; TensorRT takes float32/fp16/bf16 scales."
            )
            yield _Hit(q.index, message, "store the scale as float32.")
            continue
        input_type = g.dtype(q.data) if q.is_q else None
        if scale_type in _HALF_TYPES and input_type is not None and input_type != scale_type:
            message = (
                f"scale '{q.scale}' is {_type_name(scale_type)} but the quantized input is "
                f"{_type_name(input_type)}; strongly typed TensorRT needs fp16/bf16 scales to match it."
            )
            yield _Hit(q.index, message, "store the scale as float32, or cast the input to the scale's type.")


@_rule("per-channel-activation", "error", "per-channel scales only on constant weights")
def _per_channel_activation(g: _Graph) -> Iterator[_Hit]:
    for q in g.sites():
        if q.granularity == "channel" and not q.on_constant:
            message = (
                f"'{q.data}' is quantized per channel but is not a constant weight; activations cannot be "
                "per-channel in TensorRT."
            )
            yield _Hit(q.index, message, "quantize activations per tensor (one scalar scale).")


@_rule("block-quant", "error", "block quantization only on constants, INT4 (any type on TensorRT 11)")
def _block_quant(g: _Graph) -> Iterator[_Hit]:
    for q in g.sites():
        if q.granularity != "block":
            continue
        if not q.on_constant and q.qtype != _T.INT4:  # INT4 activations: int4-activation
            message = f"'{q.data}' is block-quantized but is not a constant; TensorRT blocks constants only."
            yield _Hit(q.index, message, "quantize activations per tensor.")
        if (
            q.qtype in _LEGAL
            and q.qtype != _T.INT4
            and g.trt is not None
            and g.trt not in _BLOCK_ANY_TYPE_TRT
        ):
            message = (
                f"block quantization to {_type_name(q.qtype)}; TensorRT {g.trt} block-quantizes INT4 only "
                "(FP8, FP4 and INT8 blocks need TensorRT 11)."
            )
            fix = "use per-channel scales for INT8/FP8 weights, INT4 for block-wise weights, or --trt 11."
            yield _Hit(q.index, message, fix)


@_rule("int4-activation", "error", "INT4 is weight-only")
def _int4_activation(g: _Graph) -> Iterator[_Hit]:
    for q in g.sites():
        if q.qtype == _T.INT4 and not q.on_constant:
            message = f"'{q.data}' is an activation quantized to INT4; TensorRT's INT4 is weight-only."
            yield _Hit(q.index, message, "keep activations in fp16 (W4A16), or quantize them to INT8/FP8.")


@_rule("int4-odd-dim", "error", "INT4 tensors have an even last dimension")
def _int4_odd_dim(g: _Graph) -> Iterator[_Hit]:
    for q in g.sites():
        shape = g.shape(q.data)
        if q.qtype == _T.INT4 and shape and shape[-1] is not None and shape[-1] % 2:
            message = (
                f"'{q.data}' has an odd last dimension ({shape[-1]}); TensorRT packs INT4 in pairs on it."
            )
            yield _Hit(q.index, message, "pad the weight's last dimension to an even size, or keep it INT8.")


@_rule("conv-precision", "error", "convolutions run in INT8 or FP8 only")
def _conv_precision(g: _Graph) -> Iterator[_Hit]:
    for i in g.nodes_of(*_CONVS):
        for tensor in g.inputs(i, 0, 1):
            dq = g.dq_behind(tensor)
            qtype = g.qinfo[dq].qtype if dq is not None else None
            if qtype is not None and qtype not in (_T.INT8, _T.FLOAT8E4M3FN):
                message = (
                    f"input '{tensor}' is dequantized from {_type_name(qtype)}; TensorRT runs convolutions "
                    "only in INT8 or FP8."
                )
                yield _Hit(i, message, "quantize this convolution to INT8 (or FP8), or exclude it.")
                break


@_rule("qdq-opset", "error", "the opset supports each Q/DQ feature used")
def _qdq_opset(g: _Graph) -> Iterator[_Hit]:
    if g.opset is None:
        return
    for q in g.sites():
        needs = [(10, "QuantizeLinear/DequantizeLinear")]
        if q.granularity == "channel":
            needs.append((13, "per-channel scales (axis)"))
        if q.granularity == "block":
            needs.append((21, "block quantization (block_size)"))
        if q.qtype in _TYPE_MIN_OPSET:
            needs.append((_TYPE_MIN_OPSET[q.qtype], _type_name(q.qtype)))
        if g.dtype(q.scale) in _HALF_TYPES:
            needs.append((19, f"{_type_name(g.dtype(q.scale))} scales"))
        unmet = [(version, what) for version, what in needs if g.opset < version]
        if unmet:
            need = max(version for version, _ in unmet)
            what = ", ".join(what for _, what in unmet)
            message = f"{what} need(s) opset >= {need}; the model declares opset {g.opset}."
            yield _Hit(q.index, message, f"export or convert the model to opset {need} or newer.")


@_rule("target-precision", "error", "the target runs each quantized precision")
def _target_precision(g: _Graph) -> Iterator[_Hit]:
    if g.target is None:
        return
    spec = g.target.spec
    by_precision: dict[str, list[int]] = {}
    for q in g.sites():
        precision = _LEGAL.get(q.qtype) if q.qtype is not None else None
        if precision is not None and precision not in spec.precisions:
            by_precision.setdefault(precision, []).append(q.index)
    for precision, nodes in by_precision.items():
        runs_it = ", ".join(name for name, s in TARGETS.items() if precision in s.precisions)
        message = (
            f"{precision.upper()} Q/DQ ({len(nodes)} node(s)) cannot run on target '{g.target.name}' "
            f"(SM {spec.sm}: {', '.join(spec.precisions)})."
        )
        fix = (
            f"quantize to INT8 (or INT4 weight-only) for {g.target.name}, or pick a target that runs "
            f"{precision} ({runs_it})."
        )
        yield _Hit(nodes[0], message, fix)


@_rule("opset-range", "error", "the opset is in the TensorRT parser's range")
def _opset_range(g: _Graph) -> Iterator[_Hit]:
    if g.opset is None:
        return
    ranges = [TRT_RELEASES[g.trt].parser_opsets] if g.trt else [r.parser_opsets for r in TRT_RELEASES.values()]
    low, high = min(r[0] for r in ranges), max(r[1] for r in ranges)
    trt_name = f"TensorRT {g.trt}" if g.trt else "any TensorRT version"
    if low <= g.opset <= high:
        return
    if g.opset == 21 and any(q.qtype == _T.INT4 for q in g.sites()):
        message = (
            f"opset 21 (needed by INT4 Q/DQ) is above {trt_name}'s documented parser range {low}-{high}; "
            "the parser does not refuse newer opsets and imports INT4 Q/DQ, but NVIDIA does not document "
            "this combination as supported."
        )
        fix = "build once on the device to confirm, or use TensorRT 10.16+ (JetPack 7.2)."
        yield _Hit(None, message, fix, "warning")
        return
    message = f"opset {g.opset} is outside {trt_name}'s ONNX parser range {low}-{high}."
    fix = f"convert the model to an opset in {low}-{high} (onnx.version_converter), or pick a newer --trt."
    yield _Hit(None, message, fix)


@_rule("dynamic-quantize", "error", "no DynamicQuantizeLinear")
def _dynamic_quantize(g: _Graph) -> Iterator[_Hit]:
    message = "TensorRT's ONNX parser does not support DynamicQuantizeLinear."
    fix = "quantize statically: calibrate a scale and use QuantizeLinear/DequantizeLinear."
    for i in g.nodes_of("DynamicQuantizeLinear"):
        yield _Hit(i, message, fix)


@_rule("q-consumer", "error", "a Q feeds only DequantizeLinear")
def _q_consumer(g: _Graph) -> Iterator[_Hit]:
    for q in g.qinfo.values():
        if not q.is_q:
            continue
        out = g.nodes[q.index].output[0]
        readers = [g.name(c) for c in g.consumers.get(out, []) if g.op(c) != _DQ]
        readers += ["the graph output"] if out in g.graph_outputs else []
        if readers:
            message = (
                f"quantized tensor '{out}' is read by {', '.join(readers)}; TensorRT takes quantized tensors "
                "only through DequantizeLinear."
            )
            yield _Hit(q.index, message, "put a DequantizeLinear (same scale) between the Q and each reader.")


@_rule("dq-input", "error", "a DQ reads a Q or a quantized constant")
def _dq_input(g: _Graph) -> Iterator[_Hit]:
    for q in g.qinfo.values():
        if not q.is_q and q.source_q is None and not q.on_constant:
            message = (
                f"DequantizeLinear reads '{q.data}', which is neither a QuantizeLinear output nor a "
                "quantized constant; TensorRT has quantized types only inside Q/DQ pairs."
            )
            yield _Hit(q.index, message, "feed the DQ from a QuantizeLinear or a quantized initializer.")


# --- rules: placement and performance (warnings, info) ------------------------------------------------------


@_rule("partial-quant", "warning", "weighted ops have all inputs quantized, or none")
def _partial_quant(g: _Graph) -> Iterator[_Hit]:
    fix = "quantize all its inputs (data and weight), or exclude the node from quantization."
    for i in g.nodes_of(*_WEIGHTED):
        tensors = g.inputs(i, 0, 1)
        dqs = {t: g.dq_behind(t) for t in tensors}
        quantized = [g.qinfo[d] for d in dqs.values() if d is not None]
        if quantized and all(q.qtype == _T.INT4 and q.on_constant for q in quantized):
            continue  # INT4 weight-only (W4A16): activations stay in floating point by design
        plain = [repr(t) for t, d in dqs.items() if d is None]
        if quantized and plain:
            message = (
                f"{g.op(i)} has quantized and unquantized inputs (not quantized: {', '.join(plain)}); "
                "TensorRT runs it in high precision."
            )
            yield _Hit(i, message, fix)


@_rule("output-quantized", "warning", "no Q/DQ between a weighted op and its activation or add")
def _output_quantized(g: _Graph) -> Iterator[_Hit]:
    fix = "remove this Q/DQ pair; quantize the input of the next weighted op instead."
    for i in g.nodes_of(*_WEIGHTED):
        users = g.consumers.get(g.nodes[i].output[0], [])
        for q in (c for c in users if g.op(c) == _Q):
            after = [c for c in users if g.op(c) != _Q]
            for dq in g.consumers.get(g.nodes[q].output[0], []):
                if g.op(dq) == _DQ:  # an Add reading the DQ is fine when it is the residual of another conv
                    after += [c for c in g.consumers.get(g.nodes[dq].output[0], [])
                              if not _is_residual_of_other_conv(g, c, g.nodes[dq].output[0])]
            fused = sorted({g.name(c) for c in after if _fuses_into_epilogue(g, c)})
            if fused:
                message = (
                    f"Q/DQ on the output of {g.op(i)} '{g.name(i)}', which feeds {', '.join(fused)}; it "
                    "stops TensorRT fusing the activation / add into the op."
                )
                yield _Hit(q, message, fix)


@_rule("residual-input", "warning", "the residual input of a conv's Add is quantized")
def _residual_input(g: _Graph) -> Iterator[_Hit]:
    fix = "quantize the residual input (a Q/DQ pair on it, like the conv's input)."
    for i in g.nodes_of("Add"):
        tensors = g.inputs(i, 0, 1)
        if len(tensors) != 2:
            continue
        for conv, other in (
            (g.producer.get(tensors[0]), tensors[1]),
            (g.producer.get(tensors[1]), tensors[0]),
        ):
            if g.op(conv) != "Conv" or any(g.dq_behind(t) is None for t in g.inputs(conv, 0, 1)):
                continue
            if g.is_const(other) or g.dq_behind(other) is not None:
                continue
            message = (
                f"Add after quantized Conv '{g.name(conv)}' takes '{other}' unquantized; TensorRT fuses the "
                "add into the conv only when the residual input is quantized."
            )
            yield _Hit(i, message, fix)
            break


@_rule("mha-softmax-qdq", "warning", "no Q/DQ on Softmax's input or the mask/scale ops before it")
def _mha_softmax_qdq(g: _Graph) -> Iterator[_Hit]:
    fix = "remove this Q/DQ pair; in attention quantize only the MatMul inputs and the Softmax output."
    for s in g.nodes_of("Softmax"):
        bmm1, dqs = _softmax_chain(g, s)
        direct = g.producer.get(g.nodes[s].input[0])
        for dq in dqs:
            if dq == direct and bmm1 is None:
                message = (
                    f"Q/DQ on the input of Softmax '{g.name(s)}': TensorRT runs softmax in floating point, "
                    "so it only adds work (and would break fused attention)."
                )
            elif dq == direct:
                message = f"Q/DQ on the input of Softmax '{g.name(s)}' breaks fused attention (MHA)."
            elif bmm1 is not None:
                message = (
                    f"Q/DQ between attention MatMul '{g.name(bmm1)}' and Softmax '{g.name(s)}' (on the mask "
                    "or scale ops) breaks fused attention (MHA)."
                )
            else:
                continue
            yield _Hit(dq, message, fix)


@_rule("mha-int8-placement", "info", "INT8 attention has Q/DQ where fused MHA needs it")
def _mha_int8_placement(g: _Graph) -> Iterator[_Hit]:
    fix = "quantize both BMM1 inputs, the Softmax output and BMM2's value input, or none of them."
    for s in g.nodes_of("Softmax"):
        bmm1, _ = _softmax_chain(g, s)
        bmm2 = _softmax_consumer_matmul(g, s)
        if bmm1 is None or bmm2 is None or len(g.inputs(bmm1, 0, 1)) < 2 or len(g.inputs(bmm2, 0, 1)) < 2:
            continue
        query, key = (g.dq_behind(t) for t in g.inputs(bmm1, 0, 1))
        probs, value = (g.dq_behind(t) for t in g.inputs(bmm2, 0, 1))
        slots = {"before BMM1 (query)": query, "before BMM1 (key)": key, "after Softmax": probs}
        slots["before BMM2 (value)"] = value
        present = [d for d in slots.values() if d is not None]
        if not present or any(g.qinfo[d].qtype != _T.INT8 for d in present):
            continue  # not INT8 attention
        missing = [where for where, d in slots.items() if d is None]
        if missing:
            message = (
                f"INT8 attention '{g.name(bmm1)}' -> '{g.name(s)}' -> '{g.name(bmm2)}' lacks Q/DQ "
                f"{', '.join(missing)}; TensorRT fuses INT8 MHA only with all of them."
            )
            yield _Hit(bmm1, message, fix)
        else:
            yield from _mha_shape_hits(g, bmm1)


@_rule("small-gemm", "info", "quantized MatMul/Gemm have K and N >= 16")
def _small_gemm(g: _Graph) -> Iterator[_Hit]:
    for i in g.nodes_of("MatMul", "Gemm"):
        tensors = g.inputs(i, 0, 1)
        shape = g.shape(tensors[1]) if len(tensors) == 2 else None
        if not shape or len(shape) < 2 or all(g.dq_behind(t) is None for t in tensors):
            continue
        trans_b = g.op(i) == "Gemm" and _attr(g.nodes[i], "transB", 0)
        k, n = (shape[-1], shape[-2]) if trans_b else (shape[-2], shape[-1])
        small = [f"{dim}={v}" for dim, v in (("K", k), ("N", n)) if v is not None and 0 < v < 16]
        if small:
            message = (
                f"quantized {g.op(i)} with {', '.join(small)} (< 16) cannot use Tensor Cores; its Q/DQ only "
                "adds work."
            )
            yield _Hit(i, message, "exclude this node from quantization.")


@_rule("small-conv", "info", "quantized Conv have >= 16 channels (ModelOpt's exceptions)")
def _small_conv_rule(g: _Graph) -> Iterator[_Hit]:
    for i in g.nodes_of("Conv"):
        weight = g.inputs(i, 1)
        dq = g.dq_behind(weight[0]) if weight else None
        shape = g.shape(weight[0]) if dq is not None else None
        if not shape or len(shape) < 3 or shape[0] is None or shape[1] is None:
            continue
        out_ch, in_ch = shape[0], shape[1]  # as ModelOpt reads them: IC per group
        kernel = list(_attr(g.nodes[i], "kernel_shape", None) or shape[2:])
        fp8 = g.qinfo[dq].qtype == _T.FLOAT8E4M3FN
        if _small_conv(g, i, out_ch, in_ch, _attr(g.nodes[i], "group", 1), kernel, fp8):
            message = (
                f"quantized Conv with {in_ch} input / {out_ch} output channels ({'<= 16' if fp8 else '< 16'})"
                " gains nothing from Tensor Cores and may run slower than fp16."
            )
            yield _Hit(i, message, "exclude this node from quantization.")


@_rule("fp32-region", "info", "non-quantized regions are cast to fp16")
def _fp32_region(g: _Graph) -> Iterator[_Hit]:
    if any(g.op(i) == "Cast" and _attr(g.nodes[i], "to", 0) in _HALF_TYPES for i in range(len(g.nodes))):
        return
    fp32 = []
    for i, node in enumerate(g.nodes):
        op = g.op(i)
        if op is None or op in _NOT_COMPUTE or not node.output or g.dtype(node.output[0]) != _T.FLOAT:
            continue
        if op in _WEIGHTED and all(g.dq_behind(t) is not None for t in g.inputs(i, 0, 1)):
            continue  # runs quantized
        fp32.append(i)
    if fp32:
        message = (
            f"{len(fp32)} node(s) outside Q/DQ compute in float32 (e.g. {', '.join(map(g.name, fp32[:3]))}); "
            "strongly typed TensorRT (always in TensorRT 11) keeps them in FP32: no builder flag lowers them."
        )
        yield _Hit(fp32[0], message, "cast the non-quantized regions to FP16 in the ONNX graph.")


@_rule("target-trt", "error", "the TensorRT version exists for the target")
def _target_trt(g: _Graph) -> Iterator[_Hit]:
    if g.target is None or g.trt is None:
        return
    support, why = trt_support(g.target.name, g.trt)
    if support == "ok":
        return
    ships = sorted({j.trt for j in JETPACKS if g.target.name in j.targets and j.trt in TRT_VERSIONS})
    fix = f"use --trt {' or --trt '.join(v for v in ships if v != g.trt)} for {g.target.name}"
    if support == "partial":
        yield _Hit(None, f"TensorRT {g.trt} on {g.target.name}: {why}.", fix + " unless the device is covered.",
                   "warning")
    else:
        yield _Hit(None, f"TensorRT {g.trt} on {g.target.name}: {why}.", fix + ".")


RULES: tuple[Rule, ...] = tuple(_REGISTRY)


# --- helpers ------------------------------------------------------------------------------------------------


def _resolve_target(target: Target | str | None, trt: str | None) -> Target | None:
    if trt is not None and trt not in TRT_VERSIONS:
        raise TrtqError(
            f"unknown TensorRT version {trt!r}.", f"use --trt with one of: {', '.join(TRT_VERSIONS)}."
        )
    if target is None:
        return None
    if isinstance(target, str):
        return Target(target, trt)
    if not isinstance(target, Target):
        raise TypeError(f"target must be a Target, a target name or None, not {type(target).__name__}.")
    return replace(target, trt=trt) if trt is not None else target


def _select_rules(ids: Iterable[str] | None) -> tuple[Rule, ...]:
    if ids is None:
        return RULES
    wanted = list(ids)
    known = {r.id for r in RULES}
    unknown = [i for i in wanted if i not in known]
    if unknown:
        raise TrtqError(
            f"unknown check rule(s): {', '.join(unknown)}.", f"use rule ids from: {', '.join(known)}."
        )
    return tuple(r for r in RULES if r.id in wanted)


def _is_onnx(node: onnx.NodeProto) -> bool:
    return node.domain in ("", "ai.onnx")


def _default_opset(model: onnx.ModelProto) -> int | None:
    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    return max(versions) if versions else None


def _type_name(elem_type: int) -> str:
    try:
        return TensorProto.DataType.Name(elem_type)
    except ValueError:
        return f"type {elem_type}"


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _constant_value(node: onnx.NodeProto) -> TensorProto | None:
    for a in node.attribute:
        if a.name == "value":
            return a.t
        if a.name in ("value_float", "value_floats", "value_int", "value_ints"):
            dtype = np.float32 if "float" in a.name else np.int64
            return numpy_helper.from_array(np.asarray(onnx.helper.get_attribute_value(a), dtype=dtype))
    return None


def _granularity(scale_shape: tuple[int | None, ...] | None, block_size: int) -> str:
    """Read a scale as TensorRT's parser does: 1 value is per-tensor (despite `axis`), rank 1 per-channel."""
    if block_size > 0:
        return "block"
    if scale_shape is None or (None not in scale_shape and int(np.prod(scale_shape)) == 1):
        return "tensor"
    return "channel" if len(scale_shape) == 1 else "block"


def _types_and_shapes(model: onnx.ModelProto) -> tuple[dict[str, int], dict[str, tuple[int | None, ...]]]:
    """Element types and shapes of the main graph's tensors, by ONNX shape inference on a weightless copy."""
    graph = inferred_graph(model, _STUB_ELEMENTS)
    types: dict[str, int] = {}
    shapes: dict[str, tuple[int | None, ...]] = {}
    for vi in (*graph.input, *graph.value_info, *graph.output):
        tensor_type = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            continue
        if tensor_type.elem_type:
            types[vi.name] = tensor_type.elem_type
        if tensor_type.HasField("shape"):
            shapes[vi.name] = tuple(
                d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim
            )
    return types, shapes


def _is_residual_of_other_conv(g: _Graph, i: int, tensor: str) -> bool:
    """True when node i is an Add whose other input comes straight from a Conv: `tensor` is its residual."""
    if g.op(i) != "Add":
        return False
    others = [t for t in g.nodes[i].input if t != tensor]
    return len(others) == 1 and g.op(g.producer.get(others[0])) == "Conv"


def _fuses_into_epilogue(g: _Graph, i: int) -> bool:
    op = g.op(i)
    if op in _ACTIVATIONS or op == "Add":
        return True
    if op == "Mul":  # SiLU / Swish: x * sigmoid(x)
        return any(g.op(g.producer.get(t)) in ("Sigmoid", "HardSigmoid") for t in g.nodes[i].input)
    return False


def _softmax_chain(g: _Graph, softmax: int) -> tuple[int | None, list[int]]:
    """Walk back from a Softmax through mask/scale ops and Q/DQ: (the first attention MatMul, DQs met)."""
    bmm1, dqs, seen = None, [], set()
    stack = [g.nodes[softmax].input[0]]
    while stack and len(seen) < 32:
        p = g.producer.get(stack.pop())
        if p is None or p in seen:
            continue
        seen.add(p)
        op = g.op(p)
        if op == "MatMul":
            bmm1 = p if bmm1 is None else bmm1
        elif op == _DQ:
            dqs.append(p)
            if not g.is_const(g.nodes[p].input[0]):
                stack.append(g.nodes[p].input[0])
        elif op == _Q or op in _MHA_CHAIN:
            stack.extend(t for t in g.nodes[p].input[: 1 if op == _Q else None] if t and not g.is_const(t))
    return bmm1, dqs


def _softmax_consumer_matmul(g: _Graph, softmax: int) -> int | None:
    """The MatMul reading the Softmax output as its first input, directly or through Q/DQ or Cast."""
    frontier = [g.nodes[softmax].output[0]]
    for _ in range(3):
        following = []
        for tensor in frontier:
            for c in g.consumers.get(tensor, []):
                if g.op(c) == "MatMul" and g.nodes[c].input[0] == tensor:
                    return c
                if g.op(c) in (_Q, _DQ, "Cast"):
                    following.append(g.nodes[c].output[0])
        frontier = following
    return None


def _mha_shape_hits(g: _Graph, bmm1: int) -> Iterator[_Hit]:
    query, key = (g.shape(t) for t in g.inputs(bmm1, 0, 1))
    if not query or not key or len(query) < 2 or len(key) < 2:
        return
    head, seq_q, seq_kv = query[-1], query[-2], key[-1]
    problems = (
        [f"head size {head} (INT8 fused MHA needs 16, 32 or 64)"] if head not in (None, 16, 32, 64) else []
    )
    problems += [
        f"sequence length {n} (> 512)" for n in dict.fromkeys((seq_q, seq_kv)) if n is not None and n > 512
    ]
    if problems:
        message = f"INT8 attention at '{g.name(bmm1)}' has {', '.join(problems)}; TensorRT will not fuse it."
        fix = "leave this attention's BMMs unquantized (fp16 fused MHA), or use FP8 on a target that has it."
        yield _Hit(bmm1, message, fix)


def _small_conv(g: _Graph, i: int, out_ch: int, in_ch: int, group: int, kernel: list[int], fp8: bool) -> bool:
    """ModelOpt's find_nodes_from_convs_to_exclude for a quantized Conv: True when it should not be."""
    if fp8:
        return out_ch <= 16 or in_ch <= 16
    if out_ch >= 16 and in_ch >= 16:
        return False
    first_layer = any(_reaches_graph_input(g, t) for t in g.inputs(i, 0))
    if (
        group == 1
        and (out_ch % 8 == 0 or in_ch % 8 == 0)
        and (first_layer or out_ch >= 16 or in_ch >= 16)
        and len(set(kernel)) == 1
    ):
        return False
    return not (group > 1 and out_ch % 8 == 0 and all(k >= 3 for k in kernel))


def _reaches_graph_input(g: _Graph, tensor: str) -> bool:
    for _ in range(4):
        if tensor in g.graph_inputs:
            return True
        p = g.producer.get(tensor)
        if p is None or g.op(p) not in (_Q, _DQ, "Identity"):
            return False
        tensor = g.nodes[p].input[0]
    return False
