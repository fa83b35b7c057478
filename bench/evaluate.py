"""Fidelity and ONNX Runtime CPU latency of quantized graphs against their FP32 graph.

Run as one process (in the trtq venv) over a jobs file; it appends one JSON line per graph to the
results file as soon as that graph is done, after a "started" line, so the caller can tell which
graph took the process down if ONNX Runtime crashes on one.

Fidelity on the evaluation .npz, in batches, with every Q/DQ run exactly as written (ORT's basic
graph optimisations only, its QDQ fusions off: `session.disable_quant_qdq`, what
`trtq._ort.make_session` does for Q/DQ graphs). ORT's fused INT8 CPU kernels are not what TensorRT
runs, and on x86 CPUs without VNNI their u8s8 dot products saturate (EfficientNet-Lite0 INT8 3.1 dB
that way against 18.3 dB exact), so they never give a fidelity figure here:
- effnet (class logits): SQNR of the logits over all samples, top-1 agreement with FP32;
- minilm (last_hidden_state): sentence embeddings by mean pooling under the attention mask (as
  sentence-transformers does), their mean cosine to FP32 and their SQNR;
- yolo (output0: boxes + class scores per anchor): SQNR of the whole output, SQNR of the class scores
  alone, and top-1 agreement of the strongest (anchor, class) score per image.
Latency (ORT's own CPU kernels, ORT_ENABLE_ALL: a CPU figure, not TensorRT's): median over N timed
runs (after warm-up) of one batch; the FP32 graph is timed with the same SessionOptions as the
quantized one, run for run in alternation with it, so that both see the same load on the machine.
When a graph fails to load or run with ORT_ENABLE_ALL, both are timed with ORT_DISABLE_ALL and the
row says so.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from trtq import metrics

OPT_LEVELS = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL, "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
              "exact": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC}


def session(path: str, opt: str, threads: int) -> ort.InferenceSession:
    """opt: all (ORT's own kernels, for latency), none (no optimisation), exact (Q/DQ as written)."""
    so = ort.SessionOptions()
    so.graph_optimization_level = OPT_LEVELS[opt]
    if opt == "exact":
        so.add_session_config_entry("session.disable_quant_qdq", "1")
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def batches(data: dict[str, np.ndarray], size: int):
    n = len(next(iter(data.values())))
    for i in range(0, n, size):
        yield {k: v[i : i + size] for k, v in data.items()}


def infer(sess: ort.InferenceSession, data: dict[str, np.ndarray], batch: int) -> np.ndarray:
    names = {i.name for i in sess.get_inputs()}
    return np.concatenate([sess.run(None, {k: v for k, v in b.items() if k in names})[0]
                           for b in batches(data, batch)])


def paired_latency_ms(sessions: list[ort.InferenceSession], feed: dict[str, np.ndarray], runs: int,
                      warmup: int = 3) -> list[float]:
    """Median ms per batch of each session, timed in alternation so all see the same machine load."""
    feeds = [{k: v for k, v in feed.items() if k in {i.name for i in s.get_inputs()}} for s in sessions]
    for _ in range(warmup):
        for s, f in zip(sessions, feeds):
            s.run(None, f)
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(runs):
        for s, f, t in zip(sessions, feeds, times):
            t0 = time.perf_counter()
            s.run(None, f)
            t.append((time.perf_counter() - t0) * 1000.0)
    return [statistics.median(t) for t in times]


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[..., None].astype(np.float64)
    return (hidden * m).sum(1) / np.clip(m.sum(1), 1e-9, None)


def fidelity(model: str, ref: np.ndarray, out: np.ndarray, data: dict[str, np.ndarray]) -> dict:
    if model == "effnet":
        return {"sqnr_db": metrics.sqnr_db(ref, out), "top1_agree": metrics.top1_agreement(ref, out)}
    if model == "yolo":  # (batch, 4 + classes, anchors): strongest (class, anchor) score per image
        rs, qs = ref[:, 4:].reshape(len(ref), -1), out[:, 4:].reshape(len(out), -1)
        return {"sqnr_db": metrics.sqnr_db(ref, out), "score_sqnr_db": metrics.sqnr_db(rs, qs),
                "top1_agree": metrics.top1_agreement(rs, qs)}
    a, b = mean_pool(ref, data["attention_mask"]), mean_pool(out, data["attention_mask"])
    cos = metrics.row_cosines(a, b)
    return {"sqnr_db": metrics.sqnr_db(a, b), "cosine": float(np.mean(cos)), "cosine_min": float(np.min(cos))}


def qdq_counts(path: str) -> dict:
    ops = Counter(n.op_type for n in onnx.load(path, load_external_data=False).graph.node)
    return {"q_nodes": ops["QuantizeLinear"], "dq_nodes": ops["DequantizeLinear"]}


class Model:
    """The FP32 reference of one model: evaluation data, outputs, and sessions per optimisation level."""

    def __init__(self, name: str, fp32: str, eval_npz: str, args: argparse.Namespace):
        self.name, self.fp32, self.args = name, fp32, args
        with np.load(eval_npz) as z:
            self.data = {k: z[k] for k in z.files}
        self.feed = {k: v[: args.batch] for k, v in self.data.items()}
        self._sessions = {"all": session(fp32, "all", args.threads)}
        self.ref = infer(session(fp32, "exact", args.threads), self.data, args.batch)

    def fp32_session(self, opt: str) -> ort.InferenceSession:
        if opt not in self._sessions:
            self._sessions[opt] = session(self.fp32, opt, self.args.threads)
        return self._sessions[opt]


def _error(opt: str, exc: Exception) -> str:
    name = {"all": "ORT_ENABLE_ALL", "none": "ORT_DISABLE_ALL", "exact": "exact Q/DQ"}[opt]
    return f"{name}: {type(exc).__name__}: {exc}"[:600]


def evaluate(model: Model, path: str, args: argparse.Namespace) -> dict:
    """Fidelity with exact Q/DQ (ORT_DISABLE_ALL if that fails to load), then latency with ORT's kernels."""
    row, errors = {**qdq_counts(path)}, []
    for opt in ("exact", "none"):
        try:
            out = infer(session(path, opt, args.threads), model.data, args.batch)
        except Exception as exc:
            errors.append(_error(opt, exc))
            continue
        row.update(fidelity_ort=opt, **fidelity(model.name, model.ref, out, model.data))
        break
    for opt in ("all", "none"):
        try:
            sess = session(path, opt, args.threads)
            row["fp32_latency_ms"], row["latency_ms"] = paired_latency_ms(
                [model.fp32_session(opt), sess], model.feed, args.runs)
        except Exception as exc:
            errors.append(_error(opt, exc))
            continue
        row["ort_opt"] = opt
        break
    if errors:
        row["load_error"] = " | ".join(errors)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("jobs", help="JSON: {models: {name: {fp32, eval}}, rows: [{key, model, path}]}")
    p.add_argument("results", help="JSON-lines file to append to")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    jobs = json.loads(Path(args.jobs).read_text())
    models: dict[str, Model] = {}
    with open(args.results, "a") as log:
        def emit(rec: dict) -> None:
            log.write(json.dumps(rec) + "\n")
            log.flush()

        for row in jobs["rows"]:
            name = row["model"]
            emit({"key": row["key"], "status": "started"})
            if name not in models:
                models[name] = Model(name, jobs["models"][name]["fp32"], jobs["models"][name]["eval"], args)
            emit({"key": row["key"], "status": "done", **evaluate(models[name], row["path"], args)})
    sys.exit(0)


if __name__ == "__main__":
    main()
