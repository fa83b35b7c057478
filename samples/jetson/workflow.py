"""Print the x86-host -> Jetson workflow for one model as a shell script (nothing is run).

    python samples/jetson/workflow.py --model model.onnx --calib calib.npz --jetpack 6.2 --target orin \
        --shapes images:1x3x224x224,4x3x224x224,8x3x224x224 --device nvidia@orin.local > deploy.sh

1. on the x86 host: `trtq quantize` and `trtq check` for the device's TensorRT (the JetPack's);
2. copy the QDQ ONNX (and plugin sources, a calibration cache for DLA) to the device;
3. on the device: build the engine with the device's TensorRT (engines are not portable) and time it with
   trtexec; the build and timing lines are `trtq build --print trtexec` for that TensorRT version.

What it refuses, with the reason (exit status 2): a JetPack that does not run on the target, a TensorRT
version trtq does not check for (JetPack 7.0 / 7.1 ship 10.13), a precision the target does not run (no
FP8 / FP4 on Orin), DLA where the target or the JetPack's TensorRT has none (Thor; TensorRT 10.16).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from trtq.config import QuantConfig, Target
from trtq.engine import BuildConfig, command_lines, parse_shapes
from trtq.errors import TrtqError
from trtq.targets import JETPACKS, TARGETS, TRT_VERSIONS

CUDA_ARCH = {"orin": "87", "thor": "110"}  # -DCMAKE_CUDA_ARCHITECTURES for plugin builds (anchors §3.3)


def _jetpack(version: str, target: str):
    rows = [j for j in JETPACKS if j.version == version]
    if not rows:
        raise TrtqError(f"unknown JetPack {version}.", f"use one of: {', '.join(j.version for j in JETPACKS)}.")
    row = rows[0]
    if target not in row.targets:
        raise TrtqError(f"JetPack {version} does not run on {target} (it runs on {', '.join(row.targets)}).",
                        "pick the JetPack flashed on the device.")
    if row.trt not in TRT_VERSIONS:
        raise TrtqError(f"JetPack {version} ships TensorRT {row.trt}; trtq checks and builds for "
                        f"{', '.join(TRT_VERSIONS)}.", "flash JetPack 7.2 (TensorRT 10.16), or build with trtexec "
                        "by hand.")
    return row


def script(args: argparse.Namespace) -> str:
    row = _jetpack(args.jetpack, args.target)
    trt = row.trt
    QuantConfig(precision=args.precision, target=Target(args.target, trt))  # refuses FP8 / FP4 on Orin
    model = Path(args.model)
    qdq = model.with_name(model.stem + ".qdq.onnx")
    sidecar = model.with_name(model.stem + ".qdq.trtq.json")
    engine = f"{model.stem}.engine"
    remote = args.remote_dir
    shapes = parse_shapes(args.shapes)
    plugins = [f"{remote}/plugins/build/{Path(p).name}" for p in args.plugin_libs]
    dla_cache = f"{model.stem}.calib.cache" if args.dla else None
    build = BuildConfig(target=args.target, shapes=shapes, plugins=tuple(plugins),
                        dla_core=0 if args.dla else None, calib_cache=dla_cache and f"{remote}/{dla_cache}",
                        timing_cache=f"{remote}/timing.cache")
    device_model = f"{remote}/{model.name if args.dla else qdq.name}"
    device_lines = command_lines(device_model, f"{remote}/{engine}", build, tool="trtexec", trt=trt)
    host = shlex.quote(args.device)
    calib = f" --calib-data {shlex.quote(args.calib)}" if args.calib else ""
    out = [
        "#!/usr/bin/env bash",
        f"# {model.name} -> {args.target} with JetPack {row.version} (L4T {row.l4t}, CUDA {row.cuda}, TensorRT {trt})",
        *([f"# note: {row.caveat}"] if row.caveat else []),
        "set -euo pipefail",
        "",
        "# 1. x86 host: quantize for the device's TensorRT, and check the graph against it",
        f"trtq quantize {shlex.quote(str(model))} -o {shlex.quote(str(qdq))} --precision {args.precision}{calib} "
        f"--target {args.target} --trt {trt}",
        f"trtq check {shlex.quote(str(qdq))} --target {args.target} --trt {trt}",
    ]
    copies = [str(qdq)]
    if args.dla:  # DLA on TensorRT 10.x: implicit INT8 of the FP32 model with trtq's scales
        out.append(f"trtq calib-cache {shlex.quote(str(sidecar))} -o {shlex.quote(dla_cache)} --trt {trt}")
        copies += [str(model), dla_cache]
    out += ["", "# 2. copy the model (and plugin sources: plugins are built on the device) to the device",
            f"ssh {host} mkdir -p {remote}",
            f"scp {' '.join(shlex.quote(c) for c in copies)} {host}:{remote}/"]
    if args.plugin_src:
        out += [f"scp -r {shlex.quote(args.plugin_src)} {host}:{remote}/plugins",
                "", "# 3a. device: build the plugins for this GPU and TensorRT",
                f"ssh {host} 'cmake -S {remote}/plugins -B {remote}/plugins/build "
                f"-DCMAKE_CUDA_ARCHITECTURES={CUDA_ARCH[args.target]} && cmake --build {remote}/plugins/build'"]
    out += ["", "# 3. device: build the engine with the device's TensorRT, then run and time it",
            *(f"# {line[2:]}" for line in device_lines.splitlines() if line.startswith("# ")),
            *(f"ssh {host} {shlex.quote(cmd)}" for cmd in _commands(device_lines))]
    return "\n".join(out) + "\n"


def _commands(text: str) -> list[str]:
    """The commands of `command_lines` output (continuation lines joined), comments left out."""
    cmds: list[list[str]] = []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        if not line.startswith(" "):
            cmds.append([])
        cmds[-1].append(line.strip().rstrip("\\").strip())
    return [" ".join(c) for c in cmds]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="FP32 ONNX on the x86 host")
    p.add_argument("--calib", help="calibration .npz (int8 / fp8)")
    p.add_argument("--jetpack", required=True, help=f"JetPack on the device: {', '.join(j.version for j in JETPACKS)}")
    p.add_argument("--target", required=True, choices=[t for t, s in TARGETS.items() if s.jetson])
    p.add_argument("--precision", default="int8")
    p.add_argument("--shapes", nargs="+", default=[], metavar="NAME:MIN,OPT,MAX")
    p.add_argument("--dla", action="store_true", help="build for DLA core 0 (Orin, JetPack 6)")
    p.add_argument("--plugin-src", help="plugin source folder (CMake) to build on the device")
    p.add_argument("--plugin-libs", nargs="*", default=[], help="library names the plugin build produces")
    p.add_argument("--device", default="nvidia@jetson.local", help="ssh destination of the Jetson")
    p.add_argument("--remote-dir", default="trtq-deploy", help="folder on the device")
    args = p.parse_args(argv)
    try:
        sys.stdout.write(script(args))
    except TrtqError as exc:
        print(f"# trtq refuses: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
