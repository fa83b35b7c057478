"""The TensorRT face (`--plugins`): ONNX-face subgraphs become trtq plugin nodes that keep codes packed."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

import trtq
from tests.graphs import attention_block, attention_data, conv_block, conv_data
from trtq._ort import make_session
from trtq.cli import main
from trtq.config import ActQuantConfig, QuantConfig
from trtq.errors import TrtqError
from trtq.plugins.reference import dequantize_codebook, packed_row_bytes
from trtq.plugins.trt_face import CODEBOOK_OP, LOG_OP, codes_to_words, to_plugin_face, words_to_codes


def test_words_hold_the_packed_bytes_little_endian() -> None:
    codes = np.arange(2 * 7, dtype=np.uint8).reshape(2, 7)  # 7 bytes -> 2 words, the last one padded
    words = codes_to_words(codes)
    assert words.dtype == np.int32 and words.shape == (2, 2)
    assert words[0, 0] == 0x03020100 and words[1, 1] == 0x000D0C0B
    assert np.array_equal(words_to_codes(words, 7), codes)


@pytest.fixture(scope="module")
def attention_faces() -> tuple[onnx.ModelProto, onnx.ModelProto, dict]:
    """MiniLM-like attention block: codebook3 weights and log2 post-Softmax, ONNX face then plugin face."""
    model, data = attention_block(hidden=48), attention_data(8, hidden=48)  # K = 48, groups of 32: ragged
    base = {"precision": "int4", "weight_format": "codebook3", "block_size": 32,
            "act_quant": ActQuantConfig("log2", 4)}
    onnx_face = trtq.quantize(model, data, config=QuantConfig(**base), progress=False)
    plugin_face = trtq.quantize(model, data, config=QuantConfig(**base, plugins=True), progress=False)
    return onnx_face.model, plugin_face.model, plugin_face.report


def test_plugin_face_replaces_each_face_by_one_node(attention_faces) -> None:
    _, plugin_face, report = attention_faces
    plugins = [n for n in plugin_face.graph.node if n.domain == "trtq"]
    assert sorted(n.op_type for n in plugins) == [CODEBOOK_OP] * 4 + [LOG_OP]
    assert not any(n.name.startswith(("trtq_codebook/", "trtq_logquant/")) and n.domain != "trtq"
                   for n in plugin_face.graph.node if n.op_type not in ("Transpose", "Reshape"))
    assert any(o.domain == "trtq" and o.version == 1 for o in plugin_face.opset_import)
    for node in plugins:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["plugin_namespace"] == b"trtq" and attrs["plugin_version"] == b"1"
    assert report["plugins"]["plugin_nodes"] == 5
    assert report["fidelity"]["samples"] > 0 and report["fidelity"]["outputs"]  # measured on the ONNX face
    onnx.checker.check_model(plugin_face)
    produced = {o for n in plugin_face.graph.node for o in n.output}
    known = produced | {i.name for i in plugin_face.graph.initializer} | {i.name for i in plugin_face.graph.input}
    assert all(name in known for n in plugin_face.graph.node for name in n.input if name)
    # the plugin face keeps the codes packed: fewer initializer bytes than the float weights it replaces
    assert report["plugins"]["packed_bytes"] < sum(
        t.ByteSize() for t in attention_block(hidden=48).graph.initializer if t.name in ("wq", "wk", "wv", "wo"))


def test_plugin_inputs_dequantize_to_the_onnx_face_weights(attention_faces) -> None:
    onnx_face, plugin_face, _ = attention_faces
    inits = {t.name: numpy_helper.to_array(t) for t in plugin_face.graph.initializer}
    codebook_nodes = [n for n in plugin_face.graph.node if n.op_type == CODEBOOK_OP]
    session = make_session(onnx_face, outputs=[n.output[0] for n in codebook_nodes])
    names = [o.name for o in session.get_outputs()]
    ort = dict(zip(names, session.run(None, attention_data(1, hidden=48)), strict=True))
    for node in codebook_nodes:
        a = {x.name: onnx.helper.get_attribute_value(x) for x in node.attribute}
        words, codebook, scales = (inits[name] for name in node.input)
        assert words.dtype == np.int32 and codebook.dtype == np.float16 and scales.dtype == np.float16
        codes = words_to_codes(words, packed_row_bytes(a["k"], a["bits"]))
        wc = dequantize_codebook(codes, codebook, scales, a["bits"], a["group_size"], a["k"])
        assert a["k"] % a["group_size"] != 0  # a ragged last group
        np.testing.assert_array_equal(wc, ort[node.output[0]])


def test_onnx_runtime_refuses_the_plugin_face_with_the_fix(attention_faces, tmp_path, capsys) -> None:
    _, plugin_face, _ = attention_faces
    with pytest.raises(TrtqError, match="without --plugins"):
        make_session(plugin_face)
    onnx.save(plugin_face, str(tmp_path / "p.onnx"))
    np.savez(tmp_path / "d.npz", **attention_data(2, hidden=48))
    code = main(["compare", str(tmp_path / "p.onnx"), str(tmp_path / "p.onnx"), "--data", str(tmp_path / "d.npz")])
    assert code == 2 and "ONNX Runtime cannot run them" in capsys.readouterr().err


def test_check_accepts_the_plugin_face_and_says_what_the_build_needs(attention_faces) -> None:
    _, plugin_face, report = attention_faces
    assert report["check"]["ok"]
    rules = {f["rule"]: f for f in report["check"]["findings"]}
    assert "nonuniform-face" not in rules and rules["trtq-plugin"]["severity"] == "info"
    assert "libtrtq_plugins.so" in rules["trtq-plugin"]["fix"]
    orin = trtq.check(plugin_face, target="orin", trt="10.3")
    hit = next(f for f in orin.findings if f.rule == "trtq-plugin")
    assert "TensorRT 10.3 has no tensorrt.plugin" in hit.fix
    bogus = onnx.ModelProto()
    bogus.CopyFrom(plugin_face)
    bogus.graph.node[[n.domain for n in bogus.graph.node].index("trtq")].op_type = "Mystery"
    assert any(f.rule == "trtq-plugin" and f.severity == "error" for f in trtq.check(bogus).findings)


def test_conv_weights_get_the_plugin_and_the_input_is_left_alone() -> None:
    model = conv_block()
    result = trtq.quantize(model, conv_data(4), progress=False,
                           config=QuantConfig(precision="int4", weight_format="nf4", block_size=32, plugins=True))
    ops = [n.op_type for n in result.model.graph.node]
    assert ops.count(CODEBOOK_OP) == sum(n.op_type in ("Conv", "Gemm") for n in model.graph.node)
    assert not any(n.op_type in ("Gather", "Mod") for n in result.model.graph.node)
    value_info = {v.name: v for v in result.model.graph.value_info}
    out = next(n for n in result.model.graph.node if n.op_type == CODEBOOK_OP).output[0]
    assert value_info[out].type.tensor_type.elem_type == TensorProto.FLOAT
    again, swap = to_plugin_face(result.model)  # nothing left to swap: unchanged
    assert swap.nodes == [] and again.SerializeToString() == result.model.SerializeToString()


def test_plugins_flag_needs_something_to_replace(tmp_path, capsys) -> None:
    with pytest.raises(TrtqError, match="--plugins has nothing to replace"):
        QuantConfig(precision="int8", plugins=True)
    cfg = QuantConfig(precision="int4", weight_format="nf4", plugins=True)
    assert QuantConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    src = tmp_path / "m.onnx"
    onnx.save(conv_block(), str(src))
    code = main(["quantize", str(src), "-o", str(tmp_path / "q.onnx"), "--precision", "int8", "--plugins"])
    assert code == 2 and "--plugins has nothing to replace" in capsys.readouterr().err
    assert not (tmp_path / "q.onnx").exists()
