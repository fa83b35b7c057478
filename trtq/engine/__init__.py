"""The last mile: a QDQ ONNX -> a TensorRT engine (`build`), run it (`run`), the same build as trtexec /
Polygraphy command lines (`command_lines`), and a legacy INT8 calibration cache (`write_calib_cache`).

Nothing here imports TensorRT until a build or a run starts (`trtq.engine._trt`, the one module that
does); without it those end in one `TrtqError` naming what to install.
"""

from __future__ import annotations

from trtq.engine.build import BuildResult, build, engine_sidecar_path
from trtq.engine.calib_cache import CalibCache, parse_cache, write_calib_cache
from trtq.engine.commands import TOOLS, command_lines
from trtq.engine.plan import BuildConfig, Decisions, ShapeRange, decide, parse_shapes
from trtq.engine.run import EngineRunner, RunReport, is_engine, run

__all__ = [
    "TOOLS",
    "BuildConfig",
    "BuildResult",
    "CalibCache",
    "Decisions",
    "EngineRunner",
    "RunReport",
    "ShapeRange",
    "build",
    "command_lines",
    "decide",
    "engine_sidecar_path",
    "is_engine",
    "parse_cache",
    "parse_shapes",
    "run",
    "write_calib_cache",
]
