"""Run trtq and its peers on the same models and data; print one table (also JSON + markdown).

    python bench/run.py [--models effnet,minilm] [--tools trtq,ort,modelopt] [--out bench/out]

Run it with the trtq environment's Python. Each quantization runs in its own subprocess, in its
tool's own virtual environment (bench/setup_venvs.sh makes the peers'), and measures its own
calibration time and peak RSS; one evaluation subprocess then measures every graph. See README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import data  # noqa: E402
import models  # noqa: E402

VENVS = HERE / ".venvs"
# tool -> (runner script, [(precision, method, models or None for all)])
TOOLS = {
    "trtq": ("run_trtq.py", [("int8", "minmax", None), ("int8", "percentile", None), ("int8", "entropy", None),
                             ("int8", "mse", None), ("fp8", None, None), ("int4", None, ("minilm",))]),
    "ort": ("run_ort.py", [("int8", "MinMax", None), ("int8", "Entropy", None), ("int8", "Percentile", None)]),
    "modelopt": ("run_modelopt.py", [("int8", "max", None), ("int8", "entropy", None), ("fp8", "max", None),
                                     ("int4", "awq_clip", ("minilm",))]),
}
# what must import in the tool's environment before its rows can run
READY = {"trtq": "import trtq; trtq.quantize", "ort": "import onnxruntime.quantization",
         "modelopt": "import modelopt.onnx.quantization"}


def tool_python(tool: str, trtq_python: str) -> str:
    return trtq_python if tool == "trtq" else str(VENVS / tool / "bin" / "python")


def tool_problem(tool: str, python: str) -> str | None:
    """None when the tool can run, else why not."""
    if not Path(python).exists():
        return f"no environment at {Path(python).parent.parent}: run bench/setup_venvs.sh"
    proc = subprocess.run([python, "-c", READY[tool]], capture_output=True, text=True, cwd="/")
    if proc.returncode:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return f"`{READY[tool]}` fails ({last})"
    return None


def quantize_row(row: dict, python: str, script: str, paths: dict, out: Path, timeout: int) -> dict:
    """Run one quantization in its own process; return the runner's measurements (or the crash)."""
    stem = f"{row['model']}_{row['tool']}_{row['precision']}_{row['method'] or 'default'}"
    output, result, log = out / "quantized" / f"{stem}.onnx", out / "logs" / f"{stem}.json", out / "logs" / f"{stem}.log"
    for p in (output, result):
        p.unlink(missing_ok=True)
    cmd = [python, str(HERE / "peers" / script), "--model", paths["fp32"], "--calib", paths["calib"],
           "--output", str(output), "--precision", row["precision"], "--result", str(result)]
    if row["method"]:
        cmd += ["--method", row["method"]]
    t0 = time.perf_counter()
    with open(log, "w") as f:
        try:
            proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout, cwd=HERE / "peers")
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = None
    if result.exists():
        rec = json.loads(result.read_text())
    else:  # killed (signal, out of memory) or timed out before writing its result
        why = f"timed out after {timeout} s" if rc is None else f"process died (exit status {rc})"
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
        rec = {"ok": False, "error": f"{why}: {tail[0]}".strip(": ")}
    rec["wall_seconds"] = round(time.perf_counter() - t0, 1)
    rec["log"] = str(log)
    return rec


def evaluate_rows(rows: list[dict], paths: dict, out: Path, args: argparse.Namespace) -> None:
    """Measure every graph in one evaluation process; if ONNX Runtime kills it, note which graph and go on."""
    todo = [r for r in rows if r.get("graph")]
    jobs = {"models": {m: {"fp32": p["fp32"], "eval": p["eval"]} for m, p in paths.items()}, "rows": []}
    by_key = {r["key"]: r for r in todo}
    results_file = out / "logs" / "evaluate.jsonl"
    results_file.unlink(missing_ok=True)
    while todo:
        jobs["rows"] = [{"key": r["key"], "model": r["model"], "path": r["graph"]} for r in todo]
        (out / "logs" / "evaluate_jobs.json").write_text(json.dumps(jobs, indent=2))
        cmd = [args.trtq_python, str(HERE / "evaluate.py"), str(out / "logs" / "evaluate_jobs.json"),
               str(results_file), "--batch", str(args.batch), "--runs", str(args.runs), "--threads", str(args.threads)]
        with open(out / "logs" / "evaluate.log", "a") as f:
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
        started = None
        for line in results_file.read_text().splitlines():
            rec = json.loads(line)
            if rec.pop("status") == "started":
                started = rec["key"]
            else:
                by_key[rec.pop("key")].update(rec)
                started = None
        if rc == 0:
            break
        if started is None:
            raise RuntimeError(f"evaluate.py failed (exit status {rc}); see {out / 'logs' / 'evaluate.log'}")
        by_key[started]["load_error"] = f"the evaluation process died on this graph (exit status {rc})"
        done = {k for k, r in by_key.items() if "sqnr_db" in r or "load_error" in r}
        todo = [r for r in todo if r["key"] not in done]


# ---------------------------------------------------------------------------------------------- table

COLUMNS = [("model", "model"), ("tool", "tool"), ("precision", "precision"), ("method", "method"),
           ("SQNR dB", "sqnr_db"), ("top-1", "top1_agree"), ("cosine", "cosine"),
           ("calib s", "calib_seconds"), ("peak RSS MB", "rss_peak_mb"), ("RSS after imports MB", "rss_baseline_mb"),
           ("FP32 ms", "fp32_latency_ms"), ("quant ms", "latency_ms"), ("Q/DQ", "qdq"), ("ORT opt", "ort_opt"),
           ("note", "note")]


def _cell(row: dict, key: str) -> str:
    v = row.get(key)
    if key == "qdq":
        return f"{row['q_nodes']}/{row['dq_nodes']}" if "q_nodes" in row else ""
    if key == "method" and not v and row.get("method_used"):
        return f"default ({row['method_used']})"
    if key == "ort_opt":
        return {"all": "all", "none": "DISABLE_ALL"}.get(v, "")
    if v is None:
        return ""
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return str(v)
        if key in ("top1_agree", "cosine"):
            return f"{v:.4f}"
        return f"{v:.1f}" if key != "calib_seconds" else f"{v:.2f}"
    return str(v)


def note(row: dict) -> str:
    parts = []
    if row.get("error"):
        parts.append(("skipped: " if row.get("skipped") else "CRASH: ") + row["error"])
    if row.get("load_error"):
        prefix = "ORT CPU loads it only with ORT_DISABLE_ALL; " if row.get("ort_opt") else "does NOT load in ORT CPU: "
        parts.append(prefix + row["load_error"])
    return " ".join(parts).replace("|", "/").replace("\n", " ")


def markdown(rows: list[dict], meta: dict, width: int | None = 160) -> str:
    head = "| " + " | ".join(c for c, _ in COLUMNS) + " |"
    lines = [head, "|" + "---|" * len(COLUMNS)]
    for r in rows:
        r = {**r, "note": note(r)}
        cells = [_cell(r, k) for _, k in COLUMNS]
        if width and len(cells[-1]) > width:
            cells[-1] = cells[-1][: width - 3] + "..."
        lines.append("| " + " | ".join(cells) + " |")
    foot = [
        "",
        f"Latency: ONNX Runtime {meta['onnxruntime']} CPU, batch {meta['batch']}, median of {meta['runs']} runs, "
        f"{meta['threads']} intra-op threads; SQNR: logits (effnet) / mean-pooled embeddings (minilm).",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()) + ".",
        f"Host: {meta['host']}. Total run time: {meta['total_seconds']:.0f} s.",
    ]
    return "\n".join(lines + foot) + "\n"


# ---------------------------------------------------------------------------------------------- main


def plan(model_names: list[str], tool_names: list[str]) -> list[dict]:
    rows = []
    for m in model_names:
        rows.append({"key": f"{m}/fp32", "model": m, "tool": "fp32", "precision": "fp32", "method": ""})
        for tool in tool_names:
            for precision, method, only in TOOLS[tool][1]:
                if only is None or m in only:
                    rows.append({"key": f"{m}/{tool}/{precision}/{method or 'default'}", "model": m, "tool": tool,
                                 "precision": precision, "method": method})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description="trtq vs ONNX Runtime quantization vs ModelOpt, one table.")
    p.add_argument("--models", default="effnet,minilm")
    p.add_argument("--tools", default="trtq,ort,modelopt")
    p.add_argument("--out", default=str(HERE / "out"))
    p.add_argument("--batch", type=int, default=8, help="batch size for evaluation and latency")
    p.add_argument("--runs", type=int, default=20, help="timed latency runs (median reported)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="ONNX Runtime intra-op threads")
    p.add_argument("--timeout", type=int, default=3600, help="seconds allowed for one quantization")
    p.add_argument("--trtq-python", default=sys.executable, help="Python of the trtq environment")
    args = p.parse_args()
    model_names = [m for m in args.models.split(",") if m]
    tool_names = [t for t in args.tools.split(",") if t]
    for name, known in ((model_names, models.MODELS), (tool_names, TOOLS)):
        bad = [n for n in name if n not in known]
        if bad:
            p.error(f"unknown {', '.join(bad)}; choose from {', '.join(known)}")
    os.environ["HF_HUB_OFFLINE"] = "1"
    out = Path(args.out).resolve()
    for sub in ("quantized", "logs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    paths = {}
    for m in model_names:
        print(f"[bench] data and FP32 model: {m}", flush=True)
        fp32 = models.export(m, out / "models")
        paths[m] = {"fp32": fp32, **data.prepare(m, out / "data", models.input_names(fp32))}

    rows = plan(model_names, tool_names)
    problems = {t: tool_problem(t, tool_python(t, args.trtq_python)) for t in tool_names}
    versions = {}
    for row in rows:
        if row["tool"] == "fp32":
            row["graph"] = paths[row["model"]]["fp32"]
            continue
        if problems[row["tool"]]:
            row.update(ok=False, skipped=True, error=problems[row["tool"]])
            print(f"[bench] {row['key']}: {row['error']}", flush=True)
            continue
        print(f"[bench] quantize {row['key']} ...", end=" ", flush=True)
        python = tool_python(row["tool"], args.trtq_python)
        rec = quantize_row(row, python, TOOLS[row["tool"]][0], paths[row["model"]], out, args.timeout)
        row.update(rec)
        versions[row["tool"]] = rec.get("version", versions.get(row["tool"], "?"))
        if row["ok"]:
            row["graph"] = rec["output"]
            print(f"{rec['calib_seconds']:.1f} s, peak RSS {rec['rss_peak_mb']:.0f} MB", flush=True)
        else:
            print(f"FAILED: {rec['error'][:200]}", flush=True)

    print("[bench] evaluating every graph in ONNX Runtime ...", flush=True)
    evaluate_rows(rows, paths, out, args)

    import onnxruntime

    meta = {"batch": args.batch, "runs": args.runs, "threads": args.threads, "onnxruntime": onnxruntime.__version__,
            "versions": versions, "host": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "total_seconds": time.perf_counter() - t_start, "command": " ".join(sys.argv)}
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2, default=str))
    (out / "results.md").write_text(markdown(rows, meta, width=None))
    print()
    print(markdown(rows, meta))
    print(f"[bench] wrote {out / 'results.json'} and {out / 'results.md'}")


if __name__ == "__main__":
    main()
