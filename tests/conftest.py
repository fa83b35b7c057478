"""Shared fixtures: tiny models on disk, their data, and a CLI runner."""

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
    path = tmp_path / "conv.onnx"
    onnx.save(graphs.conv_block(), str(path))
    return path


@pytest.fixture
def conv_calib(tmp_path: Path) -> Path:
    path = tmp_path / "conv_calib.npz"
    np.savez(path, **graphs.conv_data(32))
    return path


@pytest.fixture
def attention_model(tmp_path: Path) -> Path:
    path = tmp_path / "attention.onnx"
    onnx.save(graphs.attention_block(), str(path))
    return path


@pytest.fixture
def attention_calib(tmp_path: Path) -> Path:
    path = tmp_path / "attention_calib.npz"
    np.savez(path, **graphs.attention_data(32))
    return path
