"""trtq.quantize, fed the calibration .npz path (trtq streams it).

Besides the common arguments: --passes (default: the model family's defaults; none; or a
comma-separated list of pass names), --fallback-budget and --fallback-dtype (sensitivity fallback),
--no-fallback (all quantized: no automatic fallback), --conv-method (INT8 conv weights).
"""

import json

import trtq

import _common

# a pass report longer than this (JSON characters) is summarised in the result JSON (see `small`)
MAX_PASS_REPORT_CHARS = 4000


def add_args(p):
    p.add_argument("--passes", default="default",
                   help="default (the family's defaults, passes=None), none (passes=()), or names: cle,biascorr")
    p.add_argument("--fallback-budget", type=int, default=None, help="keep this many sensitive layers in float")
    p.add_argument("--fallback-dtype", default="fp32", choices=["fp32", "fp16"])
    p.add_argument("--no-fallback", action="store_true", help="quantize everything (no automatic fallback)")
    p.add_argument("--conv-method", default=None, help="INT8 conv weights: gptq, clip or rtn (default: trtq's)")


def passes_arg(value: str):
    if value == "default":
        return None
    if value == "none":
        return ()
    return tuple(n for n in value.split(",") if n)


def small(report):
    """A pass's sidecar report as is when small; else its scalars and the size of each list or dict.

    The full report is in the sidecar beside the quantized graph (`<stem>.trtq.json`, "passes").
    """
    if len(json.dumps(report, default=str)) <= MAX_PASS_REPORT_CHARS or not isinstance(report, dict):
        return report
    out = {k: v for k, v in report.items() if isinstance(v, (int, float, str, bool)) or v is None}
    out.update({f"n_{k}": len(v) for k, v in report.items() if isinstance(v, (list, dict, tuple))})
    return out


def quantize(args):
    extra = {"conv_method": args.conv_method} if args.conv_method else {}
    config = trtq.QuantConfig(precision=args.precision, passes=passes_arg(args.passes),
                              fallback_budget=args.fallback_budget, fallback_dtype=args.fallback_dtype,
                              fallback=not args.no_fallback, **extra)
    result = trtq.quantize(args.model, args.calib, output=args.output, config=config,
                           calib_method=args.method, seed=0)
    report = result.report or {}
    pass_reports = report.get("passes", {})
    rec = {"method_used": report.get("config", {}).get("calib", {}).get("method"),
           "check_counts": report.get("check", {}).get("counts"),
           "passes_arg": args.passes,
           "passes_run": list(pass_reports),
           "pass_seconds": {k: round(v, 3) for k, v in result.pass_seconds.items()},
           "pass_seconds_total": round(sum(result.pass_seconds.values()), 3),
           "pass_reports": {k: small(v) for k, v in pass_reports.items()},
           "quantize_seconds": round(result.seconds, 3),
           "conv_method": report.get("config", {}).get("conv_method")}
    fb = report.get("fallback")
    if fb is not None:
        rec["fallback"] = {
            "dtype": fb.get("dtype"), "budget": fb.get("budget"), "samples": fb.get("samples"),
            "auto": fb.get("auto"), "max_float_macs": fb.get("max_float_macs"),
            "kept_float": fb.get("kept_float"), "kept_float_count": len(fb.get("kept_float") or []),
            "baseline_sqnr_db": fb.get("baseline_sqnr_db"), "final_sqnr_db": fb.get("final_sqnr_db"),
            "quantized_mac_fraction_before": fb.get("quantized_mac_fraction_before"),
            "quantized_mac_fraction": fb.get("quantized_mac_fraction"),
            "seconds": round(result.fallback.seconds, 3) if result.fallback is not None else None,
        }
    return rec


if __name__ == "__main__":
    _common.run("trtq", getattr(trtq, "__version__", "?"), quantize, add_args)
