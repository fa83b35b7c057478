"""The ONNX face of the non-uniform quantizers: standard-op subgraphs ONNX Runtime runs unchanged.

Codebook weight ``Wc`` [N, K] (format: `trtq.plugins`), nodes named ``trtq_codebook/<weight>/...``:

    words  = ReduceSum(Cast<int64>(Reshape(codes, [N, C, b])) · [1, 2⁸, 2¹⁶, 2²⁴][:b], axis 2)  # 8 codes / word
    code   = Slice(Reshape(Mod(Div(words, 2^(b·j)), 2^b), [N, 8C]), [:, :K])          j = 0..7
    Wc     = Gather(Cast<f32>(codebook)[r], code) · Slice(Reshape(Expand(Unsqueeze(Cast<f32>(scales), 2),
             [N, n_groups, G]), [N, n_groups·G]), [:, :K])
    W      = Transpose(Wc) (MatMul, Gemm without transB) | Reshape(Wc, shape) (Conv) | Wc (Gemm transB)

(R = N codebooks gather from the flattened codebook at ``n·2^b + code``.) Integer arithmetic is exact;
the float32 product equals `reference.dequantize_codebook` bit for bit.

Log activation (`reference.fake_quantize_log`), nodes named ``trtq_logquant/<tensor>/...``:

    y = Max(x + c, 0);  q = Round(Log(y)·k1 + k0);  k1 = −1/(a·ln 2),  k0 = ln(s)/(a·ln 2)
    x̂ = Where(Not(q < 2^b − 1), 0, Exp(Max(q, 0)·(−a·ln 2))·s) − c

(the `+ c` / `− c` nodes only when c ≠ 0). Each face's last node before any layout restore carries
``{"trtq_face": {...}}`` (`FACE_KEY`) in its doc_string: the TensorRT plugin node replacing it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from trtq.plugins.fit import CodebookWeight

__all__ = ["FACE_KEY", "PLUGIN_NAMESPACE", "PLUGIN_VERSION", "LogParams", "WeightSite", "insert_faces"]

FACE_KEY = "trtq_face"
PLUGIN_NAMESPACE = "trtq"
PLUGIN_VERSION = "1"


@dataclass(frozen=True)
class LogParams:
    """A log quantizer's numbers (`reference.fake_quantize_log`)."""

    method: str
    bits: int
    scale: float
    step: float
    shift: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "bits": self.bits, "scale": self.scale, "step": self.step, "shift": self.shift}


@dataclass(frozen=True)
class WeightSite:
    """Where a codebook weight is used: its op (MatMul | Gemm | Conv), Gemm's transB, and the original shape."""

    op: str
    trans_b: bool
    shape: tuple[int, ...]


class _Builder:
    """Appends nodes with prefixed, collision-free names to a graph."""

    def __init__(self, graph: gs.Graph, prefix: str, taken: set[str], docs: dict[str, str]) -> None:
        self.graph, self.prefix, self.taken, self.docs = graph, prefix, taken, docs

    def name(self, base: str) -> str:
        candidate, i = f"{self.prefix}/{base}", 1
        while candidate in self.taken:
            candidate, i = f"{self.prefix}/{base}.{i}", i + 1
        self.taken.add(candidate)
        return candidate

    def const(self, base: str, value: Any) -> gs.Constant:
        return gs.Constant(self.name(base), np.asarray(value))

    def op(self, op: str, inputs: list[gs.Tensor], base: str, dtype: Any = None, **attrs: Any) -> gs.Variable:
        out = gs.Variable(self.name(base))  # no value_info: types are left to shape inference
        self.graph.nodes.append(gs.Node(op, self.name(op), attrs=attrs, inputs=inputs, outputs=[out]))
        return out

    def describe_last(self, doc: str) -> None:
        """Set the doc_string of the last node added (onnx-graphsurgeon drops it: set after export)."""
        self.docs[self.graph.nodes[-1].name] = doc


def insert_faces(model: onnx.ModelProto, weights: Mapping[str, tuple[CodebookWeight, WeightSite]],
                 activations: Mapping[str, tuple[LogParams, list[tuple[str, int]]]]) -> onnx.ModelProto:
    """`model` with each weight read through its codebook face and each activation's consumers through its log face.

    Args:
        weights: weight initializer -> (its codebook form, its site); every reader of it is rewired.
        activations: tensor -> (log quantizer, [(consumer node, input index)] to rewire).
    """
    graph = gs.import_onnx(model)
    tensors = graph.tensors()
    taken = set(tensors) | {n.name for n in graph.nodes}
    nodes = {n.name: n for n in graph.nodes}
    docs: dict[str, str] = {}
    for name, (cw, site) in sorted(weights.items()):
        old = tensors[name]
        new = _weight_face(_Builder(graph, f"trtq_codebook/{name}", taken, docs), name, cw, site)
        for node in [n for n in list(old.outputs) if not n.name.startswith("trtq_codebook/")]:
            for i, t in enumerate(node.inputs):
                if t is old:
                    node.inputs[i] = new
    for name, (params, consumers) in sorted(activations.items()):
        new = _log_face(_Builder(graph, f"trtq_logquant/{name}", taken, docs), tensors[name], params)
        for node_name, index in consumers:
            nodes[node_name].inputs[index] = new
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    out = gs.export_onnx(graph, do_type_check=False)
    for node in out.graph.node:
        node.doc_string = docs.get(node.name, node.doc_string)
    out.ir_version = model.ir_version
    out.producer_name, out.producer_version = model.producer_name, model.producer_version
    del out.metadata_props[:]
    out.metadata_props.extend(model.metadata_props)
    return out


def _face_doc(op_type: str, inputs: list[str], output: str, attrs: dict[str, Any]) -> str:
    attrs = {"plugin_namespace": PLUGIN_NAMESPACE, "plugin_version": PLUGIN_VERSION, **attrs}
    return json.dumps({FACE_KEY: {"op_type": op_type, "domain": "trtq", "inputs": inputs, "output": output,
                                  "attrs": attrs}}, sort_keys=True)


def _weight_face(b: _Builder, name: str, cw: CodebookWeight, site: WeightSite) -> gs.Variable:
    n = cw.packed.shape[0]
    bits, k, g = cw.bits, cw.k, cw.group_size
    chunks = cw.packed.shape[1] // bits
    n_groups = cw.scales.shape[1]
    codes = b.const("codes", cw.packed)
    codebook = b.const("codebook", cw.codebook)
    scales = b.const("scales", cw.scales)
    i64 = np.int64
    bytes3 = b.op("Reshape", [codes, b.const("bytes_shape", np.array([n, chunks, bits], i64))], "bytes")
    wide = b.op("Cast", [bytes3], "bytes_int64", np.int64, to=onnx.TensorProto.INT64)
    weighted = b.op("Mul", [wide, b.const("byte_weights", (256 ** np.arange(bits)).astype(i64))], "byte_values")
    words = b.op("ReduceSum", [weighted, b.const("word_axis", np.array([2], i64))], "words", keepdims=1)
    shifted = b.op("Div", [words, b.const("code_shifts", (2 ** (bits * np.arange(8))).astype(i64))], "shifted")
    code8 = b.op("Mod", [shifted, b.const("code_modulus", np.array(1 << bits, i64))], "codes8")
    flat = b.op("Reshape", [code8, b.const("codes_shape", np.array([n, chunks * 8], i64))], "codes_padded")
    zero2 = b.const("start", np.array([0], i64))
    index = b.op("Slice", [flat, zero2, b.const("k", np.array([k], i64)), b.const("axis1", np.array([1], i64))],
                 "codes_index")
    book = b.op("Cast", [codebook], "codebook_float", np.float32, to=onnx.TensorProto.FLOAT)
    if cw.codebook.shape[0] == 1:
        book = b.op("Reshape", [book, b.const("book_shape", np.array([-1], i64))], "codebook_flat")
    else:
        offsets = b.const("row_offsets", (np.arange(n, dtype=i64) * (1 << bits))[:, None])
        index = b.op("Add", [index, offsets], "codes_flat_index")
        book = b.op("Reshape", [book, b.const("book_shape", np.array([-1], i64))], "codebook_flat")
    levels = b.op("Gather", [book, index], "levels", axis=0)
    s32 = b.op("Cast", [scales], "scales_float", np.float32, to=onnx.TensorProto.FLOAT)
    s3 = b.op("Unsqueeze", [s32, b.const("group_axis", np.array([2], i64))], "scales_3d")
    sx = b.op("Expand", [s3, b.const("group_expand", np.array([n, n_groups, g], i64))], "scales_expanded")
    sflat = b.op("Reshape", [sx, b.const("scales_shape", np.array([n, n_groups * g], i64))], "scales_flat")
    srow = b.op("Slice", [sflat, zero2, b.const("k_scales", np.array([k], i64)),
                          b.const("axis1_s", np.array([1], i64))],
                "scales_per_weight")
    wc = b.op("Mul", [levels, srow], f"{name}_codebook_dequantized", np.float32)
    b.describe_last(_face_doc("CodebookDequantize", [codes.name, codebook.name, scales.name], wc.name,
                                         {"bits": bits, "group_size": g, "k": k, "out_dtype": 1}))
    if site.op == "Conv":
        return b.op("Reshape", [wc, b.const("weight_shape", np.array(site.shape, i64))], f"{name}_dequantized",
                    np.float32)
    if site.op == "Gemm" and site.trans_b:
        return wc
    return b.op("Transpose", [wc], f"{name}_dequantized", np.float32, perm=[1, 0])


def _log_face(b: _Builder, x: gs.Tensor, p: LogParams) -> gs.Variable:
    f32 = np.float32
    k1 = f32(-1.0 / (p.step * math.log(2.0)))
    k0 = f32(math.log(p.scale) / (p.step * math.log(2.0)))
    y = x
    if p.shift:
        y = b.op("Add", [y, b.const("shift", f32(p.shift))], "shifted", f32)
    y = b.op("Max", [y, b.const("zero", f32(0))], "positive", f32)
    t = b.op("Mul", [b.op("Log", [y], "log", f32), b.const("k1", k1)], "log_scaled", f32)
    q = b.op("Round", [b.op("Add", [t, b.const("k0", k0)], "log_code", f32)], "code", f32)
    zero_code = b.const("zero_code", f32((1 << p.bits) - 1))
    under = b.op("Not", [b.op("Less", [q, zero_code], "in_range", np.bool_)], "underflow", np.bool_)
    qc = b.op("Max", [q, b.const("code_min", f32(0))], "code_clipped", f32)
    e = b.op("Exp", [b.op("Mul", [qc, b.const("neg_step_ln2", f32(-p.step * math.log(2.0)))], "exponent", f32)],
             "power", f32)
    v = b.op("Mul", [e, b.const("scale", f32(p.scale))], "level", f32)
    out = b.op("Where", [under, b.const("zero_value", f32(0)), v], f"{x.name}_logquant", f32)
    if p.shift:
        out = b.op("Sub", [out, b.const("unshift", f32(p.shift))], f"{x.name}_logquant_unshifted", f32)
    b.describe_last(_face_doc("LogFakeQuantize", [x.name], out.name,
                                         {"bits": p.bits, "scale": p.scale, "step": p.step, "shift": p.shift}))
    return out
