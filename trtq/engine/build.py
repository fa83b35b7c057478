"""`trtq build`: a QDQ ONNX -> a TensorRT engine on this GPU, and its sidecar `MODEL.engine.json`.

Everything that can be checked without TensorRT is checked first (the model, the shapes against its
inputs, the files named), so a wrong flag fails in a second, not after a build. Then TensorRT is
imported (`trtq.engine._trt`), the version's decisions are taken (`trtq.engine.plan.decide`), the
engine is built, read back with the engine inspector, and the engine and its sidecar are written
atomically together: either both exist afterwards or neither does.

Engines are not portable: an engine runs on the GPU model and TensorRT version that built it. With
`target` given, trtq refuses to build on a GPU whose compute capability is not the target's.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trtq._io import atomic_path, file_sha256, load_model, write_json
from trtq._version import __version__
from trtq.calibrators.data import model_inputs
from trtq.engine import _trt
from trtq.engine.plan import BuildConfig, ShapeRange, decide, existing_file, parse_shapes, trt_name
from trtq.errors import TrtqError
from trtq.targets import TARGETS, trt_support

__all__ = ["BuildResult", "build", "engine_sidecar_path", "input_profile"]

logger = logging.getLogger(__name__)

# Compute capabilities each target family covers besides its `TargetSpec.sm` (the notes of trtq.targets).
_OTHER_SM = {"ampere": ("8.6",), "blackwell": ("10.3", "12.0"), "thor": ("10.1",)}


@dataclass
class BuildResult:
    """What `build` wrote: the engine, its sidecar and the sidecar's content."""

    path: Path
    report_path: Path
    report: dict[str, Any]
    seconds: float


def engine_sidecar_path(engine: str | os.PathLike[str]) -> Path:
    """`model.engine` -> `model.engine.json`."""
    p = Path(engine)
    return p.with_name(p.name + ".json")


def _config(config: BuildConfig | None, options: dict[str, Any]) -> BuildConfig:
    if config is not None and options:
        raise TypeError("pass either config or keyword options, not both")
    if config is not None:
        return config
    shapes = options.pop("shapes", ())
    if shapes and isinstance(next(iter(shapes)), str):
        shapes = parse_shapes(list(shapes))
    options["plugins"] = tuple(str(p) for p in options.get("plugins", ()))
    return BuildConfig(shapes=tuple(shapes), **options)


def input_profile(model: Path, shapes: tuple[ShapeRange, ...]) -> dict[str, dict[str, Any]]:
    """Each input's profile: the model's static shape, or the --shapes range where it has dynamic dims."""
    specs = {s.name: s for s in model_inputs(load_model(model, load_weights=False))}
    given = {s.name: s for s in shapes}
    unknown = sorted(set(given) - set(specs))
    if unknown:
        raise TrtqError(f"--shapes names {', '.join(unknown)}, not an input of {model} "
                        f"(inputs: {', '.join(specs)}).", "use the model's input names.")
    out = {}
    for name, spec in specs.items():
        dims = ["?" if d is None else str(d) for d in spec.shape]
        example = ",".join("x".join("1" if d == "?" else d for d in dims) for _ in range(3))
        r = given.get(name)
        if r is None:
            if any(d is None for d in spec.shape):
                raise TrtqError(f"input {name!r} has dynamic dimensions [{', '.join(dims)}]: TensorRT needs their "
                                "range.", f"pass --shapes {name}:MIN,OPT,MAX (e.g. {name}:{example} with the "
                                "? dims set).")
            out[name] = {"min": list(spec.shape), "opt": list(spec.shape), "max": list(spec.shape)}
            continue
        if len(r.min) != len(spec.shape) or any(d is not None and (a, b, c) != (d, d, d)
                                                for d, a, b, c in zip(spec.shape, r.min, r.opt, r.max, strict=True)):
            raise TrtqError(f"--shapes {name}: rank or fixed dimensions differ from the model's [{', '.join(dims)}].",
                            "keep the model's fixed dimensions and give a range only for the ? ones.")
        out[name] = r.to_dict()
    return out


def _check_files(model: Path, output: Path, config: BuildConfig) -> None:
    if output.resolve() == model.resolve():
        raise TrtqError(f"the engine path {output} is the ONNX model itself.", "write the engine to e.g. MODEL.engine.")
    for path in config.plugins:
        existing_file(path, "plugin", "build the plugin for this TensorRT and pass its path.")
    if config.calib_cache is not None:
        existing_file(config.calib_cache, "calibration cache", "write one with `trtq calib-cache MODEL.trtq.json`.")
    if config.timing_cache is not None and not Path(config.timing_cache).parent.is_dir():
        raise TrtqError(f"timing cache folder {Path(config.timing_cache).parent}: no such folder.",
                        "create it, or name a timing cache in an existing folder.")


def _check_gpu(config: BuildConfig, device: dict[str, Any], version: str) -> list[str]:
    notes = []
    if config.target is None:
        return notes
    spec = TARGETS[config.target]
    allowed = (spec.sm, *_OTHER_SM.get(config.target, ()))
    if device["compute_capability"] is None:
        notes.append(f"the GPU could not be read ({device.get('error')}): not checked against target {config.target}")
    elif device["compute_capability"] not in allowed:
        raise TrtqError(f"this GPU ({device['name']}, SM {device['compute_capability']}) is not a {config.target} "
                        f"(SM {', '.join(allowed)}): an engine runs only on the GPU model it was built on.",
                        f"build on the {config.target} device (`trtq build --print trtexec --target {config.target}` "
                        "prints the command), or drop --target.")
    status, why = trt_support(config.target, version)
    if status != "ok":
        notes.append(f"TensorRT {version} on {config.target}: {why or status}")
    return notes


def build(model: str | os.PathLike[str], output: str | os.PathLike[str], config: BuildConfig | None = None,
          **options: Any) -> BuildResult:
    """Build a TensorRT engine from an ONNX model on this machine's GPU; write it and `<output>.json`.

    Args:
        model: the (QDQ) ONNX file.
        output: where the engine goes; the sidecar goes to `<output>.json`.
        config: a `BuildConfig`; or give its fields as keyword options (`shapes` may be
            "NAME:MIN,OPT,MAX" strings).

    Returns:
        A `BuildResult`.

    Raises:
        TrtqError: a bad model, shape or file; TensorRT or Polygraphy not installed (naming what to
            install); the TensorRT version cannot do what was asked; the parser or the builder fails.
    """
    cfg = _config(config, dict(options))
    model, output = Path(model), Path(output)
    existing_file(model, "ONNX model", "check the path of the ONNX model.")
    profile = input_profile(model, cfg.shapes)
    _check_files(model, output, cfg)
    trt, poly = _trt.load()
    version = trt_name(trt.__version__)
    decisions = decide(version, cfg)
    device = _trt.device_info()
    notes = _check_gpu(cfg, device, version)
    reused_cache = cfg.timing_cache is not None and Path(cfg.timing_cache).is_file()
    start = time.perf_counter()
    engine = _trt.build_serialized(trt, poly, model, cfg, decisions)
    seconds = time.perf_counter() - start
    inspected = _trt.inspect_engine(trt, engine)
    report = {
        "trtq": __version__,
        "versions": {"tensorrt": trt.__version__, "polygraphy": _version("polygraphy"),
                     "python": platform.python_version()},
        "gpu": device,
        "onnx": {"path": str(model), "sha256": file_sha256(model)},
        "engine": {"path": str(output), "sha256": hashlib.sha256(engine).hexdigest(), "bytes": len(engine)},
        "config": _config_dict(cfg),
        "decisions": decisions.to_dict(),
        "shapes": profile,
        "timing_cache": None if cfg.timing_cache is None else {"path": cfg.timing_cache, "reused": reused_cache},
        "build_seconds": round(seconds, 3),
        "notes": notes,
        **inspected,
    }
    report_path = engine_sidecar_path(output)
    with atomic_path(output) as tmp:
        tmp.write_bytes(engine)
        write_json(report, report_path)  # the engine is renamed into place only after this succeeds
    logger.info("built %s in %.1f s (%s)", output, seconds, decisions.typing)
    return BuildResult(output, report_path, report, seconds)


def _config_dict(cfg: BuildConfig) -> dict[str, Any]:
    return {"target": cfg.target, "shapes": {s.name: s.to_dict() for s in cfg.shapes}, "workspace_gb": cfg.workspace_gb,
            "timing_cache": cfg.timing_cache, "plugins": list(cfg.plugins), "builder_opt_level": cfg.builder_opt_level,
            "dla_core": cfg.dla_core, "version_compatible": cfg.version_compatible,
            "weakly_typed": cfg.weakly_typed, "calib_cache": cfg.calib_cache}


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None
