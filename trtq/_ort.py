"""ONNX Runtime sessions over in-memory models, with intermediate tensors exposed as outputs."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import onnx

from trtq._shapes import tensor_types
from trtq.errors import TrtqError

__all__ = ["DEVICES", "current_providers", "has_low_precision_types", "has_qdq", "make_session", "outputs_added",
           "providers", "session_device"]

DEVICES = ("cuda", "cpu")
GPU_FIX = ("install onnxruntime-gpu in place of onnxruntime: pip uninstall -y onnxruntime && pip install "
           "'trtq[gpu]' (README: Installation), on a machine with CUDA; or pass --device cpu.")

# The device `make_session` runs on when none is passed: set for a block by `session_device`.
_DEVICE: contextvars.ContextVar[str | None] = contextvars.ContextVar("trtq_ort_device", default=None)

logger = logging.getLogger(__name__)

_LOW_PRECISION = {
    onnx.TensorProto.FLOAT8E4M3FN,
    onnx.TensorProto.FLOAT8E4M3FNUZ,
    onnx.TensorProto.FLOAT8E5M2,
    onnx.TensorProto.FLOAT8E5M2FNUZ,
    onnx.TensorProto.INT4,
    onnx.TensorProto.UINT4,
}


def has_low_precision_types(model: onnx.ModelProto) -> bool:
    """True when the graph holds FP8 or INT4 tensors, which ORT's graph optimisers cannot fuse."""
    return any(init.data_type in _LOW_PRECISION for init in model.graph.initializer) or any(
        attr.name == "to" and attr.i in _LOW_PRECISION for n in model.graph.node for attr in n.attribute
    ) or any(_zero_point_type(n, model) in _LOW_PRECISION for n in model.graph.node if n.op_type == "QuantizeLinear")


def has_qdq(model: onnx.ModelProto) -> bool:
    """True when the main graph holds a QuantizeLinear or DequantizeLinear node."""
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)


def _zero_point_type(node: onnx.NodeProto, model: onnx.ModelProto) -> int | None:
    if len(node.input) < 3:
        return None
    for init in model.graph.initializer:
        if init.name == node.input[2]:
            return init.data_type
    return None


def providers(device: str | None = None) -> list[str]:
    """ONNX Runtime execution providers for `device` (cuda | cpu | None: cuda when available, else cpu).

    "cuda" needs onnxruntime-gpu (its CUDAExecutionProvider); asked for explicitly without it, this
    raises a TrtqError naming the package. CPU stays last in the list, so an op the CUDA provider
    lacks runs on the CPU.
    """
    import onnxruntime as ort

    if device is not None and device not in DEVICES:
        raise TrtqError(f"unknown device {device!r}.", f"use --device with one of: {', '.join(DEVICES)}.")
    available = ort.get_available_providers()
    has_cuda = "CUDAExecutionProvider" in available
    if device == "cuda" and not has_cuda:
        raise TrtqError(f"onnxruntime {ort.__version__} has no CUDA execution provider "
                        f"(it has: {', '.join(available)}).",
                        GPU_FIX)
    if device == "cpu" or not has_cuda:
        return ["CPUExecutionProvider"]
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


def current_providers() -> list[str]:
    """The providers `make_session` uses here now (the enclosing `session_device`, else the default)."""
    return providers(_DEVICE.get())


@contextlib.contextmanager
def session_device(device: str | None) -> Iterator[list[str]]:
    """Run every `make_session` of the block on `device` (validated now); yields the providers chosen."""
    chosen = providers(device)
    token = _DEVICE.set("cuda" if chosen[0] == "CUDAExecutionProvider" else "cpu")
    try:
        yield chosen
    finally:
        _DEVICE.reset(token)


@contextlib.contextmanager
def outputs_added(model: onnx.ModelProto, names: Sequence[str]) -> Iterator[onnx.ModelProto]:
    """`model` with the tensors `names` added as graph outputs for the block, restored afterwards.

    Mutating in place for the duration avoids copying the weights (a model-sized allocation).
    """
    existing = {o.name for o in model.graph.output}
    extra = [n for n in dict.fromkeys(names) if n not in existing]
    types = tensor_types(model, extra) if extra else {}
    model.graph.output.extend(
        onnx.helper.make_tensor_value_info(n, types.get(n) or onnx.TensorProto.FLOAT, None) for n in extra
    )
    try:
        yield model
    finally:
        if extra:
            del model.graph.output[-len(extra):]


def make_session(
    model: onnx.ModelProto,
    *,
    outputs: Sequence[str] = (),
    optimize: bool | None = None,
    threads: int | None = None,
    exact_qdq: bool | None = None,
    device: str | None = None,
    arena: bool = True,
):
    """An ORT session for `model`, exposing `outputs` besides the graph outputs.

    Args:
        model: the graph to run.
        outputs: intermediate tensor names to expose as extra outputs.
        optimize: run ORT's graph optimisations (None: on, unless the graph holds FP8/INT4 tensors,
            whose QDQ fusions ORT's CPU optimisers do not handle).
        threads: intra-op threads (None: ORT's default).
        A graph holding float16 / bfloat16 tensors runs as `trtq._half.emulate_half` rewrites it, with
        half-precision rounding after every op (ORT's CPU would otherwise run float16 chains in float32).
        exact_qdq: run activation Q/DQ exactly as written (overrides `optimize`): basic optimisations
            only, with ORT's QDQ fusions off ("session.disable_quant_qdq"). Weight DQs are still
            constant-folded, so results depend neither on the batch size nor on `outputs`; full
            optimisation would swap in ORT's own INT8 / INT4 kernels (e.g. MatMulNBits). None (the
            default): exact whenever the graph holds a QuantizeLinear or DequantizeLinear. ORT's
            fused INT8 CPU kernels are not what TensorRT runs, and on x86 CPUs without VNNI their
            u8s8 dot products saturate in int16: EfficientNet-Lite0 INT8 measured 3.1 dB that way
            against 18.3 dB exact (AMD EPYC, AVX2 only). Pass False to time ORT's own kernels.
        device: cuda | cpu (None: the block's `session_device`, else cuda when onnxruntime-gpu's CUDA
            execution provider is available, else cpu); see `providers`.
        arena: keep ORT's CPU memory arena (fastest). False frees each run's buffers after the run, for
            sessions held side by side (the sensitivity analysis: EfficientNet-Lite0's peak 1.27 -> 0.73 GB
            with 4-sample runs).
    """
    if any(node.domain == "trtq" for node in model.graph.node):  # trtq.plugins.trt_face.DOMAIN
        raise TrtqError("this graph holds trtq TensorRT plugin nodes (written with --plugins): ONNX Runtime "
                        "cannot run them.",
                        "run ONNX Runtime (compare, calibrate) on the graph written without --plugins, whose "
                        "standard-ONNX face computes the same numbers; build the plugin graph with TensorRT.")
    import onnxruntime as ort

    from trtq._half import emulate_half, has_half

    if has_half(model):  # ORT's CPU runs float16 chains in float32: emulate half storage (trtq._half)
        model = emulate_half(model)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.enable_cpu_mem_arena = arena
    if optimize is None:
        optimize = not has_low_precision_types(model)
    if exact_qdq is None:
        exact_qdq = has_qdq(model)
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    if exact_qdq:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.add_session_config_entry("session.disable_quant_qdq", "1")
    if threads:
        opts.intra_op_num_threads = threads
    chosen = providers(device or _DEVICE.get())
    with outputs_added(model, outputs) as exposed:
        if exposed.ByteSize() < 2**31 - 1:
            return ort.InferenceSession(exposed.SerializeToString(), opts, providers=chosen)
        with tempfile.TemporaryDirectory() as scratch:  # models over 2 GB need external data on disk
            path = Path(scratch) / "model.onnx"
            onnx.save_model(exposed, str(path), save_as_external_data=True, location="model.onnx.data")
            # save_model moved the weights out of `exposed`: load them back before it is restored
            onnx.load_external_data_for_model(exposed, scratch)
            return ort.InferenceSession(os.fspath(path), opts, providers=chosen)
