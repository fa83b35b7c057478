"""Placement and performance rules on weighted ops: what TensorRT fuses and what gains from Tensor Cores."""

from __future__ import annotations

from collections.abc import Iterator

from trtq.exporter.check.graph import ACTIVATIONS, DQ, WEIGHTED, Graph, Q, T, attr
from trtq.exporter.check.registry import Hit, rule

__all__: list[str] = []  # the module's rules register themselves in registry.REGISTRY


@rule("partial-quant", "warning", "weighted ops have all inputs quantized, or none")
def _partial_quant(g: Graph) -> Iterator[Hit]:
    fix = "quantize all its inputs (data and weight), or exclude the node from quantization."
    for i in g.nodes_of(*WEIGHTED):
        tensors = g.inputs(i, 0, 1)
        dqs = {t: g.dq_behind(t) for t in tensors}
        quantized = [g.qinfo[d] for d in dqs.values() if d is not None]
        if quantized and all(q.qtype == T.INT4 and q.on_constant for q in quantized):
            continue  # INT4 weight-only (W4A16): activations stay in floating point by design
        plain = [repr(t) for t, d in dqs.items() if d is None]
        if quantized and plain:
            message = (
                f"{g.op(i)} has quantized and unquantized inputs (not quantized: {', '.join(plain)}); "
                "TensorRT runs it in high precision."
            )
            yield Hit(i, message, fix)


@rule("output-quantized", "warning", "no Q/DQ between a weighted op and its activation or add")
def _output_quantized(g: Graph) -> Iterator[Hit]:
    fix = "remove this Q/DQ pair; quantize the output of the activation / add instead."
    for i in g.nodes_of(*WEIGHTED):
        users = g.consumers.get(g.nodes[i].output[0], [])
        for q in (c for c in users if g.op(c) == Q):
            # only what reads this Q's DQ counts: a consumer reading the op's output directly cannot be fused
            # into the op while another consumer needs the unfused output, Q/DQ or not (the planner's rule)
            after = []
            for dq in g.consumers.get(g.nodes[q].output[0], []):
                if g.op(dq) == DQ:  # an Add reading the DQ is fine when it is the residual of another conv
                    after += [c for c in g.consumers.get(g.nodes[dq].output[0], [])
                              if not _is_residual_of_other_conv(g, c, g.nodes[dq].output[0])]
            fused = sorted({g.name(c) for c in after if _fuses_into_epilogue(g, c)})
            if fused:
                message = (
                    f"Q/DQ on the output of {g.op(i)} '{g.name(i)}', which feeds {', '.join(fused)}; it "
                    "stops TensorRT fusing the activation / add into the op."
                )
                yield Hit(q, message, fix)


@rule("residual-input", "warning", "the residual input of a conv's Add is quantized")
def _residual_input(g: Graph) -> Iterator[Hit]:
    fix = "quantize the residual input (a Q/DQ pair on it, like the conv's input)."
    for i in g.nodes_of("Add"):
        tensors = g.inputs(i, 0, 1)
        if len(tensors) != 2:
            continue
        for conv, other in (
            (g.producer.get(tensors[0]), tensors[1]),
            (g.producer.get(tensors[1]), tensors[0]),
        ):
            if g.op(conv) != "Conv" or any(g.dq_behind(t) is None for t in g.inputs(conv, 0, 1)):
                continue
            if len(g.consumers.get(g.nodes[conv].output[0], [])) > 1:
                continue  # the conv's output is read elsewhere too: no conv + add fusion either way
            if g.is_const(other) or g.dq_behind(other) is not None:
                continue
            message = (
                f"Add after quantized Conv '{g.name(conv)}' takes '{other}' unquantized; TensorRT fuses the "
                "add into the conv only when the residual input is quantized."
            )
            yield Hit(i, message, fix)
            break


@rule("small-gemm", "info", "quantized MatMul/Gemm have K and N >= 16")
def _small_gemm(g: Graph) -> Iterator[Hit]:
    for i in g.nodes_of("MatMul", "Gemm"):
        tensors = g.inputs(i, 0, 1)
        shape = g.shape(tensors[1]) if len(tensors) == 2 else None
        if not shape or len(shape) < 2 or all(g.dq_behind(t) is None for t in tensors):
            continue
        trans_b = g.op(i) == "Gemm" and attr(g.nodes[i], "transB", 0)
        k, n = (shape[-1], shape[-2]) if trans_b else (shape[-2], shape[-1])
        small = [f"{dim}={v}" for dim, v in (("K", k), ("N", n)) if v is not None and 0 < v < 16]
        if small:
            message = (
                f"quantized {g.op(i)} with {', '.join(small)} (< 16) cannot use Tensor Cores; its Q/DQ only "
                "adds work."
            )
            yield Hit(i, message, "exclude this node from quantization.")


@rule("small-conv", "info", "quantized Conv have >= 16 channels (ModelOpt's exceptions)")
def _small_conv_rule(g: Graph) -> Iterator[Hit]:
    for i in g.nodes_of("Conv"):
        weight = g.inputs(i, 1)
        dq = g.dq_behind(weight[0]) if weight else None
        shape = g.shape(weight[0]) if dq is not None else None
        if not shape or len(shape) < 3 or shape[0] is None or shape[1] is None:
            continue
        out_ch, in_ch = shape[0], shape[1]  # as ModelOpt reads them: IC per group
        kernel = list(attr(g.nodes[i], "kernel_shape", None) or shape[2:])
        fp8 = g.qinfo[dq].qtype == T.FLOAT8E4M3FN
        if _small_conv(g, i, out_ch, in_ch, attr(g.nodes[i], "group", 1), kernel, fp8):
            message = (
                f"quantized Conv with {in_ch} input / {out_ch} output channels ({'<= 16' if fp8 else '< 16'})"
                " gains nothing from Tensor Cores and may run slower than fp16."
            )
            yield Hit(i, message, "exclude this node from quantization.")


def _is_residual_of_other_conv(g: Graph, i: int, tensor: str) -> bool:
    """True when node i is an Add whose other input comes straight from a Conv: `tensor` is its residual."""
    if g.op(i) != "Add":
        return False
    others = [t for t in g.nodes[i].input if t != tensor]
    return len(others) == 1 and g.op(g.producer.get(others[0])) == "Conv"


def _fuses_into_epilogue(g: Graph, i: int) -> bool:
    op = g.op(i)
    if op in ACTIVATIONS or op == "Add":
        return True
    if op == "Mul":  # SiLU / Swish: x * sigmoid(x)
        return any(g.op(g.producer.get(t)) in ("Sigmoid", "HardSigmoid") for t in g.nodes[i].input)
    return False


def _small_conv(g: Graph, i: int, out_ch: int, in_ch: int, group: int, kernel: list[int], fp8: bool) -> bool:
    """ModelOpt's find_nodes_from_convs_to_exclude for a quantized Conv: True when it should not be."""
    if fp8:
        return out_ch <= 16 or in_ch <= 16
    if out_ch >= 16 and in_ch >= 16:
        return False
    first_layer = any(_reaches_graph_input(g, t) for t in g.inputs(i, 0))
    if (
        group == 1
        and (out_ch % 8 == 0 or in_ch % 8 == 0)
        and (first_layer or out_ch >= 16 or in_ch >= 16)
        and len(set(kernel)) == 1
    ):
        return False
    return not (group > 1 and out_ch % 8 == 0 and all(k >= 3 for k in kernel))


def _reaches_graph_input(g: Graph, tensor: str) -> bool:
    for _ in range(4):
        if tensor in g.graph_inputs:
            return True
        p = g.producer.get(tensor)
        if p is None or g.op(p) not in (Q, DQ, "Identity"):
            return False
        tensor = g.nodes[p].input[0]
    return False


@rule("fp8-conv", "warning", "no FP8 on ConvTranspose or grouped convs (no FP8 kernels)")
def _fp8_conv(g: Graph) -> Iterator[Hit]:
    for i in g.nodes_of("ConvTranspose", "Conv"):
        dqs = [g.dq_behind(t) for t in g.inputs(i, 0, 1)]
        if not any(d is not None and g.qinfo[d].qtype == T.FLOAT8E4M3FN for d in dqs):
            continue
        group = attr(g.nodes[i], "group", 1)
        if g.op(i) == "ConvTranspose":
            what = "FP8 ConvTranspose"
        elif group > 1 and (shape := g.shape(g.inputs(i, 1)[0])) and shape[1] is not None and shape[1] > 16:
            what = f"FP8 grouped conv (group {group}, {shape[1]} channels per group)"
        else:
            continue
        message = f"{what}: NVIDIA documents no FP8 kernel for it; TensorRT falls back to another precision or fails."
        yield Hit(i, message,
                  "leave it in floating point (trtq quantize --precision fp8 does: FP16 under --high-precision).")
