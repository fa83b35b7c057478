"""What an engine build asks of TensorRT, decided per TensorRT version, without importing TensorRT.

`BuildConfig` is what the user chose (`trtq build` flags); `decide(version, config)` turns it into a
`Decisions`: the TensorRT names to use (network creation flags, builder flags, memory pool), the
typing mode, the plugin handling and the reason for each choice. Both consumers read this one place:

- `trtq.engine._trt` resolves every name on the installed `tensorrt` module and applies it (the
  API-surface tests run that very resolution against the real bindings of 10.3, 10.16 and 11.4);
- `trtq.engine.commands` spells the same decisions as trtexec and `polygraphy convert` flags.

The version rules (each from the TensorRT headers or trtexec's sampleOptions.cpp at that tag, or
`trtq.targets`):

- strong typing: `NetworkDefinitionCreationFlag.STRONGLY_TYPED` / `--stronglyTyped` on 10.x (present
  in 10.3.0); on 11 the only mode (the flag is deprecated and trtexec's `--stronglyTyped` a no-op),
  so trtq sets nothing there. `EXPLICIT_BATCH` is never set: implicit batch is gone since 10.0.
- weakly typed (opt-in, 10.x only): builder flags `INT8` + `FP16` (`--int8 --fp16`); TensorRT 11 has
  neither flag nor any calibrator. A legacy calibration cache (`trtq calib-cache`) needs it.
- DLA (targets with a DLA, on TensorRT versions that build for it, `trtq.targets.TRT_RELEASES`): on
  10.x weakly typed INT8+FP16 (the DLA runs INT8 and FP16 layers only) with `GPU_FALLBACK`
  (`--useDLACore=N --allowGPUFallback`); on 11 (11.4.1+, AGX Orin) strongly typed.
- workspace: `set_memory_pool_limit(MemoryPoolType.WORKSPACE, bytes)` / `--memPoolSize=workspace:NM`
  (trtexec 10.x has no `--workspace`).
- plugins: shared libraries are loaded before parsing; with `--version-compatible` they are also
  serialized into the engine (`IBuilderConfig.plugins_to_serialize`, trtexec `--dynamicPlugins` +
  `--setPluginsToSerialize`), else trtexec loads them with `--staticPlugins`. Python (QDP) plugin
  modules (`.py`) need `tensorrt.plugin` (10.16 and 11 here) and get the network flag
  `PREFER_AOT_PYTHON_PLUGINS`, so the engine carries the AOT kernels and runs without Python.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trtq.errors import TrtqError
from trtq.targets import TARGETS, TRT_RELEASES, TRT_VERSIONS, trt_at_least

__all__ = ["BuildConfig", "Decisions", "ShapeRange", "decide", "parse_shapes", "trt_name"]

_DIMS = re.compile(r"^\d+(x\d+)*$")


@dataclass(frozen=True)
class ShapeRange:
    """The min / opt / max shape of one network input in the engine's optimization profile."""

    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


def _dims(text: str, spec: str) -> tuple[int, ...]:
    if not _DIMS.match(text):
        raise TrtqError(f"--shapes {spec!r}: {text!r} is not a shape like 1x3x224x224.",
                        "write NAME:MIN,OPT,MAX with each shape as dims joined by x, e.g. images:1x3x224x224,"
                        "8x3x224x224,32x3x224x224.")
    return tuple(int(d) for d in text.split("x"))


def parse_shapes(specs: list[str] | tuple[str, ...]) -> tuple[ShapeRange, ...]:
    """`NAME:MIN,OPT,MAX` (or `NAME:SHAPE` for a fixed shape) -> ShapeRange, validated."""
    out: dict[str, ShapeRange] = {}
    for spec in specs:
        name, sep, rest = spec.rpartition(":")
        parts = rest.split(",")
        if not sep or not name or len(parts) not in (1, 3):
            raise TrtqError(f"--shapes {spec!r} is not NAME:MIN,OPT,MAX.",
                            "write e.g. --shapes images:1x3x224x224,8x3x224x224,32x3x224x224.")
        dims = [_dims(p, spec) for p in parts]
        lo, opt, hi = dims if len(dims) == 3 else dims * 3
        if not len(lo) == len(opt) == len(hi):
            raise TrtqError(f"--shapes {spec!r}: MIN, OPT and MAX have different ranks.", "give each the same rank.")
        if any(not a <= b <= c for a, b, c in zip(lo, opt, hi, strict=True)):
            raise TrtqError(f"--shapes {spec!r}: needs MIN <= OPT <= MAX in every dimension.",
                            "order the three shapes MIN,OPT,MAX.")
        if name in out:
            raise TrtqError(f"--shapes names input {name!r} twice.", "give each input once.")
        out[name] = ShapeRange(name, lo, opt, hi)
    return tuple(out.values())


@dataclass(frozen=True)
class BuildConfig:
    """What `trtq build` was asked for.

    Args:
        target: device family (`trtq.targets.TARGETS`); None: the GPU at hand, no target checks.
        shapes: optimization-profile ranges of the inputs with dynamic dimensions (`parse_shapes`).
        workspace_gb: workspace memory-pool limit in GiB (None: TensorRT's default, the device memory).
        timing_cache: timing cache file, read when present and written back after the build.
        plugins: plugin shared libraries (.so) and Python plugin modules (.py, `tensorrt.plugin`).
        builder_opt_level: TensorRT builder optimization level 0-5 (None: TensorRT's default, 3).
        dla_core: build for this DLA core (targets with a DLA only).
        version_compatible: the engine runs on later TensorRT of the same major version.
        weakly_typed: TensorRT 10.x weakly typed INT8+FP16 instead of strongly typed.
        calib_cache: a legacy INT8 calibration cache (`trtq calib-cache`) for implicit INT8 (weakly typed).
    """

    target: str | None = None
    shapes: tuple[ShapeRange, ...] = ()
    workspace_gb: float | None = None
    timing_cache: str | None = None
    plugins: tuple[str, ...] = ()
    builder_opt_level: int | None = None
    dla_core: int | None = None
    version_compatible: bool = False
    weakly_typed: bool = False
    calib_cache: str | None = None

    def __post_init__(self) -> None:
        if self.target is not None and self.target not in TARGETS:
            raise TrtqError(f"unknown target {self.target!r}.", f"use --target with one of: {', '.join(TARGETS)}.")
        if self.workspace_gb is not None and not 0 < self.workspace_gb < 1e4:
            raise TrtqError(f"--workspace {self.workspace_gb} is not a size in GiB.", "pass e.g. --workspace 4.")
        if self.builder_opt_level is not None and not 0 <= self.builder_opt_level <= 5:
            raise TrtqError(f"--builder-opt-level {self.builder_opt_level} is outside 0-5.",
                            "pass 0 (fastest build) to 5 (slowest build, most tactics); TensorRT's default is 3.")
        if self.dla_core is not None and self.dla_core < 0:
            raise TrtqError(f"--dla-core {self.dla_core} is negative.", "pass 0 or 1 (AGX Orin has two DLA cores).")
        for path in self.plugins:
            if Path(path).suffix not in (".so", ".py") and ".so." not in Path(path).name:
                raise TrtqError(f"--plugins {path}: not a shared library (.so) or a Python plugin module (.py).",
                                "pass the plugin library built for this TensorRT, or the .py that registers "
                                "tensorrt.plugin plugins.")

    @property
    def libraries(self) -> tuple[str, ...]:
        return tuple(p for p in self.plugins if Path(p).suffix != ".py")

    @property
    def python_plugins(self) -> tuple[str, ...]:
        return tuple(p for p in self.plugins if Path(p).suffix == ".py")

    @property
    def workspace_bytes(self) -> int | None:
        return None if self.workspace_gb is None else int(self.workspace_gb * 2**30)


@dataclass(frozen=True)
class Decisions:
    """How one TensorRT version builds a `BuildConfig`: TensorRT enum member names and the reasons."""

    version: str
    strongly_typed: bool
    network_flags: tuple[str, ...]  # NetworkDefinitionCreationFlag members
    builder_flags: tuple[str, ...]  # BuilderFlag members set besides Polygraphy's own
    precisions: tuple[str, ...]  # weakly typed precision flags (int8, fp16) Polygraphy sets
    serialize_plugins: bool
    dla_core: int | None
    reasons: tuple[str, ...] = field(default=())

    @property
    def typing(self) -> str:
        return "strong" if self.strongly_typed else "weak"

    def to_dict(self) -> dict[str, Any]:
        return {"trt": self.version, "typing": self.typing, "network_flags": list(self.network_flags),
                "builder_flags": list(self.builder_flags), "weak_precisions": list(self.precisions),
                "serialize_plugins": self.serialize_plugins, "dla_core": self.dla_core, "reasons": list(self.reasons)}


def trt_name(version: str) -> str:
    """A TensorRT version ('10.3.0', '10.16.1.11', '11.4.0.106') as trtq names it ('10.3', '10.16', '11')."""
    parts = version.split(".")
    if not all(p.isdigit() for p in parts[:2]) or len(parts) < 1:
        raise TrtqError(f"unrecognised TensorRT version {version!r}.", f"use one of: {', '.join(TRT_VERSIONS)}.")
    return parts[0] if int(parts[0]) >= 11 else ".".join(parts[:2])


def _facts(version: str) -> tuple[bool, bool, bool]:
    """(strong typing is the only mode, implicit INT8 exists, DLA builds exist) for any 10.x / 11.x version."""
    release = TRT_RELEASES.get(version)
    if release is not None:
        return release.strongly_typed == "always", release.implicit_int8, release.dla
    major = int(version.split(".")[0])
    if major < 10:
        raise TrtqError(f"TensorRT {version} is older than 10: trtq builds with TensorRT 10.3 or newer.",
                        "install TensorRT 10.x or 11.x (on Jetson: JetPack 6.1 or newer).")
    return major >= 11, major < 11, not trt_at_least(version, "10.8") or major >= 11


def decide(version: str, config: BuildConfig) -> Decisions:
    """The TensorRT names and modes `version` ('10.3', '10.16', '11', or any 10.x / 11.x) uses for `config`.

    Raises:
        TrtqError: the version cannot build what `config` asks (weak typing or a calibration cache on 11,
            DLA where the target or version has none, Python plugins before `tensorrt.plugin`).
    """
    always_strong, implicit_int8, has_dla = _facts(version)
    reasons: list[str] = []
    weak = config.weakly_typed or config.calib_cache is not None
    if weak and not implicit_int8:
        what = "--calib-cache (implicit INT8)" if config.calib_cache else "--weakly-typed"
        raise TrtqError(f"TensorRT {version} has no weakly typed mode: {what} needs TensorRT 10.x.",
                        "drop it and put the precisions in the ONNX (trtq quantize: Q/DQ, and --high-precision "
                        "fp16 for the unquantized layers), or build with TensorRT 10.3 / 10.16.")
    builder_flags: list[str] = []
    if config.dla_core is not None:
        spec = TARGETS.get(config.target or "")
        if spec is None or not spec.dla:
            dla_targets = [name for name, s in TARGETS.items() if s.dla]
            raise TrtqError(f"--dla-core needs a target with a DLA (target: {config.target or 'none given'}).",
                            f"pass --target {' or '.join(dla_targets)} (AGX Orin / Orin NX), or drop --dla-core.")
        if not has_dla:
            raise TrtqError(f"TensorRT {version} builds no DLA engines (10.7 was the last 10.x with DLA; 11.4.1+ "
                            "restores it on AGX Orin with JetPack 7.2.2+).",
                            "build DLA engines with JetPack 6.x (TensorRT 10.3), or drop --dla-core.")
        builder_flags.append("GPU_FALLBACK")
        if not always_strong and not weak:
            weak = True
            reasons.append("DLA on TensorRT 10.x: weakly typed INT8+FP16 (the DLA runs INT8 and FP16 layers only), "
                           "GPU fallback for the rest")
    if config.python_plugins and not trt_at_least(version, "10.9"):
        raise TrtqError(f"Python plugins ({config.python_plugins[0]}) need tensorrt.plugin with AOT "
                        f"implementations (TensorRT 10.9 or newer); this is TensorRT {version}.",
                        "build the plugin as a shared library (IPluginV3) for this TensorRT, or use TensorRT 10.16+.")
    network_flags: list[str] = []
    if always_strong:
        reasons.append(f"TensorRT {version}: strongly typed is the only mode (no flag)")
    elif not weak:
        network_flags.append("STRONGLY_TYPED")
        reasons.append("strongly typed: every tensor keeps the ONNX type (Q/DQ and Casts decide precisions)")
    elif config.weakly_typed or config.calib_cache:
        reasons.append("weakly typed INT8+FP16 on request (TensorRT 10.x only; deprecated since 10.1)")
    if config.python_plugins:
        network_flags.append("PREFER_AOT_PYTHON_PLUGINS")
        reasons.append("Python plugins: AOT implementations preferred, so the engine runs without Python")
    if config.version_compatible:
        builder_flags.append("VERSION_COMPATIBLE")
    serialize = bool(config.version_compatible and config.libraries)
    if serialize:
        reasons.append("version compatible: plugin libraries serialized into the engine")
    return Decisions(version, not weak, tuple(network_flags), tuple(builder_flags),
                     ("int8", "fp16") if weak else (), serialize, config.dla_core, tuple(reasons))


def existing_file(path: str | os.PathLike[str], what: str, fix: str) -> Path:
    """`path` as a Path, or a TrtqError naming `what` when it is not a readable file."""
    p = Path(path)
    if not p.is_file():
        raise TrtqError(f"{what} {p}: no such file.", fix)
    return p
