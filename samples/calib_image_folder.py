"""Calibrate from a folder of images, keeping the N most useful ones (`--select`), from the command line.

    pip install "trtq[test]"
    python samples/calib_image_folder.py --out folder-sample/

It writes a folder of JPEG photos (crops of the photos scikit-image and scikit-learn ship: put your own
images there instead), exports EfficientNet-Lite0 (or takes `--model FP32.onnx` with input `images`,
1x3x224x224), and runs, as you would in a shell:

    trtq quantize efficientnet_lite0.onnx -o efficientnet_lite0.int8.onnx --calib-data images/ \\
        --image-size 224 --mean 0.485 0.456 0.406 --std 0.229 0.224 0.225 \\
        --select 16 --select-method density-diversity --max-samples 48
    trtq compare efficientnet_lite0.onnx efficientnet_lite0.int8.onnx --data eval/ --image-size 224 ...

What you should see: "calibration images: 48 read", "selected 16 of 48 candidates (density-diversity,
feature ...)", the automatic fallback keeping two convolutions in floating point (96.2 % of the MACs
quantized), and on 12 images of other photos:

    logits: SQNR 25.7 dB, top-1 agreement 1.00

(README "Calibration-sample selection": on these models the selection methods match random picks of the
same N within 0.2 dB; their use is a reproducible, diverse subset of a large folder.)
"""

from __future__ import annotations

import argparse
import contextlib
import io
from pathlib import Path

from PIL import Image

from trtq.cli import main as trtq
from trtq.testing.data import CALIB_PHOTOS, EVAL_PHOTOS, load_photo

IMAGENET = ["--image-size", "224", "--mean", "0.485", "0.456", "0.406", "--std", "0.229", "0.224", "0.225"]


def write_photos(folder: Path, photos: tuple[str, ...], n: int) -> None:
    """`n` JPEG crops of the photos (several positions and scales each), as a user's folder would hold."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        photo = load_photo(photos[i % len(photos)])
        h, w = photo.shape[:2]
        side = int(min(h, w) * (1.0, 0.8, 0.6)[(i // len(photos)) % 3])
        y = (h - side) * ((i // 3) % 4) // 3
        x = (w - side) * ((i // 2) % 4) // 3
        Image.fromarray(photo[y:y + side, x:x + side]).save(folder / f"{i:03d}.jpg", quality=92)


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="folder-sample", help="folder for the images, models and report")
    parser.add_argument("--model", help="an FP32 ONNX with input `images` (default: export EfficientNet-Lite0)")
    parser.add_argument("--candidates", type=int, default=48, help="images in the calibration folder")
    parser.add_argument("--select", type=int, default=16, help="how many of them calibrate")
    args = parser.parse_args(argv)
    out = Path(args.out)
    write_photos(out / "images", CALIB_PHOTOS, args.candidates)
    write_photos(out / "eval", EVAL_PHOTOS, 12)
    fp32 = Path(args.model) if args.model else out / "efficientnet_lite0.onnx"
    if not args.model:
        from trtq.testing.models import export_efficientnet_lite0

        export_efficientnet_lite0(fp32)
    int8 = out / "efficientnet_lite0.int8.onnx"

    status = trtq(["quantize", str(fp32), "-o", str(int8), "--calib-data", str(out / "images"), *IMAGENET,
                   "--select", str(args.select), "--select-method", "density-diversity",
                   "--max-samples", str(args.candidates), "--quiet"])
    if status:
        raise SystemExit(status)
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        status = trtq(["compare", str(fp32), str(int8), "--data", str(out / "eval"), *IMAGENET, "--json", "--quiet"])
    if status:
        raise SystemExit(status)
    import json

    logits = json.loads(captured.getvalue())["outputs"][0]
    print(f"logits: SQNR {logits['sqnr_db']:.1f} dB, top-1 agreement {logits['top1_agreement']:.2f}")
    return float(logits["sqnr_db"])


if __name__ == "__main__":
    main()
