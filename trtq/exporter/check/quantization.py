"""Rules on the Q/DQ nodes themselves: types, zero points, scales, granularity, INT4 form (errors)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from trtq.exporter.check.graph import (
    CONV_TYPES,
    CONVS,
    DQ,
    HALF_TYPES,
    LEGAL,
    OTHER_FP8,
    SCALE_TYPES,
    Graph,
    T,
    attr,
    type_name,
)
from trtq.exporter.check.registry import Hit, rule
from trtq.targets import TRT_RELEASES, trt_at_least

__all__: list[str] = []  # the module's rules register themselves in registry.REGISTRY

# the smallest normal value of a scale type (E8M0 has no subnormals: its smallest value, 2^-127)
_SMALLEST_NORMAL = {T.FLOAT: float(np.finfo(np.float32).tiny), T.FLOAT16: float(np.finfo(np.float16).tiny),
                    T.BFLOAT16: float(np.finfo(np.float32).tiny), T.DOUBLE: float(np.finfo(np.float64).tiny),
                    T.FLOAT8E8M0: 2.0**-127}


@rule("zero-point", "error", "zero points are constant 0")
def _zero_point(g: Graph) -> Iterator[Hit]:
    fix = "re-quantize symmetrically: zero point 0 and scale = amax / 127 (INT8) or amax / 448 (FP8)."
    for q in g.owners("zero_point"):
        if q.zero_point is None:
            continue
        if not g.is_const(q.zero_point):
            yield Hit(q.index, f"zero point '{q.zero_point}' is not a constant.", fix)
            continue
        values = g.const_array(q.zero_point)
        if values is not None and np.any(values != 0):
            bad = values[values != 0].ravel()
            message = f"zero point '{q.zero_point}' holds {bad[0]:g} ({bad.size} non-zero value(s))"
            yield Hit(q.index, message + "; TensorRT supports only symmetric quantization.", fix)


@rule("quant-type", "error", "quantized types are INT8, FP8, INT4 or FP4")
def _quant_type(g: Graph) -> Iterator[Hit]:
    fix = "quantize symmetrically to INT8 (an INT8 zero point 0), or to FP8 E4M3FN / INT4 weights."
    for q in g.sites():
        if q.qtype is None or q.qtype in LEGAL or q.qtype in OTHER_FP8:
            continue
        if q.is_q and q.zero_point is None and q.qtype == T.UINT8:
            message = (
                "QuantizeLinear has no zero point, so ONNX quantizes to UINT8 (ONNX Runtime clips negatives "
                "to 0) while TensorRT reads it as INT8: the two compute different models."
            )
        elif q.qtype == T.INT32:
            message = (
                f"'{q.data}' is stored as INT32 (a quantized bias); TensorRT takes biases in float only."
            )
            yield Hit(q.index, message, "keep biases float (onnxruntime: extra_options QuantizeBias=False).")
            continue
        else:
            message = (
                f"quantizes to {type_name(q.qtype)}; TensorRT quantizes only to INT8, FP8 E4M3, INT4 "
                "(weights) and FP4, with zero point 0 (UINT8 and UINT4 mean asymmetric ranges)."
            )
        yield Hit(q.index, message, fix)


@rule("fp8-format", "error", "FP8 is FLOAT8E4M3FN")
def _fp8_format(g: Graph) -> Iterator[Hit]:
    for q in g.sites():
        if q.qtype in OTHER_FP8:
            message = f"quantizes to {type_name(q.qtype)}; TensorRT's FP8 is E4M3 (FLOAT8E4M3FN) only."
            yield Hit(q.index, message, "use FLOAT8E4M3FN with scale = amax / 448.")


@rule("scale-constant", "error", "scales are build-time constants")
def _scale_constant(g: Graph) -> Iterator[Hit]:
    for q in g.owners("scale"):
        if not g.is_build_time_const(q.scale):
            message = f"scale '{q.scale}' is computed at run time; TensorRT needs a build-time constant."
            yield Hit(q.index, message, "store the scale as an initializer (or a Constant node).")


@rule("scale-value", "error", "scales are positive, normal and finite")
def _scale_value(g: Graph) -> Iterator[Hit]:
    fix = (
        "recalibrate: an all-zero or non-finite range gives no valid scale (its reciprocal overflows when "
        "the scale is subnormal); exclude the tensor or give it a range with a normal scale."
    )
    for q in g.owners("scale"):
        values = g.const_array(q.scale)
        if values is None:
            continue
        if values.size == 0:
            yield Hit(q.index, f"scale '{q.scale}' is empty.", fix)
            continue
        tiny = _SMALLEST_NORMAL.get(g.dtype(q.scale), _SMALLEST_NORMAL[T.FLOAT])
        with np.errstate(invalid="ignore"):
            good = np.isfinite(values) & (values >= tiny)
        if not np.all(good):
            bad = values[~good].ravel()
            message = (f"scale '{q.scale}' holds {float(bad[0]):g} ({bad.size} value(s) not positive, normal "
                       "and finite).")
            yield Hit(q.index, message, fix)


@rule("scale-dtype", "error", "scales are float32/fp16/bf16 and match the Q input (10.3: every type)")
def _scale_dtype(g: Graph) -> Iterator[Hit]:
    strict = not trt_at_least(g.trt, "10.13") or g.trt is None  # up to 10.12 every type must match
    for q in g.owners("scale"):
        scale_type = g.dtype(q.scale)
        if scale_type is None:
            continue
        if scale_type == T.FLOAT8E8M0 and q.granularity == "block" and q.qtype == T.FLOAT8E4M3FN:
            continue  # MXFP8; block-quant checks the TensorRT version
        if scale_type not in SCALE_TYPES:
            message = (
                f"scale '{q.scale}' is {type_name(scale_type)}; TensorRT takes float32/fp16/bf16 scales."
            )
            yield Hit(q.index, message, "store the scale as float32.")
            continue
        input_type = g.dtype(q.data) if q.is_q else None
        if input_type is None or input_type == scale_type or (scale_type not in HALF_TYPES and not strict):
            continue
        version = f"TensorRT {g.trt}" if g.trt else "TensorRT 10.3 (any version checked)"
        rule_text = ("strongly typed TensorRT needs fp16/bf16 scales to match it" if scale_type in HALF_TYPES
                     else f"up to 10.12 a strongly typed Q's input must have its scale's type ({version})")
        message = (
            f"scale '{q.scale}' is {type_name(scale_type)} but the quantized input is "
            f"{type_name(input_type)}; {rule_text}."
        )
        yield Hit(q.index, message, "store the scale in the input's type (trtq quantize --high-precision does).")


@rule("per-channel-activation", "error", "per-channel scales only on constant weights")
def _per_channel_activation(g: Graph) -> Iterator[Hit]:
    for q in g.sites():
        if q.granularity == "channel" and not q.on_constant:
            message = (
                f"'{q.data}' is quantized per channel but is not a constant weight; activations cannot be "
                "per-channel in TensorRT."
            )
            yield Hit(q.index, message, "quantize activations per tensor (one scalar scale).")


@rule("block-quant", "error", "block quantization: constants; FP8/FP4 from 10.13, INT8 on 11; INT4 2-D to 10.6")
def _block_quant(g: Graph) -> Iterator[Hit]:
    for q in g.sites():
        if q.granularity != "block":
            continue
        if not q.on_constant and q.qtype != T.INT4:  # INT4 activations: int4-activation
            message = f"'{q.data}' is block-quantized but is not a constant; TensorRT blocks constants only."
            yield Hit(q.index, message, "quantize activations per tensor.")
        first = {T.FLOAT8E4M3FN: "10.13", T.FLOAT4E2M1: "10.13", T.INT8: "11"}.get(q.qtype)
        if q.qtype in LEGAL and first is not None and g.trt is not None and not trt_at_least(g.trt, first):
            message = (
                f"block quantization to {type_name(q.qtype)}; TensorRT {g.trt} block-quantizes it from {first} "
                "(10.3: INT4 only)."
            )
            fix = (f"use per-channel scales for INT8/FP8 weights, INT4 for block-wise weights, "
                   f"or --trt {first} or newer.")
            yield Hit(q.index, message, fix)
        shape = g.shape(q.data)
        if not shape or q.qtype not in LEGAL:
            continue
        axis = attr(g.nodes[q.index], "axis", 1) % len(shape)
        if q.qtype == T.INT4 and len(shape) != 2 and g.trt is not None and not trt_at_least(g.trt, "10.7"):
            message = (f"INT4 block quantization of a rank-{len(shape)} tensor; "
                       f"TensorRT {g.trt} blocks 2-D tensors only.")
            yield Hit(q.index, message, "reshape the weight to 2-D, or use --trt 10.16 or newer.")
        elif trt_at_least(g.trt, "10.13") and g.trt is not None and axis < len(shape) - 2:
            message = (
                f"blocked axis {axis} of a rank-{len(shape)} tensor; from TensorRT 10.13 the blocked dimension "
                "must be the last or the second to last."
            )
            yield Hit(q.index, message, "block along the last or second-to-last axis (transpose the weight).")


@rule("int4-activation", "error", "INT4 is weight-only")
def _int4_activation(g: Graph) -> Iterator[Hit]:
    for q in g.sites():
        if q.qtype == T.INT4 and not q.on_constant:
            message = f"'{q.data}' is an activation quantized to INT4; TensorRT's INT4 is weight-only."
            yield Hit(q.index, message, "keep activations in fp16 (W4A16), or quantize them to INT8/FP8.")


@rule("int4-odd-dim", "error", "4-bit tensors: even last dimension (10.3) / even element count (10.8+)")
def _int4_odd_dim(g: Graph) -> Iterator[Hit]:
    even = TRT_RELEASES[g.trt].int4_even if g.trt else "last-dim"  # any version: the strictest
    for q in g.sites():
        shape = g.shape(q.data)
        if q.qtype not in (T.INT4, T.FLOAT4E2M1) or not shape or None in shape:
            continue
        need, size = ("last dimension", shape[-1]) if even == "last-dim" else ("element count", int(np.prod(shape)))
        if size % 2:
            message = (
                f"'{q.data}' has an odd {need} ({size}); TensorRT {g.trt or '10.3'}'s ONNX parser packs "
                f"4-bit values in pairs and needs an even {need}."
            )
            yield Hit(q.index, message, "leave this layer in floating point (trtq quantize does), or pad the weight.")


@rule("conv-precision", "error", "convolutions run in INT8 or FP8 only")
def _conv_precision(g: Graph) -> Iterator[Hit]:
    for i in g.nodes_of(*CONVS):
        for tensor in g.inputs(i, 0, 1):
            dq = g.dq_behind(tensor)
            qtype = g.qinfo[dq].qtype if dq is not None else None
            if qtype is not None and qtype not in CONV_TYPES:
                message = (
                    f"input '{tensor}' is dequantized from {type_name(qtype)}; TensorRT runs convolutions "
                    "only in INT8 or FP8."
                )
                yield Hit(i, message, "quantize this convolution to INT8 (or FP8), or exclude it.")
                break


@rule("dynamic-quantize", "error", "no DynamicQuantizeLinear")
def _dynamic_quantize(g: Graph) -> Iterator[Hit]:
    message = "TensorRT's ONNX parser does not support DynamicQuantizeLinear."
    fix = "quantize statically: calibrate a scale and use QuantizeLinear/DequantizeLinear."
    for i in g.nodes_of("DynamicQuantizeLinear"):
        yield Hit(i, message, fix)


@rule("q-consumer", "error", "a Q feeds only DequantizeLinear")
def _q_consumer(g: Graph) -> Iterator[Hit]:
    for q in g.qinfo.values():
        if not q.is_q:
            continue
        out = g.nodes[q.index].output[0]
        readers = [g.name(c) for c in g.consumers.get(out, []) if g.op(c) != DQ]
        readers += ["the graph output"] if out in g.graph_outputs else []
        if readers:
            message = (
                f"quantized tensor '{out}' is read by {', '.join(readers)}; TensorRT takes quantized tensors "
                "only through DequantizeLinear."
            )
            yield Hit(q.index, message, "put a DequantizeLinear (same scale) between the Q and each reader.")


@rule("dq-input", "error", "a DQ reads a Q or a quantized constant")
def _dq_input(g: Graph) -> Iterator[Hit]:
    for q in g.qinfo.values():
        if not q.is_q and q.source_q is None and not q.on_constant:
            message = (
                f"DequantizeLinear reads '{q.data}', which is neither a QuantizeLinear output nor a "
                "quantized constant; TensorRT has quantized types only inside Q/DQ pairs."
            )
            yield Hit(q.index, message, "feed the DQ from a QuantizeLinear or a quantized initializer.")
