"""trtq's TensorRT layer: the one module that imports `tensorrt` and Polygraphy's TensorRT backend.

Polygraphy (`polygraphy.backend.trt`) does what it already does well: the builder config
(`CreateConfig`: precisions, DLA, memory pool, timing cache load, builder optimization level,
profiles), `Profile`, building (`EngineBytesFromNetwork`, which also merges and saves the timing
cache), loading plugin libraries (`LoadPlugins`) and running (`TrtRunner`). trtq adds only what
Polygraphy has no option for: the network creation flags (`PREFER_AOT_PYTHON_PLUGINS`), the DLA core
number, plugin libraries serialized into the engine, a calibrator that only replays a legacy cache,
the parser's errors as one message, and the engine inspector's layer precisions.

Every TensorRT name whose spelling depends on the version comes from `plan.decide` and is resolved
here by `resolve`, the function the API-surface tests run against the real bindings of each version.
Objects are created through `make` (default: the real class), so those tests can pass spies that
check every attribute TensorRT and Polygraphy touch on this path against the real classes.
"""

from __future__ import annotations

import ctypes
import json
import logging
import re
import runpy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trtq.engine.plan import BuildConfig, Decisions
from trtq.errors import TrtqError

__all__ = ["INSTALL_FIX", "Resolved", "build_serialized", "device_info", "engine_io", "inspect_engine", "load",
           "resolve", "runner"]

logger = logging.getLogger(__name__)

INSTALL_FIX = (
    "on an x86 GPU host: pip install 'trtq[engine]' tensorrt-cu12==10.16.* (or tensorrt-cu13 for CUDA 13; "
    "any 10.x or 11.x); or run trtq in the image of docker/Dockerfile (docker/README.md); on a Jetson, "
    "TensorRT comes with JetPack (JetPack 6: TensorRT 10.3) and docker/Dockerfile.jetson installs trtq on it."
)

Make = Callable[..., Any]


def load() -> tuple[Any, Any]:
    """(tensorrt, polygraphy.backend.trt), or a TrtqError naming what to install."""
    try:
        import tensorrt as trt
    except ImportError as exc:  # also OSError-like failures surface as ImportError from the bindings
        raise TrtqError(f"TensorRT's Python package cannot be imported ({exc}).", INSTALL_FIX) from exc
    try:
        from polygraphy.backend import trt as poly
    except ImportError as exc:
        raise TrtqError(f"Polygraphy is not installed ({exc}).", "pip install 'trtq[engine]' (polygraphy).") from exc
    return trt, poly


def _real(trt: Any) -> Make:
    return lambda name, *args: getattr(trt, name)(*args)


@dataclass(frozen=True)
class Resolved:
    """`Decisions` as TensorRT values of the installed version."""

    network_flags: int
    builder_flags: tuple[Any, ...]
    workspace_pool: Any
    names: tuple[str, ...]  # every version-dependent name resolved, e.g. "BuilderFlag.INT8"


def resolve(trt: Any, decisions: Decisions) -> Resolved:
    """Look up every version-dependent TensorRT name of `decisions` on `trt` (raises TrtqError if one is missing)."""
    names: list[str] = []

    def member(enum: str, name: str) -> Any:
        value = getattr(getattr(trt, enum, None), name, None)
        if value is None:
            raise TrtqError(f"TensorRT {trt.__version__} has no {enum}.{name}, which this build needs.",
                            "use the TensorRT version the build was planned for (trtq build --print shows it).")
        names.append(f"{enum}.{name}")
        return value

    flags = 0
    for name in decisions.network_flags:
        flags |= 1 << int(member("NetworkDefinitionCreationFlag", name))
    builder = tuple(member("BuilderFlag", name) for name in decisions.builder_flags)
    for precision in decisions.precisions:  # set by Polygraphy's CreateConfig(int8=, fp16=); checked here
        member("BuilderFlag", precision.upper())
    return Resolved(flags, builder, member("MemoryPoolType", "WORKSPACE"), tuple(names))


def _load_plugins(make: Make, poly: Any, config: BuildConfig, decisions: Decisions) -> None:
    if decisions.serialize_plugins:  # registered with the registry, so the builder can serialize them
        registry = make("get_plugin_registry")
        for path in config.libraries:
            if registry.load_library(str(path)) is None:
                raise TrtqError(f"TensorRT cannot load the plugin library {path}.",
                                "build it for this TensorRT version and GPU architecture.")
    elif config.libraries:
        try:
            poly.LoadPlugins(plugins=[str(p) for p in config.libraries])()
        except OSError as exc:
            raise TrtqError(f"cannot load a plugin library: {exc}.",
                            "build it for this TensorRT version and GPU architecture.") from exc
    for path in config.python_plugins:  # registers its tensorrt.plugin definitions
        runpy.run_path(str(path), run_name=Path(path).stem)


def _parse(trt: Any, make: Make, model: Path, flags: int, log: Any) -> tuple[Any, Any, Any]:
    builder = make("Builder", log)
    network = builder.create_network(flags)
    parser = make("OnnxParser", network, log)
    if not parser.parse_from_file(str(model)):
        errors = [parser.get_error(i) for i in range(parser.num_errors)]
        first = errors[0] if errors else None
        where = f" at node {first.node_name()} ({first.node_operator()})" if first is not None else ""
        detail = first.desc() if first is not None else "no error recorded"
        raise TrtqError(f"TensorRT's ONNX parser rejects {model}{where}: {detail} ({len(errors)} error(s)).",
                        "run `trtq check --target ... --trt ...` on it; plugins the graph uses go in --plugins.")
    return builder, network, parser


def _cache_calibrator(trt: Any, cache: bytes) -> Any:
    """A legacy entropy calibrator that replays `cache` and never asks for data (TensorRT 10.x implicit INT8)."""

    class CacheCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: list[str]) -> None:
            return None  # no data: every range comes from the cache

        def read_calibration_cache(self) -> bytes:
            return cache

        def write_calibration_cache(self, data: bytes) -> None:
            return None

    return CacheCalibrator()


def build_serialized(trt: Any, poly: Any, model: Path, config: BuildConfig, decisions: Decisions,
                     make: Make | None = None) -> bytes:
    """Parse `model` and build the serialized engine `decisions` describe (timing cache merged and saved)."""
    make = make or _real(trt)
    resolved = resolve(trt, decisions)
    from polygraphy.backend.trt import util as trt_util

    log = trt_util.get_trt_logger()
    trt.init_libnvinfer_plugins(log, "")
    _load_plugins(make, poly, config, decisions)
    network_tuple = _parse(trt, make, model, resolved.network_flags, log)
    profiles = None
    if config.shapes:
        profile = poly.Profile()
        for s in config.shapes:
            profile.add(s.name, min=list(s.min), opt=list(s.opt), max=list(s.max))
        profiles = [profile]
    calibrator = None
    if config.calib_cache is not None:
        calibrator = _cache_calibrator(trt, Path(config.calib_cache).read_bytes())
    pools = {resolved.workspace_pool: config.workspace_bytes} if config.workspace_bytes else None
    create = poly.CreateConfig(
        profiles=profiles, int8="int8" in decisions.precisions, fp16="fp16" in decisions.precisions,
        calibrator=calibrator, load_timing_cache=config.timing_cache, memory_pool_limits=pools,
        builder_optimization_level=config.builder_opt_level, use_dla=decisions.dla_core is not None,
        allow_gpu_fallback=decisions.dla_core is not None, profiling_verbosity=trt.ProfilingVerbosity.DETAILED)

    def finish(builder: Any, network: Any, cfg: Any) -> None:
        for flag in resolved.builder_flags:
            cfg.set_flag(flag)
        if decisions.dla_core is not None:
            cfg.DLA_core = decisions.dla_core
        if decisions.serialize_plugins:
            cfg.plugins_to_serialize = [str(p) for p in config.libraries]

    built = poly.EngineBytesFromNetwork(network_tuple, config=poly.PostprocessConfig(create, finish),
                                        save_timing_cache=config.timing_cache)
    try:
        engine = built()
    except TrtqError:
        raise
    except Exception as exc:  # Polygraphy raises PolygraphyException after TensorRT logged the cause
        raise TrtqError(f"TensorRT could not build an engine from {model}: {exc}",
                        "read TensorRT's log above (trtq -v build ... shows more); `trtq check` names graph "
                        "patterns TensorRT rejects.") from exc
    return bytes(engine)


_DTYPE = re.compile(r"\b(FP32|FP16|BF16|FP8|FP4|INT8|INT4|INT32|INT64|UINT8|BOOL|E8M0|Float|Half)\b", re.IGNORECASE)
_DTYPE_NAMES = {"float": "fp32", "half": "fp16"}


def _dtype_of(desc: Any) -> str:
    """'Row major linear FP16 format' / 'Int8 NC/32HW32' -> 'fp16' / 'int8' (the inspector's wording)."""
    text = desc.get("Format/Datatype", "") if isinstance(desc, dict) else str(desc)
    found = _DTYPE.search(text)
    if not found:
        return "unknown"
    word = found.group(1).lower()
    return _DTYPE_NAMES.get(word, word)


def _layers(info: str) -> list[dict[str, Any]]:
    try:
        data = json.loads(info) if info else {}
    except json.JSONDecodeError:
        return []
    out = []
    for layer in data.get("Layers", []) if isinstance(data, dict) else []:
        if not isinstance(layer, dict):  # profiling verbosity below DETAILED gives names only
            out.append({"name": str(layer)})
            continue
        out.append({"name": layer.get("Name", ""), "type": layer.get("LayerType", ""),
                    "inputs": [_dtype_of(t) for t in layer.get("Inputs", [])],
                    "outputs": [_dtype_of(t) for t in layer.get("Outputs", [])],
                    "tactic": layer.get("TacticName", "")})
    return out


def _deserialize(trt: Any, make: Make, engine_bytes: bytes) -> Any:
    from polygraphy.backend.trt import util as trt_util

    runtime = make("Runtime", trt_util.get_trt_logger())
    runtime.engine_host_code_allowed = True  # version-compatible engines carry a lean runtime
    engine = runtime.deserialize_cuda_engine(engine_bytes)
    if not engine:
        raise TrtqError("TensorRT cannot deserialize the engine.",
                        "run engines with the TensorRT version and on the GPU they were built for (rebuild there).")
    return engine


def inspect_engine(trt: Any, engine_bytes: bytes, make: Make | None = None) -> dict[str, Any]:
    """The engine's layers (name, type, input/output precisions, tactic) and I/O tensors, read back from it."""
    engine = _deserialize(trt, make or _real(trt), engine_bytes)
    inspector = engine.create_engine_inspector()
    layers = _layers(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    counts: dict[str, int] = {}
    for layer in layers:
        for dtype in layer.get("outputs", [])[:1]:
            counts[dtype] = counts.get(dtype, 0) + 1
    return {"layers": layers, "layer_output_precisions": dict(sorted(counts.items())), "io": engine_io(trt, engine)}


def engine_io(trt: Any, engine: Any) -> list[dict[str, Any]]:
    """Name, direction, shape (-1: dynamic) and numpy dtype of each I/O tensor of a deserialized engine."""
    out = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        mode = engine.get_tensor_mode(name)
        out.append({"name": name, "mode": "input" if mode == trt.TensorIOMode.INPUT else "output",
                    "shape": [int(d) for d in engine.get_tensor_shape(name)],
                    "dtype": str(_numpy_dtype(trt, engine.get_tensor_dtype(name)))})
    return out


def _numpy_dtype(trt: Any, dtype: Any) -> Any:
    import numpy as np

    try:
        return np.dtype(trt.nptype(dtype))
    except TypeError:  # FP8 / INT4 / BF16 I/O have no numpy type in the bindings
        return str(dtype).rsplit(".", 1)[-1].lower()


def runner(trt: Any, poly: Any, engine_bytes: bytes) -> Any:
    """A Polygraphy TrtRunner over the engine (use as a context manager; `infer(feed)` -> outputs)."""
    from polygraphy.backend.trt import util as trt_util

    runtime = trt.Runtime(trt_util.get_trt_logger())
    runtime.engine_host_code_allowed = True
    return poly.TrtRunner(poly.EngineFromBytes(engine_bytes, runtime=runtime))


def device_info() -> dict[str, Any]:
    """The current CUDA device's name and compute capability, read from libcudart (via Polygraphy's loader).

    When libcudart cannot be loaded (TensorRT builds without it), name and compute capability are None and
    `error` says why.
    """
    from polygraphy import cuda

    try:
        lib = cuda.wrapper().handle
    except Exception as exc:  # OSError from ctypes, or Polygraphy's own exception
        return {"name": None, "index": None, "compute_capability": None, "error": f"libcudart: {exc}"}
    device = ctypes.c_int(0)
    lib.cudaGetDevice(ctypes.byref(device))
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    lib.cudaDeviceGetAttribute(ctypes.byref(major), 75, device)  # cudaDevAttrComputeCapabilityMajor
    lib.cudaDeviceGetAttribute(ctypes.byref(minor), 76, device)  # cudaDevAttrComputeCapabilityMinor
    props = ctypes.create_string_buffer(8192)  # cudaDeviceProp starts with char name[256]
    get = getattr(lib, "cudaGetDeviceProperties_v2", None) or lib.cudaGetDeviceProperties
    get(props, device)
    return {"name": props.raw[:256].split(b"\0", 1)[0].decode(errors="replace"), "index": device.value,
            "compute_capability": f"{major.value}.{minor.value}"}
