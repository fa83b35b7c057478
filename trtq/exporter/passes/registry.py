"""The graph passes `trtq.quantize` can run before calibration, by name, in their fixed order.

Passes run in the order of `PASS_ORDER` whatever order the user lists them in: scale and rotation
folds change the FP32 weights first, bias correction last (it corrects the weights trtq will quantize).
Each entry names `module:function`; the module is imported only when the pass runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence

import onnx

from trtq.errors import TrtqError
from trtq.exporter.passes.base import PassResult
from trtq.exporter.passes.context import PassContext

__all__ = ["DEFAULT_PASSES", "PASS_ORDER", "PASSES", "default_passes", "get_pass", "resolve_passes"]

PassFn = Callable[[onnx.ModelProto, PassContext], PassResult]

PASSES: dict[str, str] = {
    "cle": "trtq.exporter.passes.cle:cross_layer_equalization",
    "rotate": "trtq.exporter.passes.rotate:rotate",
    "rotate_online": "trtq.exporter.passes.rotate:rotate_online",
    "smoothquant": "trtq.exporter.passes.smoothquant:smoothquant",
    "repq": "trtq.exporter.passes.repq:repq_reparameterize",
    "biascorr": "trtq.exporter.passes.bias_correction:bias_correction",
}
PASS_ORDER = tuple(PASSES)

# Per (model family, precision), the passes that helped on the bench (README "Graph passes" has the
# figures); a pair not listed runs none.
DEFAULT_PASSES: dict[tuple[str, str], tuple[str, ...]] = {
    ("cnn", "int8"): ("biascorr",),
    ("cnn", "fp8"): ("biascorr",),
    ("transformer", "int8"): ("rotate_online",),
}


def model_family(model: onnx.ModelProto) -> str:
    """"cnn" (has Conv), "transformer" (Softmax and MatMul, no Conv) or "other"."""
    ops = {n.op_type for n in model.graph.node}
    if "Conv" in ops:
        return "cnn"
    if {"Softmax", "MatMul"} <= ops:
        return "transformer"
    return "other"


def default_passes(model: onnx.ModelProto, precision: str) -> tuple[str, ...]:
    """The passes trtq runs when the user names none."""
    return DEFAULT_PASSES.get((model_family(model), precision), ())


def resolve_passes(names: Sequence[str] | None, model: onnx.ModelProto, precision: str) -> tuple[str, ...]:
    """Validate `names` (None: the family's defaults) and put them in `PASS_ORDER`."""
    if names is None:
        return default_passes(model, precision)
    unknown = [n for n in names if n not in PASSES]
    if unknown:
        raise TrtqError(f"unknown pass(es) {', '.join(unknown)}.", f"use --passes with any of: {', '.join(PASSES)}.")
    return tuple(n for n in PASS_ORDER if n in names)


def get_pass(name: str) -> PassFn:
    """Import and return the pass function registered as `name`."""
    module, func = PASSES[name].split(":")
    try:
        return getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError) as exc:
        raise TrtqError(f"the {name} pass is not available in this build ({exc}).",
                        f"leave {name} out of --passes.") from exc
