"""`trtq.quantize`: FP32 model + calibration data -> TensorRT-legal QDQ ONNX + sidecar report."""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import re
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from trtq import _io
from trtq._ort import current_providers, session_device
from trtq._shapes import add_inferred_shapes
from trtq._version import __version__
from trtq.calibrators.data import Batch, BatchStream, open_batches
from trtq.calibrators.methods import compute_amax
from trtq.calibrators.observer import Reducer, observe, token_mask_input
from trtq.calibrators.stats import ChannelStatsReducer, GramReducer, collect_stats
from trtq.config import CalibConfig, QuantConfig, Target
from trtq.errors import TrtqError
from trtq.exporter.high_precision import cast_high_precision
from trtq.exporter.passes import PassContext, PassRun, resolve_passes, run_passes
from trtq.exporter.placement import QuantPlan, WeightSlot, plan_quantization
from trtq.exporter.qdq import insert_qdq
from trtq.exporter.weight_subgraphs import fold_weight_subgraphs
from trtq.fidelity import SmallestHashes, fidelity_check
from trtq.precision import FLOATS, TABLE, WEIGHT_FORMAT_TABLE, opset_of
from trtq.sensitivity import FallbackResult, sensitivity_fallback

if TYPE_CHECKING:
    from trtq.calibrators.select import Selection
    from trtq.exporter.weights import QuantizedWeight

__all__ = ["QuantizeResult", "calibrate", "quantize"]

logger = logging.getLogger(__name__)



@dataclass
class QuantizeResult:
    """The quantized model, where it was written (if anywhere), the sidecar report, and wall time.

    The report holds no timings, so equal inputs give a byte-identical sidecar.
    """

    model: onnx.ModelProto
    report: dict[str, Any]
    path: Path | None = None
    report_path: Path | None = None
    seconds: float = 0.0
    pass_seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    fallback: FallbackResult | None = None


def quantize(
    model: Any,
    calib_data: Any = None,
    output: str | os.PathLike[str] | None = None,
    *,
    precision: str | None = None,
    calib_method: str | None = None,
    exclude: tuple[str, ...] | list[str] | None = None,
    seed: int | None = None,
    target: str | Target | None = None,
    config: QuantConfig | None = None,
    example_inputs: Any = None,
    progress: bool = True,
) -> QuantizeResult:
    """Quantize `model` for TensorRT and write `output` plus `<output stem>.trtq.json`.

    Args:
        model: an ONNX path, an `onnx.ModelProto`, or a `torch.nn.Module` (exported first; needs
            `example_inputs`).
        calib_data: calibration data: an .npz path, a dict of arrays, an iterable of
            `{input_name: array}` batches, an ONNX Runtime CalibrationDataReader, or an image or
            text source (`trtq.calibrators.images.ImageFolder`, `trtq.calibrators.text.TextSource`,
            `trtq.calibrators.degrade.Degraded`), whose report goes to the sidecar. INT4
            (weight-only) needs none; given data, it clips each weight block for the least
            output error on that data (activation-aware) instead of the least weight error, and
            rounds with GPTQ (`QuantConfig.int4_method`).
        output: where to write the QDQ model (None: return it without writing).
        precision, calib_method, exclude, seed, target: shortcuts that override `config`.
        config: the full `QuantConfig`.
        example_inputs: inputs to trace a torch module with.
        progress: show progress bars on stderr.

    Returns:
        QuantizeResult with the model, the report dict, and the written paths.
    """
    cfg = _resolve_config(config, precision, calib_method, exclude, seed, target)
    with session_device(cfg.device):  # every ORT session of the run: calibration, passes, sensitivity
        return _quantize(model, calib_data, output, cfg, example_inputs, progress)


def _quantize(model: Any, calib_data: Any, output: str | os.PathLike[str] | None, cfg: QuantConfig,
              example_inputs: Any, progress: bool) -> QuantizeResult:
    started = time.perf_counter()
    fp32, source = _load_input(model, example_inputs, output)
    if output is not None:
        _io.check_output(output, _data_files(calib_data))
    fp32, folded_weights = _prepare(fp32, cfg)
    selection, batches = _open_data(fp32, calib_data, cfg, progress)
    codebooks: dict[str, Any] = {}
    try:
        passes = _run_passes(fp32, cfg, batches, progress)
        folded, pass_reports, pass_seconds = passes.model, passes.reports, passes.seconds
        del fp32  # the passes' output replaces it: holding both would double the weights in memory
        plan, codebook_plan = _plan_weights(folded, cfg, passes.plan)
        log_acts, log_report = _log_activations(folded, plan, batches, cfg)
        # one pass over the data serves the ranges, INT4's importance, the samples of the fallback analysis
        # and of the conv statistics (the smallest content hashes: order- and batch-independent)
        power = _importance_reducer(folded, plan, cfg.int4_method) if codebook_plan is None else None
        replay = SmallestHashes(cfg.fallback_samples) if _wants_fallback(cfg) and codebook_plan is None else None
        conv_replay = SmallestHashes(cfg.conv_samples) if _wants_conv_rounding(cfg) and codebook_plan is None else None
        hashes = SmallestHashes()  # the post-quantization fidelity samples (the ONNX face, under --plugins)
        calib_report, amax = _calibrate(folded, plan, batches, cfg, progress,
                                        also=[r for r in (power, replay, conv_replay, hashes) if r is not None])
        fallback = None
        conv_weights: dict[WeightSlot, QuantizedWeight] = {}
        if codebook_plan is not None:
            from trtq.plugins.apply import quantize_codebook

            codebooks, tensors = quantize_codebook(folded, codebook_plan, batches, cfg, progress)
        else:
            conv_weights = _round_convs(folded, plan, conv_replay.samples() if conv_replay is not None else None,
                                        cfg, pass_reports)
            importance = _importance(plan, power) if batches is not None else {}
            power = None  # its Σ x·xᵀ sums became the Hessians: do not hold both (MiniLM INT4: 200 MB)
            replayed = replay.samples() if replay is not None and batches is not None else None
            fallback = _fallback(folded, plan, amax, replayed, cfg, importance, conv_weights, progress)
            if fallback is not None:
                plan = fallback.plan
        fidelity_samples = hashes.samples() if hashes is not None and batches is not None else []
    finally:
        _close_data(selection, batches)
    if codebook_plan is None:
        # the weights the fallback analysis quantized (the whole plan), reused: quantized once
        weights = fallback.weights if fallback is not None else conv_weights
        qmodel, tensors = insert_qdq(folded, plan, amax, cfg.precision, block_size=cfg.block_size,
                                     opset=_opset(folded), importance=importance, quantized=weights,
                                     scale_type=cfg.resolved_high_precision)
    else:
        qmodel = folded
    if codebooks or log_acts:
        from trtq.plugins.onnx_face import insert_faces

        qmodel = insert_faces(qmodel, codebooks, log_acts)
        tensors.update(log_report)
    plugin_report = fidelity = None
    if cfg.plugins:
        from trtq.plugins.trt_face import to_plugin_face

        if fidelity_samples:  # ONNX Runtime runs only the ONNX face, which computes the plugin graph's numbers
            fidelity = fidelity_check(folded, qmodel, fidelity_samples)
        qmodel, swap = to_plugin_face(qmodel, inplace=qmodel is not folded)  # edit only a graph made here
        plugin_report = swap.to_dict()
    high_precision = _high_precision(qmodel, cfg, fallback, plugins=bool(codebooks or log_acts or cfg.plugins))
    for name, entry in tensors.items():
        if entry["kind"] == "activation" and name in calib_report:
            entry.update(calib_report[name])
    report = _report(cfg, source, plan, tensors, calib_report, batches.num_samples if batches is not None else 0)
    report["folded_weight_subgraphs"] = folded_weights
    report["passes"] = pass_reports
    if fidelity_samples:
        report["fidelity"] = fidelity or fidelity_check(folded, qmodel, fidelity_samples)
    if plugin_report is not None:
        report["plugins"] = plugin_report
    report["high_precision"] = high_precision
    if fallback is not None:
        report["fallback"] = {"dtype": cfg.resolved_fallback_dtype, **fallback.to_dict()}
    data_report = batches.source_report() if batches is not None else None
    if data_report is not None:
        report["calibration_data"] = data_report
    if selection is not None:
        report["selection"] = selection.to_dict()
    if cfg.check:
        report["check"] = _run_check(qmodel, cfg)
    if fallback is not None:
        fallback = dataclasses.replace(fallback, weights={})  # the result keeps no second copy of the weights
    result = QuantizeResult(qmodel, report, seconds=time.perf_counter() - started, pass_seconds=pass_seconds,
                            fallback=fallback)
    if output is not None:
        result.path, result.report_path = _io.save_outputs(qmodel, report, output)
    return result


def _data_files(data: Any) -> dict[Path, str]:
    """The file or folder calibration data is read from, when there is one."""
    for _ in range(8):  # Degraded(ImageFolder) and other wrappers, a few levels deep
        if isinstance(data, (str, os.PathLike)) or not hasattr(data, "source"):
            break
        data = data.source
    for attr in ("root", "path"):  # ImageFolder, TextSource
        if isinstance(getattr(data, attr, None), Path):
            return {getattr(data, attr): "calibration data"}
    return {Path(data): "calibration data"} if isinstance(data, (str, os.PathLike)) else {}


def _high_precision(qmodel: onnx.ModelProto, cfg: QuantConfig, fallback: FallbackResult | None,
                    plugins: bool = False) -> dict[str, Any]:
    """Cast the unquantized layers to the high precision (and the fallback's to theirs); what was done."""
    if plugins:  # the plugin faces' signatures are float32 (trtq.plugins): casting around them is not done
        return {"dtype": "fp32", "reason": "codebook / log-activation plugin faces keep the graph float32"}
    dtype, kept = cfg.resolved_high_precision, list(fallback.kept_float) if fallback is not None else []
    fallback_dtype = cfg.resolved_fallback_dtype
    if dtype != "fp32":
        keep = {n: "sensitivity fallback in fp32 (--fallback-dtype fp32)" for n in kept} if fallback_dtype == "fp32" \
            else {}
        done = cast_high_precision(qmodel, dtype, keep=keep, keep_io=not cfg.high_precision_io)
        return done.to_dict()
    if kept and fallback_dtype != "fp32":
        done = cast_high_precision(qmodel, fallback_dtype, nodes=kept, keep_io=not cfg.high_precision_io)
        return {"fallback_only": True, **done.to_dict()}
    return {"dtype": "fp32"}


def _open_data(model: onnx.ModelProto, calib_data: Any, cfg: QuantConfig,
               progress: bool) -> tuple[Selection | None, BatchStream | None]:
    """The calibration stream (None for INT4 without data), of the selected samples when `cfg.select` asks."""
    selection = _select(model, calib_data, cfg, progress)
    if selection is not None:
        calib_data = selection.source(cfg.calib.batch_size)
    if calib_data is None and not TABLE[cfg.precision].activations:
        return selection, None
    try:
        return selection, open_batches(calib_data, model, batch_size=cfg.calib.batch_size,
                                       max_samples=cfg.calib.max_samples)
    except BaseException:
        _close_data(selection, None)
        raise


def _close_data(selection: Selection | None, batches: BatchStream | None) -> None:
    if batches is not None:
        batches.close()
    if selection is not None:
        selection.close()


def _select(model: onnx.ModelProto, calib_data: Any, cfg: QuantConfig, progress: bool) -> Selection | None:
    """Pick `cfg.select.n` of the calibration candidates from the FP32 model's features, when asked."""
    if cfg.select is None:
        return None
    if calib_data is None:
        raise TrtqError("sample selection needs candidates to select from, and no calibration data was given.",
                        "pass the candidates as calibration data (--calib-data), or drop --select.")
    from trtq.calibrators.select import run_selection

    return run_selection(model, calib_data, cfg.select, progress=progress)


def _plan_weights(model: onnx.ModelProto, cfg: QuantConfig, decided: QuantPlan | None) -> tuple[QuantPlan, Any]:
    """The plan (`decided` when a pass already planned this graph), and for codebook weight formats the
    `trtq.plugins.apply.CodebookPlan` behind it."""
    if not cfg.codebook_weights:
        return decided or _plan(model, cfg), None
    from trtq.plugins.apply import plan_codebook

    cp = plan_codebook(model, cfg.exclude)
    if not cp.sites:
        raise TrtqError(f"the model has no constant MatMul/Gemm/Conv weight for --weight-format {cfg.weight_format}"
                        + (f" ({len(cp.plan.skipped)} excluded or skipped)." if cp.plan.skipped else "."),
                        "check --exclude, or quantize a model that has convolutions or matrix multiplications.")
    return cp.plan, cp


def _log_activations(model: onnx.ModelProto, plan: QuantPlan, batches: BatchStream | None,
                     cfg: QuantConfig) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """`cfg.act_quant`'s tensors with their log quantizers; they leave the plan's uniform Q/DQ."""
    if cfg.act_quant is None:
        return {}, {}
    from trtq.plugins.apply import fit_log_activations

    chosen, report = fit_log_activations(model, cfg.act_quant, batches, cfg.seed)
    for name in chosen:
        plan.activations.pop(name, None)
    return chosen, report


def _plan(model: onnx.ModelProto, cfg: QuantConfig) -> QuantPlan:
    plan = plan_quantization(model, cfg.precision, cfg.exclude, cfg.block_size,
                             trt=cfg.target.trt_version if cfg.target is not None else None)
    if plan.empty:
        spec = TABLE[cfg.precision]
        ops = "/".join(spec.weighted_ops)
        if spec.blockwise:
            ops += f" with constant 2-D weights whose K is a multiple of the block size ({cfg.block_size})"
        kinds = "matrix multiplications" if "Conv" not in spec.weighted_ops else \
            "convolutions or matrix multiplications"
        fix = (f"check --exclude, or quantize a model that has {kinds}"
               + ("; a convolutional model: use int8 or fp8" if "Conv" not in spec.weighted_ops else "") + ".")
        raise TrtqError(f"the model has no quantizable op for {cfg.precision.upper()} ({ops}"
                        + (f"; {len(plan.skipped)} excluded or skipped" if plan.skipped else "") + ").", fix)
    return plan


def _fallback(model: onnx.ModelProto, plan: QuantPlan, amax: dict[str, float], batches: list[Batch] | None,
              cfg: QuantConfig, importance: dict[str, np.ndarray], weights: dict[WeightSlot, QuantizedWeight],
              progress: bool) -> FallbackResult | None:
    """Sensitivity analysis and fallback: asked for (a budget or target SQNR), or automatic (INT8 / FP8 with
    calibration data, unless `cfg.fallback` is off), on `batches`: the `fallback_samples` calibration samples
    of smallest content hash, taken during the calibration pass (order- and batch-independent). `weights`:
    weights already quantized (the rounded convs), reused by the analysis."""
    if not _wants_fallback(cfg) or batches is None:
        return None
    auto = cfg.fallback_budget is None and cfg.target_sqnr is None
    layers = len(plan.quantized_nodes)
    if cfg.fallback_budget is not None and cfg.fallback_budget >= layers:
        raise TrtqError(f"--fallback-budget {cfg.fallback_budget} would keep all {layers} quantized layers in "
                        "floating point: nothing would be quantized.",
                        f"pass a budget below {layers} (0 only reports each layer's sensitivity).")
    result = sensitivity_fallback(model, plan, amax, batches, cfg.precision, opset=_opset(model),
                                  budget=cfg.fallback_budget, target_sqnr=cfg.target_sqnr,
                                  samples=cfg.fallback_samples, block_size=cfg.block_size,
                                  importance=importance, scale_type=cfg.resolved_high_precision,
                                  quantized=weights, auto=auto,
                                  max_float_macs=None if cfg.max_float_macs is None else cfg.max_float_macs / 100,
                                  min_gain_db=cfg.fallback_min_gain_db, progress=progress)
    if result.plan.empty:
        raise TrtqError(f"--target-sqnr {cfg.target_sqnr:g} is not reached with any of the {layers} layers "
                        f"quantized (all quantized: {result.baseline_sqnr_db:.1f} dB): nothing would be quantized.",
                        "pass a lower --target-sqnr, or cap the layers kept in floating point with "
                        "--fallback-budget N.")
    return result


def _run_passes(model: onnx.ModelProto, cfg: QuantConfig, batches: BatchStream | None, progress: bool) -> PassRun:
    """Run the graph passes `cfg.passes` names (or the model family's defaults), in their fixed order.

    A pass that reads the placement (bias correction) gets it from `_plan`, and the run keeps it for
    the pipeline: placement is decided once.
    """
    ctx = PassContext(cfg, batches, progress, planner=lambda m: _plan(m, cfg))
    return run_passes(model, resolve_passes(cfg.passes, model, cfg.precision), ctx, cfg.pass_options)


def calibrate(
    model: Any,
    calib_data: Any,
    *,
    precision: str | None = None,
    calib_method: str | None = None,
    exclude: tuple[str, ...] | list[str] | None = None,
    config: QuantConfig | None = None,
    example_inputs: Any = None,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """The activation ranges `quantize` would use, without writing a model.

    Returns:
        tensor name -> {"method", "amax", "scale", "samples", "excluded_nonfinite", "min", "max", ...}
        for every activation tensor TensorRT's placement rules quantize.
    """
    cfg = _resolve_config(config, precision, calib_method, exclude, None, None)
    spec = TABLE[cfg.precision]
    if not spec.activations:
        raise TrtqError(f"{spec.name.upper()} is weight-only: it has no activation ranges to calibrate.",
                        "use int8 or fp8.")
    fp32, _ = _load_input(model, example_inputs, None)
    fp32, _ = _prepare(fp32, cfg)
    selection, batches = _open_data(fp32, calib_data, cfg, progress)
    try:
        with session_device(cfg.device):
            passes = _run_passes(fp32, cfg, batches, progress)
            fp32 = passes.model
            plan = passes.plan or _plan(fp32, cfg)
            report, amax = _calibrate(fp32, plan, batches, cfg, progress)
    finally:
        _close_data(selection, batches)
    return {n: {**report[n], "amax": amax[n], "scale": amax[n] / spec.qmax} for n in sorted(report)}


def _resolve_config(config: QuantConfig | None, precision: str | None, calib_method: str | None,
                    exclude: Any, seed: int | None, target: str | Target | None) -> QuantConfig:
    if isinstance(config, dict):
        config = QuantConfig.from_dict(config)
    if config is not None and not isinstance(config, QuantConfig):
        raise TrtqError(f"config is a {type(config).__name__}, not a QuantConfig.",
                        'pass config=trtq.QuantConfig(...) (or a dict of its fields), or use precision="int8" etc.')
    cfg = config or QuantConfig(precision=precision or "int8")
    changes: dict[str, Any] = {}
    if precision is not None:
        changes["precision"] = precision
    if calib_method is not None:
        changes["calib"] = dataclasses.replace(cfg.calib, method=calib_method)
    if exclude is not None:
        changes["exclude"] = (exclude,) if isinstance(exclude, str) else exclude
    if seed is not None:
        changes["seed"] = seed
    if target is not None:
        changes["target"] = target if isinstance(target, Target) else Target(target)
    return dataclasses.replace(cfg, **changes) if changes else cfg


def _load_input(model: Any, example_inputs: Any, output: Any) -> tuple[onnx.ModelProto, dict[str, Any]]:
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        proto = _io.load_model(path, load_weights=False)
        if output is not None:  # before the weights are read
            _io.check_output(output, {path: "model", **{p: "model's external data"
                                                        for p in _io.external_data_files(proto, path)}})
        _io.load_external_data(proto, path)
        return proto, {"path": str(path), "sha256": _io.file_sha256(path)}
    if isinstance(model, onnx.ModelProto):
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        return copy, {"path": None, "sha256": None}
    if type(model).__module__.startswith("torch") or hasattr(model, "state_dict"):
        source = {"path": None, "sha256": None, "exported_from": type(model).__name__}
        return _export_torch(model, example_inputs), source
    raise TrtqError(
        f"cannot quantize a {type(model).__name__}.",
        "pass an ONNX path, an onnx.ModelProto or a torch.nn.Module with example_inputs.",
    )


def _export_torch(module: Any, example_inputs: Any) -> onnx.ModelProto:
    if example_inputs is None:
        raise TrtqError("a torch module needs example inputs to be exported.", "pass example_inputs=(tensor, ...).")
    import inspect

    from trtq.exporter.torch_export import export

    if isinstance(example_inputs, list):
        example_inputs = tuple(example_inputs)
    if isinstance(example_inputs, dict):
        names = list(example_inputs)
    else:
        count = len(example_inputs) if isinstance(example_inputs, (tuple, list)) else 1
        names = list(inspect.signature(module.forward).parameters)[:count]
    with tempfile.TemporaryDirectory(prefix="trtq-export-") as scratch:
        # the batch axis stays dynamic so calibration batches of any size fit
        path = export(module, example_inputs, Path(scratch) / "model.onnx", input_names=names,
                      dynamic_axes={n: {0: "batch"} for n in names})
        return _io.load_model(path)


def _prepare(model: onnx.ModelProto, cfg: QuantConfig) -> tuple[onnx.ModelProto, list[str]]:
    """Name unnamed nodes, raise the opset to what the precision needs, fold the constant subgraphs that
    compute weights (`trtq.exporter.weight_subgraphs`), infer types. Returns the model and the folded tensors."""
    used = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in used:
                name += "_"
            node.name = name
            used.add(name)
    own = _opset(model)
    need = WEIGHT_FORMAT_TABLE[cfg.weight_format].min_opset if cfg.codebook_weights else TABLE[cfg.precision].min_opset
    half = FLOATS[cfg.resolved_high_precision].scale_opset  # Q/DQ scales in the high precision
    if cfg.opset is not None and cfg.opset < max(own, need, half):
        if cfg.opset < own:
            why = f"the model's opset {own}"
        elif cfg.opset < need:
            why = f"the opset {cfg.precision.upper()} needs ({need})"
        else:
            why = f"the opset of {cfg.resolved_high_precision} Q/DQ scales ({half}, --high-precision)"
        raise TrtqError(f"--opset {cfg.opset} is below {why}; trtq never lowers an opset.",
                        f"drop --opset, or pass {max(own, need, half)} or higher (or --high-precision fp32).")
    target = max(cfg.opset or 0, need, half, own)
    if target != _opset(model):
        model = _convert_opset(model, target)
    model, folded = fold_weight_subgraphs(model)
    return add_inferred_shapes(model), folded


def _opset(model: onnx.ModelProto) -> int:
    return opset_of(model) or 0


def _convert_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    from onnx import version_converter

    try:
        return version_converter.convert_version(model, opset)
    except Exception as exc:
        raise TrtqError(
            f"could not convert the model from opset {_opset(model)} to opset {opset} ({exc}).",
            f"export the model with opset {opset} or newer (trtq.export(..., opset={opset})).",
        ) from exc


def _calibrate(model: onnx.ModelProto, plan: QuantPlan, batches: BatchStream | None, cfg: QuantConfig,
               progress: bool, also: Sequence[Reducer] = ()) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
    """Activation ranges of the plan's tensors; `also` rides on the same pass over the data."""
    if batches is None:
        return {}, {}
    if not plan.activations:
        if also:
            observe(model, batches, also, desc="calibrate", progress=progress)
        return {}, {}
    calib: CalibConfig = cfg.calib
    stats = collect_stats(model, sorted(plan.activations), batches, histograms=calib.method != "minmax",
                          num_bins=calib.num_bins, progress=progress, also=also)
    amax: dict[str, float] = {}
    report: dict[str, dict[str, Any]] = {}
    for name, st in stats.items():
        amax[name] = compute_amax(st, calib.method, cfg.precision, percentile=calib.percentile)
        report[name] = {"method": calib.method, **st.to_dict()}
    _require_ranges(plan, stats, amax, cfg.precision)
    return report, amax


def _require_ranges(plan: QuantPlan, stats: dict[str, Any], amax: dict[str, float], precision: str) -> None:
    """Refuse activations whose data gives no scale: amax / qmax must be a positive normal float32.

    A tensor that was zero or non-finite in every calibration sample has no range; a scale clamped to
    a tiny value instead would be subnormal, which TensorRT cannot invert (`trtq check`: scale-value).
    """
    tiny, qmax = float(np.finfo(np.float32).tiny), TABLE[precision].qmax
    bad = sorted(n for n, a in amax.items() if not (np.isfinite(a) and a / qmax >= tiny))
    if not bad:
        return
    described = []
    for name in bad[:5]:
        st = stats[name]
        readers = sorted({node for node, _ in plan.activations[name]})
        described.append(f"{name!r} (read by {', '.join(readers)}; max |x| {st.amax:g} over {st.samples} samples, "
                         f"{st.excluded} non-finite values excluded)")
    more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
    nodes = sorted({node for name in bad for node, _ in plan.activations[name]})
    raise TrtqError(
        f"{len(bad)} activation tensor(s) saw no finite non-zero value in the calibration data, so no scale "
        f"can be set: {'; '.join(described)}{more}.",
        "check the calibration data (all-zero or NaN inputs do this), or keep the ops reading these tensors in "
        f"floating point: --exclude '^({'|'.join(re.escape(n) for n in nodes[:5])})$'.",
    )


def _wants_conv_rounding(cfg: QuantConfig) -> bool:
    return cfg.precision == "int8" and cfg.conv_method == "gptq"


def _wants_fallback(cfg: QuantConfig) -> bool:
    asked = cfg.fallback_budget is not None or cfg.target_sqnr is not None
    return asked or (cfg.fallback and cfg.precision in ("int8", "fp8"))


def _round_convs(model: onnx.ModelProto, plan: QuantPlan, samples: list[Batch] | None, cfg: QuantConfig,
                 pass_reports: dict[str, Any]) -> dict[WeightSlot, QuantizedWeight]:
    """INT8 with calibration data: choose each Conv weight's rounding (and bias) for the least layer-output
    error on `samples` (`trtq.exporter.conv_rounding`); writes the biases into `model`, returns the weights.
    A bias that bias correction shifted for nearest rounding is put back first (its report names the layers)."""
    if not _wants_conv_rounding(cfg) or not samples:
        return {}
    from trtq.exporter.conv_rounding import round_convs, write_biases

    readers: dict[str, int] = {}
    for node in model.graph.node:
        for t in node.input:
            readers[t] = readers.get(t, 0) + 1
    slots = {s.tensor: s for s in plan.weights if s.axis == 0 and s.block_axis is None}
    nodes = {n.name: n for n in model.graph.node}
    convs = {n: nodes[n].input[1] for n in plan.quantized_nodes
             if nodes[n].op_type == "Conv" and nodes[n].input[1] in slots and readers[nodes[n].input[1]] == 1}
    corrected = {layer["node"] for name, report in pass_reports.items() if name in ("biascorr", "bias_correction")
                 for layer in (report or {}).get("layers", [])}
    rounded = round_convs(model, convs, samples, len(samples), bias_corrected=corrected)
    write_biases(model, rounded)
    return {slots[convs[name]]: r.weight for name, r in rounded.items()}


def _importance_reducer(model: onnx.ModelProto, plan: QuantPlan, method: str) -> Reducer | None:
    """INT4 with calibration data: what each weight's input says (see `insert_qdq`).

    gptq: Σ x·xᵀ over unpadded tokens (one per distinct input, shared by its weights), for the K × K
    Hessian H = (2/n)·Σ x·xᵀ; rtn: the per-input-channel power E[x_k²] (activation-aware clipping only).
    """
    if not plan.int4_inputs:
        return None
    if method == "gptq":
        return GramReducer(list(plan.int4_inputs.values()), mask=token_mask_input(model))
    return ChannelStatsReducer({x: -1 for x in set(plan.int4_inputs.values())})


def _importance(plan: QuantPlan, reducer: Reducer | None) -> dict[str, np.ndarray]:
    if isinstance(reducer, GramReducer):
        hessians = {x: m.hessian for x, m in reducer.result().items()}  # one array per input, shared
        return {w: hessians[x] for w, x in plan.int4_inputs.items()}
    if isinstance(reducer, ChannelStatsReducer):
        stats = reducer.result()
        return {w: stats[x].sqmean for w, x in plan.int4_inputs.items()}
    return {}


def _run_check(model: onnx.ModelProto, cfg: QuantConfig) -> dict[str, Any]:
    from trtq.exporter.check import check

    result = check(model, target=cfg.target)
    if result.errors:
        raise TrtqError(
            "the quantized graph breaks TensorRT rules:\n" + result.format(),
            "exclude the nodes named above with --exclude, or choose a precision the target runs.",
        )
    return result.to_dict()


def _codebook_bytes(tensors: dict[str, dict[str, Any]]) -> dict[str, int] | None:
    """Stored and float32 bytes of the codebook-format weights (None when there are none)."""
    entries = [t for t in tensors.values() if t["kind"] == "weight" and "format" in t]
    if not entries:
        return None
    return {"stored": sum(t["bytes"] for t in entries), "float32": sum(t["float32_bytes"] for t in entries)}


def _report(cfg: QuantConfig, source: dict[str, Any], plan: QuantPlan, tensors: dict[str, dict[str, Any]],
            calib: dict[str, dict[str, Any]], read: int | None) -> dict[str, Any]:
    import onnxruntime

    # the samples calibration read: activation ranges, or the INT4 weights' input statistics (GPTQ)
    samples = max([c["samples"] for c in calib.values()] + [read or 0])
    excluded = {n: c["excluded_nonfinite"] for n, c in calib.items() if c["excluded_nonfinite"]}
    return {
        "trtq_report_version": 1,
        "versions": {"trtq": __version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                     "numpy": np.__version__, "python": platform.python_version()},
        "onnxruntime_providers": current_providers(),
        "input": source,
        "config": cfg.to_dict(),
        "summary": {
            "precision": cfg.precision,
            "quantized_nodes": len(plan.quantized_nodes),
            "activation_qdq": sum(1 for t in tensors.values() if t["kind"] == "activation" and "quantizer" not in t),
            "log_activations": sum(1 for t in tensors.values() if t.get("quantizer") == "log"),
            "weight_format": cfg.weight_format if cfg.precision == "int4" else None,
            "codebook_weight_bytes": _codebook_bytes(tensors),
            "weights_quantized": sum(1 for t in tensors.values() if t["kind"] == "weight"),
            "residual_adds_quantized": len(plan.residual_adds),
            "skipped_nodes": len(plan.skipped),
            "calibration_samples": samples,
            "tensors_with_nonfinite_excluded": excluded,
        },
        "quantized_nodes": plan.quantized_nodes,
        "residual_adds": plan.residual_adds,
        "skipped": plan.skipped,
        "tensors": tensors,
    }
