"""Rules that depend on the opset, the target device and the TensorRT version (types, strong typing)."""

from __future__ import annotations

from collections.abc import Iterator

from trtq.exporter.check.graph import (
    HALF_TYPES,
    LEGAL,
    NOT_COMPUTE,
    TYPE_MIN_OPSET,
    WEIGHTED,
    Graph,
    T,
    type_name,
)
from trtq.exporter.check.registry import Hit, rule
from trtq.targets import JETPACKS, TARGETS, TRT_RELEASES, TRT_VERSIONS, trt_at_least, trt_support

__all__: list[str] = []  # the module's rules register themselves in registry.REGISTRY


@rule("qdq-opset", "error", "the opset supports each Q/DQ feature used")
def _qdq_opset(g: Graph) -> Iterator[Hit]:
    if g.opset is None:
        return
    for q in g.sites():
        needs = [(10, "QuantizeLinear/DequantizeLinear")]
        if q.granularity == "channel":
            needs.append((13, "per-channel scales (axis)"))
        if q.granularity == "block":
            needs.append((21, "block quantization (block_size)"))
        if q.qtype in TYPE_MIN_OPSET:
            needs.append((TYPE_MIN_OPSET[q.qtype], type_name(q.qtype)))
        if g.dtype(q.scale) in HALF_TYPES:
            needs.append((19, f"{type_name(g.dtype(q.scale))} scales"))
        unmet = [(version, what) for version, what in needs if g.opset < version]
        if unmet:
            need = max(version for version, _ in unmet)
            what = ", ".join(what for _, what in unmet)
            message = f"{what} need(s) opset >= {need}; the model declares opset {g.opset}."
            yield Hit(q.index, message, f"export or convert the model to opset {need} or newer.")


@rule("opset-range", "error", "the opset is in the TensorRT parser's range")
def _opset_range(g: Graph) -> Iterator[Hit]:
    if g.opset is None:
        return
    ranges = [TRT_RELEASES[g.trt].parser_opsets] if g.trt else [r.parser_opsets for r in TRT_RELEASES.values()]
    low, high = min(r[0] for r in ranges), max(r[1] for r in ranges)
    trt_name = f"TensorRT {g.trt}" if g.trt else "any TensorRT version"
    if low <= g.opset <= high:
        return
    if g.opset == 21 and any(q.qtype == T.INT4 for q in g.sites()):
        message = (
            f"opset 21 (needed by INT4 Q/DQ) is above {trt_name}'s documented parser range {low}-{high}; "
            "the parser does not refuse newer opsets and imports INT4 Q/DQ, but NVIDIA does not document "
            "this combination as supported."
        )
        fix = "build once on the device to confirm, or use TensorRT 10.16+ (JetPack 7.2)."
        yield Hit(None, message, fix, "warning")
        return
    message = f"opset {g.opset} is outside {trt_name}'s ONNX parser range {low}-{high}."
    fix = f"convert the model to an opset in {low}-{high} (onnx.version_converter), or pick a newer --trt."
    yield Hit(None, message, fix)


@rule("target-precision", "error", "the target runs each quantized precision")
def _target_precision(g: Graph) -> Iterator[Hit]:
    if g.target is None:
        return
    spec = g.target.spec
    by_precision: dict[str, list[int]] = {}
    for q in g.sites():
        precision = LEGAL.get(q.qtype) if q.qtype is not None else None
        if precision is not None and precision not in spec.precisions:
            by_precision.setdefault(precision, []).append(q.index)
    for precision, nodes in by_precision.items():
        runs_it = ", ".join(name for name, s in TARGETS.items() if precision in s.precisions)
        message = (
            f"{precision.upper()} Q/DQ ({len(nodes)} node(s)) cannot run on target '{g.target.name}' "
            f"(SM {spec.sm}: {', '.join(spec.precisions)})."
        )
        fix = (
            f"quantize to INT8 (or INT4 weight-only) for {g.target.name}, or pick a target that runs "
            f"{precision} ({runs_it})."
        )
        yield Hit(nodes[0], message, fix)


@rule("target-trt", "error", "the TensorRT version exists for the target")
def _target_trt(g: Graph) -> Iterator[Hit]:
    if g.target is None or g.trt is None:
        return
    support, why = trt_support(g.target.name, g.trt)
    if support == "ok":
        return
    ships = sorted({j.trt for j in JETPACKS if g.target.name in j.targets and j.trt in TRT_VERSIONS})
    fix = f"use --trt {' or --trt '.join(v for v in ships if v != g.trt)} for {g.target.name}"
    if support == "partial":
        yield Hit(None, f"TensorRT {g.trt} on {g.target.name}: {why}.", fix + " unless the device is covered.",
                   "warning")
    else:
        yield Hit(None, f"TensorRT {g.trt} on {g.target.name}: {why}.", fix + ".")


@rule("fp32-region", "info", "non-quantized layers are cast to the high precision (warning on TensorRT 11)")
def _fp32_region(g: Graph) -> Iterator[Hit]:
    from trtq.exporter.high_precision import deliberate_fp32

    deliberate = deliberate_fp32(g.model)  # what --high-precision keeps FP32 on purpose (its KEEP rule)
    fp32 = []
    for i, node in enumerate(g.nodes):
        op = g.op(i)
        if op is None or op in NOT_COMPUTE or not node.output or g.dtype(node.output[0]) != T.FLOAT:
            continue
        if op in WEIGHTED and all(g.dq_behind(t) is not None for t in g.inputs(i, 0, 1)):
            continue  # runs quantized
        if node.name in deliberate:
            continue
        fp32.append(i)
    if fp32:
        message = (
            f"{len(fp32)} node(s) outside Q/DQ compute in float32 (e.g. {', '.join(map(g.name, fp32[:3]))}); "
            "strongly typed TensorRT (always in TensorRT 11) keeps them in FP32: no builder flag lowers them."
        )
        fix = "quantize with `trtq quantize --high-precision fp16` (the default), which casts them to FP16."
        yield Hit(fp32[0], message, fix, "warning" if g.trt is not None and trt_at_least(g.trt, "11") else None)


@rule("int4-fp32", "warning", "INT4 weights dequantize to fp16/bf16 (W4A16), not float32")
def _int4_fp32(g: Graph) -> Iterator[Hit]:
    for q in g.sites():
        if q.qtype != T.INT4 or q.is_q:
            continue
        out = g.nodes[q.index].output[0]
        if g.dtype(out) == T.FLOAT:
            readers = ", ".join(g.name(c) for c in g.consumers.get(out, [])) or "nothing"
            message = (
                f"INT4 weight '{q.data}' dequantizes to float32 (float32 scale) for {readers}: expect an FP32 GEMM "
                "on dequantized weights, not TensorRT's INT4 weight-only kernel (INT4 weights, FP16/BF16 "
                "scales, FP16/BF16 activations)."
            )
            yield Hit(q.index, message,
                      "quantize with `--high-precision fp16` (the default): FP16 scales and activations.")


@rule("strongly-typed", "info", "10.x: FP8 / INT4 / half-precision graphs are built strongly typed")
def _strongly_typed(g: Graph) -> Iterator[Hit]:
    if g.trt is not None and TRT_RELEASES[g.trt].strongly_typed == "always":
        return
    found = sorted({LEGAL[q.qtype] for q in g.sites() if q.qtype in (T.FLOAT8E4M3FN, T.INT4, T.FLOAT4E2M1)})
    if any(g.dtype(t) in HALF_TYPES for t in g.types) or any(g.dtype(t) in HALF_TYPES for t in g.constants):
        found.append("fp16/bf16 layers")
    if found:
        message = (
            f"the graph holds {', '.join(found)}: TensorRT {g.trt or '10.x'} builds it as written only as a "
            "strongly typed network (weakly typed, FP8/INT4 need builder flags and FP16 layers may run FP32)."
        )
        fix = ("build with `trtexec --stronglyTyped` (present from 10.3) or NetworkDefinitionCreationFlag."
               "STRONGLY_TYPED (`trtq build` sets it).")
        yield Hit(None, message, fix)
