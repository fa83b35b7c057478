"""ONNX shape inference without copying weights: it needs their shapes, not their values."""

from __future__ import annotations

import logging

import onnx

__all__ = ["add_inferred_shapes", "inferred_graph", "tensor_types"]

logger = logging.getLogger(__name__)

# Initializers with more elements than this are replaced by data-less stubs during inference; small
# ones stay, since data propagation (Reshape targets, Slice bounds) reads their values.
STUB_ELEMENTS = 1024


def _light_copy(model: onnx.ModelProto, stub_elements: int) -> onnx.ModelProto:
    light = onnx.ModelProto(ir_version=model.ir_version)
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    graph = light.graph
    graph.node.extend(model.graph.node)
    graph.input.extend(model.graph.input)
    graph.output.extend(model.graph.output)
    graph.value_info.extend(model.graph.value_info)
    for init in model.graph.initializer:
        elements = 1
        for d in init.dims:
            elements *= d
        small = elements <= stub_elements and init.data_location != onnx.TensorProto.EXTERNAL
        graph.initializer.append(
            init if small else onnx.TensorProto(name=init.name, data_type=init.data_type, dims=init.dims)
        )
    return light


def inferred_graph(model: onnx.ModelProto, stub_elements: int = STUB_ELEMENTS) -> onnx.GraphProto:
    """The graph of a weightless copy of `model` with inferred value_info (declared types if inference fails)."""
    light = _light_copy(model, stub_elements)
    try:
        return onnx.shape_inference.infer_shapes(light, strict_mode=False, data_prop=True).graph
    except Exception as exc:
        logger.warning("onnx shape inference failed, keeping the declared shapes: %s", exc)
        return light.graph


def add_inferred_shapes(model: onnx.ModelProto, stub_elements: int = STUB_ELEMENTS) -> onnx.ModelProto:
    """Replace `model`'s value_info by what shape inference finds (in place; returns `model`)."""
    graph = inferred_graph(model, stub_elements)
    del model.graph.value_info[:]
    model.graph.value_info.extend(graph.value_info)
    return model


def tensor_types(model: onnx.ModelProto, names: list[str] | None = None) -> dict[str, int]:
    """Element type of every tensor whose type is declared or inferable.

    When every name in `names` already has a declared type (value_info, inputs, outputs,
    initializers), no inference runs.
    """
    g = model.graph
    types = {vi.name: vi.type.tensor_type.elem_type for vi in [*g.input, *g.value_info, *g.output]}
    types.update({init.name: init.data_type for init in g.initializer})
    if names is not None and all(types.get(n) for n in names):
        return types
    inferred = inferred_graph(model)
    types.update({vi.name: vi.type.tensor_type.elem_type for vi in [*inferred.value_info, *inferred.output]})
    return types
