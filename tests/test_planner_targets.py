"""Planner rules that depend on TensorRT's kernels and parser versions: FP8 deconvolutions and grouped
convolutions stay float, INT4 weights with an odd dimension stay float (per parser version), with the reason."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper, numpy_helper

import trtq
from trtq.config import QuantConfig, Target
from trtq.exporter.placement import plan_quantization

import graphs


def conv(op: str, weight_shape: tuple[int, ...], group: int = 1) -> object:
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal(weight_shape).astype(np.float32), "w")
    c_in = weight_shape[0] if op == "ConvTranspose" else weight_shape[1] * group
    c_out = weight_shape[1] * group if op == "ConvTranspose" else weight_shape[0]
    node = helper.make_node(op, ["x", "w"], ["y"], name="conv", group=group, pads=[1, 1, 1, 1])
    return graphs.single_io_model([node], [w], [1, c_in, 8, 8], [1, c_out, 8, 8], 19)


@pytest.mark.parametrize("op, shape, group, reason", [
    ("ConvTranspose", (32, 32, 3, 3), 1, "no FP8 deconvolution kernel"),
    ("Conv", (64, 32, 3, 3), 2, "grouped conv (group 2, 32 channels per group > 16)"),
])
def test_fp8_leaves_deconvolutions_and_grouped_convs_in_float(op: str, shape: tuple, group: int, reason: str) -> None:
    model = conv(op, shape, group)
    plan = plan_quantization(model, "fp8")
    assert not plan.quantized_nodes and reason in plan.skipped[0]["reason"]
    assert plan_quantization(model, "int8").quantized_nodes == ["conv"]  # INT8 has those kernels


def matmul(n: int) -> object:
    w = numpy_helper.from_array(np.random.default_rng(1).standard_normal((128, n)).astype(np.float32), "w")
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")
    return graphs.single_io_model([node], [w], ["b", 128], ["b", n], 21)


@pytest.mark.parametrize("trt, quantized", [(None, False), ("10.3", False), ("10.16", True), ("11", True)])
def test_int4_odd_output_dimension_follows_the_parser_version(trt: str | None, quantized: bool) -> None:
    plan = plan_quantization(matmul(11), "int4", block_size=32, trt=trt)
    assert bool(plan.quantized_nodes) == quantized
    if not quantized:
        assert "odd last dimension 11 of the [128, 11] weight" in plan.skipped[0]["reason"]


def test_int4_quantize_with_an_odd_layer_keeps_it_float_and_reports_why() -> None:
    w1 = numpy_helper.from_array(np.random.default_rng(2).standard_normal((128, 128)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(np.random.default_rng(3).standard_normal((128, 11)).astype(np.float32), "w2")
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("MatMul", ["h", "w2"], ["y"], name="fc2")]
    model = graphs.single_io_model(nodes, [w1, w2], ["b", 128], ["b", 11], 21)
    result = trtq.quantize(model, None, config=QuantConfig(precision="int4", block_size=32, target=Target("orin")),
                           progress=False)
    assert result.report["quantized_nodes"] == ["fc1"] and result.report["check"]["ok"]
    skipped = result.report["skipped"][0]
    assert skipped["node"] == "fc2" and "even last dimension" in skipped["reason"]
