"""Triton kernels of the TensorRT face: codebook dequantize, fused dequantize-GEMM, log fake quantize.

The same `@triton.jit` functions serve three callers: the torch launchers below (a GPU without
TensorRT, or Triton's CPU interpreter with ``TRITON_INTERPRET=1`` set before `triton` is first imported
in the process, which is how the tests run them), `compile_ptx` (ahead-of-time PTX for the `tensorrt.plugin` AOT
implementation, `trtq.plugins.trt_plugin`), and the benchmark (bench/plugin_kernels.py).

Storage read by the kernels (the format is `trtq.plugins`; the codes container is the plugin face's,
`trtq.plugins.trt_face`):
    words     int32 [N, W]   row n's packed b-bit code stream, little-endian, zero-padded to W words;
                             code i of a row = bits [b·i, b·i + b) of the row: word (b·i) // 32, bit
                             offset (b·i) % 32, and for b = 3 the bits past 32 from the next word
    codebook  float16 [R, 2**b]   R = 1 (row stride 0) or R = N (row stride 2**b)
    scales    float16 [N, ceil(K/G)]
    Wc[n, k] = float32(codebook[r(n), code]) · float32(scales[n, k // G])     (one fp32 multiply)

Every kernel masks rows >= N and columns >= K, so ragged last groups and K not a multiple of the
block cost nothing special. Fused GEMM (`codebook_matmul`): ``y[m, n] = Σ_k x[m, k] · Wc[n, k]``
(``x @ W`` of a MatMul whose weight W [K, N] is Wcᵀ), the tile of Wc dequantized in registers, so the
weight crosses memory packed (b/8 bytes per weight plus scales) instead of as fp16/fp32.

Log fake quantize (`log_fake_quantize`), per element, constants k1 = −1/(a·ln2), k0 = ln(s)/(a·ln2),
k2 = −a·ln2 rounded to float32 as `reference.quantize_log` does:
    y = max(x + c, 0);  q = round_half_even(k1·ln(y) + k0);  x̂ = s·exp(k2·max(q, 0)) − c if q < 2**b − 1
    else −c
Kernels compile without FMA contraction (``enable_fp_fusion=False``), as the reference rounds the
multiply and the add apart. On a GPU `ln`/`exp` are the device's (within 2 ulp), so a value on a rounding
boundary may land on a
neighbouring level; in the interpreter they are numpy's and the result equals the reference exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import triton
import triton.language as tl

__all__ = [
    "DEQUANT_BLOCK",
    "LOG_BLOCK",
    "CompiledKernel",
    "codebook_dequant_kernel",
    "codebook_matmul",
    "codebook_matmul_kernel",
    "compile_ptx",
    "dequantize",
    "log_constants",
    "log_fake_quant_kernel",
    "log_fake_quantize",
]

DEQUANT_BLOCK = (16, 128)  # (rows, columns) of Wc per program
LOG_BLOCK = 1024  # elements per program
_MATMUL_BLOCK = (32, 32, 32)  # (M, N, K) tile of the fused GEMM; tl.dot needs >= 16 on each


@triton.jit
def _codes(words_ptr, rows, cols, valid, row_words, BITS: tl.constexpr):
    """b-bit codes at (rows, cols) of the packed rows, int32 (0 where not `valid`)."""
    bit = cols * BITS
    base = words_ptr + rows * row_words + bit // 32
    offset = (bit % 32).to(tl.uint32)
    low = tl.load(base, mask=valid, other=0).to(tl.uint32, bitcast=True)
    code = low >> offset
    if BITS == 3:  # a 3-bit code starting at bit 30 or 31 continues in the next word
        spill = valid & (offset > 29)
        high = tl.load(base + 1, mask=spill, other=0).to(tl.uint32, bitcast=True)
        code = code | (high << ((32 - offset) % 32))  # high is 0 where it does not spill
    return (code & ((1 << BITS) - 1)).to(tl.int32)


@triton.jit
def _dequant_tile(words_ptr, codebook_ptr, scales_ptr, rows, cols, valid, row_words, n_groups, codebook_stride,
                  BITS: tl.constexpr, GROUP: tl.constexpr):
    """float32 Wc at (rows, cols): codebook level times group scale, one fp32 multiply."""
    code = _codes(words_ptr, rows, cols, valid, row_words, BITS)
    level = tl.load(codebook_ptr + rows * codebook_stride + code, mask=valid, other=0.0).to(tl.float32)
    scale = tl.load(scales_ptr + rows * n_groups + cols // GROUP, mask=valid, other=0.0).to(tl.float32)
    return level * scale


@triton.jit
def codebook_dequant_kernel(words_ptr, codebook_ptr, scales_ptr, n_rows, codebook_stride, out_ptr,
                            BITS: tl.constexpr, GROUP: tl.constexpr, K: tl.constexpr,
                            BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """out[N, K] = Wc. Grid (ceil(K/BLOCK_K), ceil(N/BLOCK_N)); scalars sit between inputs and output
    because TensorRT's AOT plugin passes (inputs..., extra int args..., outputs...)."""
    row_words = (BITS * ((K + 7) // 8) + 3) // 4
    n_groups = (K + GROUP - 1) // GROUP
    cols = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)[None, :]
    rows = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)[:, None]
    valid = (rows < n_rows) & (cols < K)
    w = _dequant_tile(words_ptr, codebook_ptr, scales_ptr, rows, cols, valid, row_words, n_groups,
                      codebook_stride, BITS, GROUP)
    tl.store(out_ptr + rows * K + cols, w.to(out_ptr.dtype.element_ty), mask=valid)


@triton.jit
def codebook_matmul_kernel(x_ptr, words_ptr, codebook_ptr, scales_ptr, m_rows, n_rows, codebook_stride, y_ptr,
                           BITS: tl.constexpr, GROUP: tl.constexpr, K: tl.constexpr,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """y[M, N] = x[M, K] @ Wc[N, K]ᵀ with Wc dequantized tile by tile; fp32 accumulation."""
    row_words = (BITS * ((K + 7) // 8) + 3) // 4
    n_groups = (K + GROUP - 1) // GROUP
    m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        x_valid = (m[:, None] < m_rows) & (k[None, :] < K)
        x = tl.load(x_ptr + m[:, None] * K + k[None, :], mask=x_valid, other=0.0)
        w_valid = (n[:, None] < n_rows) & (k[None, :] < K)
        w = _dequant_tile(words_ptr, codebook_ptr, scales_ptr, n[:, None], k[None, :], w_valid, row_words,
                          n_groups, codebook_stride, BITS, GROUP)
        acc += tl.dot(x, tl.trans(w.to(x.dtype)), input_precision="ieee")
    y_valid = (m[:, None] < m_rows) & (n[None, :] < n_rows)
    tl.store(y_ptr + m[:, None] * n_rows + n[None, :], acc.to(y_ptr.dtype.element_ty), mask=y_valid)


@triton.jit
def _round_half_even(t):
    f = tl.floor(t)
    d = t - f
    odd = f - 2.0 * tl.floor(f * 0.5)  # 1.0 when f is odd
    return tl.where(d > 0.5, f + 1.0, tl.where(d < 0.5, f, f + odd))


@triton.jit
def log_fake_quant_kernel(x_ptr, n_elements, y_ptr, SCALE: tl.constexpr, SHIFT: tl.constexpr, K1: tl.constexpr,
                          K0: tl.constexpr, K2: tl.constexpr, LEVELS: tl.constexpr, BLOCK: tl.constexpr):
    """y = dequantize_log(quantize_log(x)); LEVELS = 2**b − 1, the zero code."""
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    valid = offsets < n_elements
    x = tl.load(x_ptr + offsets, mask=valid, other=0.0)
    y = tl.maximum(x.to(tl.float32) + SHIFT, 0.0)
    q = _round_half_even(tl.log(y) * K1 + K0)  # y = 0: +inf; nan never reaches here but falls to zero too
    keep = q < LEVELS
    value = SCALE * tl.exp(tl.maximum(q, 0.0) * K2)
    out = tl.where(keep, value, 0.0) - SHIFT
    tl.store(y_ptr + offsets, out.to(y_ptr.dtype.element_ty), mask=valid)


# ---------------------------------------------------------------- host side


def log_constants(scale: float, step: float) -> tuple[float, float, float]:
    """(k1, k0, k2) as float32-exact Python floats, rounded as `reference.quantize_log` rounds them."""
    import numpy as np

    ln2 = math.log(2.0)
    return (float(np.float32(-1.0 / (step * ln2))), float(np.float32(math.log(scale) / (step * ln2))),
            float(np.float32(-step * ln2)))


def _codebook_stride(codebook: Any, bits: int) -> int:
    return 0 if codebook.shape[0] == 1 else 1 << bits


def dequantize(words: Any, codebook: Any, scales: Any, bits: int, group_size: int, k: int,
               out_dtype: Any = None) -> Any:
    """Wc [N, k] (torch, `out_dtype`, default float32) from int32 `words` [N, W] on the tensors' device."""
    import torch

    n = words.shape[0]
    out = torch.empty((n, k), dtype=out_dtype or torch.float32, device=words.device)
    block_n, block_k = DEQUANT_BLOCK
    grid = (triton.cdiv(k, block_k), triton.cdiv(n, block_n))
    codebook_dequant_kernel[grid](words, codebook, scales, n, _codebook_stride(codebook, bits), out,
                                  BITS=bits, GROUP=group_size, K=k, BLOCK_N=block_n, BLOCK_K=block_k)
    return out


def codebook_matmul(x: Any, words: Any, codebook: Any, scales: Any, bits: int, group_size: int, k: int) -> Any:
    """``x @ Wcᵀ`` for x [..., k] (float16/float32): the MatMul whose weight is the codebook tensor."""
    import torch

    if x.shape[-1] != k:
        raise ValueError(f"x has {x.shape[-1]} input features, the weight {k}")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k).contiguous()
    m, n = x2.shape[0], words.shape[0]
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    block_m, block_n, block_k = _MATMUL_BLOCK
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    codebook_matmul_kernel[grid](x2, words, codebook, scales, m, n, _codebook_stride(codebook, bits), y,
                                 BITS=bits, GROUP=group_size, K=k, BLOCK_M=block_m, BLOCK_N=block_n,
                                 BLOCK_K=block_k)
    return y.reshape(*lead, n)


def log_fake_quantize(x: Any, scale: float, step: float, shift: float, bits: int) -> Any:
    """`reference.fake_quantize_log` of a torch tensor (float32 / float16), same dtype and shape."""
    import torch

    flat = x.contiguous().reshape(-1)
    out = torch.empty_like(flat)
    k1, k0, k2 = log_constants(scale, step)
    log_fake_quant_kernel[(triton.cdiv(flat.numel(), LOG_BLOCK),)](
        flat, flat.numel(), out, SCALE=_f32(scale), SHIFT=_f32(shift), K1=k1, K0=k0, K2=k2,
        LEVELS=float((1 << bits) - 1), BLOCK=LOG_BLOCK, enable_fp_fusion=False)
    return out.reshape(x.shape)


def _f32(value: float) -> float:
    import numpy as np

    return float(np.float32(value))


@dataclass(frozen=True)
class CompiledKernel:
    """One kernel compiled ahead of time: what `tensorrt.plugin.aot_impl` returns, plus launch facts."""

    name: str
    ptx: str
    num_warps: int
    shared: int


_TYPES = {"float32": "fp32", "float16": "fp16"}


def compile_ptx(kind: str, *, target: Any = None, out_dtype: str = "float32", ptx_version: int | None = None,
                **constants: Any) -> CompiledKernel:
    """PTX of one kernel specialised on its constants, with no GPU needed when `target` is given.

    Args:
        kind: "dequant" or "matmul" (constants BITS, GROUP, K), "log" (SCALE, SHIFT, K1, K0, K2, LEVELS).
        target: a `triton.backends.compiler.GPUTarget` (e.g. ``GPUTarget("cuda", 87, 32)`` for Orin);
            None: the GPU of this process (what TensorRT's build runs on).
        out_dtype: "float32" | "float16": the output (and, for "log" and "matmul", the input) type.
        ptx_version: PTX ISA version to emit (None: the newest the bundled ptxas knows). A driver JITs
            only PTX as new as its CUDA: pass e.g. 85 for a CUDA 12.5 driver.
    """
    t = _TYPES[out_dtype]
    if kind == "dequant":
        fn, block = codebook_dequant_kernel, {"BLOCK_N": DEQUANT_BLOCK[0], "BLOCK_K": DEQUANT_BLOCK[1]}
        signature = {"words_ptr": "*i32", "codebook_ptr": "*fp16", "scales_ptr": "*fp16", "n_rows": "i32",
                     "codebook_stride": "i32", "out_ptr": f"*{t}"}
    elif kind == "matmul":
        fn = codebook_matmul_kernel
        block = dict(zip(("BLOCK_M", "BLOCK_N", "BLOCK_K"), _MATMUL_BLOCK, strict=True))
        signature = {"x_ptr": f"*{t}", "words_ptr": "*i32", "codebook_ptr": "*fp16", "scales_ptr": "*fp16",
                     "m_rows": "i32", "n_rows": "i32", "codebook_stride": "i32", "y_ptr": f"*{t}"}
    elif kind == "log":
        fn, block = log_fake_quant_kernel, {"BLOCK": LOG_BLOCK}
        signature = {"x_ptr": f"*{t}", "n_elements": "i32", "y_ptr": f"*{t}"}
    else:
        raise ValueError(f"unknown kernel {kind!r}: dequant, matmul or log")
    source = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs={**constants, **block})
    options: dict[str, Any] = {"enable_fp_fusion": False}  # no FMA: the reference rounds each op
    if ptx_version is not None:
        options["ptx_version"] = ptx_version
    compiled = triton.compile(source, target=target, options=options)
    return CompiledKernel(compiled.metadata.name, compiled.asm["ptx"], compiled.metadata.num_warps,
                          compiled.metadata.shared)
