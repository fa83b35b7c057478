"""How many times `trtq.quantize` streams the calibration data through ONNX Runtime; wall clock, peak RSS
and the sha256 of what it writes.

    python bench/streams.py [--out bench/out/streams] [--cases effnet-default,minilm-int4] [--json F]

Each case is one `trtq.quantize` in its own process (so its peak RSS is its own), on bench/run.py's
FP32 graphs and calibration .npz (exported and written here when missing). A *stream* is one
iteration over the calibration `BatchStream` (each one reads every batch, and runs a graph over it
when a statistic needs one); *other_streams* counts iterations of other streams (selection candidates,
the fidelity check's few samples); *sessions* counts the ONNX Runtime sessions built and *runs* their
`run` calls. The sha256 of the quantized
graph and of its sidecar show whether a refactoring changed any output byte.

Cases: `<model>-<variant>` with the bench's variants (`default`, `fallback` = default passes plus
`--fallback-budget 5 --fallback-dtype fp16`, `int4` = INT4 GPTQ without passes, `fp8`) and the
small-data variants that only check bytes (`*-16`: the first 16 calibration samples).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# case -> (model, QuantConfig keyword arguments)
CASES: dict[str, tuple[str, dict]] = {
    "effnet-default": ("effnet", {}),
    "effnet-fallback": ("effnet", {"fallback_budget": 5, "fallback_dtype": "fp16"}),
    "minilm-default": ("minilm", {}),
    "minilm-fallback": ("minilm", {"fallback_budget": 5, "fallback_dtype": "fp16"}),
    "minilm-int4": ("minilm", {"precision": "int4", "passes": ()}),
    "effnet-cle-biascorr-16": ("effnet", {"passes": ("cle", "biascorr"), "max_samples": 16}),
    "effnet-fp8-entropy-16": ("effnet", {"precision": "fp8", "method": "entropy", "max_samples": 16}),
    "minilm-smoothquant-repq-16": ("minilm", {"passes": ("smoothquant", "repq"), "max_samples": 16}),
    "minilm-rotate-mse-16": ("minilm", {"passes": ("rotate",), "method": "mse", "max_samples": 16}),
    "minilm-int4-rtn-16": ("minilm", {"precision": "int4", "passes": (), "int4_method": "rtn",
                                      "max_samples": 16}),
    "effnet-select-16": ("effnet", {"select": 8, "max_samples": 16, "passes": ()}),
}


def prepare(out: Path) -> None:
    import data
    import models

    for model in ("effnet", "minilm"):
        path = models.export(model, out)
        data.prepare(model, out, models.input_names(path))


def one(case: str, out: Path) -> dict:
    """Run one case in this process, counting streams, sessions and runs."""
    import onnxruntime

    import trtq
    from trtq.calibrators import data as cdata

    counts = {"streams": 0, "other_streams": 0, "sessions": 0, "runs": 0}
    iterate = cdata.BatchStream.__iter__

    def counted_iter(self):
        counts["streams" if self._what == "calibration" else "other_streams"] += 1
        yield from iterate(self)

    cdata.BatchStream.__iter__ = counted_iter
    base = onnxruntime.InferenceSession

    class Counted(base):
        def __init__(self, *args, **kwargs):
            counts["sessions"] += 1
            super().__init__(*args, **kwargs)

        def run(self, *args, **kwargs):
            counts["runs"] += 1
            return super().run(*args, **kwargs)

    onnxruntime.InferenceSession = Counted
    model, kw = CASES[case]
    kw = dict(kw)
    calib = {"method": kw.pop("method", "minmax"), "max_samples": kw.pop("max_samples", None)}
    if "select" in kw:
        from trtq.config import SelectConfig

        kw["select"] = SelectConfig(n=kw["select"])
    config = trtq.QuantConfig(calib=trtq.CalibConfig(**calib), **kw)
    target = out / "quantized" / f"{case}.onnx"
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result = trtq.quantize(str(out / f"{model}_fp32.onnx"), str(out / f"{model}_calib.npz"), target,
                           config=config, target="hopper" if kw.get("precision") == "fp8" else None,
                           progress=False)
    seconds = time.perf_counter() - started
    with open("/proc/self/status") as f:
        rss = next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:"))
    return {"case": case, **counts, "seconds": round(seconds, 1), "peak_rss_mb": round(rss),
            "onnx_sha256": hashlib.sha256(target.read_bytes()).hexdigest(),
            "sidecar_sha256": hashlib.sha256(result.report_path.read_bytes()).hexdigest()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(HERE / "out" / "streams"))
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--json", default=None, help="also write the rows here")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    out = Path(args.out)
    if args.one:
        print(json.dumps(one(args.one, out)))
        return
    prepare(out)
    rows = []
    for case in args.cases.split(","):
        proc = subprocess.run([sys.executable, __file__, "--out", str(out), "--one", case], capture_output=True,
                              text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if proc.returncode:
            rows.append({"case": case, "error": proc.stderr[-2000:]})
        else:
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
