"""The `trtq` command line: each subcommand parses flags, calls one library function, prints."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

from trtq.config import CALIB_METHODS, PRECISIONS, TARGETS, TRT_VERSIONS, CalibConfig, QuantConfig, Target
from trtq.errors import TrtqError

__all__ = ["main"]

EXIT_USER_ERROR = 2
EXIT_CHECK_FAILED = 1


def _add_quantize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quantize", help="FP32 ONNX + calibration data -> TensorRT-legal QDQ ONNX + sidecar JSON")
    p.add_argument("model", help="FP32 .onnx file")
    p.add_argument("-o", "--output", required=True, help="where to write the QDQ .onnx (and <stem>.trtq.json)")
    p.add_argument("--precision", default="int8", help=f"one of {', '.join(PRECISIONS)} (default int8)")
    p.add_argument("--calib-data", help=".npz of arrays keyed by input name, first axis = sample (not for int4)")
    p.add_argument("--calib-method", default=CalibConfig.method,
                   help=f"one of {', '.join(CALIB_METHODS)} (default {CalibConfig.method})")
    p.add_argument("--percentile", type=float, default=CalibConfig.percentile, help="for --calib-method percentile")
    p.add_argument("--num-bins", type=int, default=CalibConfig.num_bins, help="histogram bins")
    p.add_argument("--batch-size", type=int, default=CalibConfig.batch_size, help="calibration samples per run")
    p.add_argument("--max-samples", type=int, help="use at most this many calibration samples")
    p.add_argument("--exclude", action="append", default=[], metavar="REGEX",
                   help="keep nodes whose name matches REGEX in floating point (repeatable)")
    p.add_argument("--block-size", type=int, default=128, help="INT4 block size (default 128)")
    p.add_argument("--opset", type=int, help="output opset (default: the lowest the precision needs)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    p.add_argument("--passes", help="comma-separated graph passes to run before calibration "
                   "(cle, rotate, smoothquant, repq, biascorr; 'none' for no pass; default: per model family)")
    _add_target_args(p)
    p.add_argument("--no-check", action="store_true", help="write the output even if `trtq check` finds errors")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_quantize)


def _add_target_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", help=f"device family: {', '.join(TARGETS)}")
    p.add_argument("--trt", help=f"TensorRT version: {', '.join(TRT_VERSIONS)} (default: the target's)")


def _target(args: argparse.Namespace) -> Target | None:
    if args.target is None:
        if args.trt is not None:
            raise TrtqError("--trt needs --target.", f"add --target with one of: {', '.join(TARGETS)}.")
        return None
    return Target(args.target, args.trt)


def _passes(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    return () if names in ((), ("none",)) else names


def _run_quantize(args: argparse.Namespace) -> int:
    from trtq.pipeline import quantize

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
    )
    if config.precision != "int4" and not args.calib_data:
        raise TrtqError(f"{config.precision.upper()} needs calibration data.", "pass --calib-data CALIB.npz.")
    result = quantize(args.model, args.calib_data, args.output, config=config, progress=not args.quiet)
    s = result.report["summary"]
    print(f"wrote {result.path} ({s['precision']}: {s['quantized_nodes']} ops quantized, "
          f"{s['activation_qdq']} activation Q/DQ, {s['weights_quantized']} weights, "
          f"{s['skipped_nodes']} skipped) in {result.seconds:.1f} s")
    if s["tensors_with_nonfinite_excluded"]:
        print(f"non-finite values excluded from ranges: {s['tensors_with_nonfinite_excluded']}")
    check = result.report.get("check")
    if check:
        print("check: " + ", ".join(f"{n} {k}" for k, n in check["counts"].items()))
    print(f"report: {result.report_path}")
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
    p.add_argument("candidate", help="quantized .onnx")
    p.add_argument("--data", required=True, help=".npz of evaluation arrays keyed by input name")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-samples", type=int)
    p.add_argument("--top", type=int, default=20, help="show the N worst quantized tensors")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    p.set_defaults(func=_run_compare)


def _run_compare(args: argparse.Namespace) -> int:
    from trtq.evaluate import compare

    report = compare(args.reference, args.candidate, args.data, batch_size=args.batch_size,
                     max_samples=args.max_samples)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format(top=args.top))
    return 0


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
    for add in (_add_quantize, _add_check, _add_compare, _add_demo):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `trtq` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
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
