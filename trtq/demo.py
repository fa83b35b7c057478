"""`trtq demo`: the whole job on an embedded model and data set, with no download.

A small CNN is trained for a few seconds on the handwritten digits scikit-learn ships (1,797 real
8x8 scans), exported to ONNX, quantized with calibration on training digits, checked against
TensorRT's rules, and compared with FP32 on held-out digits.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from trtq.errors import TrtqError

__all__ = ["run_demo", "train_digits_cnn"]

logger = logging.getLogger(__name__)


def _digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise TrtqError("the demo needs scikit-learn and torch.", 'pip install "trtq[demo]".') from exc
    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0 - 0.5)[:, None, :, :]
    y = digits.target.astype(np.int64)
    order = np.random.RandomState(0).permutation(len(x))
    train, test = order[:1297], order[1297:]
    return x[train], y[train], x[test], y[test]


def train_digits_cnn(x: np.ndarray, y: np.ndarray, *, epochs: int = 8, seed: int = 0):
    """A Conv-BN-ReLU6 / depthwise / residual CNN trained on 8x8 digits (a few seconds on CPU)."""
    try:
        import torch
        from torch import nn
    except ImportError as exc:
        raise TrtqError("the demo needs torch.", 'pip install "trtq[demo]".') from exc

    class Block(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.dw = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, groups=c), nn.BatchNorm2d(c), nn.ReLU6())
            self.pw = nn.Sequential(nn.Conv2d(c, c, 1), nn.BatchNorm2d(c))

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return t + self.pw(self.dw(t))

    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU6(),
        Block(32), nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.BatchNorm2d(64), nn.ReLU6(),
        Block(64), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    )
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(xt), generator=gen).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    return model.eval()


def run_demo(out: str | Path, *, precision: str = "int8", calib_method: str | None = None) -> dict:
    """Train, export, quantize, check and compare; print each step; return the compare report dict."""
    from trtq.config import CalibConfig, QuantConfig

    # every option is checked before a second of training
    QuantConfig(precision=precision, calib=CalibConfig(method=calib_method or CalibConfig.method))
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise TrtqError(f"the demo output {out} is a file, not a folder.", "pass --out with a folder path.")
    x_train, y_train, x_test, y_test = _digits()
    try:
        import torch
    except ImportError as exc:
        raise TrtqError("the demo needs torch.", 'pip install "trtq[demo]".') from exc

    from trtq.evaluate import compare
    from trtq.exporter.torch_export import export
    from trtq.pipeline import quantize

    torch.set_num_threads(2)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrtqError(f"the demo output folder {out} cannot be created ({exc.strerror}).",
                        "pass --out with a folder you can write to.") from exc
    print(f"[1/4] training a small CNN on {len(x_train)} scikit-learn digits (8x8 scans)...")
    model = train_digits_cnn(x_train, y_train)
    fp32 = export(model, (torch.from_numpy(x_train[:1]),), out / "digits_fp32.onnx", input_names=["image"],
                  output_names=["logits"], dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    print(f"[2/4] exported {fp32}")
    np.savez(out / "calib.npz", image=x_train[:256])
    np.savez(out / "eval.npz", image=x_test)
    qpath = out / f"digits_{precision}.onnx"
    result = quantize(fp32, out / "calib.npz", qpath, precision=precision, calib_method=calib_method,
                      target="hopper" if precision == "fp8" else None, progress=False)
    s = result.report["summary"]
    print(f"[3/4] quantized to {qpath} ({s['quantized_nodes']} ops, {s['activation_qdq']} activation Q/DQ); "
          f"every number chosen is in {result.report_path}")
    print(_format_check(result.report.get("check")))
    report = compare(fp32, qpath, out / "eval.npz")
    print(f"[4/4] FP32 vs {precision.upper()} on {len(x_test)} held-out digits (SQNR: FP32 logits over the "
          "error, higher is closer; top-1: how often both pick the same digit):")
    print(report.format(top=5))
    acc = _accuracy(fp32, qpath, x_test, y_test)
    print(f"accuracy vs labels: FP32 {acc[0]:.1%}, {precision.upper()} {acc[1]:.1%}")
    print(f"next: quantize your own model the same way:\n"
          f"  trtq quantize model.onnx -o model.{precision}.onnx --precision {precision} --calib-data calib.npz\n"
          f"  trtq compare model.onnx model.{precision}.onnx --data eval.npz\n"
          f"(calib.npz maps each model input name to an array of samples, as {out / 'calib.npz'} does)")
    return report.to_dict()


def _format_check(check: dict | None) -> str:
    """The check's counts in words and each finding on its own line."""
    if not check:
        return "check: skipped"
    counts = check["counts"]
    lines = [f"check against TensorRT's rules (no GPU needed): {counts['error']} error(s), "
             f"{counts['warning']} warning(s), {counts['info']} info"]
    lines += [f"  {f['severity']} {f['rule']} at {f['node']}: {f['message']}" for f in check["findings"]]
    return "\n".join(lines)


def _accuracy(fp32: Path, qdq: Path, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    import onnx

    from trtq._ort import make_session

    accs = []
    for path in (fp32, qdq):
        logits = make_session(onnx.load(str(path))).run(None, {"image": x})[0]
        accs.append(float((logits.argmax(1) == y).mean()))
    return accs[0], accs[1]
