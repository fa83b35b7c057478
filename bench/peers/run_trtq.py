"""trtq.quantize, fed the calibration .npz path (trtq streams it)."""

import trtq

import _common


def quantize(args):
    result = trtq.quantize(args.model, args.calib, output=args.output, precision=args.precision,
                           calib_method=args.method, seed=0)
    report = result.report or {}
    return {"method_used": report.get("config", {}).get("calib", {}).get("method"),
            "check_counts": report.get("check", {}).get("counts")}


if __name__ == "__main__":
    _common.run("trtq", getattr(trtq, "__version__", "?"), quantize)
