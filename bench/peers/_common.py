"""What every quantizer runner shares: arguments, calibration data, timing, peak RSS, result file.

A runner is one process in its tool's own virtual environment, so `ru_maxrss` is that tool's own
peak. It needs only numpy besides the tool. The result JSON always gets written, with the error
when the tool raised.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np


def rss_mb() -> float:
    """Peak resident set size of this process so far, in MB.

    Linux's `ru_maxrss` starts from the RSS the parent had when it forked this process (exec saves
    the old address space's high-water mark into it), so a runner started by a large parent would
    report the parent's size. `VmHWM` in /proc/self/status is the same high-water mark for this
    process's own address space only; `ru_maxrss` is the fallback elsewhere.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def parse_args(add_args: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """The arguments every runner takes, plus the ones `add_args` adds (a tool's own settings)."""
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True, help="FP32 ONNX file")
    p.add_argument("--calib", required=True, help=".npz: input name -> array, first axis = sample")
    p.add_argument("--output", required=True, help="quantized ONNX file to write")
    p.add_argument("--precision", required=True, choices=["int8", "fp8", "int4"])
    p.add_argument("--method", default=None, help="the tool's calibration method name")
    p.add_argument("--result", required=True, help="JSON file for the measurements")
    if add_args is not None:
        add_args(p)
    return p.parse_args()


def load_calib(path: str) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def run(tool: str, version: str, quantize: Callable[[argparse.Namespace], dict | None],
        add_args: Callable[[argparse.ArgumentParser], None] | None = None) -> None:
    """Call `quantize(args)` once, timed, and write the result JSON; exit 1 if it raised.

    `add_args` adds the tool's own command-line arguments (see run_trtq.py's --passes).
    """
    args = parse_args(add_args)
    result = {"tool": tool, "version": version, "precision": args.precision, "method": args.method,
              "output": args.output, "rss_baseline_mb": round(rss_mb(), 1)}
    t0 = time.perf_counter()
    try:
        extra = quantize(args) or {}
    except BaseException as exc:  # a crash is a result too
        result.update(ok=False, error=f"{type(exc).__name__}: {exc}".strip()[:2000])
        traceback.print_exc()
    else:
        result.update(ok=True, **extra)
        if not Path(args.output).exists():
            result.update(ok=False, error="the tool returned without writing the output file")
    result["calib_seconds"] = round(time.perf_counter() - t0, 2)
    result["rss_peak_mb"] = round(rss_mb(), 1)
    Path(args.result).write_text(json.dumps(result, indent=2))
    sys.exit(0 if result["ok"] else 1)
