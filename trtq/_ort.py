"""ONNX Runtime sessions over in-memory models, with intermediate tensors exposed as outputs."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import onnx

__all__ = ["has_low_precision_types", "make_session", "tensor_types"]

logger = logging.getLogger(__name__)

_LOW_PRECISION = {
    onnx.TensorProto.FLOAT8E4M3FN,
    onnx.TensorProto.FLOAT8E4M3FNUZ,
    onnx.TensorProto.FLOAT8E5M2,
    onnx.TensorProto.FLOAT8E5M2FNUZ,
    onnx.TensorProto.INT4,
    onnx.TensorProto.UINT4,
}


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor whose type ONNX shape inference can tell."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception as exc:  # inference is best effort; ORT still needs a type for extra outputs
        logger.debug("shape inference failed: %s", exc)
        inferred = model
    g = inferred.graph
    types = {vi.name: vi.type.tensor_type.elem_type for vi in [*g.input, *g.value_info, *g.output]}
    types.update({init.name: init.data_type for init in g.initializer})
    return types


def has_low_precision_types(model: onnx.ModelProto) -> bool:
    """True when the graph holds FP8 or INT4 tensors, which ORT's graph optimisers cannot fuse."""
    return any(init.data_type in _LOW_PRECISION for init in model.graph.initializer) or any(
        attr.name == "to" and attr.i in _LOW_PRECISION for n in model.graph.node for attr in n.attribute
    ) or any(_zero_point_type(n, model) in _LOW_PRECISION for n in model.graph.node if n.op_type == "QuantizeLinear")


def _zero_point_type(node: onnx.NodeProto, model: onnx.ModelProto) -> int | None:
    if len(node.input) < 3:
        return None
    for init in model.graph.initializer:
        if init.name == node.input[2]:
            return init.data_type
    return None


def with_outputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of `model` whose graph also outputs the tensors `names` (in that order)."""
    if not names:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    existing = {o.name for o in out.graph.output}
    types = tensor_types(model)
    for name in names:
        if name in existing:
            continue
        out.graph.output.append(onnx.helper.make_tensor_value_info(name, types.get(name, onnx.TensorProto.FLOAT), None))
        existing.add(name)
    return out


def make_session(
    model: onnx.ModelProto,
    *,
    outputs: Sequence[str] = (),
    optimize: bool | None = None,
    threads: int | None = None,
    exact_qdq: bool = False,
):
    """An ORT CPU session for `model`, exposing `outputs` besides the graph outputs.

    Args:
        model: the graph to run.
        outputs: intermediate tensor names to expose as extra outputs.
        optimize: run ORT's graph optimisations (None: on, unless the graph holds FP8/INT4 tensors,
            whose QDQ fusions ORT's CPU optimisers do not handle).
        threads: intra-op threads (None: ORT's default).
        exact_qdq: run activation Q/DQ exactly as written (overrides `optimize`): basic optimisations
            only, with ORT's QDQ fusions off ("session.disable_quant_qdq"). Weight DQs are still
            constant-folded, so results depend neither on the batch size nor on `outputs`; full
            optimisation would swap in ORT's own INT8 / INT4 kernels (e.g. MatMulNBits).
    """
    import onnxruntime as ort

    model = with_outputs(model, outputs)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if optimize is None:
        optimize = not has_low_precision_types(model)
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    if exact_qdq:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.add_session_config_entry("session.disable_quant_qdq", "1")
    if threads:
        opts.intra_op_num_threads = threads
    if model.ByteSize() < 2**31 - 1:
        return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    with tempfile.TemporaryDirectory() as scratch:  # models over 2 GB need external data on disk
        path = Path(scratch) / "model.onnx"
        onnx.save_model(model, str(path), save_as_external_data=True, location="model.onnx.data")
        return ort.InferenceSession(os.fspath(path), opts, providers=["CPUExecutionProvider"])
