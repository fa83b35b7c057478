"""The `trtq` command: each subcommand end to end, and exit status 2 with no output on user errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trtq.cli import main

import graphs


def _trtq(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "trtq", *args], capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)


def test_quantize_check_compare(conv_model, conv_calib, tmp_path):
    out = tmp_path / "q.onnx"
    res = _trtq("quantize", str(conv_model), "-o", str(out), "--calib-data", str(conv_calib), "--quiet")
    assert res.returncode == 0, res.stderr
    assert "wrote" in res.stdout and out.exists() and (tmp_path / "q.trtq.json").exists()
    res = _trtq("check", str(out), "--target", "orin", "--json")
    assert res.returncode == 0 and json.loads(res.stdout)["ok"]
    np.savez(tmp_path / "eval.npz", **graphs.conv_data(8, seed=4))
    res = _trtq("compare", str(conv_model), str(out), "--data", str(tmp_path / "eval.npz"))
    assert res.returncode == 0, res.stderr
    assert "logits" in res.stdout


def test_int4_needs_no_calibration_data(attention_model, tmp_path):
    assert main(["quantize", str(attention_model), "-o", str(tmp_path / "q.onnx"), "--precision", "int4",
                 "--block-size", "32", "--quiet"]) == 0


def test_quantize_codebook_weights_and_log_activations(conv_model, conv_calib, tmp_path, capsys):
    out = tmp_path / "cb.onnx"
    assert main(["quantize", str(conv_model), "-o", str(out), "--precision", "int4", "--weight-format", "codebook3",
                 "--block-size", "16", "--calib-data", str(conv_calib), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "int4/codebook3" in printed and "codebook weights:" in printed
    report = json.loads(out.with_suffix(".trtq.json").read_text())
    assert report["config"]["weight_format"] == "codebook3"
    assert all(len(t["codebook"][0]) == 8 for t in report["tensors"].values() if t["kind"] == "weight")


def test_quantize_selects_calibration_samples(conv_model, conv_calib, tmp_path, capsys):
    out = tmp_path / "q.onnx"
    assert main(["quantize", str(conv_model), "-o", str(out), "--calib-data", str(conv_calib), "--quiet",
                 "--select", "8", "--select-method", "noise-filtered-diverse", "--seed", "2"]) == 0
    assert "selected 8 of 32 candidates (noise-filtered-diverse, feature " in capsys.readouterr().out
    sidecar = json.loads((tmp_path / "q.trtq.json").read_text())
    assert sidecar["summary"]["calibration_samples"] == 8 and len(sidecar["selection"]["indices"]) == 8
    assert sidecar["selection"]["config"]["seed"] == 2


def _npz(tmp_path: Path, name: str, **arrays: np.ndarray) -> Path:
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def _not_onnx(tmp_path: Path) -> Path:
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"\x00\x01 definitely not protobuf \xff" * 10)
    return path


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing-model", "no such file"),
        ("not-onnx", "not a valid ONNX model"),
        ("missing-calib", "no such file"),
        ("wrong-names", "do not match the model inputs"),
        ("wrong-shape", "expects input"),
        ("empty-calib", "empty"),
        ("no-calib", "needs calibration data"),
        ("bad-precision", "unknown precision"),
        ("bad-method", "unknown calibration method"),
        ("fp8-on-orin", "cannot run on target 'orin'"),
        ("nothing-to-quantize", "no quantizable op"),
        ("select-too-many", "cannot select 100 samples from 32 candidates"),
        ("select-method-alone", "--select-method needs --select N"),
        ("select-bad-feature", "is not a tensor of the model"),
        ("codebook-not-weight-only", "is weight-only"),
        ("act-quant-missing-tensor", "are read by no node"),
    ],
)
def test_user_errors_exit_2_without_output(conv_model, conv_calib, tmp_path, capsys, case, message):
    out = tmp_path / "out" / "q.onnx"
    model, calib, extra = str(conv_model), str(conv_calib), []
    if case == "missing-model":
        model = str(tmp_path / "nope.onnx")
    elif case == "not-onnx":
        model = str(_not_onnx(tmp_path))
    elif case == "missing-calib":
        calib = str(tmp_path / "nope.npz")
    elif case == "wrong-names":
        calib = str(_npz(tmp_path, "bad.npz", image=np.zeros((2, 3, 12, 12), np.float32)))
    elif case == "wrong-shape":
        calib = str(_npz(tmp_path, "short.npz", input=np.zeros((2, 3, 8, 8), np.float32)))
    elif case == "empty-calib":
        calib = str(_npz(tmp_path, "empty.npz", input=np.zeros((0, 3, 12, 12), np.float32)))
    elif case == "bad-precision":
        extra = ["--precision", "int3"]
    elif case == "bad-method":
        extra = ["--calib-method", "magic"]
    elif case == "fp8-on-orin":
        extra = ["--precision", "fp8", "--target", "orin"]
    elif case == "nothing-to-quantize":
        extra = ["--exclude", "."]
    elif case == "select-too-many":
        extra = ["--select", "100"]
    elif case == "select-method-alone":
        extra = ["--select-method", "density-diversity"]
    elif case == "select-bad-feature":
        extra = ["--select", "4", "--select-method", "density-diversity", "--select-feature", "nope"]
    elif case == "codebook-not-weight-only":
        extra = ["--weight-format", "nf4"]
    elif case == "act-quant-missing-tensor":
        extra = ["--act-quant", "log2", "--act-quant-tensors", "nope"]
    args = ["quantize", model, "-o", str(out), "--quiet", *extra]
    if case != "no-calib":
        args += ["--calib-data", calib]
    before = Path(model).read_bytes() if Path(model).exists() else None
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("trtq: error:") and message in err and "Fix:" in err
    assert not out.exists() and not any(out.parent.glob("*")) if out.parent.exists() else True
    if before is not None:
        assert Path(model).read_bytes() == before


def test_check_exits_1_on_broken_graph(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q"),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="dq"),
    ]
    inits = [helper.make_tensor("s", TensorProto.FLOAT, [], [0.1]), helper.make_tensor("z", TensorProto.INT8, [], [3])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], inits)
    path = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    res = _trtq("check", str(path))
    assert res.returncode == 1 and "zero-point" in res.stdout


def test_check_unknown_target_is_a_user_error(conv_model, capsys):
    assert main(["check", str(conv_model), "--target", "xavier9"]) == 2
    assert "unknown target" in capsys.readouterr().err
