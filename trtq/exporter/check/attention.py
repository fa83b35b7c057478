"""Attention rules: where Q/DQ must (not) sit for TensorRT's fused multi-head attention."""

from __future__ import annotations

import re
from collections.abc import Iterator

from trtq.exporter.check.graph import DQ, MHA_CHAIN, Graph, Q, T
from trtq.exporter.check.registry import Hit, rule
from trtq.targets import trt_at_least

__all__: list[str] = []  # the module's rules register themselves in registry.REGISTRY


@rule("mha-softmax-qdq", "warning", "no Q/DQ on Softmax's input or the mask/scale ops before it")
def _mha_softmax_qdq(g: Graph) -> Iterator[Hit]:
    fix = "remove this Q/DQ pair; in attention quantize only the MatMul inputs and the Softmax output."
    for s in g.nodes_of("Softmax"):
        bmm1, dqs = _softmax_chain(g, s)
        direct = g.producer.get(g.nodes[s].input[0])
        for dq in dqs:
            if dq == direct and bmm1 is None:
                message = (
                    f"Q/DQ on the input of Softmax '{g.name(s)}': TensorRT runs softmax in floating point, "
                    "so it only adds work (and would break fused attention)."
                )
            elif dq == direct:
                message = f"Q/DQ on the input of Softmax '{g.name(s)}' breaks fused attention (MHA)."
            elif bmm1 is not None:
                message = (
                    f"Q/DQ between attention MatMul '{g.name(bmm1)}' and Softmax '{g.name(s)}' (on the mask "
                    "or scale ops) breaks fused attention (MHA)."
                )
            else:
                continue
            yield Hit(dq, message, fix)


@rule("mha-int8-placement", "info", "INT8 attention has Q/DQ where fused MHA needs it")
def _mha_int8_placement(g: Graph) -> Iterator[Hit]:
    fix = "quantize both BMM1 inputs, the Softmax output and BMM2's value input, or none of them."
    for s in g.nodes_of("Softmax"):
        bmm1, _ = _softmax_chain(g, s)
        bmm2 = _softmax_consumer_matmul(g, s)
        if bmm1 is None or bmm2 is None or len(g.inputs(bmm1, 0, 1)) < 2 or len(g.inputs(bmm2, 0, 1)) < 2:
            continue
        query, key = (g.dq_behind(t) for t in g.inputs(bmm1, 0, 1))
        probs, value = (g.dq_behind(t) for t in g.inputs(bmm2, 0, 1))
        slots = {"before BMM1 (query)": query, "before BMM1 (key)": key, "after Softmax": probs}
        slots["before BMM2 (value)"] = value
        present = [d for d in slots.values() if d is not None]
        if not present or any(g.qinfo[d].qtype != T.INT8 for d in present):
            continue  # not INT8 attention
        missing = [where for where, d in slots.items() if d is None]
        if missing:
            message = (
                f"INT8 attention '{g.name(bmm1)}' -> '{g.name(s)}' -> '{g.name(bmm2)}' lacks Q/DQ "
                f"{', '.join(missing)}; TensorRT fuses INT8 MHA only with all of them."
            )
            yield Hit(bmm1, message, fix)
        else:
            yield from _mha_shape_hits(g, bmm1)


def _softmax_chain(g: Graph, softmax: int) -> tuple[int | None, list[int]]:
    """Walk back from a Softmax through mask/scale ops and Q/DQ: (the first attention MatMul, DQs met)."""
    bmm1, dqs, seen = None, [], set()
    stack = [g.nodes[softmax].input[0]]
    while stack and len(seen) < 32:
        p = g.producer.get(stack.pop())
        if p is None or p in seen:
            continue
        seen.add(p)
        op = g.op(p)
        if op == "MatMul":
            bmm1 = p if bmm1 is None else bmm1
        elif op == DQ:
            dqs.append(p)
            if not g.is_const(g.nodes[p].input[0]):
                stack.append(g.nodes[p].input[0])
        elif op == Q or op in MHA_CHAIN:
            stack.extend(t for t in g.nodes[p].input[: 1 if op == Q else None] if t and not g.is_const(t))
    return bmm1, dqs


def _softmax_consumer_matmul(g: Graph, softmax: int) -> int | None:
    """The MatMul reading the Softmax output as its first input, directly or through Q/DQ or Cast."""
    frontier = [g.nodes[softmax].output[0]]
    for _ in range(3):
        following = []
        for tensor in frontier:
            for c in g.consumers.get(tensor, []):
                if g.op(c) == "MatMul" and g.nodes[c].input[0] == tensor:
                    return c
                if g.op(c) in (Q, DQ, "Cast"):
                    following.append(g.nodes[c].output[0])
        frontier = following
    return None


def _mha_shape_hits(g: Graph, bmm1: int) -> Iterator[Hit]:
    query, key = (g.shape(t) for t in g.inputs(bmm1, 0, 1))
    if not query or not key or len(query) < 2 or len(key) < 2:
        return
    head, seq_q, seq_kv = query[-1], query[-2], key[-1]
    problems = (
        [f"head size {head} (INT8 fused MHA needs 16, 32 or 64)"] if head not in (None, 16, 32, 64) else []
    )
    problems += [
        f"sequence length {n} (> 512)" for n in dict.fromkeys((seq_q, seq_kv)) if n is not None and n > 512
    ]
    if problems:
        message = f"INT8 attention at '{g.name(bmm1)}' has {', '.join(problems)}; TensorRT will not fuse it."
        fix = "leave this attention's BMMs unquantized (fp16 fused MHA), or use FP8 on a target that has it."
        yield Hit(bmm1, message, fix)


@rule("orin-int8-attention", "warning", "Orin / TensorRT 10.3: INT8 attention gets no fused attention kernel")
def _orin_int8_attention(g: Graph) -> Iterator[Hit]:
    if g.target is None or g.target.name != "orin" or trt_at_least(g.trt, "10.16"):
        return
    bmms: list[int] = []
    for s in g.nodes_of("Softmax"):
        bmm1, _ = _softmax_chain(g, s)
        bmm2 = _softmax_consumer_matmul(g, s)
        for bmm in (bmm1, bmm2):
            if bmm is not None and bmm not in bmms and any(
                (d := g.dq_behind(t)) is not None and g.qinfo[d].qtype == T.INT8 for t in g.inputs(bmm, 0, 1)
            ):
                bmms.append(bmm)
    if bmms:
        names = [g.name(b) for b in bmms]
        message = (
            f"{len(bmms)} attention MatMul(s) run INT8 ({', '.join(names[:4])}{', ...' if len(names) > 4 else ''}); "
            f"TensorRT {g.trt or '10.3'} on Orin has no INT8 fused attention kernel (NVIDIA/TensorRT#4167, open): "
            "attention runs unfused, often slower than FP16 fused attention."
        )
        pattern = "^(" + "|".join(re.escape(n) for n in names) + ")$"
        fix = (f"quantize again with --exclude '{pattern}' (FP16 fused attention; fidelity on all-MiniLM-L6-v2 "
               "in the README, section `trtq check`), or build with TensorRT 10.16+ (JetPack 7.2).")
        yield Hit(bmms[0], message, fix)
