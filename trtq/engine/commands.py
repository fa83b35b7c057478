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


def _workspace_mib(config: BuildConfig) -> int | None:
    return None if config.workspace_bytes is None else max(1, config.workspace_bytes >> 20)


def _trtexec(model: str, output: str, config: BuildConfig, d: Decisions) -> tuple[list[str], list[str]]:
    build = ["trtexec", f"--onnx={_q(model)}", f"--saveEngine={_q(output)}"]
    if "STRONGLY_TYPED" in d.network_flags:
        build.append("--stronglyTyped")
    build += [f"--{p}" for p in d.precisions]
    if config.calib_cache:
        build.append(f"--calib={_q(config.calib_cache)}")
    if config.shapes:
        build += [f"--{w}Shapes={_trtexec_shape(config.shapes, w)}" for w in ("min", "opt", "max")]
    if (mib := _workspace_mib(config)) is not None:
        build.append(f"--memPoolSize=workspace:{mib}M")
    if config.timing_cache:
        build.append(f"--timingCacheFile={_q(config.timing_cache)}")
    for lib in config.libraries:
        build += ([f"--dynamicPlugins={_q(lib)}", f"--setPluginsToSerialize={_q(lib)}"] if d.serialize_plugins
                  else [f"--staticPlugins={_q(lib)}"])
    if config.builder_opt_level is not None:
        build.append(f"--builderOptimizationLevel={config.builder_opt_level}")
    if d.dla_core is not None:
        build += [f"--useDLACore={d.dla_core}", "--allowGPUFallback"]
    if config.version_compatible:
        build.append("--versionCompatible")
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
    cmd = [f"polygraphy convert {_q(model)}", f"-o {_q(output)}"]
    if "STRONGLY_TYPED" in d.network_flags:
        cmd.append("--strongly-typed")
    cmd += [f"--{p}" for p in d.precisions]
    if config.calib_cache:
        cmd.append(f"--calibration-cache {_q(config.calib_cache)}")
    if config.shapes:
        for which in ("min", "opt", "max"):
            cmd.append(" ".join([f"--trt-{which}-shapes", *(_q(s) for s in _poly_shape(config.shapes, which))]))
    if (mib := _workspace_mib(config)) is not None:
        cmd.append(f"--pool-limit workspace:{mib}M")
    if config.timing_cache:
        cmd += [f"--load-timing-cache {_q(config.timing_cache)}", f"--save-timing-cache {_q(config.timing_cache)}"]
    if config.libraries:
        cmd.append(" ".join(["--plugins", *(_q(lib) for lib in config.libraries)]))
    if config.builder_opt_level is not None:
        cmd.append(f"--builder-optimization-level {config.builder_opt_level}")
    if d.dla_core is not None:
        cmd += ["--use-dla", "--allow-gpu-fallback"]
    if config.version_compatible:
        cmd.append("--version-compatible")
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
