"""Calibration-sample selection on real models: INT8 fidelity of N chosen candidates vs all, and its cost.

    python bench/selection.py [--models effnet,minilm] [--candidates 2000] [--sizes 32,128] [--seeds 5]
                              [--scale 2000,10000] [--parts fidelity,scale] [--calib-method minmax]
                              [--contaminate 0.1] [--out bench/out/selection]

Run it by hand with the trtq environment's Python (it is not a test; CI does not run it). It prints
one markdown table and writes `selection.md` and `selection.json` (every run) into `--out`; results
already in `selection.json` are reused, so an interrupted run resumes.

Candidates (real, offline, never the evaluation data):
- effnet: crops of the four calibration photos (`trtq.testing.data.CALIB_PHOTOS`) over a grid of
  16 scales (0.3-1.0 of the shorter side) x 12 x 12 positions x mirrored or not (18,432 views), in a
  fixed shuffled order; made on the fly (PIL bilinear, ImageNet mean/std), never held in memory.
- minilm: every calibration sentence of `trtq.testing.data` (649 prose sentences of Python's
  documentation), then prose sentences of the docstrings of Python's standard library (read with
  `ast`, not imported; none is an evaluation sentence) in a fixed shuffled order; tokenised on the
  fly and padded to 128 tokens.
- effnet with `--contaminate F`: the same crops, but a seeded fraction F of them are bad frames (one
  strong noise / blur / JPEG / low-light degradation each, `trtq.calibrators.degrade`), as in an edge
  camera's dump; rows say "bad<F> pool". The evaluation stays clean: the deployment's good frames.
Evaluation: 64 crops of the evaluation photos and 128 evaluation sentences, as in bench/run.py.

Fidelity part: the FP32 features of the candidates are extracted once per model; then, for each N
and seed, random / density-diversity / noise-filtered-diverse pick N of them and `trtq.quantize`
(INT8, the default calibration method, no graph passes, that seed) calibrates on the chosen ones,
streamed from the candidates; "all" calibrates on every candidate. Metrics against FP32 on the
evaluation set, both graphs in ONNX Runtime CPU with Q/DQ run as written: effnet logit SQNR and
top-1 agreement; minilm sentence-embedding (masked mean pooling) cosine and SQNR. A selection
identical to one already measured is not quantized again.

Scale part: one subprocess per (model, candidate count) extracts the features and runs every method
(N = the largest size) and reports seconds and its own peak resident memory (VmHWM) after each step.
"""

from __future__ import annotations

import argparse
import ast
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import trtq  # noqa: E402
from trtq import metrics  # noqa: E402
from trtq._io import load_model  # noqa: E402
from trtq._ort import make_session  # noqa: E402
from trtq.calibrators.degrade import degrade  # noqa: E402
from trtq.calibrators.select import (  # noqa: E402
    METHODS,
    STATISTICS,
    FeatureSet,
    extract_features,
    select_samples,
)
from trtq.config import CalibConfig, QuantConfig  # noqa: E402
from trtq.testing.data import (  # noqa: E402
    CALIB_PHOTOS,
    EVAL_PHOTOS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    image_batch,
    load_photo,
    mean_pooled,
    prose_sentences,
    sentence_pool,
    sentences,
    token_batch,
)

import models  # noqa: E402
from data import crop_views, photo_crop, tokenizer  # noqa: E402

SEQ_LEN = 128
EVAL_IMAGES, EVAL_SENTENCES = 64, 128


# ---------------------------------------------------------------------------------------- candidates


# bad frames of a contaminated pool: one of these, strong, per contaminated candidate
CONTAMINATION = ("noise", "blur", "jpeg", "lowlight")


class PhotoCrops:
    """`count` crops of the calibration photos, made on the fly (a trtq BatchSource).

    With `contaminate` > 0, that fraction of the candidates (a seeded choice) are bad frames: the
    crop under one strong degradation of `CONTAMINATION` (trtq.calibrators.degrade), as an edge
    camera's dump holds noisy, blurred, over-compressed or dark frames among the good ones.
    """

    def __init__(self, count: int, input_name: str, contaminate: float = 0.0) -> None:
        self.views = crop_views(CALIB_PHOTOS, np.linspace(0.3, 1.0, 16), 12, count)
        self.input_name = input_name
        self._photos = {name: load_photo(name) for name in CALIB_PHOTOS}
        bad = np.random.default_rng(1).permutation(count)[: int(round(contaminate * count))]
        self.bad = {int(i): CONTAMINATION[k % len(CONTAMINATION)] for k, i in enumerate(sorted(bad))}

    def crop(self, index: int) -> np.ndarray:
        name, *view = self.views[index]
        pixels = photo_crop(self._photos[name], *view)
        if index in self.bad:
            pixels = degrade(pixels, self.bad[index], "strong", seed=0, index=index)
        rgb = pixels.astype(np.float32) / 255.0
        return ((rgb - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)

    def batches(self, batch_size: int):
        for start in range(0, len(self.views), batch_size):
            end = min(start + batch_size, len(self.views))
            yield {self.input_name: np.stack([self.crop(i) for i in range(start, end)])}

    def report(self) -> dict:
        return {"source": "photo_crops", "candidates": len(self.views), "bad_frames": len(self.bad)}


def stdlib_sentences() -> list[str]:
    """Prose sentences of the standard library's docstrings (files parsed, not imported), sorted by file."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "test", "tests", "idlelib"}
    found: list[str] = []
    for path in sorted(p for p in root.rglob("*.py") if not skip & set(p.parts)):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node, clean=True)
                if doc:
                    found.extend(prose_sentences(doc))
    return found


def text_pool(count: int) -> list[str]:
    calib = sentence_pool("calib")
    held_out = set(calib) | set(sentence_pool("eval"))
    extra = [s for s in dict.fromkeys(stdlib_sentences()) if s not in held_out]
    extra = [extra[i] for i in np.random.default_rng(0).permutation(len(extra))]
    pool = calib + extra
    if count > len(pool):
        raise SystemExit(f"at most {len(pool)} text candidates")
    return pool[:count]


class Sentences:
    """Tokenised sentences, made on the fly (a trtq BatchSource)."""

    def __init__(self, texts: list[str], tokenizer: Any) -> None:
        self.texts, self.tokenizer = texts, tokenizer

    def batches(self, batch_size: int):
        for start in range(0, len(self.texts), batch_size):
            yield token_batch(self.tokenizer, self.texts[start : start + batch_size], SEQ_LEN)

    def report(self) -> dict:
        return {"source": "sentences", "candidates": len(self.texts)}


def model_path(name: str, out: Path) -> str:
    return models.shared_or_export(name, out / "models", seq_len=SEQ_LEN)


def candidates(name: str, count: int, fp32: str, contaminate: float = 0.0) -> Any:
    if name == "effnet":
        return PhotoCrops(count, models.input_names(fp32)[0], contaminate)
    if contaminate:
        raise SystemExit("--contaminate applies to effnet's photo crops only")
    return Sentences(text_pool(count), tokenizer())


def eval_data(name: str, fp32: str) -> dict[str, np.ndarray]:
    if name == "effnet":
        return {models.input_names(fp32)[0]: image_batch(EVAL_PHOTOS, EVAL_IMAGES)}
    return token_batch(tokenizer(), sentences("eval", EVAL_SENTENCES), SEQ_LEN)


# ---------------------------------------------------------------------------------------- fidelity


class Evaluator:
    """FP32 outputs on the evaluation set once; then each quantized graph's fidelity to them."""

    def __init__(self, name: str, fp32: Any, data: dict[str, np.ndarray]) -> None:
        self.name, self.data = name, data
        self.ref = self._run(fp32)

    def _run(self, model: Any) -> np.ndarray:
        import onnx

        proto = model if isinstance(model, onnx.ModelProto) else onnx.load(model)
        sess = make_session(proto, exact_qdq=True)
        n = len(next(iter(self.data.values())))
        return np.concatenate([sess.run(None, {k: v[i : i + 8] for k, v in self.data.items()})[0]
                               for i in range(0, n, 8)]).astype(np.float64)

    def __call__(self, qmodel: Any) -> dict[str, float]:
        out = self._run(qmodel)
        if self.name == "effnet":
            return {"sqnr_db": metrics.sqnr_db(self.ref, out), "top1": metrics.top1_agreement(self.ref, out)}
        mask = self.data["attention_mask"]
        a, b = mean_pooled(self.ref, mask), mean_pooled(out, mask)
        return {"cosine": metrics.cosine(a, b), "sqnr_db": metrics.sqnr_db(a, b)}


def quantize_and_measure(fp32: str, data: Any, seed: int, evaluate: Evaluator, calib_method: str) -> dict:
    config = QuantConfig(seed=seed, passes=(), calib=CalibConfig(method=calib_method))
    started = time.perf_counter()
    result = trtq.quantize(fp32, data, None, config=config, progress=False)
    seconds = time.perf_counter() - started
    return {**evaluate(result.model), "calib_s": seconds, "samples": result.report["summary"]["calibration_samples"]}


class Results:
    """Rows in `selection.json`, saved after each new one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[dict] = json.loads(path.read_text()) if path.exists() else []

    def find(self, **key: Any) -> dict | None:
        key.setdefault("pool", None)  # rows of the clean pool have no "pool"
        return next((r for r in self.rows if all(r.get(k) == v for k, v in key.items())), None)

    def add(self, row: dict) -> None:
        """Append `row`, replacing the row of the same part, model, candidates (count and pool), calibration
        method and key."""
        same = ("part", "model", "candidates", "pool", "calib_method", "key")
        self.rows = [r for r in self.rows if any(r.get(k) != row.get(k) for k in same)] + [row]
        self.path.write_text(json.dumps(self.rows, indent=1))


def cached_features(model: Any, cands: Any, path: Path) -> FeatureSet:
    """The candidates' features, read from `path` when an earlier run saved them there."""
    if path.exists():
        with np.load(path) as z:
            return FeatureSet(str(z["tensor"]), z["values"], {s: z[s] for s in STATISTICS},
                              tuple(int(d) for d in z["shape"]), str(z["mask"]) or None, float(z["seconds"]))
    f = extract_features(model, cands, batch_size=8, progress=True)
    np.savez(path, tensor=f.tensor, values=f.values, shape=np.array(f.shape), mask=f.mask or "",
             seconds=f.seconds, **f.stats)
    return f


def fidelity(name: str, args: argparse.Namespace, results: Results) -> None:
    fp32 = model_path(name, args.out)
    proto = load_model(fp32)
    cands = candidates(name, args.candidates, fp32, args.contaminate)
    evaluate = Evaluator(name, proto, eval_data(name, fp32))
    common = {"part": "fidelity", "model": name, "candidates": args.candidates, "calib_method": args.calib_method}
    pool = ""
    if args.contaminate:
        pool = f"bad{args.contaminate:g}"
        common["pool"] = pool
    if not results.find(**common, key="all"):
        print(f"[{name}] all {args.candidates} candidates", flush=True)
        results.add({**common, "key": "all", "method": "all",
                     **quantize_and_measure(fp32, cands, 0, evaluate, args.calib_method)})
    features = None
    measured: dict[tuple[int, ...], dict] = {}
    for n, seed, method in itertools.product(args.sizes, range(args.seeds), METHODS):
        key = f"{method}/n{n}/seed{seed}"
        if results.find(**common, key=key):
            continue
        if features is None:
            suffix = f"_{pool}" if pool else ""
            features = cached_features(proto, cands, args.out / f"features_{name}_{args.candidates}{suffix}.npz")
            print(f"[{name}] features {features.tensor} {features.values.shape} in {features.seconds:.0f} s")
        sel = select_samples(proto, cands, n, method=method, seed=seed, features=features, progress=False)
        chosen = tuple(sel.indices.tolist())
        if chosen not in measured:
            measured[chosen] = quantize_and_measure(fp32, sel.source(), seed, evaluate, args.calib_method)
        row = {**common, "key": key, "method": method, "n": n, "seed": seed, **measured[chosen],
               "select_s": sel.timings["select_s"], "features_s": features.seconds,
               "filtered": len(sel.filtered), "selection": list(chosen)}
        results.add(row)
        metric = row.get("cosine", row["sqnr_db"])
        print(f"[{name}] {key}: {metric:.4f} (select {row['select_s']:.2f} s)", flush=True)


# ---------------------------------------------------------------------------------------- scale


def vmhwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def measure(name: str, count: int, n: int, out: Path) -> dict:
    """Run in a subprocess: features of `count` candidates, then every method; seconds and VmHWM after each."""
    fp32 = model_path(name, out)
    cands = candidates(name, count, fp32)
    proto = load_model(fp32)
    row: dict[str, Any] = {"vmhwm_before_mb": vmhwm_mb()}
    features = extract_features(proto, cands, batch_size=8, progress=False)
    row.update({"features_s": features.seconds, "feature": features.tensor,
                "channels": int(features.values.shape[1]), "features_mb": features.values.nbytes / 2**20,
                "vmhwm_features_mb": vmhwm_mb()})
    for method in METHODS:
        started = time.perf_counter()
        select_samples(proto, cands, n, method=method, seed=0, features=features, progress=False)
        row[f"{method}_s"] = time.perf_counter() - started
        row[f"{method}_vmhwm_mb"] = vmhwm_mb()
    return row


def scale(name: str, args: argparse.Namespace, results: Results) -> None:
    for count in args.scale:
        key = f"scale/{count}"
        if results.find(part="scale", model=name, key=key):
            continue
        print(f"[{name}] scale: {count} candidates (subprocess)", flush=True)
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--measure", name, str(count), str(max(args.sizes)),
                               "--out", str(args.out)], capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"measure {name} {count} failed:\n{proc.stderr[-3000:]}")
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        results.add({"part": "scale", "model": name, "key": key, "count": count, "n": max(args.sizes),
                     "wall_s": time.perf_counter() - started, **row})


# ---------------------------------------------------------------------------------------- table


def _metric(model: str) -> tuple[str, str]:
    return ("sqnr_db", "SQNR dB") if model == "effnet" else ("cosine", "cosine")


def _vs_all(model: str, value: float, full: float) -> float:
    """effnet: SQNR as % of all-candidates' SQNR; minilm: all-candidates' cosine gap as % of this one's."""
    return 100.0 * (value / full if model == "effnet" else (1 - full) / max(1 - value, 1e-12))


def fidelity_table(rows: list[dict]) -> list[str]:
    lines = ["| model | calib | N | method | metric | mean ± std (seeds) | min | max | distinct picks "
             "| Δ vs random | vs all % | other | select s |", "|---" * 13 + "|"]
    groups = dict.fromkeys((r["model"], r["calib_method"], r.get("pool")) for r in rows if r["part"] == "fidelity")
    for model, calib_method, pool in groups:
        key, label = _metric(model)
        mine = [r for r in rows if r["part"] == "fidelity" and r["model"] == model
                and r["calib_method"] == calib_method and r.get("pool") == pool]
        calib = f"{calib_method}, {pool} pool" if pool else calib_method
        full = next((r for r in mine if r["key"] == "all"), None)
        other = "top1" if model == "effnet" else "sqnr_db"
        if full:
            lines.append(f"| {model} | {calib} | all {full['samples']} | all candidates | {label} | {full[key]:.4f} "
                         f"| | | | | 100 | {other} {full[other]:.4f} | |")
        for n in sorted({r["n"] for r in mine if "n" in r}):
            base = [r[key] for r in mine if r.get("n") == n and r["method"] == "random"]
            for method in METHODS:
                got = [r for r in mine if r.get("n") == n and r["method"] == method]
                if got:
                    lines.append(_fidelity_row(model, calib, n, method, got, key, label, other, base, full))
    return lines


def _fidelity_row(model: str, calib: str, n: int, method: str, got: list[dict], key: str, label: str, other: str,
                  base: list[float], full: dict | None) -> str:
    vals = [r[key] for r in got]
    mean, std = statistics.fmean(vals), statistics.pstdev(vals)
    delta = mean - statistics.fmean(base) if base else float("nan")
    vs = _vs_all(model, mean, full[key]) if full else float("nan")
    distinct = len({tuple(r["selection"]) for r in got})
    return (f"| {model} | {calib} | {n} | {method} | {label} | {mean:.4f} ± {std:.4f} ({len(vals)}) | "
            f"{min(vals):.4f} | {max(vals):.4f} | {distinct} | {delta:+.4f} | {vs:.1f} | "
            f"{other} {statistics.fmean(r[other] for r in got):.4f} | "
            f"{statistics.fmean(r['select_s'] for r in got):.2f} |")


def scale_table(rows: list[dict]) -> list[str]:
    lines = ["| model | candidates | feature (channels) | features s | features MB | VmHWM before MB "
             "| VmHWM after features MB | random s | density-diversity s | noise-filtered-diverse s "
             "| VmHWM after all MB |", "|---" * 11 + "|"]
    for r in (r for r in rows if r["part"] == "scale"):
        lines.append(f"| {r['model']} | {r['count']} | {r['feature']} ({r['channels']}) | {r['features_s']:.0f} | "
                     f"{r['features_mb']:.1f} | {r['vmhwm_before_mb']:.0f} | {r['vmhwm_features_mb']:.0f} | "
                     f"{r['random_s']:.2f} | {r['density-diversity_s']:.2f} | {r['noise-filtered-diverse_s']:.2f} | "
                     f"{r['noise-filtered-diverse_vmhwm_mb']:.0f} |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="effnet,minilm")
    p.add_argument("--candidates", type=int, default=2000)
    p.add_argument("--sizes", default="32,128")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--scale", default="2000,10000", help="candidate counts for the time / memory part")
    p.add_argument("--parts", default="fidelity,scale")
    p.add_argument("--calib-method", default=CalibConfig.method)
    p.add_argument("--contaminate", type=float, default=0.0,
                   help="effnet: this fraction of the candidates are bad frames (strong noise/blur/jpeg/lowlight)")
    p.add_argument("--out", type=Path, default=HERE / "out" / "selection")
    p.add_argument("--measure", nargs=3, metavar=("MODEL", "COUNT", "N"), help=argparse.SUPPRESS)
    args = p.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",")]
    args.scale = [int(s) for s in args.scale.split(",") if s]
    args.out.mkdir(parents=True, exist_ok=True)
    if args.measure:
        name, count, n = args.measure
        print(json.dumps(measure(name, int(count), int(n), args.out)))
        return
    results = Results(args.out / "selection.json")
    started = time.perf_counter()
    for name in args.models.split(","):
        if "fidelity" in args.parts:
            fidelity(name, args, results)
        if "scale" in args.parts:
            scale(name, args, results)
    text = "\n".join([*fidelity_table(results.rows), "", *scale_table(results.rows), "",
                      f"INT8, calibration {args.calib_method}, no graph passes; ONNX Runtime "
                      f"{__import__('onnxruntime').__version__} CPU; host {platform.machine()}, "
                      f"{os.cpu_count()} cores; this run {time.perf_counter() - started:.0f} s."])
    (args.out / "selection.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
