"""The precision table: every number type trtq quantizes to, in one place.

Each entry says how a value is stored and rounded, which ONNX opset and Q/DQ granularity it needs
and what TensorRT does with it (which device families run it stays `trtq.targets`' table). Placement,
the weight quantizers, the range methods, Q/DQ insertion, the checker, the CLI and the pipeline read
the entry instead of comparing the name, so a new precision is one entry here (plus the code of a genuinely new
rounding rule, if it has one).

Symmetric quantization with scale s = amax / qmax (TensorRT, algorithms.md §8):
- integer formats: `x_q = clip(rint(x / s), qmin, qmax)` (INT8 narrow range [-127, 127], as
  TensorRT's weights; INT4 [-8, 7]);
- float formats: `x_q = cast(clip(x / s, -qmax, qmax))`, round to nearest even (FP8 E4M3: 448,
  FP4 E2M1: 6).

| name | storage        | qmax | weights  | activations | min opset (type's) | targets (trtq.targets) |
|------|----------------|------|----------|-------------|-----------|---------|
| int8 | INT8           | 127  | channel  | per tensor  | 13 (10)   | all |
| fp8  | FLOAT8E4M3FN   | 448  | channel  | per tensor  | 19        | ada, hopper, blackwell, thor |
| int4 | INT4           | 7    | block    | none        | 21        | all (weight-only) |
| fp4  | FLOAT4E2M1     | 6    | block    | (check only)| 23        | blackwell, thor |

`fp4` is known to the checker (a graph from another tool may hold it) but trtq does not write it:
`PRECISIONS` lists the ones `QuantConfig.precision` accepts.

Weight formats of the weight-only mode (`--precision int4 --weight-format F`, `WEIGHT_FORMAT_TABLE`):
`int4` is the INT4 entry above; the others are trtq.plugins' codebook formats (b-bit codes, one FP16
codebook per tensor, one FP16 scale per group; ONNX face: standard ops, opset 13; TensorRT face: the
CodebookDequantize plugin):

| format    | bits | levels                      | weights of         | min opset |
|-----------|------|-----------------------------|--------------------|-----------|
| int4      | 4    | uniform, INT4 Q/DQ          | MatMul, Gemm       | 21        |
| nf4       | 4    | NF4 (fixed)                 | MatMul, Gemm, Conv | 13        |
| codebook4 | 4    | learned (Lloyd-Max)         | MatMul, Gemm, Conv | 13        |
| codebook3 | 3    | learned (Lloyd-Max)         | MatMul, Gemm, Conv | 13        |
| uniform4  | 4    | [-8..7]/7 (fixed)           | MatMul, Gemm, Conv | 13        |
| uniform3  | 3    | [-4..3]/3 (fixed)           | MatMul, Gemm, Conv | 13        |

Log activation quantizers (`--act-quant M`, `LOG_STEPS`): log2 (step a = 1), logsqrt2 (a = 1/2),
adalog (a = q/37 searched); x̂ = s·2^(−a·q) − c, trtq.plugins' LogFakeQuantize.

The floating point types of what stays unquantized (`--high-precision`, trtq.exporter.high_precision)
are the `FLOATS` table: ONNX type, numpy type, largest finite value, smallest normal and subnormal.
A Q/DQ whose scale is fp16 / bf16 needs opset 19 (`scale_opset`); INT4 weight-only with fp16 scales
(TensorRT's W4A16) is `int4` with its DequantizeLinear in an fp16 region.

Also here: `opset_of`, the one reader of a model's default-domain opset.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto

from trtq.errors import TrtqError
from trtq.targets import TARGETS

__all__ = [
    "DEFAULT_BLOCK_SIZE", "FLOATS", "LOG_STEPS", "PRECISIONS", "TABLE", "WEIGHTED_OPS", "WEIGHT_FORMAT_TABLE",
    "FloatType", "Precision", "WeightFormat", "get_precision", "opset_of",
]

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")  # the ops whose inputs TensorRT quantizes
DEFAULT_BLOCK_SIZE = 128  # block length along the reduction axis of block-wise weights (INT4)


@dataclass(frozen=True)
class Precision:
    """One quantized number type and what trtq and TensorRT do with it.

    Attributes:
        name: the `--precision` value (lower case).
        onnx_type: the element type of the quantized tensors (`onnx.TensorProto.*`).
        dtype: the numpy storage dtype of quantized values (ml_dtypes for the narrow formats).
        qmax: the largest representable magnitude: scale = amax / qmax.
        qmin: the smallest integer code (integer formats; -qmax for float formats).
        integer: True: round to the nearest integer; False: cast to the float format.
        weights: granularity of weight scales: "channel" (one per output channel) or "block"
            (one per `block_size` weights along the reduction axis and output channel).
        activations: activations are quantized too (per tensor); False: weight-only.
        type_opset: the first ONNX opset whose QuantizeLinear / DequantizeLinear take this type
            (INT8 10, FP8 19, INT4 21, FP4 23); `min_opset` adds the granularity's.
        block_size: default block length (block granularity only).
        weighted_ops: the ops whose inputs it quantizes.
        convolutions: TensorRT runs convolutions in it.
        small_convs_float: convolutions with <= 16 channels per group or a kernel volume over 32
            stay in floating point (TensorRT has no tactic of this type that pays for them).
        writable: `QuantConfig.precision` accepts it (False: only the checker knows it).
    """

    name: str
    onnx_type: int
    dtype: np.dtype
    qmax: float
    qmin: float
    integer: bool
    weights: str
    activations: bool
    type_opset: int
    block_size: int | None = None
    weighted_ops: tuple[str, ...] = WEIGHTED_OPS
    convolutions: bool = True
    small_convs_float: bool = False
    writable: bool = True

    @property
    def targets(self) -> tuple[str, ...]:
        """The device families whose TensorRT runs it (`trtq.targets.TARGETS`, the one target table)."""
        return tuple(name for name, spec in TARGETS.items() if self.name in spec.precisions)

    @property
    def blockwise(self) -> bool:
        return self.weights == "block"

    @property
    def min_opset(self) -> int:
        """The lowest opset a trtq graph of this precision needs: the type's, and per-channel scales
        (axis, 13) or block scales (block_size, 21)."""
        return max(self.type_opset, 21 if self.blockwise else 13)

    def quantize(self, scaled: np.ndarray) -> np.ndarray:
        """`scaled` (= x / s) rounded onto this type's grid, in the storage dtype."""
        if self.integer:
            return np.clip(np.rint(scaled), self.qmin, self.qmax).astype(self.dtype)
        return np.clip(scaled, -self.qmax, self.qmax).astype(self.dtype)

    def grid(self, scaled: np.ndarray) -> np.ndarray:
        """`quantize(scaled)` as float64 values (NaN stays NaN: no integer cast)."""
        if self.integer:
            return np.clip(np.rint(scaled), self.qmin, self.qmax)
        return self.quantize(scaled).astype(np.float64)

    def zero_point(self) -> np.ndarray:
        """The zero point of a symmetric Q/DQ: 0 in the storage dtype."""
        return np.zeros((), self.dtype)


TABLE: dict[str, Precision] = {
    p.name: p
    for p in (
        Precision("int8", TensorProto.INT8, np.dtype(np.int8), 127.0, -127.0, True, "channel", True, 10),
        Precision("fp8", TensorProto.FLOAT8E4M3FN, np.dtype(ml_dtypes.float8_e4m3fn), 448.0, -448.0, False,
                  "channel", True, 19, small_convs_float=True),
        Precision("int4", TensorProto.INT4, np.dtype(ml_dtypes.int4), 7.0, -8.0, True, "block", False, 21,
                  block_size=DEFAULT_BLOCK_SIZE, weighted_ops=("MatMul", "Gemm"), convolutions=False),
        Precision("fp4", TensorProto.FLOAT4E2M1, np.dtype(ml_dtypes.float4_e2m1fn), 6.0, -6.0, False, "block",
                  True, 23, block_size=16, convolutions=False, writable=False),
    )
}
PRECISIONS = tuple(name for name, p in TABLE.items() if p.writable)


@dataclass(frozen=True)
class WeightFormat:
    """How the weight-only mode stores a weight (`--weight-format`).

    Attributes:
        name: the `--weight-format` value.
        bits: bits per weight code.
        levels: "uniform" (INT4 Q/DQ), "nf4", "learned", or "grid" (a fixed uniform codebook).
        weighted_ops: the ops whose constant weight it stores.
        min_opset: the lowest opset its graph needs.
        codebook: stored by trtq.plugins (codes, codebook, scales) rather than INT4 DequantizeLinear.
    """

    name: str
    bits: int
    levels: str
    weighted_ops: tuple[str, ...] = ("MatMul", "Gemm", "Conv")
    min_opset: int = 13  # the codebook face's ReduceSum with axes as an input
    codebook: bool = True


WEIGHT_FORMAT_TABLE: dict[str, WeightFormat] = {
    f.name: f
    for f in (
        WeightFormat("int4", 4, "uniform", ("MatMul", "Gemm"), 21, codebook=False),
        WeightFormat("nf4", 4, "nf4"),
        WeightFormat("codebook4", 4, "learned"),
        WeightFormat("codebook3", 3, "learned"),
        WeightFormat("uniform4", 4, "grid"),
        WeightFormat("uniform3", 3, "grid"),
    )
}
# log activation quantizers: method -> step a (log2 of the ratio of neighbouring levels); None: searched
LOG_STEPS: dict[str, float | None] = {"log2": 1.0, "logsqrt2": 0.5, "adalog": None}


@dataclass(frozen=True)
class FloatType:
    """A floating point type unquantized layers can run in.

    Attributes:
        name: the `--high-precision` value.
        onnx_type: `onnx.TensorProto.*`.
        dtype: the numpy dtype (ml_dtypes.bfloat16 for bf16).
        max: the largest finite value (casts beyond it saturate to it, not to inf).
        tiny: the smallest normal value (a Q/DQ scale below it loses precision).
        smallest: the smallest subnormal value (a non-zero below it rounds to 0).
        scale_opset: the first opset whose QuantizeLinear / DequantizeLinear take scales of this type.
    """

    name: str
    onnx_type: int
    dtype: np.dtype
    max: float
    tiny: float
    smallest: float
    scale_opset: int


def _float_type(name: str, onnx_type: int, dtype: type, scale_opset: int) -> FloatType:
    info = ml_dtypes.finfo(dtype)
    return FloatType(name, onnx_type, np.dtype(dtype), float(info.max), float(info.tiny),
                     float(info.smallest_subnormal), scale_opset)


FLOATS: dict[str, FloatType] = {
    "fp16": _float_type("fp16", TensorProto.FLOAT16, np.float16, 19),
    "bf16": _float_type("bf16", TensorProto.BFLOAT16, ml_dtypes.bfloat16, 19),
    "fp32": _float_type("fp32", TensorProto.FLOAT, np.float32, 10),
}


def get_precision(name: str) -> Precision:
    """The table entry of `name`; a `TrtqError` naming the choices when there is none."""
    try:
        return TABLE[name]
    except (KeyError, TypeError):
        raise TrtqError(f"unknown precision {name!r}.", f"use --precision with one of: {', '.join(PRECISIONS)}.") \
            from None


def opset_of(model: onnx.ModelProto) -> int | None:
    """The model's default-domain ("" or "ai.onnx") opset; None when it imports none."""
    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    return max(versions) if versions else None
