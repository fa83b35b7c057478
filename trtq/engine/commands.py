"""`trtq build --print trtexec|polygraphy`: the same build as command lines, for the machine that runs it.

Engines are not portable, so Jetson users build on the device with the device's TensorRT. These
command lines carry `trtq.engine.plan.decide`'s decisions for the TensorRT version given (`--trt`),
spelled as that version's trtexec (flags read from samples/common/sampleOptions.cpp at tags v10.3.0,
v10.16 and v11.1 of NVIDIA/TensorRT) and Polygraphy 0.49+ (`polygraphy convert`) take them:

- `--stronglyTyped` on 10.x (present in trtexec 10.3); nothing on 11, where it is a deprecated no-op;
- `--int8 --fp16` (and `--calib=CACHE`) only for weakly typed 10.x builds; TensorRT 11 has neither;
- `--memPoolSize=workspace:NM` (trtexec 10.x has no `--workspace`); Polygraphy `--pool-limit workspace:NM`;
- `--minShapes/--optShapes/--maxShapes=name:AxB,...`; Polygraphy `--trt-{min,opt,max}-shapes name:[A,B]`;
- `--timingCacheFile`; Polygraphy `--load-timing-cache` + `--save-timing-cache`;
- `--staticPlugins=LIB`, or `--dynamicPlugins=LIB --setPluginsToSerialize=LIB` when the plugins are
  serialized into a version-compatible engine (`--plugins` is deprecated in all three);
- `--builderOptimizationLevel=N`, `--useDLACore=N --allowGPUFallback`, `--versionCompatible`.

A second trtexec line loads the engine and times it (`--loadEngine`, the profile's OPT shapes).
Nothing here imports TensorRT.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from trtq.engine.plan import BuildConfig, Decisions, ShapeRange, decide
from trtq.errors import TrtqError
from trtq.targets import TARGETS, TRT_VERSIONS

__all__ = ["TOOLS", "command_lines"]

TOOLS = ("trtexec", "polygraphy")


def _q(path: str | os.PathLike[str]) -> str:
    return shlex.quote(str(path))


def _trtexec_shape(shapes: tuple[ShapeRange, ...], which: str) -> str:
    return ",".join(f"{s.name}:{'x'.join(map(str, getattr(s, which)))}" for s in shapes)


def _poly_shape(shapes: tuple[ShapeRange, ...], which: str) -> list[str]:
    return [f"{s.name}:[{','.join(map(str, getattr(s, which)))}]" for s in shapes]


@dataclass(frozen=True)
class _Spelling:
    """How one tool spells each build option: each entry returns the command-line words for its value."""

    strongly_typed: str
    precision: Callable[[str], str]
    calib_cache: Callable[[str], str]
    shapes: Callable[[tuple[ShapeRange, ...], str], str]
    workspace_mib: Callable[[int], str]
    timing_cache: Callable[[str], list[str]]
    plugins: Callable[[tuple[str, ...], bool], list[str]]
    opt_level: Callable[[int], str]
    dla: Callable[[int], list[str]]
    version_compatible: str


_TRTEXEC = _Spelling(
    strongly_typed="--stronglyTyped",
    precision=lambda p: f"--{p}",
    calib_cache=lambda c: f"--calib={_q(c)}",
    shapes=lambda shapes, w: f"--{w}Shapes={_trtexec_shape(shapes, w)}",
    workspace_mib=lambda mib: f"--memPoolSize=workspace:{mib}M",
    timing_cache=lambda p: [f"--timingCacheFile={_q(p)}"],
    plugins=lambda libs, serialize: [w for lib in libs for w in (
        [f"--dynamicPlugins={_q(lib)}", f"--setPluginsToSerialize={_q(lib)}"] if serialize
        else [f"--staticPlugins={_q(lib)}"])],
    opt_level=lambda n: f"--builderOptimizationLevel={n}",
    dla=lambda core: [f"--useDLACore={core}", "--allowGPUFallback"],
    version_compatible="--versionCompatible",
)

_POLYGRAPHY = _Spelling(
    strongly_typed="--strongly-typed",
    precision=lambda p: f"--{p}",
    calib_cache=lambda c: f"--calibration-cache {_q(c)}",
    shapes=lambda shapes, w: " ".join([f"--trt-{w}-shapes", *(_q(s) for s in _poly_shape(shapes, w))]),
    workspace_mib=lambda mib: f"--pool-limit workspace:{mib}M",
    timing_cache=lambda p: [f"--load-timing-cache {_q(p)}", f"--save-timing-cache {_q(p)}"],
    plugins=lambda libs, serialize: [" ".join(["--plugins", *(_q(lib) for lib in libs)])],
    opt_level=lambda n: f"--builder-optimization-level {n}",
    dla=lambda core: ["--use-dla", "--allow-gpu-fallback"],
    version_compatible="--version-compatible",
)


def _build_words(config: BuildConfig, d: Decisions, spell: _Spelling) -> list[str]:
    """The build options of `config` / `d` in one tool's spelling, in a fixed order."""
    words = [spell.strongly_typed] if "STRONGLY_TYPED" in d.network_flags else []
    words += [spell.precision(p) for p in d.precisions]
    if config.calib_cache:
        words.append(spell.calib_cache(config.calib_cache))
    if config.shapes:
        words += [spell.shapes(config.shapes, w) for w in ("min", "opt", "max")]
    if config.workspace_bytes is not None:
        words.append(spell.workspace_mib(max(1, config.workspace_bytes >> 20)))
    if config.timing_cache:
        words += spell.timing_cache(config.timing_cache)
    if config.libraries:
        words += spell.plugins(config.libraries, d.serialize_plugins)
    if config.builder_opt_level is not None:
        words.append(spell.opt_level(config.builder_opt_level))
    if d.dla_core is not None:
        words += spell.dla(d.dla_core)
    if config.version_compatible:
        words.append(spell.version_compatible)
    return words


def _trtexec(model: str, output: str, config: BuildConfig, d: Decisions) -> tuple[list[list[str]], list[str]]:
    build = ["trtexec", f"--onnx={_q(model)}", f"--saveEngine={_q(output)}", *_build_words(config, d, _TRTEXEC)]
    run = ["trtexec", f"--loadEngine={_q(output)}"]
    if config.shapes:
        run.append(f"--shapes={_trtexec_shape(config.shapes, 'opt')}")
    if not d.serialize_plugins:
        run += [f"--staticPlugins={_q(lib)}" for lib in config.libraries]
    if d.dla_core is not None:
        run.append(f"--useDLACore={d.dla_core}")
    notes = []
    if config.python_plugins:
        notes.append(f"trtexec cannot load Python plugins ({', '.join(config.python_plugins)}): build with "
                     "`trtq build` (the engine then holds their AOT kernels and trtexec runs it).")
    return [build, run], notes


def _polygraphy(model: str, output: str, config: BuildConfig, d: Decisions) -> tuple[list[list[str]], list[str]]:
    cmd = [f"polygraphy convert {_q(model)}", f"-o {_q(output)}", *_build_words(config, d, _POLYGRAPHY)]
    notes = []
    if d.dla_core not in (None, 0):
        notes.append(f"polygraphy convert always uses DLA core 0; use trtexec (--useDLACore={d.dla_core}) for core "
                     f"{d.dla_core}.")
    if d.serialize_plugins:
        notes.append("polygraphy convert does not serialize plugin libraries into the engine: ship them beside it, "
                     "or use trtexec / trtq build.")
    if config.python_plugins:
        notes.append("polygraphy convert cannot load Python plugins nor set PREFER_AOT_PYTHON_PLUGINS: use trtq build.")
    return [cmd], notes


def command_lines(model: str | os.PathLike[str], output: str | os.PathLike[str], config: BuildConfig,
                  tool: str = "trtexec", trt: str | None = None) -> str:
    """The shell commands that build (and, for trtexec, time) the engine `config` describes with TensorRT `trt`.

    Args:
        model, output: the ONNX and engine paths as the device sees them.
        config: the build.
        tool: trtexec | polygraphy.
        trt: TensorRT version ('10.3', '10.16', '11'); None: the target's default (10.16 without target).

    Raises:
        TrtqError: unknown tool or version, or what `plan.decide` refuses for that version.
    """
    if tool not in TOOLS:
        raise TrtqError(f"unknown --print tool {tool!r}.", f"use one of: {', '.join(TOOLS)}.")
    version = trt or (TARGETS[config.target].default_trt if config.target else "10.16")
    if version not in TRT_VERSIONS:
        raise TrtqError(f"unknown TensorRT version {version!r}.", f"use --trt with one of: {', '.join(TRT_VERSIONS)}.")
    decisions = decide(version, config)
    if Path(model).is_file():  # on this machine: check the shapes against the model's inputs
        from trtq.engine.build import input_profile

        input_profile(Path(model), config.shapes)
    lines, notes = (_trtexec if tool == "trtexec" else _polygraphy)(str(model), str(output), config, decisions)
    out = [f"# TensorRT {version}, {decisions.typing}ly typed" + (f", target {config.target}" if config.target else "")]
    out += [f"# {n}" for n in (*decisions.reasons, *notes)]
    out += [" \\\n    ".join(cmd) for cmd in lines]
    return "\n".join(out) + "\n"
