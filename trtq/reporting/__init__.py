"""`trtq.report` / `trtq report`: one self-contained HTML page about a quantized model.

What it shows, each section from the sidecar (`MODEL.trtq.json`) and, with evaluation data, from
measurements: the per-layer SQNR (accumulated vs FP32 and local to each Q/DQ, worst first, from
`trtq.compare`), histograms of the worst layers' FP32 values with the quantizer's range marked and the
fraction it clips, the graph passes and what each changed, the layers kept in floating point and the
MACs and weight bytes per precision (`trtq.inspect`), the fidelity per degradation (`compare_degraded`)
when asked for, the `check` findings for every target, and the versions. Figures are PNGs inlined as
base64 (matplotlib, the `report` extra); without matplotlib the page says so and keeps every table. The
page references nothing outside itself, so it opens offline and can be mailed.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

import onnx

from trtq._io import atomic_path, load_model, sidecar_path
from trtq._version import __version__
from trtq.errors import TrtqError
from trtq.reporting import page, plots

__all__ = ["SECTIONS", "VALUE_PASSES", "report"]

# passes after which a tensor may hold other values than the FP32 model's tensor of the same name
VALUE_PASSES = ("rotate", "rotate_online", "smoothquant", "repq", "cle")

SECTIONS = ("summary", "layers", "ranges", "passes", "precision", "robustness", "check", "versions")


def report(
    model: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    data: Any = None,
    reference: str | os.PathLike[str] | None = None,
    top: int = 40,
    histograms: int = 9,
    batch_size: int = 8,
    max_samples: int | None = None,
    degrade: tuple[str, ...] = (),
    degrade_levels: str = "mild",
    seed: int = 0,
    data_label: str | None = None,
    device: str | None = None,
    progress: bool = True,
) -> Path:
    """Write the HTML report of a model `trtq quantize` wrote.

    Args:
        model: the quantized .onnx; its sidecar `<stem>.trtq.json` must sit beside it.
        output: the .html to write (atomically).
        data: evaluation data (as for `trtq.compare`); None: the per-layer numbers are the sidecar's own
            (the noisiest tensors quantize measured on calibration samples) and there are no histograms.
        reference: the FP32 model; default: the sidecar's input path (needed with `data`).
        top: SQNR bars shown (the worst `top` quantized tensors).
        histograms: histograms shown (the worst activations).
        batch_size, max_samples, device: as for `trtq.compare`.
        degrade: with an image source as `data`, also compare under each of these degradations.
        degrade_levels, seed: as for `trtq.evaluate.compare_degraded`.
        data_label: how the page names the data (default: the path, or "the data given").
        progress: progress bars on stderr.

    Returns:
        The path of the page.

    Raises:
        TrtqError: no sidecar beside the model, no reference to compare with, or what compare raises.
    """
    if top < 1 or histograms < 0:
        raise TrtqError("--top must be >= 1 and --histograms >= 0.", "pass a positive --top and --histograms.")
    side = _sidecar(model)
    cand = load_model(model)
    measured = _measure(model, cand, side, data, reference, top=top, histograms=histograms,
                        batch_size=batch_size, max_samples=max_samples, degrade=degrade,
                        degrade_levels=degrade_levels, seed=seed, device=device, progress=progress)
    label = data_label or (str(data) if isinstance(data, (str, os.PathLike)) else "the data given")
    from trtq.inspection import inspect

    inspected = inspect(cand, _sample(data))
    sections = [
        ("summary", "Summary", _summary(side, measured, label)),
        ("layers", "Per-layer SQNR", _layers(side, measured, top)),
        ("ranges", "Activation ranges", _ranges(side, measured, histograms)),
        ("passes", "Graph passes", _passes(side)),
        ("precision", "Precision: fallback, MACs and weights", _precision(side, inspected)),
        ("robustness", "Robustness per degradation", _robustness(measured)),
        ("check", "TensorRT check per target", _checks(cand, side)),
        ("versions", "Versions", _versions(side)),
    ]
    s = side["summary"]
    title = f"trtq report: {Path(model).name}"
    subtitle = (f"{s['precision']} ({s['quantized_nodes']} ops quantized, {s['activation_qdq']} activation Q/DQ, "
                f"{s['weights_quantized']} weights, {s['skipped_nodes']} nodes skipped); sidecar "
                f"{sidecar_path(model).name}")
    text = page.document(title, subtitle, sections)
    with atomic_path(output) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(output)


# --- inputs ---------------------------------------------------------------------------------------


def _sidecar(model: str | os.PathLike[str]) -> dict[str, Any]:
    path = sidecar_path(model)
    fix = "pass the .onnx that trtq quantize wrote, with its .trtq.json beside it."
    if not Path(model).is_file():
        raise TrtqError(f"{model}: no such file.", fix)
    try:
        side = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise TrtqError(f"{path}: no such file; the report reads the sidecar trtq quantize writes.", fix) from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise TrtqError(f"{path} is not JSON.", fix) from exc
    if not isinstance(side, dict) or "summary" not in side or "tensors" not in side:
        raise TrtqError(f"{path} is not a trtq quantize sidecar.", fix)
    return side


def _reference(side: dict[str, Any], reference: Any) -> onnx.ModelProto:
    if reference is not None:
        return load_model(reference)
    path = (side.get("input") or {}).get("path")
    if not path or not Path(path).is_file():
        raise TrtqError(f"the FP32 model the sidecar names ({path}) is not there to compare with.",
                        "pass --reference FP32.onnx (the model trtq quantize read).")
    return load_model(path)


def _sample(data: Any) -> dict[str, Any] | None:
    """No sample: `inspect` uses zeros with dynamic dims 1; with .npz data, its first sample's shapes."""
    from trtq.inspection import sample_of

    return sample_of(data) if isinstance(data, (str, os.PathLike)) and str(data).endswith(".npz") else None


def _measure(model: Any, cand: onnx.ModelProto, side: dict[str, Any], data: Any, reference: Any, *, top: int,
             histograms: int, batch_size: int, max_samples: int | None, degrade: tuple[str, ...],
             degrade_levels: str, seed: int, device: str | None, progress: bool) -> dict[str, Any]:
    if data is None:
        if degrade:
            raise TrtqError("--degrade needs --data (a folder of images).", "add --data IMAGES/ or drop --degrade.")
        return {}
    from trtq.evaluate import compare, compare_degraded
    from trtq.reporting.histograms import value_histograms

    ref = _reference(side, reference)
    result: dict[str, Any] = {"compare": compare(ref, cand, data, batch_size=batch_size, max_samples=max_samples,
                                                 device=device)}
    tensors = side["tensors"]
    # the quantizers that add the most noise themselves: lowest local SQNR first
    worst = [t.name for t in sorted(result["compare"].tensors, key=lambda t: t.local_sqnr_db)
             if t.name in tensors and tensors[t.name].get("kind") == "activation" and "amax" in tensors[t.name]]
    chosen = {n: (float(tensors[n]["amax"]), float(tensors[n].get("min", -1.0)) < 0) for n in worst[:histograms]}
    result["histograms"] = value_histograms(cand, chosen, data, batch_size=batch_size, max_samples=max_samples)
    if degrade:
        result["robustness"] = compare_degraded(ref, cand, data, degrade, levels=degrade_levels, seed=seed,
                                                batch_size=batch_size, max_samples=max_samples, progress=progress,
                                                device=device)
    return result


# --- sections -------------------------------------------------------------------------------------


def _matplotlib_note() -> str:
    if plots.matplotlib_version() is None:
        return page.note('matplotlib is not installed, so this page has tables and no figures: pip install '
                         '"trtq[report]" and run trtq report again for the plots.', warn=True)
    return ""


def _summary(side: dict[str, Any], measured: dict[str, Any], label: str) -> str:
    s, cfg = side["summary"], side.get("config", {})
    rows = [("precision", s["precision"]), ("calibration method", cfg.get("calib", {}).get("method")),
            ("calibration samples", s["calibration_samples"]), ("ops quantized", s["quantized_nodes"]),
            ("activation Q/DQ", s["activation_qdq"]), ("weights quantized", s["weights_quantized"]),
            ("residual Adds quantized", s.get("residual_adds_quantized")), ("nodes skipped", s["skipped_nodes"]),
            ("passes run", ", ".join(side.get("passes", {})) or "none"),
            ("input model", (side.get("input") or {}).get("path")),
            ("target", _target_name(cfg.get("target")))]
    body = _matplotlib_note() + page.table(["", ""], rows, cls="summary")
    fid = side.get("fidelity")
    if fid:
        body += "<h3>Output fidelity measured by quantize</h3>\n"
        body += page.note(f"quantize compared its output with FP32 on {fid['samples']} calibration samples "
                          f"(warning below {fid['threshold_db']} dB).")
        body += page.table(["output", "SQNR dB"], list(fid["outputs"].items()), cls="fidelity")
        if fid.get("warning"):
            body += page.note(str(fid["warning"]), warn=True)
    cmp = measured.get("compare")
    if cmp is not None:
        body += f"<h3>Output fidelity on {html.escape(label)} ({cmp.samples} samples)</h3>\n"
        body += page.table(["output", "SQNR dB", "cosine", "max abs error", "top-1 agreement"],
                           [(o.name, o.sqnr_db, o.cosine, o.max_abs_error, o.top1_agreement) for o in cmp.outputs],
                           digits=4, cls="outputs")
    return body


def _target_name(target: Any) -> str:
    if not target:
        return "none given (TensorRT's rules only)"
    if isinstance(target, dict):
        return " ".join(str(target[k]) for k in ("name", "trt") if target.get(k))
    return str(target)


def _layers(side: dict[str, Any], measured: dict[str, Any], top: int) -> str:
    cmp = measured.get("compare")
    tensors = side["tensors"]
    if cmp is not None:
        shown = cmp.tensors[:top]
        body = page.note(f"The worst {len(shown)} of {len(cmp.tensors)} quantized activations, worst first. "
                         "SQNR vs FP32: the error accumulated up to this tensor; local: the noise of this "
                         "Q/DQ alone. A layer with a low local SQNR is where error is made; a low accumulated "
                         "SQNR with a high local one is error inherited from earlier layers.")
        body += page.image(plots.sqnr_bars([t.name for t in shown], [t.sqnr_db for t in shown],
                                           [t.local_sqnr_db for t in shown]), "per-layer SQNR bars")
        rewriting = [p for p in side.get("passes", {}) if p in VALUE_PASSES]
        rewritten = {t.name for t in shown if rewriting and t.sqnr_db <= 0.0 < t.local_sqnr_db}
        if rewritten:
            body += page.note(f"{len(rewritten)} tensor(s) marked 'rewritten' have SQNR vs FP32 <= 0 dB and a sound "
                              f"local SQNR: {', '.join(rewriting)} changed the values these tensors hold (a "
                              "rotation or scaling folded into their neighbours), so they are not comparable with "
                              "the FP32 model's tensor of that name; their local SQNR holds.", warn=True)
        rows = [(t.name, t.precision, t.sqnr_db, t.local_sqnr_db, tensors.get(t.name, {}).get("amax"),
                 tensors.get(t.name, {}).get("scale"), ", ".join(t.consumers),
                 "rewritten" if t.name in rewritten else "") for t in shown]
        return body + page.table(["tensor", "type", "SQNR dB", "local dB", "amax", "scale", "read by", "note"], rows,
                                 digits=2, cls="layers")
    noisiest = (side.get("fidelity") or {}).get("noisiest") or []
    body = page.note("No evaluation data given: trtq report --data EVAL.npz measures every quantized tensor. "
                     + ("These are the noisiest tensors quantize found on its own calibration samples."
                        if noisiest else "quantize records per-tensor numbers only when its output check warns."))
    if noisiest:
        body += page.image(plots.sqnr_bars([t["tensor"] for t in noisiest], [t["sqnr_db"] for t in noisiest],
                                           [t["local_sqnr_db"] for t in noisiest]), "per-layer SQNR bars")
        body += page.table(["tensor", "SQNR dB", "local dB", "read by"],
                           [(t["tensor"], t["sqnr_db"], t["local_sqnr_db"], ", ".join(t["consumers"]))
                            for t in noisiest], cls="layers")
    return body


def _ranges(side: dict[str, Any], measured: dict[str, Any], count: int) -> str:
    hists = measured.get("histograms")
    tensors = side["tensors"]
    if hists:
        body = page.note("The values entering the noisiest quantizers (lowest local SQNR) in the quantized graph, "
                         "on the "
                         "evaluation data (log counts; earlier layers already quantized, passes applied); the "
                         "dashed lines are the range ±amax chosen at calibration: values beyond them are clipped.")
        body += page.image(plots.histograms([h.to_panel() for h in hists]), "activation histograms")
        rows = [(h.tensor, tensors[h.tensor].get("method"), h.amax, tensors[h.tensor].get("scale"), h.absmax_seen,
                 100.0 * h.clipped_fraction, h.values) for h in hists]
        return body + page.table(["tensor", "method", "amax", "scale", "max |x| seen", "clipped %", "values"], rows,
                                 digits=4, cls="ranges")
    acts = [(n, t) for n, t in tensors.items() if t.get("kind") == "activation" and "amax" in t]
    acts.sort(key=lambda nt: -float(nt[1].get("absmax", nt[1]["amax"])) / max(float(nt[1]["amax"]), 1e-30))
    body = page.note("No evaluation data given: the calibration ranges from the sidecar (pass --data for "
                     "histograms of the values with the range marked).")
    rows = [(n, t.get("method"), t.get("min"), t.get("max"), t["amax"], t.get("scale"), t.get("samples"))
            for n, t in acts[: max(count, 20)]]
    return body + page.table(["tensor", "method", "min", "max", "amax", "scale", "samples"], rows, digits=4,
                             cls="ranges")


def _passes(side: dict[str, Any]) -> str:
    passes = side.get("passes") or {}
    folded = side.get("folded_weight_subgraphs") or []
    body = ""
    if folded:
        body += page.note(f"{len(folded)} constant weight subgraph(s) folded before planning.")
    if not passes:
        return body + page.note("No graph pass ran (--passes none, or none applies to this model).")
    body += page.note("In the order they ran; each entry is what the pass recorded in the sidecar's 'passes'.")
    for name, rec in passes.items():
        body += f"<h3>{html.escape(name)}</h3>\n"
        if not isinstance(rec, dict):
            body += page.table(["value"], [(json.dumps(rec),)])
            continue
        scalars = [(k, v if not isinstance(v, (dict, list)) else None) for k, v in rec.items()
                   if not isinstance(v, (dict, list))]
        lists = {k: v for k, v in rec.items() if isinstance(v, list)}
        dicts = {k: v for k, v in rec.items() if isinstance(v, dict)}
        effect = ", ".join(f"{k}: {len(v)}" for k, v in lists.items())
        if effect:
            scalars.append(("changed / listed", effect))
        body += page.table(["field", "value"], scalars, digits=4, cls=f"pass pass-{name}")
        for k, v in dicts.items():
            body += page.details(f"{k}", page.table(["key", "value"], [(a, json.dumps(b)[:200]) for a, b in v.items()]))
        for k, v in lists.items():
            if v and all(isinstance(x, dict) for x in v):
                cols = [c for c in v[0] if all(not isinstance(x.get(c), (dict, list)) for x in v)]
                body += page.details(f"{k} ({len(v)})", page.table(cols, [[x.get(c) for c in cols] for x in v[:200]],
                                                                     digits=4))
            elif v:
                body += page.details(f"{k} ({len(v)})", page.note(", ".join(map(str, v[:200]))))
    return body


def _precision(side: dict[str, Any], inspected: Any) -> str:
    macs, wbytes = inspected.macs_by_precision, inspected.weight_bytes_by_precision
    total_m, total_b = sum(macs.values()) or 1, sum(wbytes.values()) or 1
    labels = sorted(set(macs) | set(wbytes), key=lambda p: -macs.get(p, 0))
    shapes = ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in inspected.sample_shapes.items())
    body = page.note(f"Per compute precision of the weighted ops (Conv, Gemm, MatMul), from the written graph "
                     f"(trtq inspect); MACs at {shapes}.")
    body += page.image(plots.bars(labels, {"MAC share %": [macs.get(p, 0) / total_m for p in labels],
                                           "weight-byte share %": [wbytes.get(p, 0) / total_b for p in labels]},
                                  "% of the model", percent=True), "MAC and weight-byte share per precision")
    counts = {p: sum(w.precision == p for w in inspected.weighted_ops) for p in labels}
    body += page.table(["precision", "ops", "MACs", "MAC share %", "weight bytes", "weight share %"],
                       [(p, counts[p], macs.get(p, 0), 100.0 * macs.get(p, 0) / total_m, wbytes.get(p, 0),
                         100.0 * wbytes.get(p, 0) / total_b) for p in labels], cls="precision")
    fb = side.get("fallback")
    skipped = side.get("skipped") or []
    if fb:
        body += "<h3>Sensitivity fallback</h3>\n"
        body += page.table(["", ""], [
            ("kept in floating point", ", ".join(fb.get("kept_float", [])) or "none"),
            ("as", fb.get("dtype")), ("budget", fb.get("budget")), ("target SQNR dB", fb.get("target_sqnr_db")),
            ("output SQNR dB, all quantized", fb.get("baseline_sqnr_db")),
            ("output SQNR dB, after fallback", fb.get("final_sqnr_db")),
            ("quantized MAC share %, before", 100.0 * fb.get("quantized_mac_fraction_before", 0.0)),
            ("quantized MAC share %, after", 100.0 * fb.get("quantized_mac_fraction", 0.0)),
            ("samples", fb.get("samples"))], digits=2, cls="fallback")
        units = fb.get("units") or []
        if units:
            kept = set(fb.get("kept_float", []))
            shown = units[:40]
            body += page.note("Each layer's sensitivity: the output SQNR with only that layer quantized, and its "
                              "share of the output noise (most sensitive first; red: kept in floating point).")
            body += page.image(plots.bars([u["unit"] for u in shown],
                                          {"output SQNR dB, only this layer quantized": [u["sqnr_db"] for u in shown]},
                                          "dB", highlight=frozenset(kept)), "per-layer sensitivity")
            body += page.table(["layer", "op", "MACs", "SQNR dB alone", "noise share %", "kept float"],
                               [(u["unit"], u["op"], u.get("macs"), u["sqnr_db"], 100.0 * u["noise_share"],
                                 "yes" if u["unit"] in kept else "") for u in shown], cls="sensitivity")
        screened = fb.get("screened") or []
        if screened:
            body += page.note(f"{sum(len(g['units']) for g in screened)} layers were screened out in "
                              f"{len(screened)} groups measured together (none can be kept: the automatic "
                              f"fallback's screening; {fb.get('measurements')} runs in all).")
            body += page.table(["first layer", "last layer", "layers", "SQNR dB together", "noise share %", "why"],
                               [(g["units"][0], g["units"][-1], len(g["units"]), g["sqnr_db"],
                                 100.0 * g["noise_share"], g["reason"]) for g in screened], cls="screened")
    else:
        body += page.note("No sensitivity fallback ran (--fallback-budget N or --target-sqnr DB keeps the most "
                          "sensitive layers in floating point).")
    if skipped:
        by_reason: dict[tuple[str, str], list[str]] = {}
        for entry in skipped:
            by_reason.setdefault((str(entry.get("reason")), str(entry.get("op"))), []).append(str(entry.get("node")))
        body += "<h3>Nodes left in floating point and why</h3>\n"
        body += page.table(["reason", "op", "nodes", "names"],
                           [(r, op, len(ns), ", ".join(ns[:6]) + (f", ... ({len(ns) - 6} more)" if len(ns) > 6 else ""))
                            for (r, op), ns in by_reason.items()], cls="skipped")
    return body


def _robustness(measured: dict[str, Any]) -> str:
    per_set = measured.get("robustness")
    if per_set is None:
        return page.note("Not measured: trtq report --data IMAGES/ --degrade noise,blur,contrast,jpeg compares "
                         "FP32 and the quantized model under each degradation.")
    rows = [(name, o.name, o.sqnr_db, o.cosine, o.top1_agreement) for name, r in per_set.reports.items()
            for o in r.outputs]
    first = [(name, r.outputs[0].sqnr_db) for name, r in per_set.reports.items() if r.outputs]
    body = page.image(plots.bars([n for n, _ in first], {"SQNR dB": [v for _, v in first]}, "dB, quantized vs FP32"),
                      "SQNR per degradation")
    return body + page.table(["set", "output", "SQNR dB", "cosine", "top-1 agreement"], rows, digits=4,
                             cls="robustness")


def _checks(cand: onnx.ModelProto, side: dict[str, Any]) -> str:
    from trtq.exporter.check import check
    from trtq.targets import TARGETS

    results = {t: check(cand, target=t) for t in TARGETS}
    rows = []
    for t, r in results.items():
        c = r.counts()
        rows.append((t, r.trt, "ok" if r.ok else "refused", c.get("error", 0), c.get("warning", 0), c.get("info", 0)))
    body = page.note("trtq check of this graph for every target at its default TensorRT version (static: no GPU). "
                     "A finding the same on several targets is listed once with them.")
    body += page.table(["target", "TensorRT", "verdict", "errors", "warnings", "infos"], rows, cls="check")
    grouped: dict[tuple[str, ...], list[str]] = {}
    for t, r in results.items():
        for f in r.findings:
            grouped.setdefault((f.severity, f.rule, f.node, f.message, f.fix), []).append(t)
    order = {"error": 0, "warning": 1, "info": 2}
    findings = sorted(grouped.items(), key=lambda kv: (order.get(kv[0][0], 3), kv[0][1], kv[0][2]))
    if findings:
        body += page.table(["severity", "rule", "node", "message", "fix", "targets"],
                           [(*key, ", ".join(ts) if len(ts) < len(results) else "all") for key, ts in findings[:100]],
                           cls="findings")
    return body


def _versions(side: dict[str, Any]) -> str:
    import onnxruntime

    from trtq._ort import current_providers

    quantized = side.get("versions", {})
    now = {"trtq": __version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
           "matplotlib": plots.matplotlib_version() or "not installed"}
    keys = list(dict.fromkeys([*quantized, *now]))
    rows = [(k, quantized.get(k, ""), now.get(k, "")) for k in keys]
    body = page.table(["package", "quantized with", "this report"], rows, cls="versions")
    body += page.note("ONNX Runtime providers at quantization: " + ", ".join(side.get("onnxruntime_providers", []))
                      + "; now: " + ", ".join(current_providers()))
    return body
