"""ONNX Runtime's static quantizer: QDQ, per-channel, symmetric INT8 weights and activations."""

import onnxruntime
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

import _common

METHODS = {"MinMax": CalibrationMethod.MinMax, "Entropy": CalibrationMethod.Entropy,
           "Percentile": CalibrationMethod.Percentile}


class SampleReader(CalibrationDataReader):
    """One sample per batch, the way ONNX Runtime's examples feed calibration data."""

    def __init__(self, arrays):
        self.arrays = arrays
        self.n = len(next(iter(arrays.values())))
        self.i = 0

    def get_next(self):
        if self.i >= self.n:
            return None
        self.i += 1
        return {k: v[self.i - 1 : self.i] for k, v in self.arrays.items()}

    def rewind(self):
        self.i = 0


def quantize(args):
    if args.precision != "int8":
        raise ValueError("the ONNX Runtime runner only does int8")
    quantize_static(
        args.model, args.output, SampleReader(_common.load_calib(args.calib)),
        quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
        calibrate_method=METHODS[args.method],
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
    )


if __name__ == "__main__":
    _common.run("ort", onnxruntime.__version__, quantize)
