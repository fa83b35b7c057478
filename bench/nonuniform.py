"""Non-uniform quantizers (trtq.plugins) against trtq's uniform ones at equal bits; one table.

    python bench/nonuniform.py [--out bench/out/nonuniform] [--parts minilm-weights,minilm-acts,effnet]

- minilm-weights: all-MiniLM-L6-v2 weight-only, groups of 128 along K, 128 calibration sentences
  (GPTQ assignment for every format): uniform INT4 (`--weight-format int4`, ONNX INT4
  DequantizeLinear), uniform4, nf4, codebook4; 3-bit: uniform3 vs codebook3. Fidelity: cosine of
  the mean-pooled embeddings vs FP32 on 128 evaluation sentences.
- minilm-acts: FP32 weights, only the post-Softmax (6) or post-GELU (6) MatMul inputs quantized:
  uniform symmetric (TensorRT's INT8 / INT4 grid, scale = max|x| / qmax over the calibration data,
  what trtq's minmax INT8 does there) vs log2 / logsqrt2 / adalog, at 8 and 4 bits; then trtq's full
  INT8 graph (no passes) with and without adalog at those places.
- effnet: EfficientNet-Lite0 Conv + Gemm weights, groups of 128 along K (a depthwise row is one
  group of 9 or 25): uniform4 vs nf4 vs codebook4, 64 calibration and 64 evaluation crops; then
  groups of 32 with the depthwise convs and the stem conv left in FP32. Logit SQNR and top-1
  agreement vs FP32.
Weight bytes: the initializers of the written ONNX (packed codes, codebooks, scales and every
weight left in float32); "quantized" counts only the quantized weights as stored.

Run it by hand with the trtq environment's Python; it writes results_<parts>.json and .md in --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import evaluate  # noqa: E402

import data  # noqa: E402
import models  # noqa: E402

PARTS = ("minilm-weights", "minilm-acts", "effnet")


def initializer_bytes(model: onnx.ModelProto) -> int:
    total = 0
    for t in model.graph.initializer:
        total += len(t.raw_data) if t.HasField("raw_data") else onnx.numpy_helper.to_array(t).nbytes
    return total


def quantized_bytes(report: dict) -> int:
    total = 0
    for entry in report["tensors"].values():
        if entry["kind"] != "weight":
            continue
        if "bytes" in entry:
            total += entry["bytes"]
        else:  # ONNX INT4 DequantizeLinear: packed values + float32 block scales
            total += int(np.prod(entry["shape"])) // 2 + 4 * int(np.size(entry["scale"]))
    return total


def run_model(model: onnx.ModelProto, feeds: dict[str, np.ndarray], batch: int = 16) -> np.ndarray:
    from trtq._ort import make_session

    session = make_session(model)
    n = len(next(iter(feeds.values())))
    outs = [session.run(None, {k: v[i:i + batch] for k, v in feeds.items()})[0] for i in range(0, n, batch)]
    return np.concatenate(outs)


def row(name: str, model: str, fp32_out, out, feeds, qmodel: onnx.ModelProto, qbytes: int | None, seconds: float,
        **extra) -> dict:
    fid = evaluate.fidelity(model, fp32_out, out, feeds)
    r = {"model": model, "row": name, **fid, "initializer_bytes": initializer_bytes(qmodel),
         "quantized_weight_bytes": qbytes, "seconds": round(seconds, 1), **extra}
    print(json.dumps(r), flush=True)
    return r


def weight_rows(model: str, fp32: onnx.ModelProto, calib: str, feeds: dict, fp32_out, formats, block: int,
                exclude: tuple[str, ...] = (), label: str = "") -> list:
    import trtq
    from trtq.config import QuantConfig

    rows = []
    for fmt in formats:
        t = time.perf_counter()
        cfg = QuantConfig(precision="int4", weight_format=fmt, block_size=block, passes=(), exclude=exclude)
        res = trtq.quantize(fp32, calib, config=cfg, progress=False)
        bits = 3 if fmt.endswith("3") else 4
        rows.append(row(f"{fmt} G={block}{label}", model, fp32_out, run_model(res.model, feeds), feeds, res.model,
                        quantized_bytes(res.report), time.perf_counter() - t, bits=bits))
    return rows


def depthwise_and_stem(model: onnx.ModelProto) -> tuple[str, ...]:
    """Exclude patterns for the depthwise convs and the first conv (the layers 4-bit hurts most)."""
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    names = [convs[0].name] + [n.name for n in convs if any(a.name == "group" and a.i > 1 for a in n.attribute)]
    return tuple(f"^{name}$" for name in names)


def uniform_face(model: onnx.ModelProto, amax: dict[str, float], bits: int) -> onnx.ModelProto:
    """Symmetric uniform fake quantization x -> s·clip(round(x/s), -2^(b-1), 2^(b-1)-1), s = amax/(2^(b-1)-1)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    qmax = 2 ** (bits - 1) - 1
    for name, a in sorted(amax.items()):
        s = np.float32(max(a, 1e-12) / qmax)
        p = f"uniform/{name}"
        g.initializer.extend([onnx.numpy_helper.from_array(np.array(s), f"{p}/s"),
                              onnx.numpy_helper.from_array(np.array(-qmax - 1, np.float32), f"{p}/lo"),
                              onnx.numpy_helper.from_array(np.array(qmax, np.float32), f"{p}/hi")])
        for node in g.node:
            for i, inp in enumerate(node.input):
                if inp == name:
                    node.input[i] = f"{p}/out"
        g.node.extend([helper.make_node("Div", [name, f"{p}/s"], [f"{p}/d"], name=f"{p}/Div"),
                       helper.make_node("Round", [f"{p}/d"], [f"{p}/r"], name=f"{p}/Round"),
                       helper.make_node("Clip", [f"{p}/r", f"{p}/lo", f"{p}/hi"], [f"{p}/c"], name=f"{p}/Clip"),
                       helper.make_node("Mul", [f"{p}/c", f"{p}/s"], [f"{p}/out"], name=f"{p}/Mul")])
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(out)
    graph.toposort()
    return gs.export_onnx(graph, do_type_check=False)


def act_rows(fp32: onnx.ModelProto, calib_path: str, feeds: dict, fp32_out, places: tuple[str, ...]) -> list:
    import trtq
    from trtq.calibrators.data import open_batches
    from trtq.config import ActQuantConfig, QuantConfig
    from trtq.plugins.apply import default_act_tensors, fit_log_activations
    from trtq.plugins.onnx_face import insert_faces

    kinds = default_act_tensors(fp32)
    ranges = trtq.calibrate(fp32, calib_path, config=QuantConfig(precision="int8", passes=()), progress=False)
    amax = {n: e["amax"] for n, e in ranges.items()}  # minmax, no passes: the graph the faces go into
    rows = []
    for place in places:
        tensors = tuple(sorted(n for n, k in kinds.items() if k == place))
        for bits in (8, 4):
            t = time.perf_counter()
            qm = uniform_face(fp32, {n: amax[n] for n in tensors}, bits)
            rows.append(row(f"uniform{bits} @ {place}", "minilm", fp32_out, run_model(qm, feeds), feeds, qm, None,
                            time.perf_counter() - t, bits=bits, place=place))
            for method in ("log2", "logsqrt2", "adalog"):
                t = time.perf_counter()
                batches = open_batches(calib_path, fp32, batch_size=8)
                acts, report = fit_log_activations(fp32, ActQuantConfig(method, bits, tensors), batches, seed=0)
                batches.close()
                qm = insert_faces(fp32, {}, acts)
                chosen = {n: {k: report[n][k] for k in ("scale", "step", "shift", "adalog_q")} for n in tensors}
                rows.append(row(f"{method}{bits} @ {place}", "minilm", fp32_out, run_model(qm, feeds), feeds, qm, None,
                                time.perf_counter() - t, bits=bits, place=place, chosen=chosen))
    for aq in (None, ActQuantConfig("adalog", 8)):
        t = time.perf_counter()
        res = trtq.quantize(fp32, calib_path, config=QuantConfig(precision="int8", passes=(), act_quant=aq),
                            progress=False)
        rows.append(row("int8 all" + (" + adalog8 @ softmax,gelu" if aq else ""), "minilm", fp32_out,
                        run_model(res.model, feeds), feeds, res.model, None, time.perf_counter() - t, bits=8))
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| model | row | bits | fidelity | weight bytes (all initializers) | quantized weights | s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        fid = (f"cosine {r['cosine']:.4f} (min {r['cosine_min']:.3f})" if "cosine" in r
               else f"SQNR {r['sqnr_db']:.2f} dB, top-1 {r['top1_agree']:.3f}")
        qb = f"{r['quantized_weight_bytes']:,}" if r.get("quantized_weight_bytes") else "-"
        lines.append(f"| {r['model']} | {r['row']} | {r['bits']} | {fid} | {r['initializer_bytes']:,} | {qb} "
                     f"| {r['seconds']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=HERE / "out" / "nonuniform")
    ap.add_argument("--parts", default=",".join(PARTS))
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--places", default="softmax,gelu", help="minilm-acts: post-Softmax and/or post-GELU tensors")
    args = ap.parse_args()
    parts = [p for p in args.parts.split(",") if p]
    rows: list[dict] = []
    for name in ("minilm", "effnet"):
        wanted = [p for p in parts if p.startswith(name)]
        if not wanted:
            continue
        path = models.export(name, args.out)
        fp32 = onnx.load(path)
        paths = data.prepare(name, args.out, models.input_names(path))
        with np.load(paths["eval"]) as z:
            feeds = {k: z[k] for k in z.files}
        fp32_out = run_model(fp32, feeds)
        rows.append(row("fp32", name, fp32_out, fp32_out, feeds, fp32, None, 0.0, bits=32))
        if "minilm-weights" in wanted:
            rows += weight_rows(name, fp32, paths["calib"], feeds, fp32_out,
                                ("int4", "uniform4", "nf4", "codebook4", "uniform3", "codebook3"), args.block_size)
        if "minilm-acts" in wanted:
            rows += act_rows(fp32, paths["calib"], feeds, fp32_out, tuple(args.places.split(",")))
        if name == "effnet":
            four = ("uniform4", "nf4", "codebook4")
            rows += weight_rows(name, fp32, paths["calib"], feeds, fp32_out, four, args.block_size)
            rows += weight_rows(name, fp32, paths["calib"], feeds, fp32_out, four, 32,
                                exclude=depthwise_and_stem(fp32), label=", depthwise + stem FP32")
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "results_" + "+".join(parts)
    (args.out / f"{stem}.json").write_text(json.dumps(rows, indent=1))
    (args.out / f"{stem}.md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
