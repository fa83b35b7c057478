"""The `trtq` command line: each subcommand parses flags, calls one library function, prints."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from trtq.config import (
    ACT_QUANT_METHODS,
    CALIB_METHODS,
    CONV_METHODS,
    FALLBACK_DTYPES,
    HIGH_PRECISIONS,
    INT4_METHODS,
    PRECISIONS,
    SELECT_METHODS,
    TARGETS,
    TRT_VERSIONS,
    WEIGHT_FORMATS,
    ActQuantConfig,
    CalibConfig,
    QuantConfig,
    SelectConfig,
    Target,
)
from trtq.errors import TrtqError
from trtq.precision import DEFAULT_BLOCK_SIZE, TABLE

__all__ = ["EXIT_CHECK_FAILED", "EXIT_USER_ERROR", "build_parser", "main"]

EXIT_USER_ERROR = 2
EXIT_CHECK_FAILED = 1


def _add_quantize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quantize", help="FP32 ONNX + calibration data -> TensorRT-legal QDQ ONNX + sidecar JSON")
    p.add_argument("model", help="FP32 .onnx file")
    p.add_argument("-o", "--output", required=True, help="where to write the QDQ .onnx (and <stem>.trtq.json)")
    p.add_argument("--precision", default="int8", help=f"one of {', '.join(PRECISIONS)} (default int8)")
    p.add_argument("--calib-data", help=".npz of arrays keyed by input name, first axis = sample, or a "
                   "folder of images (with --preprocess or --image-size); not needed for int4")
    p.add_argument("--calib-method", default=CalibConfig.method,
                   help=f"one of {', '.join(CALIB_METHODS)} (default {CalibConfig.method})")
    p.add_argument("--percentile", type=float, default=CalibConfig.percentile, help="for --calib-method percentile")
    p.add_argument("--num-bins", type=int, default=CalibConfig.num_bins, help="histogram bins")
    p.add_argument("--batch-size", type=int, default=CalibConfig.batch_size, help="calibration samples per run")
    p.add_argument("--max-samples", type=int, help="use at most this many calibration samples")
    p.add_argument("--exclude", action="append", default=[], metavar="REGEX",
                   help="keep nodes whose name matches REGEX in floating point (repeatable)")
    p.add_argument("--block-size", type=int, default=DEFAULT_BLOCK_SIZE,
                   help=f"INT4 block size (default {DEFAULT_BLOCK_SIZE})")
    p.add_argument("--int4-method", default=QuantConfig.int4_method,
                   help=f"INT4 rounding with calibration data: {', '.join(INT4_METHODS)} (default "
                   f"{QuantConfig.int4_method}: GPTQ error feedback; rtn: round to nearest)")
    p.add_argument("--weight-format", default=QuantConfig.weight_format, choices=WEIGHT_FORMATS,
                   help="with --precision int4: int4 (uniform INT4 DequantizeLinear, default) or a codebook "
                   "format of trtq.plugins: nf4, codebook4, codebook3 (learned), uniform4, uniform3; codebook "
                   "formats also quantize Conv weights (groups of --block-size along K)")
    p.add_argument("--act-quant", choices=ACT_QUANT_METHODS,
                   help="logarithmic quantizer on chosen activations instead of uniform Q/DQ: log2, logsqrt2, "
                   "adalog (default tensors: post-Softmax and post-GELU MatMul inputs)")
    p.add_argument("--act-quant-bits", type=int, default=None, metavar="B",
                   help="code width of --act-quant (default 8)")
    p.add_argument("--act-quant-tensors", metavar="T1,T2", help="the tensors --act-quant quantizes")
    p.add_argument("--plugins", action="store_true",
                   help="write the TensorRT face: one trtq plugin node per codebook weight / log activation "
                   "(codes stay packed in the engine; build with trtq's plugin loaded, README 'TensorRT "
                   "plugins'); default: the standard-ONNX face that ONNX Runtime runs")
    p.add_argument("--conv-method", default=QuantConfig.conv_method,
                   help=f"INT8 conv weights with calibration data: {', '.join(CONV_METHODS)} (default "
                   f"{QuantConfig.conv_method}: GPTQ rounding and bias for the least layer-output error "
                   "on the calibration data; rtn: nearest)")
    p.add_argument("--conv-samples", type=int, default=QuantConfig.conv_samples, metavar="N",
                   help=f"calibration samples the conv weight statistics use (default {QuantConfig.conv_samples})")
    p.add_argument("--opset", type=int,
                   help="output opset (default: the lowest the precision needs; never below the model's own)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    p.add_argument("--passes", help="comma-separated graph passes to run before calibration, in this order "
                   f"whatever order they are listed in: {_pass_help()}; 'none' for no pass (default: per "
                   "model family: CNN int8/fp8 bias_correction, transformer int8 rotate_online)")
    p.add_argument("--pass-option", action="append", default=[], metavar="PASS.FIELD=VALUE",
                   help="override one option of a pass (repeatable; tuples comma-separated), e.g. "
                   "cle.relu6=skip, smoothquant.alphas=0.5,0.6, repq.shift=false")
    _add_target_args(p)
    _add_image_args(p)
    _add_degrade_args(p, calibration=True)
    _add_select_args(p)
    p.add_argument("--fallback-budget", type=int, metavar="N",
                   help="keep the N layers whose quantization hurts the output most in floating point "
                   "(0: only report each layer's sensitivity)")
    p.add_argument("--target-sqnr", type=float, metavar="DB",
                   help="keep the most sensitive layers in floating point until the output SQNR reaches DB")
    p.add_argument("--max-float-macs", type=float, metavar="PCT",
                   help="the share of MACs (percent) the fallback may keep in floating point "
                   "(default 5 for the automatic fallback; no cap with --fallback-budget / --target-sqnr)")
    p.add_argument("--no-fallback", action="store_true",
                   help="quantize every layer: no sensitivity analysis, nothing kept in floating point "
                   "(default for int8/fp8: keep the fewest most sensitive layers that reach diminishing "
                   "returns, within --max-float-macs)")
    p.add_argument("--fallback-samples", type=int, default=QuantConfig.fallback_samples, metavar="N",
                   help="calibration samples the sensitivity analysis runs on "
                   f"(default {QuantConfig.fallback_samples})")
    p.add_argument("--fallback-dtype", default=QuantConfig.fallback_dtype,
                   help=f"precision of the layers the fallback keeps in floating point: {', '.join(FALLBACK_DTYPES)} "
                   "(default: --high-precision's)")
    p.add_argument("--high-precision", default=QuantConfig.high_precision,
                   help=f"precision of every layer left unquantized: {', '.join(HIGH_PRECISIONS)} (default fp16, "
                   "which every target runs); what half precision breaks stays fp32 by a stated rule (README)")
    p.add_argument("--high-precision-io", action="store_true",
                   help="cast the model's float inputs and outputs to --high-precision too (default: keep fp32)")
    _add_device_arg(p)
    p.add_argument("--no-check", action="store_true", help="write the output even if `trtq check` finds errors")
    p.add_argument("--report", metavar="HTML", help="also write the HTML report of the output (trtq report), its "
                   "per-layer numbers measured on up to 32 calibration samples")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_quantize)


def _add_select_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sample selection", "calibrate on N samples picked from --calib-data (the candidates)")
    g.add_argument("--select", type=int, metavar="N", help="keep N of the candidates")
    g.add_argument("--select-method", choices=SELECT_METHODS,
                   help=f"how they are picked (default {SelectConfig.method}): density-diversity scores each by "
                   "local density and distance to those already chosen; noise-filtered-diverse drops outliers "
                   "(IQR fences on deep statistics) and takes samples evenly from k-means clusters")
    g.add_argument("--select-feature", metavar="TENSOR",
                   help="FP32 tensor that describes a sample (default: the input of the last weighted op)")


def _select_config(args: argparse.Namespace) -> SelectConfig | None:
    if args.select is None:
        extra = next((f for f in ("select_method", "select_feature") if getattr(args, f) is not None), None)
        if extra:
            flag = "--" + extra.replace("_", "-")
            raise TrtqError(f"{flag} needs --select N.", f"add --select N (how many samples to keep), or drop {flag}.")
        return None
    return SelectConfig(n=args.select, method=args.select_method or SelectConfig.method,
                        feature=args.select_feature, seed=args.seed)


def _add_target_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", help=f"device family: {', '.join(TARGETS)}")
    p.add_argument("--trt", help=f"TensorRT version: {', '.join(TRT_VERSIONS)} (default: the target's)")


def _user_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse `type` from a parser that raises TrtqError (argparse then exits with status 2)."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except TrtqError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    convert.__name__ = parse.__name__
    return convert


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from exc


class _Numbers(argparse.Action):
    """Numbers given apart or comma-separated (`--mean 0.485 0.456 0.406` or `--mean 0.485,0.456,0.406`)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, tuple(v for group in values for v in group))


def _size(text: str) -> Any:
    from trtq.calibrators.images import parse_size

    return parse_size(text)


# flags of `_add_image_args`, by ImagePreprocess field
_IMAGE_FLAGS = ("resize", "crop", "crop_mode", "layout", "dtype", "scale", "mean", "std", "channel_order",
                "input_name")


def _add_evaluation_args(p: argparse.ArgumentParser) -> None:
    """What `compare` and `report` take to run graphs over evaluation data."""
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-samples", type=int)
    _add_image_args(p)
    _add_degrade_args(p, calibration=False)
    _add_device_arg(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_image_args(p: argparse.ArgumentParser) -> None:
    from trtq.calibrators.images import CHANNEL_ORDERS, CROP_MODES, DTYPES, LAYOUTS

    g = p.add_argument_group("image folders", "how the images of a data folder become model input")
    g.add_argument("--preprocess", metavar="JSON", help="ImagePreprocess fields as a JSON object "
                   '(e.g. {"resize": 256, "crop": 224, "mean": [0.485, 0.456, 0.406]}); the flags below and '
                   "--seed override it")
    g.add_argument("--image-size", type=_user_type(_size), metavar="N|WxH",
                   help="crop to this size; also resize the shorter side to it unless a resize is given")
    g.add_argument("--resize", type=_user_type(_size), metavar="N|WxH",
                   help="shorter side to N, or exactly WxH")
    g.add_argument("--crop-size", dest="crop", type=_user_type(_size), metavar="N|WxH", help="crop size")
    g.add_argument("--crop-mode", choices=CROP_MODES, help="center (default) or random (seeded)")
    g.add_argument("--layout", choices=LAYOUTS, help="batch layout (default NCHW)")
    g.add_argument("--input-dtype", dest="dtype", choices=DTYPES, help="input element type (default float32)")
    g.add_argument("--scale", type=float, help="pixel multiplier before mean/std (default 1/255; uint8: 1)")
    g.add_argument("--mean", type=_floats, nargs="+", action=_Numbers, metavar="M",
                   help="subtracted after scaling, per channel: M, M M M or M,M,M")
    g.add_argument("--std", type=_floats, nargs="+", action=_Numbers, metavar="S",
                   help="divided by last, per channel: S, S S S or S,S,S")
    g.add_argument("--channel-order", choices=CHANNEL_ORDERS, help="channel order of the model (default RGB)")
    g.add_argument("--input-name", help="model input the images feed (default: the only input)")


def _add_degrade_args(p: argparse.ArgumentParser, calibration: bool) -> None:
    from trtq.calibrators.degrade import DEGRADATIONS, LEVEL_CHOICES

    g = p.add_argument_group("degradations", "noisy, blurred, dark or compressed copies of a folder's images")
    if calibration:
        g.add_argument("--degrade", metavar="LIST|qrid", help="mix degraded images into calibration: some "
                       f"of {','.join(DEGRADATIONS)} (NAME:LEVEL for one level), or qrid (QRID's recipe)")
        g.add_argument("--degrade-ratio", type=float, help="fraction of the images degraded (default 0.5)")
        g.add_argument("--degrade-reencode", type=int, metavar="QUALITY",
                       help="re-encode degraded images as JPEG (QRID: 95)")
    else:
        g.add_argument("--degrade", metavar="LIST", help=f"also compare on the data under each of "
                       f"{','.join(DEGRADATIONS)} (NAME:LEVEL for one level), one set per degradation")
        g.add_argument("--seed", type=int, default=0,
                       help="seed of the degradations and of a random crop (default 0)")
    g.add_argument("--degrade-levels", choices=LEVEL_CHOICES, help="mild (default), strong, or mixed (both)")


def _data_source(path: str | None, args: argparse.Namespace, seed: int, *, mix: bool) -> Any:
    """`path` as given, or an ImageFolder (degraded per --degrade when `mix`) if it is a folder."""
    given = [f for f in ("preprocess", "image_size", *_IMAGE_FLAGS) if getattr(args, f) is not None]
    if path is None or not Path(path).is_dir():
        if given or args.degrade:
            flag = "--" + (given[0] if given else "degrade").replace("_", "-")
            raise TrtqError(f"{flag} applies to a folder of images, not to {path}.",
                            f"pass a folder of images, or drop {flag}.")
        return path
    if not given:
        raise TrtqError(f"{path} is a folder: a folder of images needs a declared preprocessing.",
                        "pass --preprocess FILE.json, or --image-size N with --mean/--std/--layout as the "
                        "model expects.")
    from trtq.calibrators.degrade import Degraded, degrade_config
    from trtq.calibrators.images import ImageFolder, load_preprocess

    overrides = {f: getattr(args, f) for f in _IMAGE_FLAGS}
    pre = load_preprocess(args.preprocess, image_size=args.image_size, seed=seed, **overrides)
    source = ImageFolder(path, pre)
    if mix and args.degrade:
        recipe = degrade_config(args.degrade, ratio=args.degrade_ratio, levels=args.degrade_levels, seed=seed,
                                reencode_jpeg=args.degrade_reencode)
        source = Degraded(source, recipe)
    return source


def _print_data_report(report: dict[str, Any] | None) -> None:
    if report and report.get("source") == "selection":
        report = report.get("candidates_source")
    if not report or report.get("source") != "image_folder":
        return
    line = f"calibration images: {report['read']} read"
    if report["skipped"]:
        first = report["skipped_examples"][0]
        line += (f", {report['skipped']} skipped (not readable images; first: {first['path']}: "
                 f"{first['reason']})")
    degraded = report.get("degradation")
    if degraded:
        counts = ", ".join(f"{k} {v['count']}" for k, v in degraded["pool"].items())
        line += f"; {degraded['degraded']} degraded ({counts}), {degraded['clean']} clean"
    print(line)


def _print_selection(report: dict[str, Any] | None) -> None:
    if not report:
        return
    feature = report["feature"]
    line = f"selected {report['selected']} of {report['candidates']} candidates ({report['config']['method']}"
    line += f", feature {feature['tensor']})" if feature else ")"
    if report["filtered"]:
        line += f"; {len(report['filtered'])} dropped as outliers"
    print(line)


def _target(args: argparse.Namespace) -> Target | None:
    if args.target is None:
        if args.trt is not None:
            raise TrtqError("--trt needs --target.", f"add --target with one of: {', '.join(TARGETS)}.")
        return None
    return Target(args.target, args.trt)


def _pass_help() -> str:
    from trtq.exporter.passes.registry import ALIASES, registered_passes

    aliases = {v: k for k, v in ALIASES.items()}
    return "; ".join(f"{name}{f' (or {aliases[name]})' if name in aliases else ''}: {p.summary}"
                     for name, p in registered_passes().items())


def _pass_options(values: list[str]) -> dict[str, dict[str, Any]] | None:
    from trtq.exporter.passes.registry import parse_pass_option

    options: dict[str, dict[str, Any]] = {}
    for text in values:
        name, key, value = parse_pass_option(text)
        options.setdefault(name, {})[key] = value
    return options or None


def _passes(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    return () if names in ((), ("none",)) else names


def _act_quant(args: argparse.Namespace) -> ActQuantConfig | None:
    if args.act_quant is None:
        if args.act_quant_tensors:
            raise TrtqError("--act-quant-tensors needs --act-quant.", "add --act-quant log2|logsqrt2|adalog.")
        if args.act_quant_bits is not None:
            raise TrtqError("--act-quant-bits needs --act-quant.", "add --act-quant log2|logsqrt2|adalog.")
        return None
    names = args.act_quant_tensors
    tensors = tuple(t.strip() for t in names.split(",") if t.strip()) if names else None
    bits = ActQuantConfig.bits if args.act_quant_bits is None else args.act_quant_bits
    return ActQuantConfig(args.act_quant, bits=bits, tensors=tensors)


def _run_quantize(args: argparse.Namespace) -> int:
    from trtq._io import check_output
    from trtq.pipeline import quantize

    inputs = {args.model: "model", args.calib_data: "calibration data", args.preprocess: "preprocessing file"}
    check_output(args.output, inputs)
    if args.report:
        check_output(args.report, {**inputs, args.output: "output model"})
    config = QuantConfig(
        precision=args.precision,
        calib=CalibConfig(method=args.calib_method, percentile=args.percentile, num_bins=args.num_bins,
                          batch_size=args.batch_size, max_samples=args.max_samples),
        exclude=tuple(args.exclude),
        seed=args.seed,
        block_size=args.block_size,
        opset=args.opset,
        target=_target(args),
        check=not args.no_check,
        passes=_passes(args.passes),
        pass_options=_pass_options(args.pass_option),
        fallback_budget=args.fallback_budget,
        target_sqnr=args.target_sqnr,
        fallback=not args.no_fallback,
        max_float_macs=args.max_float_macs,
        fallback_samples=args.fallback_samples,
        fallback_dtype=args.fallback_dtype,
        high_precision=args.high_precision,
        high_precision_io=args.high_precision_io,
        select=_select_config(args),
        int4_method=args.int4_method,
        weight_format=args.weight_format,
        act_quant=_act_quant(args),
        device=args.device,
        plugins=args.plugins,
        conv_method=args.conv_method,
        conv_samples=args.conv_samples,
    )
    if TABLE[config.precision].activations and not args.calib_data:
        raise TrtqError(f"{config.precision.upper()} needs calibration data.", "pass --calib-data CALIB.npz.")
    calib = _data_source(args.calib_data, args, args.seed, mix=True)
    result = quantize(args.model, calib, args.output, config=config, progress=not args.quiet)
    _print_data_report(result.report.get("calibration_data"))
    _print_selection(result.report.get("selection"))
    s = result.report["summary"]
    fmt = f"/{s['weight_format']}" if s.get("weight_format") not in (None, "int4") else ""
    print(f"wrote {result.path} ({s['precision']}{fmt}: {s['quantized_nodes']} ops quantized, "
          f"{s['activation_qdq']} activation Q/DQ, {s['weights_quantized']} weights, "
          f"{s['skipped_nodes']} skipped) in {result.seconds:.1f} s")
    if s.get("codebook_weight_bytes"):
        b = s["codebook_weight_bytes"]
        print(f"codebook weights: {b['stored']} bytes stored ({b['float32']} as float32)")
    if s["log_activations"]:
        print(f"log-quantized activations: {s['log_activations']}")
    if result.fallback is not None:
        print(result.fallback.summary())
    if s["tensors_with_nonfinite_excluded"]:
        print(f"non-finite values excluded from ranges: {s['tensors_with_nonfinite_excluded']}")
    if result.fallback is not None:
        print(result.fallback.format(top=10))
    check = result.report.get("check")
    if check:
        print("check: " + ", ".join(f"{n} {k}" for k, n in check["counts"].items()))
    print(f"report: {result.report_path}")
    if args.report:
        from trtq.reporting import report

        page = report(result.path, args.report, data=None if calib is None else calib, reference=args.model,
                      max_samples=_REPORT_CALIB_SAMPLES, data_label="calibration data", device=args.device,
                      progress=not args.quiet)
        print(f"html report: {page}")
    return 0


_REPORT_CALIB_SAMPLES = 32


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="one self-contained HTML page about a quantized model: per-layer SQNR, "
                       "ranges, passes, fallback, precision shares, robustness, check per target, versions")
    p.add_argument("model", help="the .onnx trtq quantize wrote (its .trtq.json beside it)")
    p.add_argument("-o", "--output", required=True, help="the .html to write")
    p.add_argument("--data", help="evaluation data: .npz keyed by input name, or a folder of images (with "
                   "--preprocess or --image-size); without it, the sidecar's numbers only")
    p.add_argument("--reference", metavar="FP32.onnx", help="the FP32 model (default: the input the sidecar names)")
    p.add_argument("--top", type=int, default=40, help="SQNR bars shown: the N worst quantized tensors (default 40)")
    p.add_argument("--histograms", type=int, default=9, metavar="N",
                   help="histograms of the N worst activations (default 9)")
    _add_evaluation_args(p)
    p.set_defaults(func=_run_report)


def _run_report(args: argparse.Namespace) -> int:
    from trtq._io import check_output, sidecar_path
    from trtq.reporting import report

    check_output(args.output, {args.model: "model", str(sidecar_path(args.model)): "sidecar",
                               args.data: "evaluation data", args.reference: "reference model"})
    data = _data_source(args.data, args, args.seed, mix=False)
    degrade = tuple(n.strip() for n in args.degrade.split(",") if n.strip()) if args.degrade else ()
    page = report(args.model, args.output, data=data, reference=args.reference, top=args.top,
                  histograms=args.histograms, batch_size=args.batch_size, max_samples=args.max_samples,
                  degrade=degrade, degrade_levels=args.degrade_levels or "mild", seed=args.seed,
                  data_label=args.data, device=args.device, progress=not args.quiet)
    print(f"wrote {page}")
    return 0


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="what an ONNX graph holds: ops, quantized tensors, Q/DQ placement, MACs and "
                       "weight bytes per precision")
    p.add_argument("model", help=".onnx file")
    p.add_argument("--data", help=".npz whose first sample sets the input shapes of the MAC count (default: "
                   "dynamic dimensions 1)")
    p.add_argument("--top", type=int, default=40, help="rows per table in the text output (default 40)")
    p.add_argument("--json", action="store_true", help="print everything as JSON")
    p.set_defaults(func=_run_inspect)


def _run_inspect(args: argparse.Namespace) -> int:
    from trtq.inspection import inspect, sample_of

    result = inspect(args.model, sample_of(args.data) if args.data else None)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.format(top=args.top))
    return 0


def _add_check(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="static TensorRT-compatibility check of a QDQ ONNX (no GPU needed)")
    p.add_argument("model", help=".onnx file")
    _add_target_args(p)
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
    p.set_defaults(func=_run_check)


def _run_check(args: argparse.Namespace) -> int:
    from trtq.exporter.check import check

    report = check(args.model, target=_target(args))
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format())
    return 0 if report.ok else EXIT_CHECK_FAILED


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="fidelity of a quantized graph vs its FP32 original, per output and layer")
    p.add_argument("reference", help="FP32 .onnx")
    p.add_argument("candidate", help="quantized .onnx, or a TensorRT .engine built from the reference or from a "
                   "quantized ONNX of it (graph outputs only)")
    p.add_argument("--data", required=True, help=".npz of evaluation arrays keyed by input name, or a "
                   "folder of images (with --preprocess or --image-size)")
    p.add_argument("--top", type=int, default=20, help="show the N worst quantized tensors")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    _add_evaluation_args(p)
    p.set_defaults(func=_run_compare)


def _run_compare(args: argparse.Namespace) -> int:
    from trtq.evaluate import compare, compare_degraded

    data = _data_source(args.data, args, args.seed, mix=False)
    if args.degrade:
        names = tuple(n.strip() for n in args.degrade.split(",") if n.strip())
        per_set = compare_degraded(args.reference, args.candidate, data, names,
                                   levels=args.degrade_levels or "mild", seed=args.seed,
                                   batch_size=args.batch_size, max_samples=args.max_samples,
                                   progress=not args.quiet, device=args.device)
        print(json.dumps(per_set.to_dict(), indent=2) if args.json else per_set.format())
        return 0
    report = compare(args.reference, args.candidate, data, batch_size=args.batch_size,
                     max_samples=args.max_samples, device=args.device)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format(top=args.top))
    return 0


def _add_build(sub: argparse._SubParsersAction) -> None:
    from trtq.engine import TOOLS

    p = sub.add_parser("build", help="QDQ ONNX -> TensorRT engine on this GPU (+ MODEL.engine.json), or --print "
                       "the trtexec / polygraphy command lines for the device")
    p.add_argument("model", help=".onnx file")
    p.add_argument("-o", "--output", help="engine file (default: MODEL.engine beside the model); the sidecar "
                   "goes to OUTPUT.json")
    p.add_argument("--target", help=f"device family: {', '.join(TARGETS)} (refuses a GPU of another compute "
                   "capability; engines run only on the GPU model that built them)")
    p.add_argument("--shapes", nargs="+", action="extend", default=[], metavar="NAME:MIN,OPT,MAX",
                   help="optimization profile of an input with dynamic dimensions, e.g. "
                   "images:1x3x224x224,8x3x224x224,32x3x224x224 (NAME:SHAPE for one fixed shape)")
    p.add_argument("--workspace", type=float, metavar="GB", help="workspace memory-pool limit in GiB")
    p.add_argument("--timing-cache", metavar="PATH", help="timing cache: read if present, updated after the build")
    p.add_argument("--plugins", nargs="+", action="extend", default=[], metavar="LIB",
                   help="plugin libraries (.so) or Python plugin modules (.py, tensorrt.plugin) the graph uses")
    p.add_argument("--builder-opt-level", type=int, metavar="N", help="builder optimization level 0-5 (TensorRT: 3)")
    p.add_argument("--dla-core", type=int, metavar="N", help="build for DLA core N (orin), GPU fallback on")
    p.add_argument("--version-compatible", action="store_true",
                   help="the engine runs on later TensorRT of the same major (plugin libraries serialized into it)")
    p.add_argument("--weakly-typed", action="store_true",
                   help="TensorRT 10.x only: weakly typed INT8+FP16 instead of strongly typed")
    p.add_argument("--calib-cache", metavar="PATH", help="legacy INT8 calibration cache (trtq calib-cache) for "
                   "implicit INT8 of an FP32 ONNX (TensorRT 10.x, weakly typed)")
    p.add_argument("--print", dest="print_tool", choices=TOOLS,
                   help="print the equivalent command lines instead of building (needs no TensorRT)")
    p.add_argument("--trt", help=f"with --print: the TensorRT version of the machine that builds: "
                   f"{', '.join(TRT_VERSIONS)} (default: the target's)")
    p.set_defaults(func=_run_build)


def _run_build(args: argparse.Namespace) -> int:
    from trtq.engine import BuildConfig, build, command_lines, parse_shapes

    config = BuildConfig(target=args.target, shapes=parse_shapes(args.shapes), workspace_gb=args.workspace,
                         timing_cache=args.timing_cache, plugins=tuple(args.plugins),
                         builder_opt_level=args.builder_opt_level, dla_core=args.dla_core,
                         version_compatible=args.version_compatible, weakly_typed=args.weakly_typed,
                         calib_cache=args.calib_cache)
    output = args.output or str(Path(args.model).with_suffix(".engine"))
    if args.print_tool:
        print(command_lines(args.model, output, config, tool=args.print_tool, trt=args.trt), end="")
        return 0
    if args.trt is not None:
        raise TrtqError("--trt applies to --print: a build uses the TensorRT installed here.",
                        "drop --trt, or add --print trtexec to get the commands for that version.")
    result = build(args.model, output, config)
    r = result.report
    counts = ", ".join(f"{k} {v}" for k, v in r["layer_output_precisions"].items()) or "none read"
    print(f"wrote {result.path} (TensorRT {r['versions']['tensorrt']}, {r['decisions']['typing']}ly typed, "
          f"{r['gpu']['name']} SM {r['gpu']['compute_capability']}) in {result.seconds:.1f} s")
    print(f"layers by output precision: {counts}")
    print(f"report: {result.report_path}")
    return 0


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a TensorRT engine on data (Polygraphy TrtRunner)")
    p.add_argument("engine", help=".engine file")
    p.add_argument("--data", required=True, help=".npz of arrays keyed by input name, first axis = sample")
    p.add_argument("-o", "--output", help="write the outputs to this .npz")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--max-samples", type=int)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_run_run)


def _run_run(args: argparse.Namespace) -> int:
    from trtq.engine import run

    report = run(args.engine, args.data, output=args.output, batch_size=args.batch_size,
                 max_samples=args.max_samples)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format())
    return 0


def _add_calib_cache(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calib-cache", help="INT8 scales of a quantize sidecar -> TensorRT calibration cache "
                       "(implicit INT8 / DLA on TensorRT 10.x)")
    p.add_argument("report", help="MODEL.trtq.json of an INT8 `trtq quantize`")
    p.add_argument("-o", "--output", required=True, help="the cache file, e.g. calib.cache")
    p.add_argument("--trt", default="10.3", help="TensorRT version that reads it, as in its header (default 10.3; "
                   "e.g. 10.3.0, 10.16.1)")
    p.set_defaults(func=_run_calib_cache)


def _run_calib_cache(args: argparse.Namespace) -> int:
    from trtq.engine import write_calib_cache

    cache = write_calib_cache(args.report, args.output, trt=args.trt)
    print(f"wrote {cache.path} ({cache.header}, {cache.tensors} tensors)")
    return 0


def _add_device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=("cuda", "cpu"),
                   help="where ONNX Runtime runs (default: cuda when onnxruntime-gpu's CUDA provider is available)")


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the whole job on an embedded model and data set (no downloads)")
    p.add_argument("--out", default="trtq-demo", help="folder for the FP32/QDQ models and reports")
    p.add_argument("--precision", default="int8", help=f"one of {', '.join(PRECISIONS)}")
    p.add_argument("--calib-method", default=CalibConfig.method, help=f"one of {', '.join(CALIB_METHODS)}")
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from trtq.demo import run_demo

    run_demo(args.out, precision=args.precision, calib_method=args.calib_method)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trtq", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log what each step does")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_quantize, _add_check, _add_compare, _add_report, _add_inspect, _add_build, _add_run,
                _add_calib_cache, _add_demo):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `trtq` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except TrtqError as exc:
        print(f"trtq: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("trtq: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `trtq compare ... | head`: the reader left; stay quiet
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
