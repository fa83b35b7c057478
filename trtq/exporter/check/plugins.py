"""Rules about trtq's non-uniform quantizers (trtq.plugins): their standard-ONNX face and their plugin face."""

from __future__ import annotations

import json
from collections.abc import Iterator

from trtq.exporter.check.graph import Graph
from trtq.exporter.check.registry import Hit, rule

__all__: list[str] = []  # the module's rules register themselves in registry.REGISTRY

_FACE_KEY = "trtq_face"  # trtq.plugins.onnx_face.FACE_KEY (not imported: check stays free of numpy fitting code)
_PLUGIN_DOMAIN = "trtq"  # trtq.plugins.trt_face.DOMAIN
_PLUGIN_OPS = ("CodebookDequantize", "LogFakeQuantize")  # the plugins trtq/plugins/cpp and trt_plugin define


def _faces(g: Graph) -> Iterator[tuple[int, dict]]:
    for i, node in enumerate(g.nodes):
        if _FACE_KEY in node.doc_string:
            try:
                yield i, json.loads(node.doc_string)[_FACE_KEY]
            except (ValueError, KeyError, TypeError):
                continue


@rule("nonuniform-face", "warning", "codebook / log quantizers in their ONNX face lose their gain in TensorRT")
def _nonuniform_face(g: Graph) -> Iterator[Hit]:
    weights = [i for i, face in _faces(g) if face.get("op_type") == "CodebookDequantize"]
    logs = [i for i, face in _faces(g) if face.get("op_type") == "LogFakeQuantize"]
    fix = "quantize with --plugins to write the TensorRT plugin face (trtq plugin nodes) instead."
    if weights:
        yield Hit(weights[0], f"{len(weights)} codebook weight(s) in the standard-ONNX face (Gather on a codebook): "
                  "TensorRT folds these constant subgraphs back into float weights, so the engine is correct "
                  "but keeps no weight-memory saving.", fix)
    if logs:
        yield Hit(logs[0], f"{len(logs)} log-quantized activation(s) in the standard-ONNX face (Log/Round/Exp): "
                  "TensorRT runs them as float ops and the MatMul reading them in floating point "
                  "(no integer kernel takes log codes).", fix)


@rule("trtq-plugin", "info", "trtq plugin nodes: the engine build needs trtq's TensorRT plugins loaded")
def _trtq_plugin(g: Graph) -> Iterator[Hit]:
    nodes = [i for i, node in enumerate(g.nodes) if node.domain == _PLUGIN_DOMAIN]
    for i in nodes:
        node = g.nodes[i]
        attrs = {a.name: a for a in node.attribute}
        namespace = attrs["plugin_namespace"].s.decode() if "plugin_namespace" in attrs else None
        if node.op_type not in _PLUGIN_OPS or namespace != _PLUGIN_DOMAIN:
            yield Hit(i, f"{node.op_type} in domain {_PLUGIN_DOMAIN!r} is not a trtq plugin (known: "
                      f"{', '.join(_PLUGIN_OPS)}; plugin_namespace {namespace!r}, expected 'trtq'): the ONNX "
                      "parser finds no plugin for it.", "re-export the model with trtq quantize --plugins.", "error")
    if not nodes:
        return
    ops = sorted({g.nodes[i].op_type for i in nodes})
    python = ("TensorRT 10.3 has no tensorrt.plugin: the C++ library only" if g.trt == "10.3" else
              "or, TensorRT >= 10.16, the tensorrt.plugin definitions: trtq build --plugins "
              "\"$(python -m trtq.plugins.qdp_register --path)\"")
    yield Hit(nodes[0], f"{len(nodes)} trtq plugin node(s) ({', '.join(ops)}) keep codes packed: TensorRT parses "
              "them only with trtq's plugins loaded, and ONNX Runtime cannot run this graph.",
              "build libtrtq_plugins.so from trtq/plugins/cpp and load it (trtq build --plugins "
              f"libtrtq_plugins.so, trtexec --dynamicPlugins=libtrtq_plugins.so); {python}.")
