"""trtq: PyTorch / ONNX models -> TensorRT-legal INT8 / FP8 / INT4 QDQ ONNX that stays close to FP32.

The public API is the verbs and the config types below; everything else is internal. Heavy modules
(torch, onnxruntime sessions) load on first use, so `import trtq` needs neither CUDA nor TensorRT.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from trtq._version import __version__
from trtq.config import CalibConfig, QuantConfig, Target
from trtq.errors import TrtqError

if TYPE_CHECKING:
    from trtq.engine import BuildConfig, BuildResult, build
    from trtq.evaluate import CompareReport, compare
    from trtq.exporter.check import CheckReport, check
    from trtq.exporter.torch_export import export
    from trtq.inspection import InspectReport, inspect
    from trtq.pipeline import QuantizeResult, calibrate, quantize
    from trtq.reporting import report

__all__ = [
    # configuration
    "BuildConfig",
    # results and errors
    "BuildResult",
    "CalibConfig",
    "CheckReport",
    "CompareReport",
    "InspectReport",
    "QuantConfig",
    "QuantizeResult",
    "Target",
    "TrtqError",
    "__version__",
    "build",
    "calibrate",
    "check",
    "compare",
    # verbs
    "export",
    "inspect",
    "quantize",
    "report",
]

_LAZY = {
    "export": "trtq.exporter.torch_export",
    "calibrate": "trtq.pipeline",
    "quantize": "trtq.pipeline",
    "QuantizeResult": "trtq.pipeline",
    "check": "trtq.exporter.check",
    "CheckReport": "trtq.exporter.check",
    "compare": "trtq.evaluate",
    "CompareReport": "trtq.evaluate",
    "report": "trtq.reporting",
    "inspect": "trtq.inspection",
    "InspectReport": "trtq.inspection",
    "build": "trtq.engine",
    "BuildConfig": "trtq.engine",
    "BuildResult": "trtq.engine",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'trtq' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
