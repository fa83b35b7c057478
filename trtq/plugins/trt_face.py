"""The TensorRT face: each ONNX-face subgraph of a non-uniform quantizer becomes one plugin node.

An ONNX face (`trtq.plugins.onnx_face`) is a run of standard ops (unpack, Gather on the codebook, Mul
by the scales; or Log/Round/Exp) whose last node carries, in its ``doc_string``, the JSON
``{"trtq_face": {"op_type", "domain", "inputs", "output", "attrs"}}``: the node that replaces it.
`to_plugin_face` swaps every such subgraph for that node, keeping the codes packed in the graph:

    ONNX face     codes(uint8) ─ unpack ─ Gather(codebook) ─ Mul(scales) ─ ... ─▶ Wc ─ Transpose ─ MatMul
    plugin face   codes(int32 words), codebook, scales ─ trtq::CodebookDequantize ─▶ Wc ─ Transpose ─ MatMul

The subgraph removed is every ONNX-face node (named ``trtq_codebook/...`` or ``trtq_logquant/...``) reached
backwards from the face's output, stopping at the face's inputs, provided its outputs are read only inside
the subgraph (a node read from elsewhere stays).
Initializers only the removed nodes read are dropped; the ``trtq`` domain is added to the opset
imports and the plugin node's output gets its type and shape (``[N, K]``; the activation's own shape
for ``LogFakeQuantize``), so shape inference goes on past it.

Codes container (the one change from the ONNX face's storage): TensorRT's ONNX parser makes each
initializer input of a plugin node an IConstantLayer, and `addConstant` refuses UINT8 (NvInfer.h:
"DataType::kUINT8 not supported"); INT32 constants are "32-bit indices" in every network mode. So the
plugin node reads the same bytes as int32 words: ``words[n]`` = row n's ``b·ceil(K/8)`` packed bytes
zero-padded to a multiple of 4, little-endian (`codes_to_words`; `words_to_codes` inverts it).

The result is for TensorRT only (ONNX Runtime has no ``trtq`` domain); the ONNX face stays the graph
ONNX Runtime and `trtq compare` run. The plugin must be loaded when the engine is built: the C++
library (trtq/plugins/cpp) or the `tensorrt.plugin` definitions (`trtq.plugins.trt_plugin`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from trtq.errors import TrtqError

__all__ = [
    "CODEBOOK_OP",
    "DOMAIN",
    "FACE_KEY",
    "LOG_OP",
    "PLUGIN_VERSION",
    "FaceSwap",
    "codes_to_words",
    "face_specs",
    "to_plugin_face",
    "words_to_codes",
]

FACE_KEY = "trtq_face"
DOMAIN = "trtq"
PLUGIN_VERSION = "1"
CODEBOOK_OP = "CodebookDequantize"
LOG_OP = "LogFakeQuantize"
_WORDS_SUFFIX = ".words"
_FACE_PREFIXES = ("trtq_codebook/", "trtq_logquant/")  # names of ONNX-face nodes (trtq.plugins.onnx_face)


@dataclass
class FaceSwap:
    """What `to_plugin_face` did: one entry per plugin node written.

    Args:
        nodes: per plugin node: its name, op_type, output, and the ONNX-face nodes it replaced.
        packed_bytes: bytes of codes + codebooks + scales the plugin nodes read (the engine keeps these).
    """

    nodes: list[dict[str, Any]] = field(default_factory=list)
    packed_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (for the sidecar report)."""
        return {"plugin_nodes": len(self.nodes), "packed_bytes": self.packed_bytes, "nodes": self.nodes}


def codes_to_words(codes: np.ndarray) -> np.ndarray:
    """uint8 packed rows ``[N, B]`` -> int32 ``[N, ceil(B/4)]``, each row zero-padded, little-endian."""
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    n, b = codes.shape
    padded = np.zeros((n, 4 * -(-b // 4)), np.uint8)
    padded[:, :b] = codes
    return padded.view("<i4").astype(np.int32)


def words_to_codes(words: np.ndarray, row_bytes: int) -> np.ndarray:
    """Inverse of `codes_to_words`: the first `row_bytes` bytes of each row, uint8 ``[N, row_bytes]``."""
    words = np.ascontiguousarray(words, dtype="<i4")
    return words.view(np.uint8).reshape(words.shape[0], -1)[:, :row_bytes].copy()


def face_specs(model: onnx.ModelProto) -> list[tuple[int, dict[str, Any]]]:
    """(node index, face spec) of every node whose doc_string holds a ``trtq_face`` spec."""
    found = []
    for i, node in enumerate(model.graph.node):
        if FACE_KEY not in node.doc_string:
            continue
        try:
            spec = json.loads(node.doc_string)[FACE_KEY]
        except (ValueError, KeyError, TypeError) as exc:
            raise TrtqError(f"node {node.name!r} has an unreadable {FACE_KEY} doc_string ({exc}).",
                            "re-export the model with trtq quantize; do not edit the face nodes.") from exc
        found.append((i, spec))
    return found


def to_plugin_face(model: onnx.ModelProto, *, inplace: bool = False) -> tuple[onnx.ModelProto, FaceSwap]:
    """`model` with every ONNX face replaced by its TensorRT plugin node (see module doc).

    Args:
        model: a graph with ONNX faces (`trtq quantize` with a codebook weight format or --act-quant).
        inplace: edit `model` itself instead of a copy (saves a copy of the weights on large models).

    Raises:
        TrtqError: a face spec names a tensor the graph lacks, or a codebook face's codes are not a
            uint8 initializer.
    """
    if inplace:
        out = model
    else:
        out = onnx.ModelProto()
        out.CopyFrom(model)
    graph = out.graph
    specs = face_specs(out)
    swap = FaceSwap()
    if not specs:
        return out, swap
    inits = {t.name: t for t in graph.initializer}
    producer = {o: i for i, node in enumerate(graph.node) for o in node.output if o}
    readers: dict[str, set[int]] = {}
    for i, node in enumerate(graph.node):
        for name in node.input:
            readers.setdefault(name, set()).add(i)
    graph_outputs = {v.name for v in graph.output}
    removed: set[int] = set()
    replacement: dict[int, onnx.NodeProto] = {}
    new_inits: list[TensorProto] = []
    for index, spec in specs:
        face = _face_nodes(graph, spec, producer, readers, graph_outputs)
        plugin, extra = _plugin_node(graph.node[index], spec, inits)
        new_inits += extra
        removed |= face
        replacement[index] = plugin
        swap.nodes.append({"name": plugin.name, "op_type": plugin.op_type, "output": spec["output"],
                           "replaced": sorted(graph.node[i].name for i in face)})
    kept = []
    for i, node in enumerate(graph.node):
        if i in replacement:
            kept.append(replacement[i])
        elif i not in removed:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(new_inits)
    _drop_unread_initializers(graph)
    _annotate_outputs(graph, specs)
    if not any(o.domain == DOMAIN for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    live = {t.name: t for t in graph.initializer}
    swap.packed_bytes = sum(_nbytes(live[name]) for n in kept if n.domain == DOMAIN
                            for name in n.input if name in live)
    return out, swap


def _face_nodes(graph: onnx.GraphProto, spec: dict[str, Any], producer: dict[str, int],
                readers: dict[str, set[int]], graph_outputs: set[str]) -> set[int]:
    """Indices of the nodes between the spec's inputs and its output that nothing outside reads."""
    output = spec["output"]
    if output not in producer:
        raise TrtqError(f"the {FACE_KEY} spec names output {output!r}, which no node produces.",
                        "re-export the model with trtq quantize.")
    stop = set(spec["inputs"])
    face: set[int] = set()
    todo = [producer[output]]
    while todo:
        i = todo.pop()
        if i in face:
            continue
        face.add(i)
        for name in graph.node[i].input:
            if name and name not in stop and name in producer and graph.node[producer[name]].name.startswith(
                    _FACE_PREFIXES):  # never a node of the model itself
                todo.append(producer[name])
    # keep any node whose result is also read outside the face (or is a graph output), and what feeds it
    changed = True
    while changed:
        changed = False
        for i in sorted(face):
            outs = [o for o in graph.node[i].output if o and o != output]
            if any(o in graph_outputs or not readers.get(o, set()) <= face for o in outs):
                face.discard(i)
                changed = True
    return face


def _plugin_node(last: onnx.NodeProto, spec: dict[str, Any],
                 inits: dict[str, TensorProto]) -> tuple[onnx.NodeProto, list[TensorProto]]:
    """The plugin node of one face, and the int32 codes initializer it reads (codebook faces)."""
    inputs = list(spec["inputs"])
    extra: list[TensorProto] = []
    if spec["op_type"] == CODEBOOK_OP:
        codes = inits.get(inputs[0])
        if codes is None or codes.data_type != TensorProto.UINT8:
            raise TrtqError(f"codebook face {spec['output']!r}: codes {inputs[0]!r} is not a uint8 initializer.",
                            "re-export the model with trtq quantize.")
        words_name = inputs[0] + _WORDS_SUFFIX
        if words_name not in inits:
            words = numpy_helper.from_array(codes_to_words(numpy_helper.to_array(codes)), words_name)
            inits[words_name] = words
            extra.append(words)
        inputs[0] = words_name
    attrs = dict(spec["attrs"])
    attrs.setdefault("plugin_namespace", DOMAIN)
    attrs.setdefault("plugin_version", PLUGIN_VERSION)
    name = (last.name.rsplit("/", 1)[0] if "/" in last.name else last.name or spec["output"]) + "/plugin"
    node = helper.make_node(spec["op_type"], inputs, [spec["output"]], name=name,
                            domain=spec.get("domain", DOMAIN), **attrs)
    return node, extra


def _drop_unread_initializers(graph: onnx.GraphProto) -> None:
    read = {name for node in graph.node for name in node.input} | {v.name for v in graph.output}
    dropped = {t.name for t in graph.initializer if t.name not in read}
    keep = [t for t in graph.initializer if t.name not in dropped]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    inputs = [v for v in graph.input if v.name not in dropped]
    del graph.input[:]
    graph.input.extend(inputs)


def _annotate_outputs(graph: onnx.GraphProto, specs: list[tuple[int, dict[str, Any]]]) -> None:
    """Type and shape of each codebook plugin's output ``[N, K]`` as value_info (shape inference cannot
    see into a plugin); an activation plugin's output keeps the ONNX face output's value_info."""
    known = {v.name: v for v in graph.value_info}
    inits = {t.name: t for t in graph.initializer}
    for _, spec in specs:
        if spec["op_type"] != CODEBOOK_OP:
            continue
        output, attrs = spec["output"], spec["attrs"]
        scales = inits.get(spec["inputs"][2])
        rows = scales.dims[0] if scales is not None else None
        elem = int(attrs.get("out_dtype", TensorProto.FLOAT))
        if output in known:
            graph.value_info.remove(known[output])
        graph.value_info.append(helper.make_tensor_value_info(output, elem, [rows, int(attrs["k"])]))


def _nbytes(tensor: TensorProto) -> int:
    return int(np.prod(tensor.dims, dtype=np.int64)) * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
