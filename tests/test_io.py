"""Model and report I/O: atomic writes, external data, clear load errors."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from trtq import _io
from trtq.errors import TrtqError

import graphs
import helpers


def test_large_models_keep_weights_in_external_data(tmp_path, monkeypatch):
    monkeypatch.setattr(_io, "_TWO_GB", 1000)  # pretend the tiny model is over the protobuf limit
    path = _io.save_model(graphs.conv_block(), tmp_path / "m.onnx")
    assert (tmp_path / "m.onnx.data").stat().st_size > 1000
    assert path.stat().st_size < (tmp_path / "m.onnx.data").stat().st_size
    loaded = _io.load_model(path)
    feeds = graphs.conv_data(2)
    np.testing.assert_array_equal(helpers.run(loaded, feeds), helpers.run(graphs.conv_block(), feeds))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), _io.atomic_path(tmp_path / "x.json") as tmp:
        tmp.write_text("partial")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_json_is_sorted_and_rejects_nan(tmp_path):
    _io.write_json({"b": 1, "a": [1.5]}, tmp_path / "r.json")
    assert (tmp_path / "r.json").read_text() == '{\n  "a": [\n    1.5\n  ],\n  "b": 1\n}\n'
    with pytest.raises(ValueError):
        _io.write_json({"a": float("nan")}, tmp_path / "n.json")
    assert not (tmp_path / "n.json").exists()


def test_sidecar_path():
    assert _io.sidecar_path("out/model.onnx").as_posix() == "out/model.trtq.json"
    assert _io.sidecar_path("model.bin").as_posix() == "model.bin.trtq.json"


def test_load_errors(tmp_path):
    with pytest.raises(TrtqError, match="directory"):
        _io.load_model(tmp_path)
    empty = tmp_path / "empty.onnx"
    onnx.save(onnx.ModelProto(), str(empty))
    with pytest.raises(TrtqError, match="no graph nodes"):
        _io.load_model(empty)
