"""--device cuda|cpu: which ONNX Runtime execution providers trtq asks for, and the message without onnxruntime-gpu.

No machine here has onnxruntime-gpu, so the CUDA provider is simulated by patching
`onnxruntime.get_available_providers` (and `InferenceSession`, to see the providers a session is given); a
session never really runs on CUDA in these tests.
"""

from __future__ import annotations

import json

import onnxruntime as ort
import pytest

from trtq import _ort
from trtq.cli import main
from trtq.errors import TrtqError

import graphs

CUDA = ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_default_is_cuda_when_available(monkeypatch):
    monkeypatch.setattr(ort, "get_available_providers", lambda: CUDA)
    assert _ort.providers() == CUDA
    assert _ort.providers("cpu") == ["CPUExecutionProvider"]
    with _ort.session_device("cpu"):
        assert _ort.current_providers() == ["CPUExecutionProvider"]
    assert _ort.current_providers() == CUDA


def test_cuda_without_onnxruntime_gpu_names_the_package(monkeypatch):
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert _ort.providers() == ["CPUExecutionProvider"]  # the default falls back quietly
    with pytest.raises(TrtqError, match="no CUDA execution provider") as err:
        _ort.providers("cuda")
    assert "onnxruntime-gpu" in str(err.value) and "--device cpu" in str(err.value)
    with pytest.raises(TrtqError, match="unknown device"):
        _ort.providers("tpu")


def test_sessions_get_the_chosen_providers(monkeypatch):
    monkeypatch.setattr(ort, "get_available_providers", lambda: CUDA)
    seen = []

    class Recorder:
        def __init__(self, model, options, providers):
            seen.append(providers)

    monkeypatch.setattr(ort, "InferenceSession", Recorder)
    model = graphs.conv_block()
    _ort.make_session(model)
    with _ort.session_device("cpu"):
        _ort.make_session(model)
    _ort.make_session(model, device="cpu")
    assert seen == [CUDA, ["CPUExecutionProvider"], ["CPUExecutionProvider"]]


def test_cli_device_cuda_fails_cleanly_on_the_cpu_package(conv_model, conv_calib, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    out = tmp_path / "q.onnx"
    assert main(["quantize", str(conv_model), "-o", str(out), "--calib-data", str(conv_calib), "--quiet",
                 "--device", "cuda"]) == 2
    assert "onnxruntime-gpu" in capsys.readouterr().err and not out.exists()
    assert main(["quantize", str(conv_model), "-o", str(out), "--calib-data", str(conv_calib), "--quiet",
                 "--device", "cpu"]) == 0
    report = json.loads((tmp_path / "q.trtq.json").read_text())
    assert report["onnxruntime_providers"] == ["CPUExecutionProvider"] and report["config"]["device"] == "cpu"
    assert main(["compare", str(conv_model), str(out), "--data", str(conv_calib), "--device", "cuda"]) == 2
    assert "no CUDA execution provider" in capsys.readouterr().err
