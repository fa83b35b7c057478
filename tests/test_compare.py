"""trtq.evaluate.compare: output and per-tensor fidelity of QDQ graphs, on tiny graphs built in code."""

from __future__ import annotations

import json
import tracemalloc

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtq.errors import TrtqError
from trtq.evaluate import SQNR_CAP_DB, CompareReport, compare

F32 = TensorProto.FLOAT


# --- numpy references ---------------------------------------------------------------------------


def sqnr_db(ref: np.ndarray, cand: np.ndarray) -> float:
    ref, cand = ref.astype(np.float64), cand.astype(np.float64)
    return 10 * np.log10(np.sum(ref**2) / np.sum((ref - cand) ** 2))


def qdq_int8(x: np.ndarray, scale: np.float32) -> np.ndarray:
    return (np.clip(np.round(x / scale), -128, 127) * scale).astype(np.float32)


def qdq_fp8(x: np.ndarray, scale: np.float32) -> np.ndarray:
    return ((x / scale).astype(ml_dtypes.float8_e4m3fn).astype(np.float32) * scale).astype(np.float32)


# --- tiny models --------------------------------------------------------------------------------


def make_model(nodes, inputs, outputs, inits, opset: int = 19) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10 if opset >= 21 else 9
    onnx.checker.check_model(model, full_check=True)
    return model


def qdq_nodes(x: str, scale: str, zero: str, out: str) -> list[onnx.NodeProto]:
    return [
        helper.make_node("QuantizeLinear", [x, scale, zero], [f"{out}_q"], name=f"{out}_Q"),
        helper.make_node("DequantizeLinear", [f"{out}_q", scale, zero], [out], name=f"{out}_DQ"),
    ]


def mlp_weights(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((16, 32)) / 4
    return w1.astype(np.float32), (rng.standard_normal((32, 10)) / 6).astype(np.float32)


def io(x_shape: list, y_shape: list) -> tuple[list, list]:
    """Graph input `x` and output `y`, float32."""
    x, y = helper.make_tensor_value_info("x", F32, x_shape), helper.make_tensor_value_info("y", F32, y_shape)
    return [x], [y]


def init(array: np.ndarray, name: str) -> onnx.TensorProto:
    return numpy_helper.from_array(array, name)


MLP_IO = (["N", 16], ["N", 10])


def mlp_fp32() -> onnx.ModelProto:
    """x -MatMul-> h1 -Relu-> h2 -MatMul-> y (class scores)."""
    w1, w2 = mlp_weights()
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h1"], name="mm1"),
        helper.make_node("Relu", ["h1"], ["h2"], name="relu"),
        helper.make_node("MatMul", ["h2", "W2"], ["y"], name="mm2"),
    ]
    return make_model(nodes, *io(*MLP_IO), [init(w1, "W1"), init(w2, "W2")])


def mlp_int8(sx: np.float32, s2: np.float32, sw: np.float32) -> onnx.ModelProto:
    """The MLP with INT8 Q/DQ on both MatMul activations and a Q/DQ of the constant W1."""
    w1, w2 = mlp_weights()
    inits = [
        init(w1, "W1"),
        init(w2, "W2"),
        init(np.array(sx, np.float32), "sx"),
        init(np.array(s2, np.float32), "s2"),
        init(np.array(sw, np.float32), "sw"),
        init(np.array(0, np.int8), "zp"),
    ]
    nodes = [
        *qdq_nodes("x", "sx", "zp", "x_dq"),
        *qdq_nodes("W1", "sw", "zp", "W1_dq"),
        helper.make_node("MatMul", ["x_dq", "W1_dq"], ["h1"], name="mm1"),
        helper.make_node("Relu", ["h1"], ["h2"], name="relu"),
        *qdq_nodes("h2", "s2", "zp", "h2_dq"),
        helper.make_node("MatMul", ["h2_dq", "W2"], ["y"], name="mm2"),
    ]
    return make_model(nodes, *io(*MLP_IO), inits)


def mlp_data(n: int = 23, seed: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)}


def mlp_int8_case() -> tuple[onnx.ModelProto, onnx.ModelProto, dict[str, np.ndarray], dict[str, float]]:
    """The FP32 and INT8 MLPs, their data, and numpy's SQNR for each compared tensor."""
    w1, w2 = mlp_weights()
    x = mlp_data()["x"]
    h2 = np.maximum(x @ w1, 0)
    sx, s2, sw = (np.float32(np.abs(a).max() / 127) for a in (x, h2, w1))
    h2_c = np.maximum(qdq_int8(x, sx) @ qdq_int8(w1, sw), 0)
    expected = {
        "y": sqnr_db(h2 @ w2, qdq_int8(h2_c, s2) @ w2),
        "x": sqnr_db(x, qdq_int8(x, sx)),
        "h2": sqnr_db(h2, qdq_int8(h2_c, s2)),
        "h2 local": sqnr_db(h2_c, qdq_int8(h2_c, s2)),
    }
    return mlp_fp32(), mlp_int8(sx, s2, sw), {"x": x}, expected


def conv_models(seed: int = 0) -> tuple[onnx.ModelProto, onnx.ModelProto, dict[str, np.ndarray], float]:
    """A Conv+Relu net in FP32 and with FP8 E4M3 Q/DQ on its input and per-channel FP8 weights."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((4, 3, 3, 3)) / 3).astype(np.float32)
    x = (2 * rng.standard_normal((9, 3, 8, 8))).astype(np.float32)
    sx = np.float32(np.abs(x).max() / 448)
    sw = (np.abs(w).reshape(4, -1).max(axis=1) / 448).astype(np.float32)
    wq = (w / sw[:, None, None, None]).astype(ml_dtypes.float8_e4m3fn)
    shapes = io(["N", 3, 8, 8], ["N", 4, 8, 8])

    def net(conv_in: str, weight: str) -> list[onnx.NodeProto]:
        return [
            helper.make_node("Conv", [conv_in, weight], ["c"], pads=[1, 1, 1, 1], name="conv"),
            helper.make_node("Relu", ["c"], ["y"], name="relu"),
        ]

    identity = helper.make_node("Identity", ["x"], ["xid"], name="id")
    ref = make_model([identity, *net("xid", "W")], *shapes, [init(w, "W")])
    inits = [
        helper.make_tensor("Wq", TensorProto.FLOAT8E4M3FN, w.shape, wq.view(np.uint8).tobytes(), raw=True),
        init(sw, "sw"),
        helper.make_tensor("wzp", TensorProto.FLOAT8E4M3FN, [4], [0.0] * 4),
        init(np.array(sx, np.float32), "sx"),
        helper.make_tensor("zp", TensorProto.FLOAT8E4M3FN, [], [0.0]),
    ]
    nodes = [
        identity,
        *qdq_nodes("xid", "sx", "zp", "xin"),
        helper.make_node("DequantizeLinear", ["Wq", "sw", "wzp"], ["Win"], axis=0),
        *net("xin", "Win"),
    ]
    return ref, make_model(nodes, *shapes, inits), {"x": x}, sqnr_db(x, qdq_fp8(x, sx))


def int4_models(seed: int = 0) -> tuple[onnx.ModelProto, onnx.ModelProto, dict[str, np.ndarray], float]:
    """A MatMul in FP32 and with a block-wise (block 16) INT4 weight, opset 21; numpy's output SQNR."""
    rng = np.random.default_rng(seed)
    k, n, block = 64, 12, 16
    w = rng.standard_normal((k, n)).astype(np.float32)
    x = rng.standard_normal((11, k)).astype(np.float32)
    scale = (np.abs(w.reshape(k // block, block, n)).max(axis=1) / 7).astype(np.float32)
    q = np.clip(np.round(w.reshape(k // block, block, n) / scale[:, None, :]), -8, 7).reshape(k, n)
    w_dq = (q.reshape(k // block, block, n) * scale[:, None, :]).reshape(k, n).astype(np.float32)
    shapes = io(["N", k], ["N", n])
    ref = make_model([helper.make_node("MatMul", ["x", "W"], ["y"])], *shapes, [init(w, "W")], opset=21)
    nodes = [
        helper.make_node("DequantizeLinear", ["Wq", "ws"], ["W"], axis=0, block_size=block),
        helper.make_node("MatMul", ["x", "W"], ["y"]),
    ]
    cand = make_model(nodes, *shapes, [init(q.astype(ml_dtypes.int4), "Wq"), init(scale, "ws")], opset=21)
    assert cand.graph.initializer[0].data_type == TensorProto.INT4
    return ref, cand, {"x": x}, sqnr_db(x @ w, x @ w_dq)


def report_numbers(report: CompareReport) -> list[float]:
    out = [report.samples]
    for o in report.outputs:
        out += [o.sqnr_db, o.cosine, o.max_abs_error, o.top1_agreement or 0.0]
    for t in report.tensors:
        out += [t.sqnr_db, t.local_sqnr_db]
    return out


# --- identical graphs ---------------------------------------------------------------------------


def test_identical_graphs_are_capped_and_agree(tmp_path):
    path = tmp_path / "mlp.onnx"
    onnx.save(mlp_fp32(), path)
    report = compare(mlp_fp32(), str(path), mlp_data())
    (out,) = report.outputs
    assert report.samples == 23
    assert out.name == "y"
    assert out.sqnr_db == SQNR_CAP_DB
    assert out.cosine == pytest.approx(1.0, abs=1e-12)
    assert out.top1_agreement == 1.0
    assert out.max_abs_error == 0.0
    assert report.tensors == []
    json.dumps(report.to_dict(), allow_nan=False)


# --- INT8 per-tensor ----------------------------------------------------------------------------


def test_int8_qdq_tensors_match_numpy():
    ref, cand, data, expected = mlp_int8_case()
    report = compare(ref, cand, data, batch_size=5)
    (out,) = report.outputs
    assert out.sqnr_db == pytest.approx(expected["y"], abs=1e-2)
    assert 0 < out.cosine < 1 and out.top1_agreement is not None
    # W1's Q/DQ quantizes a constant: a weight, not part of the per-tensor list.
    by_name = {t.name: t for t in report.tensors}
    assert sorted(by_name) == ["h2", "x"]
    assert by_name["x"].sqnr_db == pytest.approx(expected["x"], abs=1e-6)
    assert by_name["x"].local_sqnr_db == pytest.approx(expected["x"], abs=1e-6)
    assert by_name["h2"].sqnr_db == pytest.approx(expected["h2"], abs=1e-2)
    assert by_name["h2"].local_sqnr_db == pytest.approx(expected["h2 local"], abs=1e-2)
    assert by_name["h2"].sqnr_db < by_name["h2"].local_sqnr_db  # cumulative error includes x's and W1's
    assert by_name["h2"].dequantized == "h2_dq"
    assert by_name["h2"].precision == "int8"
    assert by_name["h2"].consumers == ("MatMul mm2",)
    assert [t.sqnr_db for t in report.tensors] == sorted(t.sqnr_db for t in report.tensors)


def test_per_tensor_off_reports_outputs_only():
    ref, cand, data, expected = mlp_int8_case()
    report = compare(ref, cand, data, per_tensor=False)
    assert report.tensors == []
    assert report.outputs[0].sqnr_db == pytest.approx(expected["y"], abs=1e-2)


@pytest.mark.parametrize("case", ["int8", "fp8"])
def test_metrics_do_not_depend_on_batch_size(case):
    ref, cand, data = (mlp_int8_case() if case == "int8" else conv_models())[:3]
    one = report_numbers(compare(ref, cand, data, batch_size=1))
    seven = report_numbers(compare(ref, cand, data, batch_size=7))
    assert one == pytest.approx(seven, rel=1e-9, abs=0)


def test_max_samples_limits_the_data():
    ref, cand, data, _ = mlp_int8_case()
    assert compare(ref, cand, data, batch_size=4, max_samples=10).samples == 10


def test_batches_from_a_generator_stream_in_bounded_memory():
    ref, cand, *_ = mlp_int8_case()

    def peak(batches: int) -> int:
        rng = np.random.default_rng(0)
        source = ({"x": rng.standard_normal((64, 16)).astype(np.float32)} for _ in range(batches))
        tracemalloc.start()
        report = compare(ref, cand, source)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert report.samples == 64 * batches
        return top

    small, large = peak(3), peak(30)
    assert large < 1.5 * small


# --- FP8 and INT4 -------------------------------------------------------------------------------


def test_fp8_qdq_graph_runs_and_matches_numpy():
    ref, cand, data, expected_x = conv_models()
    report = compare(ref, cand, data)
    (t,) = report.tensors
    assert (t.name, t.precision, t.dequantized) == ("xid", "float8e4m3fn", "xin")
    assert t.consumers == ("Conv conv",)
    assert t.sqnr_db == pytest.approx(expected_x, abs=1e-6)
    assert t.local_sqnr_db == pytest.approx(expected_x, abs=1e-6)
    (out,) = report.outputs
    assert 15 < out.sqnr_db < SQNR_CAP_DB
    assert out.top1_agreement is None  # rank 4: not class scores


def test_int4_weight_only_graph_runs_and_matches_numpy():
    ref, cand, data, expected = int4_models()
    report = compare(ref, cand, data)
    assert report.tensors == []  # weight-only: no activation Q
    # ORT's default optimisations would fuse DQ+MatMul into MatMulNBits with int8 activations.
    assert report.outputs[0].sqnr_db == pytest.approx(expected, abs=1e-3)


# --- graphs from other tools --------------------------------------------------------------------


def test_onnxruntime_quantize_static_graph(tmp_path):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    ref_path, q_path = tmp_path / "conv.onnx", tmp_path / "conv_qdq.onnx"
    ref, _, data, _ = conv_models()
    onnx.save(ref, ref_path)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter([{"x": data["x"][:4]}, {"x": data["x"][4:]}])

        def get_next(self):
            return next(self._it, None)

    quantize_static(
        str(ref_path), str(q_path), Reader(), quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
    )
    report = compare(ref_path, q_path, data)
    assert "xid" in {t.name for t in report.tensors}
    assert all(t.precision == "int8" for t in report.tensors)
    assert all(t.dequantized != t.name for t in report.tensors)
    assert report.outputs[0].sqnr_db > 10


# --- non-finite values --------------------------------------------------------------------------


def masked_add(mask: np.ndarray) -> onnx.ModelProto:
    add = helper.make_node("Add", ["x", "mask"], ["y"])
    return make_model([add], *io(["N", 6], ["N", 6]), [init(mask, "mask")])


def test_masks_are_excluded_and_nan_is_the_worst_sqnr():
    mask = np.array([0, 0, -np.inf, 0, 0, -np.inf], np.float32)
    poisoned = np.where(np.arange(6) == 1, np.nan, mask).astype(np.float32)
    data = {"x": np.random.default_rng(0).standard_normal((5, 6)).astype(np.float32)}
    same = compare(masked_add(mask), masked_add(mask), data).outputs[0]
    assert (same.excluded, same.nonfinite, same.sqnr_db) == (10, 0, SQNR_CAP_DB)
    report = compare(masked_add(mask), masked_add(poisoned), data)
    bad = report.outputs[0]
    assert (bad.excluded, bad.nonfinite, bad.sqnr_db) == (10, 5, -SQNR_CAP_DB)
    assert np.isfinite([bad.cosine, bad.max_abs_error]).all()
    json.dumps(report.to_dict(), allow_nan=False)
    assert "NaN/inf" in report.format()


# --- report -------------------------------------------------------------------------------------


def test_report_formats_and_saves(tmp_path):
    ref, cand, data, _ = mlp_int8_case()
    report = compare(ref, cand, data)
    text = report.format(top=1)
    lines = text.splitlines()
    assert lines[0].startswith("trtq compare: 23 samples, 1 outputs, 2 quantized tensors")
    assert any(line.startswith("y ") for line in lines)
    assert f"{report.outputs[0].sqnr_db:.2f}" in text
    worst = report.tensors[0]
    assert any(line.startswith(worst.name + " ") and "int8" in line for line in lines)
    assert "worst 1 of 2" in text
    assert ">=200" in compare(ref, ref, data).format()
    saved = json.loads(report.save(tmp_path / "cmp.json").read_text())
    assert saved == json.loads(json.dumps(report.to_dict()))
    assert saved["tensors"][0]["consumers"] == list(worst.consumers)


# --- errors -------------------------------------------------------------------------------------


def rename_input(model: onnx.ModelProto, new: str) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    old = out.graph.input[0].name
    out.graph.input[0].name = new
    for node in out.graph.node:
        node.input[:] = [new if i == old else i for i in node.input]
    return out


def rename_output(model: onnx.ModelProto, new: str) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    old = out.graph.output[0].name
    out.graph.output[0].name = new
    for node in out.graph.node:
        node.output[:] = [new if o == old else o for o in node.output]
    return out


def error_of(*args, **kwargs) -> TrtqError:
    with pytest.raises(TrtqError) as info:
        compare(*args, **kwargs)
    assert info.value.fix
    return info.value


def test_missing_and_non_onnx_files(tmp_path):
    assert "no such file" in error_of(tmp_path / "missing.onnx", mlp_fp32(), mlp_data()).message
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a protobuf")
    assert "not a valid ONNX model" in error_of(mlp_fp32(), junk, mlp_data()).message
    assert "not an ONNX model" in error_of(mlp_fp32(), 42, mlp_data()).message


def test_data_that_does_not_match_the_inputs(tmp_path):
    wrong_name = tmp_path / "wrong.npz"
    np.savez(wrong_name, inputs=mlp_data()["x"])
    assert "do not match the model inputs" in error_of(mlp_fp32(), mlp_fp32(), wrong_name).message
    wrong_shape = {"x": np.zeros((4, 15), np.float32)}
    assert "has shape (4, 15)" in error_of(mlp_fp32(), mlp_fp32(), wrong_shape).message
    assert "empty" in error_of(mlp_fp32(), mlp_fp32(), {"x": np.zeros((0, 16), np.float32)}).message
    assert "no such file" in error_of(mlp_fp32(), mlp_fp32(), tmp_path / "none.npz").message


def test_models_with_different_inputs_or_outputs():
    assert "different inputs" in error_of(mlp_fp32(), rename_input(mlp_fp32(), "z"), mlp_data()).message
    renamed = rename_output(mlp_fp32(), "logits")
    assert "different outputs" in error_of(mlp_fp32(), renamed, mlp_data()).message
    fixed = mlp_fp32()
    fixed.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 17
    assert "input 'x' differs" in error_of(mlp_fp32(), fixed, mlp_data()).message


def test_bad_batch_size():
    assert "batch size" in error_of(mlp_fp32(), mlp_fp32(), mlp_data(), batch_size=0).message
