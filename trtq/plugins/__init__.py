"""Non-uniform quantizers (codebook / NF4 weights, log2 / log√2 / AdaLog activations) and their storage format.

This docstring is the contract between the quantizers (`trtq.plugins.reference` is the numpy
single source of truth, `trtq.plugins.fit` chooses the numbers, `trtq.plugins.onnx_face` writes the
standard-ONNX graph; `fit` and `onnx_face` land after this contract) and the TensorRT face (custom plugin
nodes, kernels). Every kernel must match
`reference.dequantize_codebook` / `reference.fake_quantize_log` bit for bit in float32.

Weights: codebook formats
=========================
Canonical layout. Every weight is viewed as a matrix ``Wc`` of shape ``[N, K]``: N output channels
(rows), K the reduction length, contiguous along K:
    MatMul  W [K, N]            -> Wc = Wᵀ
    Gemm    W [N, K] (transB=1) -> Wc = W;  transB=0: Wc = Wᵀ
    Conv    W [O, I/g, kh, kw]  -> Wc = W.reshape(O, I/g·kh·kw)   (K runs over (c, y, x), C order)
Groups run along K: group j of row n holds ``Wc[n, j·G : min((j+1)·G, K)]``; ``n_groups = ceil(K/G)``;
the last group may be ragged (shorter than G). G (`group_size`) is any integer >= 1 (default 128).

Stored tensors (the same four for every format):
    codes     uint8   [N, b·ceil(K/8)]  b-bit codes (b = 3 or 4), packed per row, see below
    codebook  float16 [R, 2**b]          R = 1 (one codebook for the tensor; trtq's default) or R = N (one per row)
    scales    float16 [N, n_groups]      one scale per row and group
    k         int attribute               the true K (rows are padded to a multiple of 8 codes)

Packing (`reference.pack_codes` / `unpack_codes`): each row is one little-endian bit stream, code i of
the row in bits [b·i, b·i + b) of it, bit 0 = least significant bit of the row's byte 0; the row is
padded with code 0 to a multiple of 8 codes, so 8 codes fill exactly b bytes (3 bytes for 3-bit
codes, a 24-bit little-endian word; 4 bytes for 4-bit codes). For b = 4 this is "two codes per byte,
low nibble first" (TensorRT's / ONNX's INT4 order; the opposite of bitsandbytes' NF4 order).
Rows start at byte ``n · b·ceil(K/8)``; padding codes are never read as weights.

Dequantize (`reference.dequantize_codebook`), in float32:
    Wc[n, k] = float32(codebook[n if R == N else 0, code[n, k]]) · float32(scales[n, k // G])
then reshaped / transposed back to the original weight layout. One float32 multiply of two
float16-exact numbers: a kernel reproduces it bit for bit (float16 output: round that product).

Formats (what differs is only how `codebook` and `scales` are chosen, `trtq.plugins.fit`):
    nf4         b=4, codebook = NF4_LEVELS (QLoRA, fixed), scales = per-group clip·absmax (MSE clip search)
    codebook4   b=4, codebook learned per tensor (weighted Lloyd-Max on the group-normalised weights)
    codebook3   b=3, codebook learned, 8 entries
    uniform4    b=4, codebook = [-8..7]/7 (the INT4 grid), scales = clip·absmax: uniform INT4 in this format,
                for Conv weights and ragged groups, which ONNX INT4 DequantizeLinear cannot express
    uniform3    b=3, codebook = [-4..3]/3: uniform INT3 (no ONNX or TensorRT INT3 type exists)

TensorRT face of a weight (one node replaces the ONNX face's subgraph; its output is ``Wc`` as float):
    op_type "CodebookDequantize", domain "trtq"
    inputs  codes (int32 [N, ceil(b·ceil(K/8)/4)]: the same packed bytes as words, each row zero-padded
            to whole words, little-endian; TensorRT's constant layer refuses UINT8, `trt_face`),
            codebook (float16 [R, 2**b]), scales (float16 [N, n_groups]), all initializers
    output  Wc float32 [N, K] (or float16 when out_dtype = 10)
    attrs   plugin_namespace = "trtq" (string), plugin_version = "1" (string),
            bits (int: 3 or 4), group_size (int: G), k (int: K), out_dtype (int: 1 FLOAT or 10 FLOAT16)
The layout restore after it (Transpose for MatMul, Reshape for Conv) is a standard node in both faces.

Activations: logarithmic fake quantization
==========================================
Per tensor, parameters ``scale s > 0`` (float32), ``step a > 0`` (float32, log2 of the ratio between
neighbouring levels), ``shift c >= 0`` (float32), ``bits b``; ``L = 2**b − 1`` nonzero levels, and the
last code ``2**b − 1`` means zero (b-bit codes, zero included):
    y  = max(x + c, 0)
    q  = round_half_even(−log2(y / s) / a)          (y = 0 gives +inf)
    x̂ = s · 2**(−a · max(q, 0)) − c     if q < L
    x̂ = −c                               otherwise (underflow to zero; also y = 0)
    log2:    a = 1           (c = 0: post-Softmax)
    logsqrt2 a = 1/2         (RepQ-ViT log√2; dequant 2**(−⌈q/2⌉)·(√2 if q odd) is the same value)
    adalog:  a = q_r / 37    searched (AdaLog's base 2**(q_r/r), r = 37, q_r in 10..137), s searched
    c = 0.16997124254703522 (−min GELU) on post-GELU tensors (AdaLog's shift), 0 elsewhere.
Values above s clip to s (q < 0 -> 0). The quantize/dequantize pair is `reference.quantize_log` /
`dequantize_log`; `fake_quantize_log` composes them in float32 (log2 and exp2 evaluated as float32
``log(y)/ln 2`` and ``exp(−a·ln 2·q)``, the ONNX face's Log / Exp).

TensorRT face of an activation:
    op_type "LogFakeQuantize", domain "trtq", input x (float32 or float16), output x̂ (same type, shape)
    attrs   plugin_namespace = "trtq", plugin_version = "1", bits (int), scale (float), step (float),
            shift (float)

Both faces in one graph: every node of an ONNX face is named ``trtq_codebook/<weight>/...`` or
``trtq_logquant/<tensor>/...``; the face's last node carries in its ``doc_string`` the JSON
``{"trtq_face": {"op_type": ..., "domain": "trtq", "inputs": [initializer or tensor names],
"output": <tensor name>, "attrs": {...}}}`` (`onnx_face.FACE_KEY`): the TensorRT node that replaces
the subgraph, read by `--plugins` to swap faces without refitting anything.
"""

from __future__ import annotations

from trtq.plugins.reference import (
    NF4_LEVELS,
    dequantize_codebook,
    dequantize_log,
    fake_quantize_log,
    pack_codes,
    quantize_log,
    unpack_codes,
)

__all__ = [
    "NF4_LEVELS",
    "dequantize_codebook",
    "dequantize_log",
    "fake_quantize_log",
    "pack_codes",
    "quantize_log",
    "unpack_codes",
]
