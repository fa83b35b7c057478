"""Image, text and degraded sources wired through BatchStream, quantize, compare and the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import trtq
from trtq.calibrators.data import BatchSource, BatchStream, InputSpec
from trtq.calibrators.degrade import DegradeConfig, Degraded
from trtq.calibrators.images import ImageFolder, ImagePreprocess
from trtq.cli import main
from trtq.errors import TrtqError
from trtq.evaluate import compare_degraded

SPEC = [InputSpec("input", np.dtype(np.float32), (None, 3, 12, 12))]
PRE = ImagePreprocess(resize=14, crop=12)


@pytest.fixture
def images(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(7):
        Image.fromarray(rng.integers(0, 256, (16 + i, 18, 3), dtype=np.uint8)).save(root / f"{i}.png")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return root


def test_image_folder_is_a_batch_source_batched_by_the_stream(images):
    src = ImageFolder(images, PRE)
    assert isinstance(src, BatchSource)
    stream = BatchStream(src, SPEC, batch_size=3)
    assert [b["input"].shape[0] for b in stream] == [3, 3, 1] and stream._spill is None
    assert stream.source_report()["skipped"] == 1
    assert BatchStream(ImageFolder(images, PRE), SPEC, batch_size=3).source_report()["files"] == 8
    own = BatchStream(ImageFolder(images, PRE, batch_size=2), SPEC)
    assert [b["input"].shape[0] for b in own] == [2, 2, 2, 1]


def test_a_folder_path_without_preprocessing_is_a_clear_error(images):
    with pytest.raises(TrtqError, match="is a folder: a folder of images needs a declared preprocessing"):
        BatchStream(images, SPEC)


def test_quantize_records_the_data_report_in_the_sidecar(images, conv_model, tmp_path):
    source = Degraded(ImageFolder(images, PRE), DegradeConfig(ratio=0.5, seed=1))
    result = trtq.quantize(conv_model, source, tmp_path / "q.onnx", progress=False)
    sidecar = json.loads(result.report_path.read_text())
    data = sidecar["calibration_data"]
    assert (data["source"], data["read"], data["skipped"]) == ("image_folder", 7, 1)
    assert data["degradation"]["selected"] == 4 and sidecar["summary"]["calibration_samples"] == 7
    again = trtq.quantize(conv_model, Degraded(ImageFolder(images, PRE), DegradeConfig(ratio=0.5, seed=1)),
                          tmp_path / "q2.onnx", progress=False)
    assert again.report_path.read_bytes() == result.report_path.read_bytes()


def test_compare_per_degradation(images, conv_model, tmp_path):
    qmodel = trtq.quantize(conv_model, ImageFolder(images, PRE), progress=False).model
    report = compare_degraded(str(conv_model), qmodel, ImageFolder(images, PRE), ("noise", "blur"),
                              progress=False)
    assert list(report.reports) == ["clean", "noise:mild", "blur:mild"]
    assert all(r.samples == 7 for r in report.reports.values())
    assert "noise:mild" in report.format() and json.dumps(report.to_dict())


def test_cli_quantize_and_compare_on_an_image_folder(images, conv_model, tmp_path, capsys):
    pre = tmp_path / "pre.json"
    pre.write_text(json.dumps({"resize": 14, "crop": 12, "mean": [0.5], "std": [0.25]}))
    out = tmp_path / "q.onnx"
    assert main(["quantize", str(conv_model), "-o", str(out), "--calib-data", str(images),
                 "--preprocess", str(pre), "--degrade", "noise,jpeg:strong", "--degrade-ratio", "0.5",
                 "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "calibration images: 7 read, 1 skipped" in printed and "4 degraded" in printed
    sidecar = json.loads((tmp_path / "q.trtq.json").read_text())["calibration_data"]
    assert sidecar["preprocess"]["mean"] == [0.5] and set(sidecar["degradation"]["pool"]) == {
        "noise:mild", "jpeg:strong"}
    assert main(["compare", str(conv_model), str(out), "--data", str(images), "--image-size", "12",
                 "--degrade", "contrast,lowlight", "--degrade-levels", "strong", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "contrast:strong" in printed and "lowlight:strong" in printed and "clean" in printed


@pytest.mark.parametrize(("extra", "message"), [
    ([], "needs a declared preprocessing"),
    (["--preprocess", "missing.json"], "no such file"),
    (["--image-size", "12", "--layout", "NHWC"], "rank|shape"),
    (["--image-size", "12", "--degrade", "fog"], "unknown degradation 'fog'"),
])
def test_cli_image_errors_exit_2_without_output(images, conv_model, tmp_path, capsys, extra, message):
    out = tmp_path / "q.onnx"
    args = ["quantize", str(conv_model), "-o", str(out), "--calib-data", str(images), "--quiet", *extra]
    assert main(args) == 2 and not out.exists()
    assert re.search(message, capsys.readouterr().err)


def test_cli_image_flags_on_an_npz_are_a_user_error(conv_model, conv_calib, tmp_path, capsys):
    assert main(["quantize", str(conv_model), "-o", str(tmp_path / "q.onnx"), "--calib-data", str(conv_calib),
                 "--image-size", "12"]) == 2
    assert "--image-size applies to a folder of images" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["quantize", str(conv_model), "-o", str(tmp_path / "q.onnx"), "--image-size", "12x"])
    assert exit_.value.code == 2


def test_images_for_a_multi_input_model_need_an_input_name(images):
    specs = [*SPEC, InputSpec("mask", np.dtype(np.float32), (None, 1))]
    with pytest.raises(TrtqError, match="one unnamed array .* 2 inputs.*input_name"):
        list(BatchStream(ImageFolder(images, PRE), specs))
    named = ImageFolder(images, ImagePreprocess(resize=14, crop=12, input_name="mask"))
    with pytest.raises(TrtqError, match="missing: input"):
        list(BatchStream(named, specs))
