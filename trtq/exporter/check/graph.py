"""Read-only index of a model's main graph that every rule reads: producers, consumers, constants, types,
shapes and what each Q/DQ node does."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from trtq._shapes import inferred_graph
from trtq.config import Target
from trtq.precision import TABLE, opset_of

__all__ = [
    "ACTIVATIONS",
    "COMMUTING",
    "CONVS",
    "CONV_TYPES",
    "DATA_MOVEMENT",
    "DQ",
    "HALF_TYPES",
    "LEGAL",
    "LOGIC",
    "MHA_CHAIN",
    "MODEL",
    "NOT_COMPUTE",
    "NO_ARITHMETIC",
    "OTHER_FP8",
    "SCALE_TYPES",
    "STUB_ELEMENTS",
    "TYPE_MIN_OPSET",
    "WEIGHTED",
    "Graph",
    "Q",
    "QInfo",
    "T",
    "attr",
    "constant_value",
    "granularity",
    "is_onnx",
    "type_name",
    "types_and_shapes"
]


MODEL = "<model>"  # node name of a finding about the whole model


Q, DQ = "QuantizeLinear", "DequantizeLinear"


WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")  # inputs 0 and 1 are quantized, 2 (bias) is not


CONVS = ("Conv", "ConvTranspose")


COMMUTING = frozenset({"Identity", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze"})


ACTIVATIONS = frozenset(
    {"Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "LeakyRelu", "Tanh", "Elu", "Gelu"}
)


MHA_CHAIN = frozenset({"Add", "Sub", "Mul", "Div", "Where", "Cast", "Reshape", "Identity"})


# ops with no float arithmetic worth an fp16 cast: data movement, shapes, casts, logic
DATA_MOVEMENT = ("Shape", "Size", "Gather", "GatherElements", "GatherND", "Slice", "Concat", "Split", "Pad")


NO_ARITHMETIC = ("Constant", "ConstantOfShape", "Cast", "CastLike", "Expand", "Tile", "Range", "NonZero")


LOGIC = ("Where", "Equal", "Less", "Greater", "Not", "And", "Or")


NOT_COMPUTE = frozenset({Q, DQ, *COMMUTING, *DATA_MOVEMENT, *NO_ARITHMETIC, *LOGIC})


T = TensorProto


LEGAL = {p.onnx_type: name for name, p in TABLE.items()}  # the precision table's types


CONV_TYPES = frozenset(p.onnx_type for p in TABLE.values() if p.convolutions)  # TensorRT runs convs in these


OTHER_FP8 = frozenset({T.FLOAT8E4M3FNUZ, T.FLOAT8E5M2, T.FLOAT8E5M2FNUZ})


TYPE_MIN_OPSET = {  # first opset whose QuantizeLinear / DequantizeLinear take the type (beyond opset 10)
    **{p.onnx_type: p.type_opset for p in TABLE.values() if p.type_opset > 10},
    **dict.fromkeys(OTHER_FP8, 19),
    **dict.fromkeys((T.UINT4, T.INT16, T.UINT16), 21),
}


SCALE_TYPES = frozenset({T.FLOAT, T.FLOAT16, T.BFLOAT16})


HALF_TYPES = frozenset({T.FLOAT16, T.BFLOAT16})




STUB_ELEMENTS = 4096  # initializers larger than this reach shape inference as shape-only stubs


@dataclass(frozen=True)
class QInfo:
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


class Graph:
    """Read-only index of a model's main graph: producers, consumers, constants, types, shapes, Q/DQ nodes."""

    def __init__(self, model: onnx.ModelProto, target: Target | None, trt: str | None) -> None:
        self.model = model
        self.target = target
        self.trt = trt
        self.nodes = list(model.graph.node)
        self.opset = opset_of(model)
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
            if node.op_type == "Constant" and is_onnx(node) and node.output:
                tensor = constant_value(node)
                if tensor is not None:
                    self.constants[node.output[0]] = tensor
        self.graph_inputs = {v.name for v in model.graph.input} - set(self.constants)
        self.graph_outputs = {v.name for v in model.graph.output}
        self.types, self.shapes = types_and_shapes(model)
        self.qinfo: dict[int, QInfo] = {}
        for op in (Q, DQ):  # every Q first, so a DQ can read the Q that feeds it
            for i, node in enumerate(self.nodes):
                if node.op_type == op and is_onnx(node) and len(node.input) >= 2:
                    self.qinfo[i] = self._read_qdq(i)

    def name(self, i: int | None) -> str:
        """The node's name, `<OpType>#<index>` when it has none, or `<model>` for None."""
        if i is None:
            return MODEL
        node = self.nodes[i]
        return node.name or f"{node.op_type}#{i}"

    def op(self, i: int | None) -> str | None:
        """The op type of node `i` (default domain only; None for other domains or no node)."""
        if i is None or not is_onnx(self.nodes[i]):
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
        if p is None or self.op(p) != DQ or depth > 4:
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
        if p is not None and self.op(p) in (Q, DQ):
            return self.shape(self.nodes[p].input[0])
        return None

    def dq_behind(self, tensor: str) -> int | None:
        """The DQ that produces `tensor`, looking through ops Q/DQ commute with (Reshape, Transpose, ...)."""
        for _ in range(8):
            p = self.producer.get(tensor)
            if p is None:
                return None
            if self.op(p) == DQ:
                return p
            if self.op(p) not in COMMUTING:
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

    def sites(self) -> Iterator[QInfo]:
        """One entry per quantization: every Q, and every DQ not fed by a Q (a quantized constant)."""
        return (q for q in self.qinfo.values() if q.is_q or q.source_q is None)

    def owners(self, attr: str) -> Iterator[QInfo]:
        """Q/DQ owning their `attr` tensor ('scale' or 'zero_point'); a DQ sharing its Q's is skipped."""
        for q in self.qinfo.values():
            if q.source_q is not None and getattr(self.qinfo[q.source_q], attr) == getattr(q, attr):
                continue
            yield q

    def _read_qdq(self, i: int) -> QInfo:
        node = self.nodes[i]
        is_q = node.op_type == Q
        data, scale = node.input[0], node.input[1]
        zero_point = node.input[2] if len(node.input) > 2 and node.input[2] else None
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        source = self.producer.get(self.resolve(data))
        source_q = source if not is_q and source in self.qinfo and self.qinfo[source].is_q else None
        if is_q:
            qtype = attrs.get("output_dtype") or (self.dtype(zero_point) if zero_point else T.UINT8)
            on_constant = self.is_const(data)
        elif source_q is not None:
            qtype, on_constant = self.qinfo[source_q].qtype, self.qinfo[source_q].on_constant
        else:
            qtype = self.dtype(data) or (self.dtype(zero_point) if zero_point else None)
            on_constant = self.is_build_time_const(data)
        block_size = int(attrs.get("block_size", 0) or 0)
        return QInfo(
            index=i,
            is_q=is_q,
            data=data,
            scale=scale,
            zero_point=zero_point,
            qtype=qtype,
            block_size=block_size,
            granularity=granularity(self.shape(scale), block_size),
            on_constant=on_constant,
            source_q=source_q,
        )


def is_onnx(node: onnx.NodeProto) -> bool:
    return node.domain in ("", "ai.onnx")


def type_name(elem_type: int) -> str:
    try:
        return TensorProto.DataType.Name(elem_type)
    except ValueError:
        return f"type {elem_type}"


def attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def constant_value(node: onnx.NodeProto) -> TensorProto | None:
    for a in node.attribute:
        if a.name == "value":
            return a.t
        if a.name in ("value_float", "value_floats", "value_int", "value_ints"):
            dtype = np.float32 if "float" in a.name else np.int64
            return numpy_helper.from_array(np.asarray(onnx.helper.get_attribute_value(a), dtype=dtype))
    return None


def granularity(scale_shape: tuple[int | None, ...] | None, block_size: int) -> str:
    """Read a scale as TensorRT's parser does: 1 value is per-tensor (despite `axis`), rank 1 per-channel."""
    if block_size > 0:
        return "block"
    if scale_shape is None or (None not in scale_shape and int(np.prod(scale_shape)) == 1):
        return "tensor"
    return "channel" if len(scale_shape) == 1 else "block"


def types_and_shapes(model: onnx.ModelProto) -> tuple[dict[str, int], dict[str, tuple[int | None, ...]]]:
    """Element types and shapes of the main graph's tensors, by ONNX shape inference on a weightless copy."""
    graph = inferred_graph(model, STUB_ELEMENTS)
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
