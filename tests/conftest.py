"""Shared fixtures: tiny models on disk and their calibration data."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

sys.path.insert(0, str(Path(__file__).parent))

import graphs  # noqa: E402


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


def _save_model(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def _save_npz(arrays: dict[str, np.ndarray], path: Path) -> Path:
    np.savez(path, **arrays)
    return path
