"""The graph trtq writes, read back byte by byte: one Q per tensor, FP8 scales = amax/448 with E4M3
per-channel weights, INT4 packed two per byte low nibble first at the default block of 128."""

from __future__ import annotations

import collections

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import trtq
from trtq.config import QuantConfig, Target

import graphs

MODELS = {
    "conv": (lambda: graphs.conv_block(channels=32), lambda: graphs.conv_data(16)),
    "convnext": (graphs.convnext_block, lambda: {"input": graphs.conv_data(16)["input"][:, :, :8, :8]}),
    "attention": (graphs.attention_block, lambda: graphs.attention_data(16)),
    "bert": (graphs.bert_block, lambda: graphs.bert_data(16)),
}


def _inits(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {i.name: i for i in model.graph.initializer}


@pytest.mark.parametrize("precision", ["int8", "fp8"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_one_quantize_per_tensor(name: str, precision: str) -> None:
    build, data = MODELS[name]
    model = trtq.quantize(build(), data(), precision=precision, target="hopper", progress=False).model
    quantized = collections.Counter(n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear")
    assert quantized and max(quantized.values()) == 1, quantized
    dequantized = collections.Counter(n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear")
    assert max(dequantized.values()) == 1  # one DQ per Q or quantized weight, shared by every reader


def test_fp8_scales_are_amax_over_448_and_weights_e4m3_per_channel() -> None:
    # float32 scales: --high-precision fp32 (the default fp16 stores each scale as its nearest fp16, no
    # smaller than fp16's smallest normal: tests/test_high_precision.py, test_quantize.test_int8_conv_block)
    config = QuantConfig(precision="fp8", target=Target("hopper"), high_precision="fp32")
    result = trtq.quantize(graphs.attention_block(), graphs.attention_data(16), config=config, progress=False)
    model, tensors = result.model, result.report["tensors"]
    inits = _inits(model)
    activations = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert activations
    for q in activations:
        scale = numpy_helper.to_array(inits[q.input[1]])
        assert scale.dtype == np.float32 and scale.size == 1
        assert scale.item() == np.float32(tensors[q.input[0]]["amax"] / 448)
        assert inits[q.input[2]].data_type == TensorProto.FLOAT8E4M3FN
    fp32 = {i.name: numpy_helper.to_array(i) for i in graphs.attention_block().graph.initializer}
    weights = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
               and inits[n.input[0]].data_type == TensorProto.FLOAT8E4M3FN]
    assert len(weights) == 4  # q, k, v, out projections
    for dq in weights:
        stored = numpy_helper.to_array(inits[dq.input[0]])
        name = next(n for n in fp32 if dq.input[0].startswith(n))
        w, axis = fp32[name], {a.name: a.i for a in dq.attribute}["axis"]
        assert axis == 1  # MatMul [K, N]: one scale per output channel N
        scale = numpy_helper.to_array(inits[dq.input[1]])
        amax = np.abs(w).max(axis=0)
        np.testing.assert_array_equal(scale, (amax / 448).astype(np.float32))
        expected = (w / scale[None, :]).astype(ml_dtypes.float8_e4m3fn)
        assert stored.tobytes() == expected.tobytes()
        assert np.all(np.abs(stored.astype(np.float32)).max(axis=0) == 448)


def test_int4_packs_low_nibble_first_at_the_default_block_of_128() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((256, 6)).astype(np.float32)  # K = 256: two blocks of 128 along K
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")
    model = graphs.single_io_model([node], [graphs.init("w", w)], ["batch", 256], ["batch", 6], opset=17)
    q = trtq.quantize(model, None, precision="int4", progress=False).model
    inits = _inits(q)
    (dq,) = [n for n in q.graph.node if n.op_type == "DequantizeLinear"]
    assert {a.name: a.i for a in dq.attribute} == {"axis": 0, "block_size": 128}
    packed = inits[dq.input[0]]
    assert packed.data_type == TensorProto.INT4 and list(packed.dims) == [256, 6]
    scale = numpy_helper.to_array(inits[dq.input[1]])
    assert scale.shape == (2, 6)
    values = np.clip(np.rint(w / np.repeat(scale, 128, axis=0)), -8, 7).astype(np.int8).ravel()  # C order
    nibbles = values.astype(np.uint8) & 0x0F
    hand = (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8).tobytes()  # element 2i in the low nibble
    assert packed.raw_data == hand
