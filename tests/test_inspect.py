"""trtq inspect: op counts, quantized tensors, compute precision per weighted op, MACs and weight bytes."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import trtq
from trtq.cli import main
from trtq.config import QuantConfig
from trtq.exporter.macs import count_macs

import graphs


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    d = tmp_path_factory.mktemp("inspect")
    onnx.save(graphs.conv_block(), str(d / "conv.onnx"))
    np.savez(d / "calib.npz", **graphs.conv_data(16))
    trtq.quantize(d / "conv.onnx", d / "calib.npz", d / "conv.int8.onnx",
                  config=QuantConfig(exclude=("fc",), passes=()), progress=False)
    return d


def test_inspect_reads_precision_granularity_macs_and_bytes(quantized):
    report = trtq.inspect(quantized / "conv.int8.onnx")
    side = json.loads((quantized / "conv.int8.trtq.json").read_text())
    assert report.op_counts["QuantizeLinear"] == side["summary"]["activation_qdq"]
    acts = {t.tensor: t for t in report.tensors if t.kind == "activation"}
    assert set(acts) == {n for n, t in side["tensors"].items() if t["kind"] == "activation"}
    for name, t in acts.items():
        assert (t.precision, t.granularity, t.scales) == ("int8", "tensor", 1)
        assert t.scale_min == pytest.approx(side["tensors"][name]["scale"], rel=1e-6)
    weights = [t for t in report.tensors if t.kind == "weight"]
    assert len(weights) == 3 and all(t.granularity == "channel" and t.scales == 16 for t in weights)
    ops = {w.node: w for w in report.weighted_ops}
    assert {n: w.precision for n, w in ops.items()} == {"conv1": "int8", "dwconv": "int8", "conv2": "int8",
                                                         "fc": "fp16"}  # excluded: --high-precision fp16
    assert ops["conv1"].output_to == ("Clip",) and ops["conv2"].output_to == ("Add",)
    # MACs: the FP32 model's count, split by precision; bytes: INT8 weights + FP16 scales, FP16 fc
    fp32_macs = count_macs(graphs.conv_block(), {"input": np.zeros((1, 3, 12, 12), np.float32)})
    assert report.macs_by_precision == {"int8": fp32_macs["conv1"] + fp32_macs["dwconv"] + fp32_macs["conv2"],
                                        "fp16": fp32_macs["fc"]}
    c = 16
    assert report.weight_bytes_by_precision == {"int8": c * 3 * 9 + c * 9 + c * c + 3 * c * 2, "fp16": 10 * c * 2}


def test_inspect_cli_text_and_json(quantized, capsys):
    assert main(["inspect", str(quantized / "conv.int8.onnx"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["macs_by_precision"]["fp16"] == 10 * 16 and data["sample_shapes"] == {"input": [1, 3, 12, 12]}
    assert main(["inspect", str(quantized / "conv.onnx")]) == 0
    out = capsys.readouterr().out
    assert "quantized tensors: 0" in out and "fp32" in out
    assert main(["inspect", str(quantized / "missing.onnx")]) == 2
