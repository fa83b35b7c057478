"""Rules about trtq's non-uniform quantizers (trtq.plugins) in their standard-ONNX face."""

from __future__ import annotations

import json
from collections.abc import Iterator

from trtq.exporter.check.graph import Graph
from trtq.exporter.check.registry import Hit, rule

__all__: list[str] = []  # the module's rules register themselves in registry.REGISTRY

_FACE_KEY = "trtq_face"  # trtq.plugins.onnx_face.FACE_KEY (not imported: check stays free of numpy fitting code)


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
