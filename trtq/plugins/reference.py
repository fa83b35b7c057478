"""Numpy reference of every non-uniform quantizer: the single source of truth (format: `trtq.plugins`).

Codebook weights: `pack_codes` / `unpack_codes` (b-bit codes, one little-endian bit stream per row,
rows padded to a multiple of 8 codes), `assign_codes` (nearest level of ``scale·codebook``) and
`dequantize_codebook` (``float32(codebook[code]) · float32(scale)``). Log activations: `quantize_log`,
`dequantize_log`, `fake_quantize_log`, in the float32 operation order the ONNX face uses
(``Log``, one multiply-add, ``Round``, ``Exp``), so ONNX Runtime reproduces them to float32 rounding
of its Log/Exp.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "GELU_SHIFT",
    "NF4_LEVELS",
    "UNIFORM3_LEVELS",
    "UNIFORM4_LEVELS",
    "assign_codes",
    "canonical_matrix",
    "dequantize_codebook",
    "dequantize_log",
    "fake_quantize_log",
    "from_canonical",
    "group_index",
    "pack_codes",
    "packed_row_bytes",
    "quantize_log",
    "unpack_codes",
]

# QLoRA's NormalFloat4: Φ⁻¹ of evenly spaced probabilities, 8 positive and 7 negative, plus 0, / max
# (bitsandbytes create_normal_map(offset=0.9677083); algorithms.md §7b; tests recompute them).
NF4_LEVELS = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0], dtype=np.float32)
UNIFORM4_LEVELS = (np.arange(-8, 8) / 7.0).astype(np.float32)
UNIFORM3_LEVELS = (np.arange(-4, 4) / 3.0).astype(np.float32)
GELU_SHIFT = 0.16997124254703522  # −min over x of GELU(x) (AdaLog's post-GELU shift)
_LN2 = math.log(2.0)


# ---------------------------------------------------------------- layout


def canonical_matrix(w: np.ndarray, op: str, trans_b: bool = False) -> np.ndarray:
    """The ``[N, K]`` view of a weight of `op` (MatMul: Wᵀ; Gemm: W if transB else Wᵀ; Conv: rows per O)."""
    if op == "Conv":
        return w.reshape(w.shape[0], -1)
    if op == "Gemm" and trans_b:
        return w
    return w.T


def from_canonical(wc: np.ndarray, op: str, shape: tuple[int, ...], trans_b: bool = False) -> np.ndarray:
    """Inverse of `canonical_matrix`: the weight in its original `shape`."""
    if op == "Conv":
        return wc.reshape(shape)
    if op == "Gemm" and trans_b:
        return wc
    return wc.T


def group_index(k: int, group_size: int) -> np.ndarray:
    """Group of each of the K positions (``k // G``): the scale column each weight uses."""
    return np.arange(k) // group_size


def packed_row_bytes(k: int, bits: int) -> int:
    """Bytes per packed row: 8 codes per `bits` bytes, the row padded to a multiple of 8 codes."""
    return bits * -(-k // 8)


# ---------------------------------------------------------------- codes


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack uint8 codes ``[N, K]`` (< 2**bits) into ``[N, bits·ceil(K/8)]`` bytes, LSB-first per row."""
    codes = np.asarray(codes)
    if codes.ndim != 2 or (codes.size and int(codes.max()) >= 1 << bits):
        raise ValueError(f"codes must be [N, K] values below {1 << bits}")
    n, k = codes.shape
    padded = np.zeros((n, -(-k // 8) * 8), np.uint8)
    padded[:, :k] = codes
    bitplane = (padded[:, :, None] >> np.arange(bits, dtype=np.uint8)) & 1  # [N, Kp, b]: bit j of code i
    return np.packbits(bitplane.reshape(n, -1), axis=1, bitorder="little")


def unpack_codes(packed: np.ndarray, bits: int, k: int) -> np.ndarray:
    """Inverse of `pack_codes`: uint8 codes ``[N, k]``."""
    n = packed.shape[0]
    if packed.shape[1] != packed_row_bytes(k, bits):
        raise ValueError(f"packed rows hold {packed.shape[1]} bytes, {packed_row_bytes(k, bits)} expected for k={k}")
    stream = np.unpackbits(packed, axis=1, bitorder="little").reshape(n, -1, bits)
    weights = (1 << np.arange(bits)).astype(np.uint8)
    return (stream * weights).sum(axis=2, dtype=np.uint8)[:, :k]


def _codebook_rows(codebook: np.ndarray, n: int) -> np.ndarray:
    """``[N, L]`` float32: row n's codebook (R = 1 broadcast, or R = N)."""
    cb = np.asarray(codebook).astype(np.float32)
    if cb.shape[0] not in (1, n):
        raise ValueError(f"codebook has {cb.shape[0]} rows, 1 or {n} expected")
    return np.broadcast_to(cb, (n, cb.shape[1]))


def dequantize_codebook(packed: np.ndarray, codebook: np.ndarray, scales: np.ndarray, bits: int,
                        group_size: int, k: int) -> np.ndarray:
    """``Wc[n, k] = float32(codebook[r(n), code[n, k]]) · float32(scales[n, k // G])``, float32 ``[N, K]``."""
    codes = unpack_codes(packed, bits, k)
    values = np.take_along_axis(_codebook_rows(codebook, codes.shape[0]), codes.astype(np.int64), axis=1)
    return values * np.asarray(scales).astype(np.float32)[:, group_index(k, group_size)]


def assign_codes(wc: np.ndarray, codebook: np.ndarray, scales: np.ndarray, group_size: int) -> np.ndarray:
    """Nearest code of each weight: ``argmin_c |Wc[n,k] − codebook[c]·scale[n, k//G]|`` (ties: lower c).

    Compared in float64 on the float32 products `dequantize_codebook` returns, so the chosen level is
    the nearest one the stored model can represent.
    """
    n, k = wc.shape
    levels = _codebook_rows(codebook, n)
    order = np.argsort(levels, axis=1, kind="stable")
    s = np.asarray(scales).astype(np.float32)[:, group_index(k, group_size)]  # [N, K]
    best = np.zeros((n, k), np.int64)
    best_err = np.full((n, k), np.inf)
    w64 = np.asarray(wc, np.float64)
    for j in range(levels.shape[1]):
        c = order[:, j:j + 1]
        value = (np.take_along_axis(levels, c, axis=1) * s).astype(np.float64)
        err = np.abs(w64 - value)
        better = err < best_err
        best = np.where(better, c, best)
        best_err = np.where(better, err, best_err)
    return best.astype(np.uint8)


# ---------------------------------------------------------------- log activations


def _log_constants(scale: float, step: float) -> tuple[np.float32, np.float32]:
    """(k1, k0) with ``−log2(y/s)/a = k1·ln(y) + k0``, as the float32 constants of the ONNX face."""
    return np.float32(-1.0 / (step * _LN2)), np.float32(math.log(scale) / (step * _LN2))


def quantize_log(x: np.ndarray, scale: float, step: float, shift: float, bits: int) -> np.ndarray:
    """Log codes (uint8 / uint16): ``clip(round(−log2((x + c)/s)/a), 0, ·)``; ``2**b − 1`` = zero."""
    zero_code = (1 << bits) - 1
    k1, k0 = _log_constants(scale, step)
    y = np.maximum(np.asarray(x, np.float32) + np.float32(shift), np.float32(0))
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.log(y) * k1 + k0
    q = np.rint(t)
    under = ~(q < zero_code)  # also NaN
    codes = np.where(under, zero_code, np.maximum(q, 0)).astype(np.uint16 if bits > 8 else np.uint8)
    return codes


def dequantize_log(codes: np.ndarray, scale: float, step: float, shift: float, bits: int) -> np.ndarray:
    """``s·2**(−a·q) − c`` (float32), ``−c`` for the zero code ``2**b − 1``."""
    q = np.asarray(codes).astype(np.float32)
    value = np.float32(scale) * np.exp(q * np.float32(-step * _LN2))
    value = np.where(q >= (1 << bits) - 1, np.float32(0), value)
    return (value - np.float32(shift)).astype(np.float32)


def fake_quantize_log(x: np.ndarray, scale: float, step: float, shift: float, bits: int) -> np.ndarray:
    """`dequantize_log` ∘ `quantize_log`: what the ONNX face and the LogFakeQuantize plugin compute."""
    return dequantize_log(quantize_log(x, scale, step, shift, bits), scale, step, shift, bits)
