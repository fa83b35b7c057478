"""ONNX graph passes: one module each, registered with `@register_pass` (see `registry` for the contract).

The graph representation, decided once: onnx-graphsurgeon, not onnx_ir. Every pass, placement and
Q/DQ insertion read and write graphs through onnx-graphsurgeon (`gs.import_onnx` / `graph_to_model`).
Why it and not onnx_ir (onnxscript's IR, also installed as a torch.onnx dependency):
- NVIDIA ships it for exactly this job (rewriting ONNX graphs for TensorRT), so TensorRT users who
  read or extend a pass know its `Graph` / `Node` / `Variable` / `Constant` model;
- it is already what ~4,000 lines of passes, placement and Q/DQ insertion are written against and
  tested on; moving would change no output and risk many;
- its gaps are known and contained in two places: it drops model fields and node metadata and needs
  a garbage collection per graph (a reference cycle) -> `base.graph_to_model` and the pass runner;
  it cannot store INT4 -> `trtq.exporter.qdq` packs INT4 initializers after export.
What would make onnx_ir worth a move: sub-byte types (INT4/FP4 native), lazily loaded external
weights for models over 2 GB, and typed attributes. Revisit when a pass needs one of them; until
then nothing else in trtq (calibration, metrics, sensitivity) depends on the choice: they use
plain `onnx.ModelProto`.
"""

from __future__ import annotations

from trtq.exporter.passes.base import PassResult
from trtq.exporter.passes.context import PassContext
from trtq.exporter.passes.fold_batchnorm import fold_batchnorm
from trtq.exporter.passes.registry import (
    GraphPass,
    PassRun,
    get_pass,
    register_pass,
    registered_passes,
    resolve_passes,
    run_passes,
)

__all__ = [
    "GraphPass",
    "PassContext",
    "PassResult",
    "PassRun",
    "fold_batchnorm",
    "get_pass",
    "register_pass",
    "registered_passes",
    "resolve_passes",
    "run_passes",
]
