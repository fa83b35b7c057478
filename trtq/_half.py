"""Run FP16 / BF16 graphs on ONNX Runtime's CPU with the rounding half precision really has.

ORT's CPU provider has few float16 kernels and none for bfloat16: it wraps the others in Casts to
float32 and then merges the Casts between neighbours, so a chain of float16 ops runs end to end in
float32 (2048 + 1 + 1 + 1 gives 2051 -> 2052 instead of float16's 2048). Fidelity measured that way
would leave out the half-precision storage error entirely.

`emulate_half` rewrites such a graph into a float32 one that rounds like the original: every tensor the
graph stores in half precision is computed in float32 from half-representable inputs and rounded to
half (a Cast to the half type and back, which ORT keeps), i.e. each op is computed exactly and its
output rounded once, which is IEEE half arithmetic for + - * / sqrt and what TensorRT's FP16 kernels do
with their float32 accumulators. Half constants become the float32 numbers they represent. Tensor
names, graph inputs and graph outputs keep their names (half outputs are returned as float32).
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper, numpy_helper

from trtq._shapes import tensor_types

__all__ = ["HALF", "emulate_half", "has_half"]

HALF = frozenset({TensorProto.FLOAT16, TensorProto.BFLOAT16})
_F32 = TensorProto.FLOAT


def has_half(model: onnx.ModelProto) -> bool:
    """True when the main graph holds float16 / bfloat16 tensors (initializers, casts, inputs, outputs)."""
    g = model.graph
    if any(i.data_type in HALF for i in g.initializer):
        return True
    if any(v.type.tensor_type.elem_type in HALF for v in [*g.input, *g.output, *g.value_info]):
        return True
    return any(n.op_type == "Cast" and any(a.name == "to" and a.i in HALF for a in n.attribute) for n in g.node)


def emulate_half(model: onnx.ModelProto) -> onnx.ModelProto:
    """A float32 copy of `model` that rounds every half tensor to its half type (see the module docstring)."""
    types = tensor_types(model)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    del g.value_info[:]
    for init in g.initializer:
        if init.data_type in HALF:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype("float32"), init.name))
    nodes: list[onnx.NodeProto] = []
    for vi in g.input:
        if vi.type.tensor_type.elem_type in HALF:  # fed half values: widen them once, under a new name
            nodes.append(helper.make_node("Cast", [vi.name], [f"{vi.name}__f32"], to=_F32))
    widened = {n.input[0]: n.output[0] for n in nodes}
    for node in g.node:
        node.input[:] = [widened.get(t, t) for t in node.input]
        _widen_attributes(node)
        rounding = []
        for k, name in enumerate(node.output):
            half = types.get(name)
            if half in HALF:
                raw, stored = f"{name}__raw", f"{name}__half"
                node.output[k] = raw
                rounding += [helper.make_node("Cast", [raw], [stored], to=half),
                             helper.make_node("Cast", [stored], [name], to=_F32)]
        nodes.append(node)
        nodes.extend(rounding)
    del g.node[:]
    g.node.extend(nodes)
    for vi in g.output:
        if vi.type.tensor_type.elem_type in HALF:
            vi.type.tensor_type.elem_type = _F32
    return out


def _widen_attributes(node: onnx.NodeProto) -> None:
    """Casts to half now cast to float32 (the rounding pair after the node does the rounding); half
    constant values become float32."""
    for a in node.attribute:
        if node.op_type == "Cast" and a.name == "to" and a.i in HALF:
            a.i = _F32
        elif a.name == "value" and a.type == onnx.AttributeProto.TENSOR and a.t.data_type in HALF:
            a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype("float32"), a.t.name))
