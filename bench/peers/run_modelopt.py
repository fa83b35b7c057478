"""NVIDIA ModelOpt's ONNX quantizer (int8 / fp8 / int4), calibrating on the CPU, FP32 elsewhere."""

import modelopt
from modelopt.onnx.quantization import quantize as mo_quantize

import _common


def quantize(args):
    mo_quantize(
        onnx_path=args.model,
        quantize_mode=args.precision,
        calibration_data=_common.load_calib(args.calib),
        calibration_method=args.method,
        calibration_eps=["cpu"],
        high_precision_dtype="fp32",
        output_path=args.output,
    )


if __name__ == "__main__":
    _common.run("modelopt", modelopt.__version__, quantize)
