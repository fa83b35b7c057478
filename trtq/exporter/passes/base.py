"""What every graph pass returns, and the onnx-graphsurgeon round trip the passes share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import onnx
import onnx_graphsurgeon as gs

__all__ = ["PassResult", "graph_to_model", "unique_name"]


@dataclass
class PassResult:
    """The rewritten model and a JSON-serialisable account of what the pass changed.

    Attributes:
        model: the output model (a new object; the input model is never modified).
        report: what changed, e.g. ``{"folded": [...], "skipped": [{"node": ..., "reason": ...}]}``.
    """

    model: onnx.ModelProto
    report: dict[str, Any] = field(default_factory=dict)


def graph_to_model(graph: gs.Graph, template: onnx.ModelProto) -> onnx.ModelProto:
    """Export `graph` and restore what onnx-graphsurgeon drops: model fields and node metadata.

    Args:
        graph: the rewritten graph, imported from `template`.
        template: the pass's input model; its model-level fields and per-node `metadata_props`
            (matched by node name) are copied onto the result.

    Returns:
        A new `ModelProto`.
    """
    model = gs.export_onnx(graph)
    model.ir_version = template.ir_version
    model.model_version = template.model_version
    model.domain = template.domain
    model.doc_string = template.doc_string
    added = [o for o in model.opset_import if o.domain not in {t.domain for t in template.opset_import}]
    del model.opset_import[:]
    model.opset_import.extend([*template.opset_import, *added])
    del model.metadata_props[:]
    model.metadata_props.extend(template.metadata_props)
    metadata = {node.name: node.metadata_props for node in template.graph.node if node.name}
    for node in model.graph.node:
        props = metadata.get(node.name)
        if props is not None and not node.metadata_props:
            node.metadata_props.extend(props)
    return model


def unique_name(graph: gs.Graph, stem: str) -> str:
    """`stem`, or `stem_1`, `stem_2`, ...: the first name no tensor or node of `graph` has."""
    taken = set(graph.tensors()) | {node.name for node in graph.nodes}
    name, index = stem, 1
    while name in taken:
        name, index = f"{stem}_{index}", index + 1
    return name
