"""`tensorrt.plugin` definitions of trtq's plugins, with ahead-of-time Triton kernels.

Needs TensorRT >= 10.16 (its Python bindings ship `tensorrt.plugin`; 10.3 does not), Triton, and a
GPU when the engine is built. Call `register()` once in the process that parses the plugin-face ONNX
file (`trtq quantize --plugins`) and builds the engine:

    import tensorrt as trt
    from trtq.plugins import trt_plugin
    trt_plugin.register()                # trtq::CodebookDequantize v1, trtq::LogFakeQuantize v1
    ... trt.OnnxParser(network, logger).parse_from_file("model.plugins.onnx") ...

Each plugin has only an AOT implementation (`@trtp.aot_impl`): at build time it returns the PTX of
`trtq.plugins.triton_kernels` specialised on the node's attributes (bits, group size, K; the log
constants), which TensorRT bakes into the engine. The engine then runs in TensorRT's C++ runtime
(trtexec, any application) with no Python, Triton or trtq, which is the point of AOT; attributes are
not serialized ("Plugin attributes are not serialized into the engine when using an AOT
implementation"), they are constants of the PTX. The ONNX parser finds the plugin by the node's
op_type and its ``plugin_namespace`` attribute ("trtq"); version "1" is the only one QDP creators have.

Registered names and versions equal the C++ plugins' (trtq/plugins/cpp): load one of the two in a
process, not both.

Inputs and output, attribute by attribute, are those of the node `trtq.plugins.trt_face` writes:
    CodebookDequantize(codes int32 [N, W], codebook float16 [R, 2**b], scales float16 [N, n_groups];
                       bits, group_size, k, out_dtype) -> Wc float32 | float16 [N, k]
    LogFakeQuantize(x float32 | float16; bits, scale, step, shift) -> x̂ like x

This module must not use ``from __future__ import annotations``: `tensorrt.plugin` validates the
decorated functions' annotations as classes.
"""

from typing import Any

try:
    import tensorrt as trt
    import tensorrt.plugin as trtp
except ImportError as exc:  # tensorrt absent, or 10.3 (no tensorrt.plugin)
    raise ImportError(
        "trtq.plugins.trt_plugin needs TensorRT's Python bindings >= 10.16 (tensorrt.plugin); "
        "on TensorRT 10.3 (JetPack 6) build the C++ plugin in trtq/plugins/cpp instead"
    ) from exc

from trtq.plugins import triton_kernels as _kernels
from trtq.plugins.trt_face import CODEBOOK_OP, DOMAIN, LOG_OP

__all__ = ["PLUGIN_IDS", "PTX_VERSION", "TARGET", "register"]

PLUGIN_IDS = (f"{DOMAIN}::{CODEBOOK_OP}", f"{DOMAIN}::{LOG_OP}")
_FLOAT16 = 10  # ONNX TensorProto.FLOAT16, the out_dtype attribute's value for a float16 output
_AotResult = tuple[str | bytes, str | bytes, trtp.KernelLaunchParams, trtp.SymExprs]
_registered: list[str] = []


# The GPU Triton compiles the AOT kernels for: None = this process's GPU, the one the engine build runs on
# (a `triton.backends.compiler.GPUTarget` compiles for another, e.g. in tests without a GPU).
TARGET: Any = None
# PTX ISA version of the AOT kernels (None: the newest Triton's ptxas knows). The driver that runs the engine
# JITs only PTX as new as its CUDA: e.g. 85 for a CUDA 12.5 driver (a newer Triton emits 8.8 and up).
PTX_VERSION: int | None = None


def _dtype_name(dtype: "trt.DataType") -> str:
    return "float16" if dtype == trt.float16 else "float32"


def _codebook_desc(codes: trtp.TensorDesc, codebook: trtp.TensorDesc, scales: trtp.TensorDesc, bits: int,
                   group_size: int, k: int, out_dtype: int) -> trtp.TensorDesc:
    """Output Wc [N, k]: N = scales rows, float16 when out_dtype is ONNX FLOAT16, else float32."""
    dtype = trt.float16 if out_dtype == _FLOAT16 else trt.float32
    return trtp.from_shape_expr((scales.shape_expr[0], k), dtype=dtype)


def _codebook_aot(codes: trtp.TensorDesc, codebook: trtp.TensorDesc, scales: trtp.TensorDesc, bits: int,
                  group_size: int, k: int, out_dtype: int, outputs: tuple[trtp.TensorDesc],
                  tactic: int) -> _AotResult:
    """PTX of the dequantize kernel for this (bits, group_size, k, output type); grid over [N, k]."""
    kernel = _kernels.compile_ptx("dequant", target=TARGET, ptx_version=PTX_VERSION,
                                  out_dtype=_dtype_name(outputs[0].dtype),
                                  BITS=bits, GROUP=group_size, K=k)
    rows = scales.shape_expr[0]
    block_n, block_k = _kernels.DEQUANT_BLOCK
    launch = trtp.KernelLaunchParams()
    launch.grid_x = -(-k // block_k)
    launch.grid_y = trtp.cdiv(rows, block_n)
    launch.block_x = kernel.num_warps * 32
    launch.shared_mem = kernel.shared
    # codebook row stride: 0 for one shared codebook (R = 1), 2**bits for one per row (R = N)
    stride = trtp.min(codebook.shape_expr[0] - 1, 1) * (1 << bits)
    extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(rows), trtp.SymInt32(stride)])
    return kernel.name, kernel.ptx, launch, extra


def _log_desc(x: trtp.TensorDesc, bits: int, scale: float, step: float, shift: float) -> trtp.TensorDesc:
    """Output like the input."""
    return x.like()


def _log_aot(x: trtp.TensorDesc, bits: int, scale: float, step: float, shift: float,
             outputs: tuple[trtp.TensorDesc], tactic: int) -> _AotResult:
    """PTX of the log fake-quantize kernel with this tensor's constants; one program per LOG_BLOCK."""
    k1, k0, k2 = _kernels.log_constants(scale, step)
    kernel = _kernels.compile_ptx("log", target=TARGET, ptx_version=PTX_VERSION, out_dtype=_dtype_name(x.dtype),
                                  SCALE=scale,
                                  SHIFT=shift, K1=k1, K0=k0, K2=k2, LEVELS=float((1 << bits) - 1))
    count = x.shape_expr.numel()
    launch = trtp.KernelLaunchParams()
    launch.grid_x = trtp.cdiv(count, _kernels.LOG_BLOCK)
    launch.block_x = kernel.num_warps * 32
    launch.shared_mem = kernel.shared
    return kernel.name, kernel.ptx, launch, trtp.SymIntExprs.from_tuple([trtp.SymInt32(count)])


def register(lazy: bool = False) -> list[str]:
    """Register trtq's plugins with TensorRT (once per process) and return their ids.

    Args:
        lazy: defer the native registration to the first use (`tensorrt.plugin`'s ``lazy_register``);
            the ONNX parser needs the default, an immediate registration.
    """
    if _registered:
        return list(_registered)
    for plugin_id, desc, aot in ((PLUGIN_IDS[0], _codebook_desc, _codebook_aot), (PLUGIN_IDS[1], _log_desc, _log_aot)):
        trtp.register(plugin_id, lazy_register=lazy)(desc)
        trtp.aot_impl(plugin_id)(aot)
        _registered.append(plugin_id)
    return list(_registered)
