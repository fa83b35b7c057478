"""Where Q/DQ nodes go: TensorRT's placement recommendations turned into a plan.

Rules (shared/reference/anchors-trt-modelopt.md §2.3; DESIGN.md "TensorRT rules"):
- INT8 / FP8: every input of Conv, ConvTranspose, Gemm and MatMul is quantized: constant weights
  per-channel (Conv axis 0, ConvTranspose axis 1, Gemm/MatMul the output-channel axis), activations
  per-tensor; biases stay in floating point.
- Outputs of weighted ops are never quantized (TensorRT fuses conv + bias + activation and writes the
  output in the precision of the next consumer's input).
- The residual input of an Add fed directly by a quantized Conv is quantized, so TensorRT fuses the
  addition into the convolution (conv + add fusion); Adds after MatMul/Gemm (bias, attention mask,
  transformer residuals) stay in floating point.
- Nothing is inserted between Conv and its activation, on the attention mask Add, or on Softmax's
  input: only weighted-op inputs and conv residuals get Q/DQ, so those fusions stay intact.
- INT4 is weight-only: constant MatMul/Gemm weights, block-wise along the reduction axis K, when K is
  a multiple of the block size, and when the weight has what the TensorRT version's ONNX parser needs of
  a 4-bit tensor (`trtq.targets.TrtRelease.int4_even`: 10.3 an even last dimension, e.g. not a
  [128, 11] MatMul weight; later versions an even element count; no version given: the 10.3 rule).
- FP8 leaves convolutions with at most 16 input or output channels per group (depthwise convs among
  them) or a kernel volume over 32 in floating point: TensorRT has no FP8 tactic that pays for them
  (the same limits ModelOpt applies, anchors-trt-modelopt.md §1.2), and their few-term dot products
  lose the most to E4M3's 3-bit mantissa. FP8 also leaves ConvTranspose and grouped convolutions
  (group > 1, any channel count) in floating point: NVIDIA documents no FP8 kernels for them (issue 11's
  reading of the TensorRT docs); they run in the high precision (FP16 under `--high-precision fp16`).
A tensor feeding several quantized consumers gets one shared Q/DQ (one scale), as TensorRT expects.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from trtq.precision import DEFAULT_BLOCK_SIZE, TABLE, WEIGHTED_OPS, Precision
from trtq.targets import TRT_RELEASES

__all__ = ["ROTATION_MARKER", "QuantPlan", "WeightSlot", "node_names", "plan_quantization"]

ROTATION_MARKER = "trtq_rotation"  # nodes the rotate pass inserts: constant orthogonal transforms
_FLOAT_TYPES = (np.float32, np.float16)


@dataclass(frozen=True)
class WeightSlot:
    """A constant weight to quantize: its tensor, the channel axis and, for INT4, the block axis."""

    tensor: str
    axis: int
    block_axis: int | None = None


@dataclass
class QuantPlan:
    """Which tensors get Q/DQ and for which consumers.

    Attributes:
        activations: activation tensor -> [(consumer node name, input index)] that read its DQ output.
        weights: (weight tensor, axis) -> WeightSlot plus consumers.
        skipped: nodes left in floating point, with the reason.
        residual_adds: Add nodes whose residual input is quantized for conv + add fusion.
        quantized_nodes: the weighted ops that get quantized inputs.
        int4_inputs: INT4 weight tensor -> the activation it multiplies (for activation-aware clipping).
    """

    activations: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    weights: dict[WeightSlot, list[tuple[str, int]]] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)
    residual_adds: list[str] = field(default_factory=list)
    quantized_nodes: list[str] = field(default_factory=list)
    int4_inputs: dict[str, str] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.activations and not self.weights


def plan_quantization(model: onnx.ModelProto, precision: str, exclude: Sequence[str] = (),
                      block_size: int = DEFAULT_BLOCK_SIZE, trt: str | None = None) -> QuantPlan:
    """Decide every Q/DQ of `model` for `precision` (a `trtq.precision.PRECISIONS` name) under TensorRT's rules
    (those of TensorRT version `trt`, or of every version when None)."""
    spec = TABLE[precision]
    graph = gs.import_onnx(model)
    patterns = [re.compile(p) for p in exclude]
    plan = QuantPlan()
    names = node_names(graph)
    for node in graph.nodes:
        if node.op not in WEIGHTED_OPS:
            continue
        name = names[id(node)]
        if name.startswith(ROTATION_MARKER + "/"):
            plan.skipped.append({"node": name, "op": node.op,
                                 "reason": "online Hadamard inserted by the rotate pass (kept in floating point)"})
            continue
        if any(p.search(name) for p in patterns):
            plan.skipped.append({"node": name, "op": node.op, "reason": "matched --exclude"})
            continue
        reason = _small_conv_skip_reason(node, spec) if spec.small_convs_float else None
        if reason:
            plan.skipped.append({"node": name, "op": node.op, "reason": reason})
            continue
        even = TRT_RELEASES[trt].int4_even if trt is not None else "last-dim"
        planned = _plan_block(node, name, block_size, spec, plan, even) if spec.blockwise \
            else _plan_weighted(node, name, plan)
        if planned:
            plan.quantized_nodes.append(name)
    if spec.activations:
        _plan_residuals(graph, names, set(plan.quantized_nodes), patterns, plan)
    return plan


def node_names(graph: gs.Graph) -> dict[int, str]:
    """Node names (`trtq.quantize` names unnamed nodes `<op>_<index>` before planning)."""
    return {id(n): n.name or f"{n.op}_{i}" for i, n in enumerate(graph.nodes)}


def _is_float(tensor: gs.Tensor) -> bool:
    dtype = tensor.dtype if not isinstance(tensor, gs.Constant) else tensor.values.dtype
    if dtype is None:  # no inferred type: weighted-op inputs are floating point in practice
        return True
    try:
        return np.dtype(dtype) in _FLOAT_TYPES
    except TypeError:
        return False


def _constant(tensor: gs.Tensor) -> gs.Constant | None:
    """The constant behind `tensor` (an initializer, or a Constant node's value)."""
    if isinstance(tensor, gs.Constant):
        return tensor
    if len(tensor.inputs) == 1 and tensor.inputs[0].op == "Constant":
        value = tensor.inputs[0].attrs.get("value")
        return value if isinstance(value, gs.Constant) else None
    return None


def _weight_axis(node: gs.Node, index: int, rank: int) -> int | None:
    """The output-channel axis of weight input `index` of `node` (None: quantize per-tensor)."""
    if node.op == "Conv":
        return 0 if index == 1 else None
    if node.op == "ConvTranspose":
        return 1 if index == 1 and node.attrs.get("group", 1) == 1 else None
    if node.op == "Gemm":
        if index == 1:
            return 0 if node.attrs.get("transB", 0) else 1
        return 1 if node.attrs.get("transA", 0) else 0
    if node.op == "MatMul" and rank >= 2:
        return rank - 1 if index == 1 else rank - 2
    return None


def _small_conv_skip_reason(node: gs.Node, spec: Precision) -> str | None:
    """Why a convolution stays in floating point in `spec` (FP8: few channels, large kernel), or None."""
    if node.op not in ("Conv", "ConvTranspose") or len(node.inputs) < 2:
        return None
    const = _constant(node.inputs[1])
    if const is None or const.values.ndim < 3:
        return None
    shape = const.values.shape
    group = int(node.attrs.get("group", 1))
    c_out, c_in = (shape[0], shape[1]) if node.op == "Conv" else (shape[1] * group, shape[0] // group)
    per_group = (c_in, c_out // group)
    if node.op == "ConvTranspose":
        return f"{spec.name.upper()} ConvTranspose: NVIDIA documents no {spec.name.upper()} deconvolution kernel"
    if min(per_group) <= 16:
        return f"{spec.name.upper()} conv with {per_group[0]} input / {per_group[1]} output channels per group (<= 16)"
    if group > 1:
        return (f"{spec.name.upper()} grouped conv (group {group}, {per_group[0]} channels per group > 16): "
                f"NVIDIA documents no {spec.name.upper()} grouped-convolution kernel")
    volume = int(np.prod(shape[2:]))
    if volume > 32:
        return f"{spec.name.upper()} conv with kernel volume {volume} (> 32)"
    return None


def _plan_weighted(node: gs.Node, name: str, plan: QuantPlan) -> bool:
    planned = False
    n_inputs = 2 if node.op in ("Conv", "ConvTranspose", "Gemm") else len(node.inputs)
    for index, tensor in enumerate(node.inputs[:n_inputs]):
        if tensor is None or not tensor.name or not _is_float(tensor):
            continue
        planned = True
        const = _constant(tensor)
        if const is None:
            plan.activations.setdefault(tensor.name, []).append((name, index))
            continue
        axis = _weight_axis(node, index, const.values.ndim)
        slot = WeightSlot(tensor.name, -1 if axis is None else axis)
        plan.weights.setdefault(slot, []).append((name, index))
    return planned


def _plan_block(node: gs.Node, name: str, block_size: int, spec: Precision, plan: QuantPlan,
                even: str = "last-dim") -> bool:
    """Block-wise weight-only quantization (INT4) of `node`'s constant 2-D weight."""
    if node.op not in spec.weighted_ops:
        plan.skipped.append({"node": name, "op": node.op,
                             "reason": f"{spec.name.upper()} is weight-only on {'/'.join(spec.weighted_ops)}"})
        return False
    index = 1
    const = _constant(node.inputs[1]) if len(node.inputs) > 1 else None
    if const is None or const.values.ndim != 2 or not _is_float(node.inputs[1]):
        plan.skipped.append({"node": name, "op": node.op, "reason": "no constant 2-D weight (activation x activation)"})
        return False
    trans_b = node.op == "Gemm" and node.attrs.get("transB", 0)
    k_axis = 1 if trans_b else 0
    k = const.values.shape[k_axis]
    if k % block_size:
        plan.skipped.append({"node": name, "op": node.op,
                             "reason": f"reduction size {k} is not a multiple of block size {block_size}"})
        return False
    shape = const.values.shape
    need, size = ("last dimension", shape[-1]) if even == "last-dim" else ("element count", int(np.prod(shape)))
    if size % 2:
        plan.skipped.append({"node": name, "op": node.op,
                             "reason": f"odd {need} {size} of the {list(shape)} weight: TensorRT's ONNX parser "
                                       f"packs 4-bit tensors in pairs and needs an even {need}"})
        return False
    slot = WeightSlot(node.inputs[index].name, 1 - k_axis, block_axis=k_axis)
    plan.weights.setdefault(slot, []).append((name, index))
    # the activation whose input channels are the weight's K: MatMul's A, Gemm's A unless transposed
    transposed_a = node.op == "Gemm" and node.attrs.get("transA", 0)
    if not transposed_a and _constant(node.inputs[0]) is None:
        plan.int4_inputs.setdefault(slot.tensor, node.inputs[0].name)
    return True


def _plan_residuals(graph: gs.Graph, names: dict[int, str], quantized: set[str],
                    patterns: list[re.Pattern[str]], plan: QuantPlan) -> None:
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    for node in graph.nodes:
        if node.op != "Add" or len(node.inputs) != 2 or any(_constant(t) is not None for t in node.inputs):
            continue
        name = names[id(node)]
        if any(p.search(name) for p in patterns):
            continue
        producers = [t.inputs[0] if t.inputs else None for t in node.inputs]
        fusable = [
            i for i, p in enumerate(producers)
            if p is not None and p.op == "Conv" and names[id(p)] in quantized and len(node.inputs[i].outputs) == 1
        ]
        if not fusable:
            continue
        if len(fusable) == 2:  # both branches are convs: TensorRT fuses the later one, quantize the earlier
            residual = min(fusable, key=lambda i: order[id(producers[i])])
        else:
            residual = 1 - fusable[0]
        tensor = node.inputs[residual]
        if not _is_float(tensor):
            continue
        plan.activations.setdefault(tensor.name, []).append((name, residual))
        plan.residual_adds.append(name)
