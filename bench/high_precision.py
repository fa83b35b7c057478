"""Fidelity of `--high-precision` (trtq.exporter.high_precision) on the real models, in ONNX Runtime.

    python bench/high_precision.py [--out bench/out/high_precision]

For each model: the FP32 graph cast to FP16 and to BF16 alone; INT8 (trtq's defaults) with the unquantized layers left
FP32 and cast to FP16; on all-MiniLM-L6-v2 also INT4 weight-only with FP32 scales / FP32 activations
against FP16 scales / FP16 activations (TensorRT's W4A16 form), the KEEP rule's effect on a decomposed
LayerNorm copy of the model, and INT8 with the attention MatMuls excluded (`check --target orin`'s fix
for TensorRT 10.3's missing INT8 fused attention). Every half graph runs with half storage rounding
(trtq._half). Every quantized row is `trtq.quantize` with its defaults (calibration data: the bench's
calibration set) and the high precision named.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from evaluate import fidelity  # noqa: E402

from trtq import quantize  # noqa: E402
from trtq._ort import make_session  # noqa: E402
from trtq.config import QuantConfig  # noqa: E402
from trtq.exporter.high_precision import cast_high_precision  # noqa: E402

import data  # noqa: E402
import models  # noqa: E402


def attention_matmuls(model: onnx.ModelProto) -> str:
    """An --exclude pattern for the MatMuls of two activations (attention's Q.K^T and P.V)."""
    consts = {i.name for i in model.graph.initializer}
    names = [n.name for n in model.graph.node if n.op_type == "MatMul" and not consts & set(n.input)]
    return "^(" + "|".join(names) + ")$"


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = make_session(model)
    names = [i.name for i in session.get_inputs()]
    return session.run(None, {k: feeds[k] for k in names})[0].astype(np.float64)


def half(model: onnx.ModelProto, dtype: str = "fp16", **kwargs) -> tuple[onnx.ModelProto, dict]:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy, cast_high_precision(copy, dtype, **kwargs).to_dict()


def decompose_layernorm(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace each LayerNormalization by ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul/Add (older exporters)."""
    from onnx import helper, numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    nodes = []
    g.initializer.extend([numpy_helper.from_array(np.array([-1], np.int64), "ln_axes"),
                          numpy_helper.from_array(np.array(2.0, np.float32), "ln_two")])
    for n in g.node:
        if n.op_type != "LayerNormalization":
            nodes.append(n)
            continue
        eps = next((a.f for a in n.attribute if a.name == "epsilon"), 1e-5)
        p, (x, gamma, beta), y = n.name, n.input[:3], n.output[0]
        g.initializer.append(numpy_helper.from_array(np.array(eps, np.float32), f"{p}_eps"))
        nodes += [helper.make_node("ReduceMean", [x, "ln_axes"], [f"{p}_mu"], name=f"{p}_mean"),
                  helper.make_node("Sub", [x, f"{p}_mu"], [f"{p}_d"], name=f"{p}_sub"),
                  helper.make_node("Pow", [f"{p}_d", "ln_two"], [f"{p}_d2"], name=f"{p}_pow"),
                  helper.make_node("ReduceMean", [f"{p}_d2", "ln_axes"], [f"{p}_var"], name=f"{p}_var"),
                  helper.make_node("Add", [f"{p}_var", f"{p}_eps"], [f"{p}_ve"], name=f"{p}_add_eps"),
                  helper.make_node("Sqrt", [f"{p}_ve"], [f"{p}_sd"], name=f"{p}_sqrt"),
                  helper.make_node("Div", [f"{p}_d", f"{p}_sd"], [f"{p}_n"], name=f"{p}_div"),
                  helper.make_node("Mul", [f"{p}_n", gamma], [f"{p}_ng"], name=f"{p}_scale"),
                  helper.make_node("Add", [f"{p}_ng", beta], [y], name=f"{p}_shift")]
    del g.node[:]
    g.node.extend(nodes)
    return out


def measure(name: str, model: str, graph: onnx.ModelProto, ref: np.ndarray, feeds: dict, extra: dict | None = None):
    row = {"model": model, "graph": name, **fidelity(model, ref, run(graph, feeds), feeds), **(extra or {})}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(HERE / "out" / "high_precision"))
    parser.add_argument("--models", default="effnet,minilm")
    parser.add_argument("--eval", type=int, default=32, help="evaluation samples per model")
    args = parser.parse_args()
    out = Path(args.out)
    rows = []
    for model in args.models.split(","):
        path = models.export(model, out)
        paths = data.prepare(model, out, models.input_names(path))
        feeds = {k: v[: args.eval] for k, v in np.load(paths["eval"]).items()}
        fp32 = onnx.load(path)
        ref = run(fp32, feeds)
        for dtype in ("fp16", "bf16"):
            graph, done = half(fp32, dtype=dtype)
            rows.append(measure(f"fp32 -> {dtype} (no quantization)", model, graph, ref, feeds,
                                {"kept_fp32": len(done["kept_fp32"])}))
        calib = paths["calib"]
        int8 = quantize(path, calib, config=QuantConfig(high_precision="fp32"), progress=False).model
        rows.append(measure("int8, unquantized fp32 (--high-precision fp32)", model, int8, ref, feeds))
        int8 = quantize(path, calib, config=QuantConfig(), progress=False)
        rows.append(measure("int8, unquantized fp16 (--high-precision fp16, the default)", model, int8.model, ref,
                            feeds, {"kept_fp32": len(int8.report["high_precision"]["kept_fp32"])}))
        if model != "minilm":
            continue
        ln = decompose_layernorm(fp32)
        ln_ref = run(ln, feeds)
        for rule in (True, False):
            graph, done = half(ln, rule=rule)
            rows.append(measure(f"decomposed LayerNorm -> fp16, KEEP rule {'on' if rule else 'off'}", model, graph,
                                ln_ref, feeds, {"kept_fp32": len(done["kept_fp32"])}))
        excl = quantize(path, calib, config=QuantConfig(exclude=(attention_matmuls(fp32),)), progress=False)
        rows.append(measure("int8 fp16, --exclude the attention MatMuls (orin-int8-attention's fix)", model,
                            excl.model, ref, feeds,
                            {"excluded": sum(s["reason"] == "matched --exclude" for s in excl.report["skipped"])}))
        int4 = quantize(path, calib, config=QuantConfig(precision="int4", high_precision="fp32"), progress=False)
        rows.append(measure("int4 weight-only, fp32 scales + fp32 activations (before)", model, int4.model, ref,
                            feeds))
        int4 = quantize(path, calib, config=QuantConfig(precision="int4"), progress=False)
        rows.append(measure("int4 weight-only, fp16 scales + fp16 activations (W4A16, the default)", model,
                            int4.model, ref, feeds))
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    print("\n| model | graph | SQNR dB | cosine / top-1 |\n|---|---|---|---|")
    for r in rows:
        second = f"cos {r['cosine']:.5f}" if "cosine" in r else f"top-1 {r['top1_agree']:.3f}"
        print(f"| {r['model']} | {r['graph']} | {r['sqnr_db']:.2f} | {second} |")


if __name__ == "__main__":
    main()
