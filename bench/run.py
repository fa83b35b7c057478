"""Run trtq and its peers on the same models and data; print one table (also JSON + markdown).

trtq's rows also vary its graph passes and sensitivity fallback (VARIANTS); a second table gives
each pass variant's fidelity against no pass, its pass seconds, and the fallback's latency.

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
# tool -> (runner script, [(precision, method, models or None for all, variant or None)])
TOOLS = {
    "trtq": ("run_trtq.py", [
        # graph passes, all with minmax (trtq's default method): what each pass adds to "none"
        ("int8", "minmax", None, "none"),
        ("int8", "minmax", ("effnet",), "cle"),
        ("int8", "minmax", ("minilm",), "rotate"),
        ("int8", "minmax", ("minilm",), "smoothquant"),
        ("int8", "minmax", ("minilm",), "repq"),
        ("int8", "minmax", ("effnet",), "cle+biascorr"),
        ("int8", "minmax", None, "default"),  # effnet: biascorr; minilm: rotate_online; + automatic fallback
        ("int8", "minmax", None, "default+no-fallback"),  # all INT8
        ("int8", "minmax", ("effnet", "yolo"), "default+no-fallback+conv-rtn"),  # all INT8, max-scaled weights
        ("int8", "minmax", None, "default+fallback5-fp16"),
        # calibration methods, with the default passes
        ("int8", "percentile", None, "default"), ("int8", "entropy", None, "default"),
        ("int8", "mse", None, "default"),
        ("fp8", None, None, "none"), ("fp8", None, None, "default"),  # effnet: biascorr; minilm: none
        ("int4", None, ("minilm",), "none"), ("int4", None, ("minilm",), "rotate"),
    ]),
    "ort": ("run_ort.py", [("int8", "MinMax", None, None), ("int8", "Entropy", None, None),
                           ("int8", "Percentile", None, None)]),
    "modelopt": ("run_modelopt.py", [("int8", "max", None, None), ("int8", "entropy", None, None),
                                     ("fp8", "max", None, None), ("int4", "awq_clip", ("minilm",), None)]),
}
# a tool's variant -> the extra arguments its runner gets. trtq: "default" is passes=None (the
# model family's defaults: CNN int8/fp8 biascorr, transformer int8 rotate_online, others none),
# "none" is passes=(), a name list is those passes; "+fallback5-fp16" adds the sensitivity
# fallback keeping the 5 most sensitive layers in FP16.
VARIANTS = {
    "trtq": {
        "default": [],
        "none": ["--passes", "none"],
        "cle": ["--passes", "cle"],
        "cle+biascorr": ["--passes", "cle,biascorr"],
        "rotate": ["--passes", "rotate"],
        "smoothquant": ["--passes", "smoothquant"],
        "repq": ["--passes", "repq"],
        "default+fallback5-fp16": ["--fallback-budget", "5", "--fallback-dtype", "fp16"],
        "default+no-fallback": ["--no-fallback"],
        "default+no-fallback+conv-rtn": ["--no-fallback", "--conv-method", "rtn"],
    },
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
    if row.get("variant"):
        stem += "_" + row["variant"].replace("+", "_")
    output = out / "quantized" / f"{stem}.onnx"
    result, log = out / "logs" / f"{stem}.json", out / "logs" / f"{stem}.log"
    for p in (output, result):
        p.unlink(missing_ok=True)
    cmd = [python, str(HERE / "peers" / script), "--model", paths["fp32"], "--calib", paths["calib"],
           "--output", str(output), "--precision", row["precision"], "--result", str(result)]
    if row["method"]:
        cmd += ["--method", row["method"]]
    if row.get("variant"):
        cmd += VARIANTS[row["tool"]][row["variant"]]
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
           ("passes / variant", "passes"), ("SQNR dB", "sqnr_db"), ("score SQNR dB", "score_sqnr_db"),
           ("top-1", "top1_agree"), ("cosine", "cosine"),
           ("calib s", "calib_seconds"), ("pass s", "pass_seconds_total"), ("peak RSS MB", "rss_peak_mb"),
           ("RSS after imports MB", "rss_baseline_mb"), ("FP32 ms", "fp32_latency_ms"), ("quant ms", "latency_ms"),
           ("MAC % quantized", "mac_pct"), ("size MB", "size_mb"), ("Q/DQ", "qdq"), ("latency ORT opt", "ort_opt"),
           ("note", "note")]


def passes_label(row: dict) -> str:
    """trtq: the passes the sidecar says ran ("none" for none), "(default)" for passes=None, and the fallback."""
    variant = row.get("variant")
    if not variant:
        return ""
    if "passes_run" not in row:  # crashed before reporting: say what was asked
        return variant
    label = "+".join(row["passes_run"]) or "none"
    if variant.startswith("default"):
        label += " (default)"
    fb = row.get("fallback")
    if fb:
        label += (f" + auto fallback ≤{100 * (fb.get('max_float_macs') or 0):g}% MACs" if fb.get("auto")
                  else f" + fallback {fb['budget']} {fb['dtype']}")
    elif "no-fallback" in variant:
        label += " + no fallback"
    if row.get("conv_method") and row.get("precision") == "int8" and row["model"] != "minilm":
        label += f", conv {row['conv_method']}"
    return label


def _cell(row: dict, key: str) -> str:
    v = row.get(key)
    if key == "qdq":
        return f"{row['q_nodes']}/{row['dq_nodes']}" if "q_nodes" in row else ""
    if key == "method" and not v and row.get("method_used"):
        return f"default ({row['method_used']})"
    if key == "passes":
        return passes_label(row)
    if key == "mac_pct":
        frac = (row.get("fallback") or {}).get("quantized_mac_fraction")
        return "" if frac is None else f"{100 * frac:.1f}"
    if key == "ort_opt":
        return {"all": "all", "none": "DISABLE_ALL"}.get(v, "")
    if v is None:
        return ""
    if key == "pass_seconds_total":
        return f"{v:.2f}"
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
        prefix = "ORT CPU: " if "sqnr_db" in row else "does NOT load in ORT CPU: "
        parts.append(prefix + row["load_error"])
    return " ".join(parts).replace("|", "/").replace("\n", " ")


def _ratio(a: dict, b: dict) -> tuple[float | None, float | None]:
    """Latency of row a over row b: raw, and each first divided by its own FP32 time (timed in alternation
    with it, so machine load that changed between the two rows cancels); None when not comparable."""
    if not all(isinstance(r.get(k), float) for r in (a, b) for k in ("latency_ms", "fp32_latency_ms")):
        return None, None
    if a.get("ort_opt") != b.get("ort_opt"):
        return None, None
    raw = a["latency_ms"] / b["latency_ms"]
    return raw, raw * b["fp32_latency_ms"] / a["fp32_latency_ms"]


def _delta(a: dict, b: dict, key: str) -> float | None:
    va, vb = a.get(key), b.get(key)
    if not isinstance(va, float) or not isinstance(vb, float) or not (math.isfinite(va) and math.isfinite(vb)):
        return None
    return va - vb


def contributions(rows: list[dict]) -> list[dict]:
    """Per trtq (model, precision): every pass variant against the "none" row with the same calibration
    method (metric minus none's), its pass seconds, and its latency over none's; a fallback row's
    latency also over the all-quantized default row's."""
    out = []
    trtq = [r for r in rows if r.get("tool") == "trtq" and r.get("variant")]
    for model, precision in dict.fromkeys((r["model"], r["precision"]) for r in trtq):
        group = [r for r in trtq if (r["model"], r["precision"]) == (model, precision)]
        base = next((r for r in group if r["variant"] == "none"), None)
        if base is None:
            continue
        default = next((r for r in group if r["variant"] == "default" and r["method"] == base["method"]), None)
        for r in [base] + [r for r in group if r is not base and r["method"] == base["method"]]:
            rec = {"model": model, "precision": precision, "variant": r["variant"], "passes": passes_label(r),
                   "ok": bool(r.get("ok")) and "sqnr_db" in r, "baseline": r is base,
                   "pass_seconds": r.get("pass_seconds"), "pass_seconds_total": r.get("pass_seconds_total"),
                   "fallback_seconds": (r.get("fallback") or {}).get("seconds"),
                   "quantized_mac_fraction": (r.get("fallback") or {}).get("quantized_mac_fraction")}
            for key in ("sqnr_db", "top1_agree", "cosine"):
                rec[key] = r.get(key)
                rec[f"delta_{key}"] = None if r is base else _delta(r, base, key)
            rec["latency_vs_none"], rec["latency_vs_none_fp32_paired"] = (None, None) if r is base else _ratio(r, base)
            if r.get("fallback") and default is not None:
                rec["latency_vs_default"], rec["latency_vs_default_fp32_paired"] = _ratio(r, default)
            out.append(rec)
    return out


def contributions_markdown(recs: list[dict]) -> list[str]:
    def num(v, fmt):
        return "" if v is None else format(v, fmt)

    def val(rec, key, fmt, dfmt):
        v, d = rec.get(key), rec.get(f"delta_{key}")
        if not isinstance(v, float):
            return ""
        return format(v, fmt) + ("" if d is None else f" ({format(d, dfmt)})")

    def ratio(rec, key):
        raw, paired = rec.get(key), rec.get(f"{key}_fp32_paired")
        return "" if raw is None else f"{paired:.2f} (raw {raw:.2f})"

    def seconds(rec):
        parts = [f"{k} {v:.2f}" for k, v in (rec.get("pass_seconds") or {}).items()]
        if rec.get("fallback_seconds") is not None:
            parts.append(f"sensitivity+fallback {rec['fallback_seconds']:.1f}")
        return " + ".join(parts)

    head = ["model", "precision", "passes / variant", "pass s", "SQNR dB (Δ vs none)", "top-1 (Δ vs none)",
            "cosine (Δ vs none)", "latency ÷ none", "latency ÷ default", "MAC % quantized"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for rec in recs:
        cells = [rec["model"], rec["precision"], rec["passes"] + (" — baseline" if rec["baseline"] else ""),
                 seconds(rec), val(rec, "sqnr_db", ".1f", "+.1f"),
                 val(rec, "top1_agree", ".4f", "+.4f") if rec["model"] != "minilm" else "",
                 val(rec, "cosine", ".4f", "+.4f"), ratio(rec, "latency_vs_none"), ratio(rec, "latency_vs_default"),
                 num(None if rec["quantized_mac_fraction"] is None else 100 * rec["quantized_mac_fraction"], ".1f")]
        if not rec["ok"]:
            cells[4] = "failed (see main table)"
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(rows: list[dict], meta: dict, width: int | None = 160) -> str:
    head = "| " + " | ".join(c for c, _ in COLUMNS) + " |"
    lines = [head, "|" + "---|" * len(COLUMNS)]
    for r in rows:
        r = {**r, "note": note(r)}
        cells = [_cell(r, k) for _, k in COLUMNS]
        if width and len(cells[-1]) > width:
            cells[-1] = cells[-1][: width - 3] + "..."
        lines.append("| " + " | ".join(cells) + " |")
    load = meta.get("load_average")
    foot = [
        "",
        f"Latency: ONNX Runtime {meta['onnxruntime']} CPU, batch {meta['batch']}, median of {meta['runs']} runs, "
        f"{meta['threads']} intra-op threads; SQNR: logits (effnet) / mean-pooled embeddings (minilm).",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()) + ".",
        f"Host: {meta['host']}. Total run time: {meta['total_seconds']:.0f} s."
        + (" Load average (1 min) at start / before evaluation / end: "
           + " / ".join(f"{x:.1f}" for x in load) + "." if load else ""),
    ]
    recs = contributions(rows)
    if recs:
        foot += [
            "",
            "## Pass contributions (trtq)",
            "",
            *contributions_markdown(recs),
            "",
            "Each (model, precision) against its `none` row (passes=(), same calibration method): the metric, "
            "and in brackets the row's value minus none's. pass s: seconds in each graph pass (and in the "
            "sensitivity analysis + fallback). latency ÷ none / ÷ default: the row's ONNX Runtime latency over "
            "the none row's / over the all-quantized default-passes row's (fallback rows), each latency first "
            "divided by its own FP32 latency (timed in alternation with it), which cancels machine load that "
            "changed between the two rows; in brackets the raw ratio of the two latencies. "
            "MAC % quantized: share of Conv/Gemm/MatMul "
            "MACs still quantized after the fallback.",
        ]
    return "\n".join(lines + foot) + "\n"


# ---------------------------------------------------------------------------------------------- main


def plan(model_names: list[str], tool_names: list[str], keys: list[str] | None = None) -> list[dict]:
    """Every row of the models x tools; with `keys`, the FP32 rows and the rows whose key ends with one
    of those strings (e.g. "trtq/int8/minmax/default", "modelopt/int8/entropy")."""
    rows = []
    for m in model_names:
        rows.append({"key": f"{m}/fp32", "model": m, "tool": "fp32", "precision": "fp32", "method": ""})
        for tool in tool_names:
            for precision, method, only, variant in TOOLS[tool][1]:
                if only is None or m in only:
                    key = f"{m}/{tool}/{precision}/{method or 'default'}" + (f"/{variant}" if variant else "")
                    if keys and not key.endswith(tuple(keys)):
                        continue
                    rows.append({"key": key, "model": m, "tool": tool, "precision": precision, "method": method,
                                 "variant": variant})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description="trtq vs ONNX Runtime quantization vs ModelOpt, one table.")
    p.add_argument("--models", default="effnet,yolo,minilm")
    p.add_argument("--rows", help="comma-separated key endings: run only the rows whose key (model/tool/"
                   "precision/method[/variant]) ends with one of them, plus the FP32 rows")
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
    load = [os.getloadavg()[0]]

    paths = {}
    for m in model_names:
        print(f"[bench] data and FP32 model: {m}", flush=True)
        fp32 = models.export(m, out / "models")
        paths[m] = {"fp32": fp32, **data.prepare(m, out / "data", models.input_names(fp32))}

    rows = plan(model_names, tool_names, [r for r in (args.rows or '').split(',') if r] or None)
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
            extra = f" (passes {rec['pass_seconds_total']:.1f} s)" if rec.get("pass_seconds") else ""
            print(f"{rec['calib_seconds']:.1f} s{extra}, peak RSS {rec['rss_peak_mb']:.0f} MB", flush=True)
        else:
            print(f"FAILED: {rec['error'][:200]}", flush=True)

    print("[bench] evaluating every graph in ONNX Runtime ...", flush=True)
    load.append(os.getloadavg()[0])
    evaluate_rows(rows, paths, out, args)
    load.append(os.getloadavg()[0])
    for row in rows:
        if row.get("graph") and Path(row["graph"]).exists():
            row["size_mb"] = Path(row["graph"]).stat().st_size / 1e6

    import onnxruntime

    meta = {"batch": args.batch, "runs": args.runs, "threads": args.threads, "onnxruntime": onnxruntime.__version__,
            "versions": versions, "host": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "total_seconds": time.perf_counter() - t_start, "command": " ".join(sys.argv), "load_average": load}
    results = {"meta": meta, "rows": rows, "pass_contributions": contributions(rows)}
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (out / "results.md").write_text(markdown(rows, meta, width=None))
    print()
    print(markdown(rows, meta))
    print(f"[bench] wrote {out / 'results.json'} and {out / 'results.md'}")


if __name__ == "__main__":
    main()
