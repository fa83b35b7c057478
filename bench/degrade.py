"""Degradation-aware vs clean calibration on EfficientNet-Lite0, evaluated on each degraded set.

    python bench/degrade.py [--calib 128] [--eval 64] [--methods minmax,entropy] [--out bench/out/degrade]

Run it by hand with the trtq environment's Python (it is not a test; CI does not run it). It prints
one markdown table and writes `degrade.md` and `degrade.json` into `--out`.

Data (real, offline): calibration images are `--calib` crops of the calibration photos
(`trtq.testing.data.CALIB_PHOTOS`, a grid of scales, positions and mirroring), evaluation images
`--eval` crops of the evaluation photos (`EVAL_PHOTOS`); both are uint8 224x224 RGB, given to trtq
as an `ImageList` whose preprocessing is ImageNet's mean/std, so the degradations act on pixels.

Calibration recipes (INT8, the default graph passes, seed 0), each with every `--methods` range method:
- clean: the crops as they are;
- mild / strong: `--degrade noise,blur,contrast,jpeg,motion,lowlight --degrade-ratio 0.5` at that level;
- qrid: QRID's recipe (its 7-transform pool, half degraded, JPEG-95 re-encoding).
Evaluation: `trtq.evaluate.compare_degraded` on the evaluation crops clean and under each of the six
degradations at both levels (13 sets): logit SQNR (dB) and top-1 agreement of the INT8 graph with FP32
on the same (degraded) inputs.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import trtq  # noqa: E402
from trtq._io import load_model  # noqa: E402
from trtq.calibrators.degrade import DEGRADATIONS, DegradeConfig, Degraded  # noqa: E402
from trtq.calibrators.images import ImageList, ImagePreprocess  # noqa: E402
from trtq.config import CalibConfig, QuantConfig  # noqa: E402
from trtq.evaluate import compare_degraded  # noqa: E402
from trtq.testing.data import CALIB_PHOTOS, EVAL_PHOTOS, IMAGE_SIZE, IMAGENET_MEAN, IMAGENET_STD, load_photo  # noqa: E402

import models  # noqa: E402
from data import crop_views, photo_crop  # noqa: E402

RECIPES = ("clean", "mild", "strong", "qrid")


def crops(photos: tuple[str, ...], count: int) -> list[np.ndarray]:
    """`count` uint8 IMAGE_SIZE² crops of `photos` over a scale x position x mirror grid, in a fixed order."""
    loaded = {name: load_photo(name) for name in photos}
    views = crop_views(photos, np.linspace(0.35, 1.0, 6), 4, count)
    return [photo_crop(loaded[name], *view) for name, *view in views]


def recipe(name: str) -> DegradeConfig | None:
    if name == "clean":
        return None
    if name == "qrid":
        return DegradeConfig.qrid(seed=0)
    return DegradeConfig(degradations=DEGRADATIONS, ratio=0.5, levels=name, seed=0)


def run(args: argparse.Namespace) -> list[dict]:
    fp32 = models.shared_or_export("effnet", args.out / "models")
    reference = load_model(fp32)  # read once; compare_degraded runs it, the quantizations read the file
    pre = ImagePreprocess(mean=tuple(IMAGENET_MEAN.tolist()), std=tuple(IMAGENET_STD.tolist()),
                          resize=(IMAGE_SIZE, IMAGE_SIZE))
    calib = ImageList(crops(CALIB_PHOTOS, args.calib), pre)
    evaluation = ImageList(crops(EVAL_PHOTOS, args.eval), pre)
    rows = []
    for method, name in itertools.product(args.methods, RECIPES):
        cfg = recipe(name)
        source = calib if cfg is None else Degraded(calib, cfg)
        started = time.perf_counter()
        result = trtq.quantize(fp32, source, None, config=QuantConfig(seed=0, calib=CalibConfig(method=method)),
                               progress=False)
        seconds = time.perf_counter() - started
        report = compare_degraded(reference, result.model, evaluation, DEGRADATIONS, levels="mixed", seed=1,
                                  progress=False)
        sets = {s: {"sqnr_db": r.outputs[0].sqnr_db, "top1": r.outputs[0].top1_agreement}
                for s, r in report.reports.items()}
        degraded = result.report.get("calibration_data", {}).get("degradation")
        rows.append({"method": method, "recipe": name, "calib_s": seconds, "sets": sets,
                     "degradation": degraded and {k: degraded[k] for k in ("degraded", "clean")}})
        print(f"{method} {name}: clean {sets['clean']['sqnr_db']:.2f} dB, mean over degraded "
              f"{statistics.fmean(v['sqnr_db'] for k, v in sets.items() if k != 'clean'):.2f} dB", flush=True)
    return rows


def table(rows: list[dict]) -> list[str]:
    sets = list(rows[0]["sets"])
    lines = ["| range method | calibration | " + " | ".join(sets) + " | mean degraded | wins vs clean |",
             "|---" * (len(sets) + 4) + "|"]
    for r in rows:
        base = next(b for b in rows if b["method"] == r["method"] and b["recipe"] == "clean")
        degraded = [s for s in sets if s != "clean"]
        wins = sum(r["sets"][s]["sqnr_db"] > base["sets"][s]["sqnr_db"] for s in degraded)
        cells = [f"{r['sets'][s]['sqnr_db']:.2f} / {r['sets'][s]['top1']:.2f}" for s in sets]
        mean = statistics.fmean(r["sets"][s]["sqnr_db"] for s in degraded)
        lines.append(f"| {r['method']} | {r['recipe']} | " + " | ".join(cells) + f" | {mean:.2f} | "
                     + ("—" if r["recipe"] == "clean" else f"{wins}/{len(degraded)}") + " |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--calib", type=int, default=128, help="calibration crops")
    p.add_argument("--eval", type=int, default=64, help="evaluation crops")
    p.add_argument("--methods", default="minmax,entropy", help="range methods, comma-separated")
    p.add_argument("--out", type=Path, default=HERE / "out" / "degrade")
    args = p.parse_args()
    args.methods = args.methods.split(",")
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows = run(args)
    (args.out / "degrade.json").write_text(json.dumps(rows, indent=1))
    text = "\n".join(["Cells: logit SQNR dB / top-1 agreement of INT8 vs FP32 on the same inputs.", "",
                      *table(rows), "",
                      f"EfficientNet-Lite0 INT8, default passes, {args.calib} calibration / {args.eval} evaluation "
                      f"crops; ONNX Runtime {__import__('onnxruntime').__version__} CPU; {platform.machine()}, "
                      f"{os.cpu_count()} cores; this run {time.perf_counter() - started:.0f} s."])
    (args.out / "degrade.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
