"""Typed, validated, JSON-round-trippable configuration: what the user chose."""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, ClassVar

from trtq.errors import TrtqError
from trtq.precision import DEFAULT_BLOCK_SIZE, FLOATS, LOG_STEPS, PRECISIONS, TABLE, WEIGHT_FORMAT_TABLE
from trtq.targets import TARGETS, TRT_VERSIONS, TargetSpec

__all__ = [
    "ACT_QUANT_METHODS",
    "CALIB_METHODS",
    "CONV_METHODS",
    "DEFAULT_CALIB_METHOD",
    "FALLBACK_DTYPES",
    "HIGH_PRECISIONS",
    "INT4_METHODS",
    "PRECISIONS",
    "SELECT_METHODS",
    "TARGETS",
    "TRT_VERSIONS",
    "WEIGHT_FORMATS",
    "ActQuantConfig",
    "CalibConfig",
    "JsonConfig",
    "QuantConfig",
    "SelectConfig",
    "Target",
    "TargetSpec",
    "check_field_types",
]

CALIB_METHODS = ("minmax", "percentile", "entropy", "mse")
# Chosen on bench/ (best on both real models there): see README "Calibration methods" for the figures.
DEFAULT_CALIB_METHOD = "minmax"
# Precision of what stays unquantized (trtq.exporter.high_precision casts it; fp32: left as it is).
HIGH_PRECISIONS = tuple(FLOATS)
# Precision of the layers sensitivity fallback keeps out of INT8/FP8 (None in the config: the high precision).
FALLBACK_DTYPES = HIGH_PRECISIONS
# How INT4 weights are rounded given calibration data (trtq.exporter.gptq; rtn: nearest, clip only).
INT4_METHODS = ("gptq", "rtn")
# How INT4-mode (weight-only) weights are stored: int4 = uniform INT4 DequantizeLinear; the others are
# codebook formats (trtq.plugins; nf4/codebook4/uniform4 4-bit, codebook3/uniform3 3-bit).
WEIGHT_FORMATS = tuple(WEIGHT_FORMAT_TABLE)
# Logarithmic activation quantizers (trtq.plugins): base 2, base √2, AdaLog's searched base.
ACT_QUANT_METHODS = tuple(LOG_STEPS)
# SQNR of identical outputs (trtq.evaluate.SQNR_CAP_DB, not imported here: config stays light)
_SQNR_CAP_DB = 200.0
# How INT8 conv weights are rounded given calibration data (trtq.exporter.conv_rounding): GPTQ with the
# bias absorbing the mean error, or nearest.
CONV_METHODS = ("gptq", "rtn")
# How `SelectConfig` picks calibration samples out of the candidates (trtq.calibrators.select).
SELECT_METHODS = ("random", "density-diversity", "noise-filtered-diverse")


def _choice(value: Any, allowed: tuple[str, ...], what: str, flag: str) -> str:
    if value not in allowed:
        raise TrtqError(f"unknown {what} {value!r}.", f"use {flag} with one of: {', '.join(allowed)}.")
    return value


class JsonConfig:
    """Mixin: `to_dict` / `from_dict` that survive a JSON round trip."""

    version: ClassVar[int] = 1
    # from_dict checks each value against the field's annotation (configs read from JSON)
    typed_fields: ClassVar[bool] = False

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"version": self.version}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, JsonConfig):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        data = dict(data)
        data.pop("version", None)
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name not in data:
                continue
            value = data.pop(f.name)
            sub = _NESTED.get((cls.__name__, f.name))
            if sub is not None and isinstance(value, dict):
                value = sub.from_dict(value)
            elif isinstance(value, list):
                value = tuple(value)
            kwargs[f.name] = value
        if data:
            raise TrtqError(f"unknown {cls.__name__} field(s): {', '.join(sorted(data))}.", "remove them.")
        if cls.typed_fields:
            check_field_types(cls, kwargs)
        missing = [f.name for f in dataclasses.fields(cls)  # type: ignore[arg-type]
                   if f.name not in kwargs and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise TrtqError(f"{cls.__name__} needs field(s) {', '.join(missing)}.", f"add {', '.join(missing)}.")
        return cls(**kwargs)


def check_field_types(cls: type, values: dict[str, Any]) -> None:
    """Raise a TrtqError naming the first field of `values` whose value does not fit `cls`'s annotation."""
    import typing

    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        hint = hints.get(name)
        if hint is not None and not _fits(value, hint):
            shown = getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
            raise TrtqError(f"{cls.__name__} field {name}={value!r} is not a {shown}.",
                            f"give {name} a value of type {shown} (see help(trtq.{cls.__name__})).")


def _fits(value: Any, hint: Any) -> bool:
    import types
    import typing

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(v, args[0]) for v in value)
        return len(value) == len(args) and all(_fits(v, a) for v, a in zip(value, args))
    if isinstance(origin, type):  # dict[str, ...], list[...]
        return isinstance(value, origin)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


@dataclass(frozen=True)
class Target(JsonConfig):
    """The device family and TensorRT version an engine will be built for."""

    typed_fields: ClassVar[bool] = True

    name: str = "ampere"
    trt: str | None = None

    def __post_init__(self) -> None:
        _choice(self.name, tuple(TARGETS), "target", "--target")
        if self.trt is not None:
            _choice(self.trt, TRT_VERSIONS, "TensorRT version", "--trt")

    @property
    def spec(self) -> TargetSpec:
        return TARGETS[self.name]

    @property
    def trt_version(self) -> str:
        return self.trt or self.spec.default_trt


@dataclass(frozen=True)
class CalibConfig(JsonConfig):
    """How activation ranges are computed from calibration data.

    Args:
        method: minmax | percentile | entropy | mse (see algorithms.md §8 for each).
        percentile: the percentile of |x| kept by the percentile method.
        num_bins: histogram bins over [0, max|x|] for the histogram methods.
        batch_size: samples per ONNX Runtime run when trtq batches arrays itself (.npz input). Ranges
            do not depend on it; peak memory grows with it (every observed activation of a batch is
            held at once), and on CPU larger batches are not faster, hence 1.
        max_samples: stop after this many samples (None: use all).
    """

    typed_fields: ClassVar[bool] = True

    method: str = DEFAULT_CALIB_METHOD
    percentile: float = 99.99
    num_bins: int = 2048
    batch_size: int = 1
    max_samples: int | None = None

    def __post_init__(self) -> None:
        _choice(self.method, CALIB_METHODS, "calibration method", "--calib-method")
        if not 0.0 < self.percentile <= 100.0:
            raise TrtqError(f"percentile {self.percentile} is outside (0, 100].", "pass e.g. --percentile 99.99.")
        if self.num_bins < 256:
            raise TrtqError(f"num_bins={self.num_bins} is too few for histogram methods.", "use 256 or more.")
        if self.batch_size < 1:
            raise TrtqError(f"batch_size={self.batch_size} must be at least 1.", "pass a positive batch size.")
        if self.max_samples is not None and self.max_samples < 1:
            raise TrtqError(f"max_samples={self.max_samples} must be at least 1.", "pass a positive count.")


def _int_at_least(value: Any, low: int, name: str, fix: str) -> None:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
        raise TrtqError(f"selection {name}={value!r} is not an int >= {low}.", fix)


@dataclass(frozen=True)
class SelectConfig(JsonConfig):
    """How calibration samples are picked from the candidates (the algorithms: trtq.calibrators.select).

    Args:
        n: how many candidates to keep.
        method: random | density-diversity | noise-filtered-diverse.
        feature: the FP32 tensor whose values describe a sample (None: `default_feature`).
        seed: seed of every random choice (random draw, k-means, tau's subsample).
        batch_size: candidates per ONNX Runtime run during feature extraction.
        neighbors: k of the k-nearest-neighbour density (density-diversity).
        diversity_weight: λ, the weight of diversity against density (density-diversity).
        iqr_k: fence width in IQRs of the outlier filter (noise-filtered-diverse).
        clusters: k-means clusters (None: n) (noise-filtered-diverse).
        kmeans_init: k-means restarts, the best kept (noise-filtered-diverse).
        components: principal directions kept for distances.
    """

    typed_fields: ClassVar[bool] = True

    n: int
    method: str = "random"
    feature: str | None = None
    seed: int = 0
    batch_size: int = 8
    neighbors: int = 10
    diversity_weight: float = 1.0
    iqr_k: float = 1.5
    clusters: int | None = None
    kmeans_init: int = 4
    components: int = 64

    def __post_init__(self) -> None:
        _int_at_least(self.n, 1, "n", "pick at least one sample, e.g. --select 128.")
        if self.method not in SELECT_METHODS:
            raise TrtqError(f"unknown selection method {self.method!r}.",
                            f"use --select-method with one of: {', '.join(SELECT_METHODS)}.")
        if self.feature is not None and (not isinstance(self.feature, str) or not self.feature):
            raise TrtqError(f"selection feature {self.feature!r} is not a tensor name.",
                            "name an intermediate tensor of the model, or leave it out.")
        _int_at_least(self.seed, 0, "seed", "use e.g. 0.")
        for name in ("batch_size", "neighbors", "kmeans_init", "components"):
            _int_at_least(getattr(self, name), 1, name, f"pass a positive {name}.")
        if self.clusters is not None:
            _int_at_least(self.clusters, 1, "clusters", "pass a positive number of clusters, or None (= n).")
        for name in ("diversity_weight", "iqr_k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise TrtqError(f"selection {name}={value!r} is not a finite number >= 0.", "use e.g. 1.0 or 1.5.")


@dataclass(frozen=True)
class ActQuantConfig(JsonConfig):
    """Logarithmic fake quantization of chosen activations (trtq.plugins; the math: its docstring).

    Args:
        method: log2 | logsqrt2 | adalog.
        bits: code width (2**bits − 1 levels plus zero).
        tensors: activation tensors to quantize (None: every post-Softmax and post-GELU tensor that
            a MatMul reads).
    """

    method: str
    bits: int = 8
    tensors: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        _choice(self.method, ACT_QUANT_METHODS, "activation quantizer", "--act-quant")
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 2 <= self.bits <= 16:
            raise TrtqError(f"act-quant bits={self.bits!r} is not an int in 2..16.", "pass e.g. --act-quant-bits 8.")
        if self.tensors is not None and (not self.tensors or not all(isinstance(t, str) and t for t in self.tensors)):
            raise TrtqError(f"act-quant tensors {self.tensors!r} are not tensor names.",
                            "name activation tensors of the model, or leave them out for the default rule.")


@dataclass(frozen=True)
class QuantConfig(JsonConfig):
    """Everything `trtq.quantize` needs besides the model and the data.

    Args:
        precision: int8 | fp8 | int4 (int4 is weight-only, block-wise, on MatMul/Gemm weights).
        calib: activation-range settings (ignored by int4, which needs no activation ranges).
        exclude: regular expressions; nodes whose name matches any stay in floating point.
        seed: seed of every random choice trtq makes.
        block_size: INT4 block length along the reduction axis.
        opset: ONNX opset of the output (None: the lowest one the precision needs, or the model's own).
        target: the device family the graph is checked against (None: TensorRT's rules only).
        check: run `trtq.check` on the output and refuse to write it when it finds errors.
        passes: graph passes to run before calibration, by registry name (fold_batchnorm, cle,
            rotate, rotate_online, smoothquant, repq, bias_correction; `biascorr` still names
            bias_correction); None: the defaults for the model's family; () : none.
        pass_options: pass name -> {option: value} overriding the pass's options dataclass
            (e.g. {"cle": {"relu6": "skip"}, "smoothquant": {"alphas": (0.5, 0.6)}}); None: defaults.
        fallback_budget: keep this many of the most sensitive quantized layers in floating point
            (0: measure and report the sensitivity only; None, with no target_sqnr: automatic).
        target_sqnr: keep the most sensitive layers in floating point until the output SQNR (dB, on
            the fallback samples) reaches this; with fallback_budget, at most that many layers.
        fallback: INT8 / FP8 with calibration data and neither fallback_budget nor target_sqnr: run
            the sensitivity analysis and keep in floating point the fewest layers that bring the
            output to diminishing returns (each must gain at least `fallback_min_gain_db`) within
            `max_float_macs` (`trtq.sensitivity`). False (`--no-fallback`): everything quantized,
            no analysis.
        max_float_macs: the share of the weighted ops' MACs (percent) the fallback may keep in
            floating point (None: 5 % for the automatic fallback, no cap with a budget or target).
        fallback_min_gain_db: automatic fallback: the least output SQNR gain a layer must bring.
        fallback_samples: calibration samples the sensitivity analysis runs on (the first ones).
        fallback_dtype: fp16 | bf16 | fp32: precision of the layers the fallback keeps in floating point
            (None: `high_precision`'s).
        high_precision: fp16 | bf16 | fp32: precision of every layer left unquantized, written into the
            graph (strongly typed TensorRT runs each layer in its ONNX type); what half precision breaks
            stays FP32 by trtq.exporter.high_precision's rule. None: the target's default (fp16, which
            every target runs); fp32 leaves the graph's float layers as they are.
        high_precision_io: cast the model's float inputs and outputs too (default: they stay float32).
        select: calibrate on `select.n` samples picked from the calibration data (the candidates)
            by `select.method` on the FP32 model's features (None: calibrate on all of them).
        int4_method: gptq | rtn: how INT4 weights are rounded when calibration data is given. Both
            use the same block scales (activation-aware MSE clip); gptq rounds each input channel in
            turn and moves its error onto the channels not yet rounded (Frantar et al. 2022) using
            the input's second moment over unpadded tokens; rtn rounds to nearest. Without data: rtn.
            (all-MiniLM-L6-v2, 128 calibration sentences: embedding cosine 0.957 rtn, 0.987 gptq.)
        weight_format: how int4 (weight-only) stores weights: int4 (uniform INT4 DequantizeLinear on
            MatMul/Gemm) or a codebook format (nf4, codebook4, codebook3, uniform4, uniform3:
            trtq.plugins; also on Conv weights, groups of `block_size` along K, ragged last group).
        act_quant: logarithmic quantizers on chosen activations (None: none), in place of the uniform
            Q/DQ there.
        device: where ONNX Runtime runs calibration, the passes and sensitivity: cuda | cpu (None: cuda
            when onnxruntime-gpu's CUDA execution provider is available, else cpu; `trtq._ort.providers`).
        plugins: write the TensorRT face of the codebook weights and log activations (one trtq plugin
            node each, codes kept packed; trtq.plugins.trt_face) instead of their standard-ONNX face.
            The result is for TensorRT only, with trtq's plugin loaded; ONNX Runtime cannot run it.
        conv_method: gptq | rtn: how INT8 Conv weights are rounded given calibration data
            (`trtq.exporter.conv_rounding`): GPTQ on the im2col patches' second moments, the bias
            absorbing the mean output error (gptq), or nearest (rtn); both per-channel max scales.
        conv_samples: calibration samples the conv statistics are summed over.
    """

    typed_fields: ClassVar[bool] = True

    precision: str = "int8"
    calib: CalibConfig = field(default_factory=CalibConfig)
    exclude: tuple[str, ...] = ()
    seed: int = 0
    block_size: int = DEFAULT_BLOCK_SIZE
    opset: int | None = None
    target: Target | None = None
    check: bool = True
    passes: tuple[str, ...] | None = None
    pass_options: dict[str, dict[str, Any]] | None = None
    fallback_budget: int | None = None
    target_sqnr: float | None = None
    fallback: bool = True
    max_float_macs: float | None = None
    fallback_min_gain_db: float = 0.5
    fallback_samples: int = 16
    fallback_dtype: str | None = None
    select: SelectConfig | None = None
    int4_method: str = "gptq"
    weight_format: str = "int4"
    act_quant: ActQuantConfig | None = None
    device: str | None = None
    plugins: bool = False
    high_precision: str | None = None
    high_precision_io: bool = False

    @property
    def resolved_high_precision(self) -> str:
        """`high_precision`, or the target's default (fp16) when None."""
        if self.high_precision is not None:
            return self.high_precision
        return self.target.spec.default_high_precision if self.target is not None else "fp16"

    @property
    def resolved_fallback_dtype(self) -> str:
        """`fallback_dtype`, or the high precision when None."""
        return self.fallback_dtype or self.resolved_high_precision
    conv_method: str = "gptq"
    conv_samples: int = 32

    def __post_init__(self) -> None:
        if isinstance(self.exclude, str):  # one pattern, not one pattern per character
            object.__setattr__(self, "exclude", (self.exclude,))
        for name in ("exclude", "passes"):  # lists from Python callers
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        check_field_types(type(self), {f.name: getattr(self, f.name) for f in dataclasses.fields(self)})
        _choice(self.precision, PRECISIONS, "precision", "--precision")
        if self.seed < 0:
            raise TrtqError(f"seed={self.seed!r} is not an int >= 0.", "pass e.g. --seed 0.")
        if self.block_size < 2 or self.block_size & (self.block_size - 1):
            raise TrtqError(f"block_size={self.block_size} is not a power of two >= 2.", "use e.g. 32, 64 or 128.")
        if self.target is not None and self.precision not in self.target.spec.precisions:
            raise TrtqError(
                f"{self.precision.upper()} cannot run on target {self.target.name!r} "
                f"(SM {self.target.spec.sm}: {', '.join(self.target.spec.precisions)}).",
                "choose --precision int8 (or int4 weight-only), or a target that runs it "
                f"({self.precision}: {', '.join(TABLE[self.precision].targets)}).",
            )
        self._validate_fallback()
        self._validate_passes()
        _choice(self.int4_method, INT4_METHODS, "INT4 method", "--int4-method")
        self._validate_formats()
        if self.device is not None:
            _choice(self.device, ("cuda", "cpu"), "device", "--device")
        _choice(self.conv_method, CONV_METHODS, "conv weight method", "--conv-method")
        if not isinstance(self.conv_samples, int) or self.conv_samples < 1:
            raise TrtqError(f"conv_samples={self.conv_samples!r} must be at least 1.", "pass e.g. --conv-samples 32.")
        import re

        for pattern in self.exclude:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise TrtqError(f"--exclude {pattern!r} is not a valid regular expression ({exc}).",
                                "fix or quote the pattern.") from exc

    @property
    def codebook_weights(self) -> bool:
        """Weights go to a codebook format of trtq.plugins (not INT4 DequantizeLinear)."""
        return self.precision == "int4" and WEIGHT_FORMAT_TABLE[self.weight_format].codebook

    def _validate_formats(self) -> None:
        _choice(self.weight_format, WEIGHT_FORMATS, "weight format", "--weight-format")
        if self.weight_format != "int4" and self.precision != "int4":
            raise TrtqError(f"weight format {self.weight_format} is weight-only.",
                            f"use --precision int4 --weight-format {self.weight_format}.")
        if self.plugins and not (self.codebook_weights or self.act_quant is not None):
            raise TrtqError("--plugins has nothing to replace: it swaps codebook weights and log activations "
                            "for TensorRT plugin nodes.",
                            "add --precision int4 --weight-format nf4 (or codebook4, codebook3, ...) and/or "
                            "--act-quant log2, or drop --plugins.")
        if self.codebook_weights and (self.fallback_budget is not None or self.target_sqnr is not None):
            raise TrtqError("sensitivity fallback does not support codebook weight formats.",
                            "drop --fallback-budget / --target-sqnr, or use --weight-format int4.")

    def _validate_passes(self) -> None:
        if self.passes is None and not self.pass_options:
            return
        from trtq.exporter.passes.registry import ALIASES, pass_options, registered_passes

        if self.passes is not None:
            known = registered_passes()
            unknown = [n for n in self.passes if ALIASES.get(n, n) not in known]
            if unknown:
                raise TrtqError(f"unknown pass(es) {', '.join(unknown)}.",
                                f"use --passes with any of: {', '.join(known)}.")
        if self.pass_options is not None and not isinstance(self.pass_options, dict):
            raise TrtqError("pass_options is not a dict of pass name -> {option: value}.",
                            'pass e.g. {"cle": {"relu6": "skip"}}.')
        for name, overrides in (self.pass_options or {}).items():
            if not isinstance(overrides, dict):
                raise TrtqError(f"pass_options[{name!r}] is not a dict of option -> value.",
                                'pass e.g. {"cle": {"relu6": "skip"}}.')
            pass_options(name, overrides)

    def _validate_fallback(self) -> None:
        if self.fallback_budget is not None and self.fallback_budget < 0:
            raise TrtqError(f"fallback_budget={self.fallback_budget} is negative.",
                            "pass e.g. --fallback-budget 3.")
        if self.target_sqnr is not None and not math.isfinite(self.target_sqnr):
            raise TrtqError(f"target_sqnr={self.target_sqnr} is not a finite number of dB.",
                            "pass e.g. --target-sqnr 25.")
        if self.target_sqnr is not None and self.target_sqnr > _SQNR_CAP_DB:
            raise TrtqError(f"target_sqnr={self.target_sqnr:g} dB is above the {_SQNR_CAP_DB:g} dB of identical "
                            "outputs: no fallback reaches it.", "pass e.g. --target-sqnr 25.")
        if not self.fallback and (self.fallback_budget is not None or self.target_sqnr is not None
                                  or self.max_float_macs is not None):
            raise TrtqError("no fallback was asked for together with a fallback budget, target SQNR or MAC share.",
                            "drop --no-fallback, or drop --fallback-budget / --target-sqnr / --max-float-macs.")
        if self.max_float_macs is not None and not (isinstance(self.max_float_macs, (int, float))
                                                    and 0 <= self.max_float_macs <= 100):
            raise TrtqError(f"max_float_macs={self.max_float_macs!r} is not a percentage in [0, 100].",
                            "pass e.g. --max-float-macs 5.")
        if not (isinstance(self.fallback_min_gain_db, (int, float)) and math.isfinite(self.fallback_min_gain_db)
                and self.fallback_min_gain_db >= 0):
            raise TrtqError(f"fallback_min_gain_db={self.fallback_min_gain_db!r} is not a number of dB >= 0.",
                            "use e.g. 0.5.")
        if self.fallback_samples < 1:
            raise TrtqError(f"fallback_samples={self.fallback_samples} must be at least 1.", "pass e.g. 16.")
        if self.fallback_dtype is not None:
            _choice(self.fallback_dtype, FALLBACK_DTYPES, "fallback dtype", "--fallback-dtype")
        if self.high_precision is not None:
            _choice(self.high_precision, HIGH_PRECISIONS, "high precision", "--high-precision")
        for dtype in {self.high_precision, self.fallback_dtype} - {None}:
            if self.target is not None and not self.target.spec.runs(dtype):
                raise TrtqError(f"{dtype.upper()} does not run on target {self.target.name!r}.",
                                "use --high-precision fp16 (or fp32).")


_NESTED: dict[tuple[str, str], type[JsonConfig]] = {
    ("QuantConfig", "calib"): CalibConfig,
    ("QuantConfig", "target"): Target,
    ("QuantConfig", "select"): SelectConfig,
    ("QuantConfig", "act_quant"): ActQuantConfig,
}
