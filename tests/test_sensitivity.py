"""Sensitivity analysis and fallback: ranking, budget, target SQNR, MAC counts, FP16 fallback, determinism."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper, version_converter

import trtq
from trtq.calibrators.data import open_batches
from trtq.cli import main
from trtq.config import QuantConfig
from trtq.errors import TrtqError
from trtq.exporter.high_precision import cast_high_precision
from trtq.exporter.macs import count_macs
from trtq.exporter.placement import plan_quantization
from trtq.exporter.qdq import insert_qdq
from trtq.sensitivity import sensitivity_fallback, unit_owners, without_units

import graphs
import helpers

OPSET = 17
MLP_MACS = {"fc1": 16 * 32, "fc2": 32 * 32, "fc3": 32 * 8}


def _init(name: str, arr: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(arr, dtype=np.float32), name)


def outlier_mlp(seed: int = 0) -> onnx.ModelProto:
    """x -> fc1 -> h1 -> fc2 -> h2 -> fc3 (Gemm) -> y, where h1's channel 0 is 1000x the others.

    fc2 divides that channel back, so FP32 is unharmed, but per-tensor INT8 of h1 spends its range on
    channel 0 and rounds the other 31 channels to zero: fc2 is the one bad layer.
    """
    rs = np.random.RandomState(seed)
    w1, w2 = rs.randn(16, 32) / 4, rs.randn(32, 32) / 6
    w1[:, 0] *= 1000.0
    w2[0, :] /= 1000.0
    w3, b3 = rs.randn(8, 32) / 6, rs.randn(8) * 0.1
    inits = [_init("w1", w1), _init("w2", w2), _init("w3", w3), _init("b3", b3)]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h1"], name="fc1"),
        helper.make_node("MatMul", ["h1", "w2"], ["h2"], name="fc2"),
        helper.make_node("Gemm", ["h2", "w3", "b3"], ["y"], name="fc3", transB=1),
    ]
    graph = helper.make_graph(nodes, "outlier_mlp",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def _mlp_data(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    return {"x": np.random.RandomState(seed).randn(n, 16).astype(np.float32)}


def _setup(model: onnx.ModelProto, data: dict[str, np.ndarray]):
    plan = plan_quantization(model, "int8")
    ranges = trtq.calibrate(model, data, progress=False)
    amax = {name: r["amax"] for name, r in ranges.items()}
    return plan, amax, open_batches(data, model, batch_size=4)


def _fallback(model: onnx.ModelProto, data: dict[str, np.ndarray], **kwargs):
    plan, amax, batches = _setup(model, data)
    result = sensitivity_fallback(model, plan, amax, batches, "int8", opset=OPSET, progress=False, **kwargs)
    return result, amax


def _sqnr(model: onnx.ModelProto, qmodel: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> float:
    return helpers.sqnr_db(helpers.run(model, feeds), helpers.run(qmodel, feeds))


def test_ranking_puts_the_outlier_layer_first():
    model = outlier_mlp()
    result, _ = _fallback(model, _mlp_data(32), samples=8)
    assert result.units[0].unit == "fc2"
    assert result.units[0].sqnr_db < 5 < 25 < min(u.sqnr_db for u in result.units[1:])
    assert result.units[0].noise_share > 0.99
    assert sum(u.noise_share for u in result.units) == pytest.approx(1.0)
    assert result.samples == 8 and result.steps == [] and result.kept_float == []  # analysis only
    assert result.plan.quantized_nodes == ["fc1", "fc2", "fc3"]
    assert {u.unit: u.tensors for u in result.units}["fc2"] == ("h1", "w2")


def test_budget_one_falls_back_the_outlier_layer_and_the_output_improves():
    model, data, feeds = outlier_mlp(), _mlp_data(32), _mlp_data(16, seed=7)
    result, amax = _fallback(model, data, budget=1)
    assert result.kept_float == ["fc2"] and [s.unit for s in result.steps] == ["fc2"]
    assert result.final_sqnr_db > result.baseline_sqnr_db + 20
    plan = result.plan
    assert plan.quantized_nodes == ["fc1", "fc3"] and "h1" not in plan.activations
    assert {s.tensor for s in plan.weights} == {"w1", "w3"}
    assert plan.skipped[-1]["node"] == "fc2" and plan.skipped[-1]["reason"].startswith("sensitivity fallback")
    full, _ = insert_qdq(model, plan_quantization(model, "int8"), amax, "int8", opset=OPSET)
    fallback, _ = insert_qdq(model, plan, amax, "int8", opset=OPSET)
    onnx.checker.check_model(fallback, full_check=True)
    assert _sqnr(model, fallback, feeds) > _sqnr(model, full, feeds) + 20
    assert result.mac_fraction(result.quantized) == 1.0
    assert result.quantized_mac_fraction == pytest.approx((512 + 256) / 1792)


def test_target_sqnr_stops_once_reached():
    result, _ = _fallback(outlier_mlp(), _mlp_data(32), target_sqnr=25.0)
    assert result.reached and [s.unit for s in result.steps] == ["fc2"] and result.final_sqnr_db >= 25.0
    already, _ = _fallback(outlier_mlp(), _mlp_data(32), target_sqnr=result.baseline_sqnr_db - 1)
    assert already.reached and already.steps == []
    unreachable, _ = _fallback(outlier_mlp(), _mlp_data(32), target_sqnr=150.0, max_trials=2)
    assert unreachable.reached is False and len(unreachable.steps) == 2
    assert unreachable.to_dict()["kept_float"] == [s.unit for s in unreachable.steps]


def test_budget_and_target_together_stop_at_the_first_limit():
    result, _ = _fallback(outlier_mlp(), _mlp_data(32), budget=2, target_sqnr=150.0)
    assert len(result.steps) == 2 and result.reached is False


def test_auto_fallback_keeps_the_outlier_layer_within_the_mac_budget_then_stops():
    result, _ = _fallback(outlier_mlp(), _mlp_data(32), auto=True, max_float_macs=0.6)
    assert result.auto and result.kept_float == ["fc2"] and result.final_sqnr_db > result.baseline_sqnr_db + 20
    kept, stop = result.decisions
    assert kept.kept and kept.unit == "fc2" and "57.1% of the MACs" in kept.reason
    assert not stop.kept and stop.reason.startswith("diminishing returns")
    assert result.to_dict()["decisions"][0] == {"unit": "fc2", "kept": True, "reason": kept.reason}
    assert "1 layer kept in floating point (fc2)" in result.summary()


def test_auto_fallback_passes_over_a_layer_above_the_mac_budget():
    result, _ = _fallback(outlier_mlp(), _mlp_data(32), auto=True)  # default budget: 5 % of the MACs
    assert result.max_float_macs == 0.05 and result.kept_float == []
    assert result.plan.quantized_nodes == ["fc1", "fc2", "fc3"]
    assert result.decisions[0].unit == "fc2" and "over the MAC budget" in result.decisions[0].reason


def deep_mlp(layers: int = 24, outlier: int = 17, seed: int = 0) -> onnx.ModelProto:
    """x -> fc0 -> ... -> fc{layers-1} -> y (16 x 16 MatMuls, equal MACs), with `outlier_mlp`'s outlier
    channel between fc{outlier-1} and fc{outlier}: fc{outlier} is the one bad layer."""
    rs = np.random.RandomState(seed)
    ws = [rs.randn(16, 16) / 4 for _ in range(layers)]
    ws[outlier - 1][:, 0] *= 1000.0
    ws[outlier][0, :] /= 1000.0
    names = ["x", *(f"h{i}" for i in range(layers - 1)), "y"]
    nodes = [helper.make_node("MatMul", [names[i], f"w{i}"], [names[i + 1]], name=f"fc{i}") for i in range(layers)]
    graph = helper.make_graph(nodes, "deep_mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 16])],
                              [_init(f"w{i}", w) for i, w in enumerate(ws)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def test_auto_fallback_screens_groups_and_keeps_what_the_full_ranking_keeps():
    model, data = deep_mlp(), _mlp_data(32)
    auto, _ = _fallback(model, data, auto=True)
    full, _ = _fallback(model, data, budget=1)
    assert full.units[0].unit == "fc17" and full.kept_float == ["fc17"] and len(full.units) == 24
    assert auto.kept_float == ["fc17"] and auto.final_sqnr_db > auto.baseline_sqnr_db + 10
    # far fewer runs than units; the units measured alone and the screened groups partition all 24
    assert auto.measurements < 24 and auto.screened
    alone = [u.unit for u in auto.units]
    grouped = [u for g in auto.screened for u in g.units]
    assert sorted(alone + grouped) == sorted(f"fc{i}" for i in range(24)) and not set(alone) & set(grouped)
    assert "fc17" in alone and auto.units[0].unit == "fc17"
    assert {u.unit: u.sqnr_db for u in full.units}["fc17"] == pytest.approx(auto.units[0].sqnr_db)
    assert sum(u.noise_share for u in auto.units) + sum(g.noise_share for g in auto.screened) == pytest.approx(1.0)
    assert all("of the all-quantized noise" in g.reason for g in auto.screened)
    side = auto.to_dict()
    assert side["measurements"] == auto.measurements
    assert sum(len(g["units"]) for g in side["screened"]) == 24 - len(alone)
    assert "screened out:" in auto.format()
    assert not auto.decisions[-1].kept and "screened out in groups" in auto.decisions[-1].reason


def test_budget_with_a_mac_cap_skips_the_layers_over_it():
    result, _ = _fallback(outlier_mlp(), _mlp_data(32), budget=1, max_float_macs=0.2)
    assert result.kept_float in (["fc3"], ["fc1"])  # fc2 (57 % of the MACs) is over the cap


def test_same_inputs_same_result():
    first, _ = _fallback(outlier_mlp(), _mlp_data(32), budget=2)
    second, _ = _fallback(outlier_mlp(), _mlp_data(32), budget=2)
    assert first.to_dict() == second.to_dict()


def test_residual_add_belongs_to_the_conv_it_fuses_with():
    model = graphs.conv_block()
    plan = plan_quantization(model, "int8")
    owners = unit_owners(model, plan)
    assert owners["residual_add"] == "conv2"
    kept = without_units(model, plan, ["conv2"], owners)
    assert kept.residual_adds == [] and kept.activations["r1"] == [("dwconv", 0)]
    assert "rd" not in kept.activations and "conv2" not in kept.quantized_nodes


def test_conv_block_fallback_runs_end_to_end():
    model, data = graphs.conv_block(), graphs.conv_data(32)
    result, amax = _fallback(model, data, budget=2)
    assert len(result.units) == 4 and len(result.kept_float) == 2
    qmodel, _ = insert_qdq(model, result.plan, amax, "int8", opset=OPSET)
    onnx.checker.check_model(qmodel, full_check=True)
    assert _sqnr(model, qmodel, graphs.conv_data(8, seed=3)) > result.baseline_sqnr_db


@pytest.mark.parametrize(("precision", "opset"), [("int8", 17), ("fp8", 19), ("int4", 21)])
def test_attention_block_every_precision(precision, opset):
    model = version_converter.convert_version(graphs.attention_block(), opset)
    data, plan = graphs.attention_data(16), plan_quantization(model, precision)
    ranges = {} if precision == "int4" else trtq.calibrate(model, data, precision=precision, progress=False)
    amax = {name: r["amax"] for name, r in ranges.items()}
    result = sensitivity_fallback(model, plan, amax, open_batches(data, model, batch_size=4), precision,
                                  opset=opset, budget=1, progress=False)
    assert len(result.units) == (4 if precision == "int4" else 6)  # INT4 leaves the attention BMMs in float
    assert result.final_sqnr_db > result.baseline_sqnr_db
    assert len(result.plan.quantized_nodes) == len(result.units) - 1
    qmodel, _ = insert_qdq(model, result.plan, amax, precision, opset=opset)
    assert np.isfinite(helpers.run(qmodel, graphs.attention_data(4, seed=3))).all()


def _mac_model() -> onnx.ModelProto:
    rs = np.random.RandomState(0)
    shapes = {"wc": (6, 2, 3, 3), "wt": (6, 3, 2, 2), "wm": (7, 9), "wg": (6, 4), "wr": (4, 5)}
    inits = [_init(name, rs.randn(*shape)) for name, shape in shapes.items()]
    nodes = [
        helper.make_node("Conv", ["x", "wc"], ["c"], name="conv", group=2, strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("ConvTranspose", ["c", "wt"], ["t"], name="deconv", strides=[2, 2]),
        helper.make_node("MatMul", ["a", "wm"], ["m"], name="matmul"),
        helper.make_node("Gemm", ["g", "wg"], ["o"], name="gemm", transA=1),
        helper.make_node("Reshape", ["r", "shape"], ["rr"], name="reshape"),  # shape known only at run time
        helper.make_node("MatMul", ["rr", "wr"], ["ro"], name="runtime_matmul"),
    ]
    f = TensorProto.FLOAT
    dims = {"x": ["n", 4, 8, 8], "a": ["n", 5, 7], "g": [6, "n"], "r": ["n", 12]}
    inputs = [helper.make_tensor_value_info(name, f, shape) for name, shape in dims.items()]
    inputs.append(helper.make_tensor_value_info("shape", TensorProto.INT64, [2]))
    outputs = [helper.make_tensor_value_info(n, f, None) for n in ("t", "m", "o", "ro")]
    graph = helper.make_graph(nodes, "macs", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def test_count_macs_on_known_shapes():
    sample = {"x": np.zeros((1, 4, 8, 8), np.float32), "a": np.zeros((1, 5, 7), np.float32),
              "g": np.zeros((6, 2), np.float32), "r": np.zeros((1, 12), np.float32),
              "shape": np.array([3, 4], np.int64)}
    model = _mac_model()
    before = model.SerializeToString()
    assert count_macs(model, sample) == {
        "conv": 6 * 4 * 4 * (2 * 3 * 3),  # output elements x (input channels per group x kernel)
        "deconv": 6 * 4 * 4 * (3 * 2 * 2),  # input elements x (output channels per group x kernel)
        "matmul": 5 * 9 * 7,
        "gemm": 2 * 4 * 6,  # transA: A is [K=6, M=2]
        "runtime_matmul": 3 * 5 * 4,
    }
    assert model.SerializeToString() == before  # inputs restored after fixing their shapes
    assert count_macs(outlier_mlp(), {"x": np.zeros((1, 16), np.float32)}) == MLP_MACS


def test_fp16_fallback_casts_around_the_op_and_runs_in_onnxruntime():
    model, feeds = outlier_mlp(), _mlp_data(16, seed=7)
    result, amax = _fallback(model, _mlp_data(32), budget=1)
    fp32, _ = insert_qdq(model, result.plan, amax, "int8", opset=OPSET)
    fp16 = insert_qdq(model, result.plan, amax, "int8", opset=OPSET)[0]
    cast_high_precision(fp16, "fp16", nodes=result.kept_float)
    onnx.checker.check_model(fp16, full_check=True)
    fc2 = next(n for n in fp16.graph.node if n.name == "fc2")
    inits = {i.name: i for i in fp16.graph.initializer}
    assert inits[fc2.input[1]].data_type == TensorProto.FLOAT16  # w2, read by fc2 only: cast in place
    casts = {(n.input[0], n.output[0]) for n in fp16.graph.node if n.op_type == "Cast"}
    assert ("h1", fc2.input[0]) in casts and (fc2.output[0], "h2_to_fp32") in casts
    assert all(n.op_type != "Cast" for n in fp16.graph.node if n.name in ("fc1", "fc3"))
    assert helpers.sqnr_db(helpers.run(fp32, feeds), helpers.run(fp16, feeds)) > 45


def test_fp16_fallback_chains_without_a_round_trip():
    model = outlier_mlp()
    cast_high_precision(model, "fp16", nodes=["fc1", "fc2"])
    onnx.checker.check_model(model, full_check=True)
    fc2 = next(n for n in model.graph.node if n.name == "fc2")
    assert fc2.input[0] == "h1" and not any(n.op_type == "Cast" and n.input[0] == "h1" for n in model.graph.node)
    feeds = _mlp_data(4)
    assert helpers.sqnr_db(helpers.run(outlier_mlp(), feeds), helpers.run(model, feeds)) > 45


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"budget": -1}, "budget"),
    ({"target_sqnr": float("inf")}, "target SQNR"),
    ({"samples": 0}, "samples"),
])
def test_invalid_arguments_raise_trtq_errors(kwargs, message):
    model = outlier_mlp()
    plan, amax, batches = _setup(model, _mlp_data(8))
    with pytest.raises(TrtqError, match=message):
        sensitivity_fallback(model, plan, amax, batches, "int8", opset=OPSET, progress=False, **kwargs)


def test_no_calibration_data_is_a_clear_error():
    model = outlier_mlp()
    with pytest.raises(TrtqError, match="calibration data"):
        sensitivity_fallback(model, plan_quantization(model, "int8"), {}, None, "int8", opset=OPSET)


# --- wired into trtq.quantize and the CLI -------------------------------------------------------


def test_quantize_with_a_fallback_budget_writes_the_report(tmp_path):
    model_path, calib = tmp_path / "mlp.onnx", tmp_path / "calib.npz"
    onnx.save(outlier_mlp(), str(model_path))
    np.savez(calib, **_mlp_data(32))
    result = trtq.quantize(model_path, calib, tmp_path / "q.onnx", config=QuantConfig(fallback_budget=1),
                           progress=False)
    report = result.report
    assert report["fallback"]["kept_float"] == ["fc2"] and report["fallback"]["dtype"] == "fp16"  # the default
    assert report["summary"]["quantized_nodes"] == 2
    assert {"node": "fc2", "op": "MatMul"}.items() <= report["skipped"][-1].items()
    model = onnx.load(str(tmp_path / "q.onnx"))
    fc2 = next(n for n in model.graph.node if n.name == "fc2")
    assert list(fc2.input) == ["h1", "w2"]  # no Q/DQ in front of the fallen-back layer
    assert result.fallback is not None and result.fallback.seconds > 0
    feeds = _mlp_data(16, seed=7)
    assert _sqnr(outlier_mlp(), model, feeds) > result.fallback.baseline_sqnr_db + 20


def test_quantize_fp16_fallback_passes_the_check():
    config = QuantConfig(target_sqnr=25.0, fallback_dtype="fp16", high_precision="fp32")  # only fc2 in fp16
    result = trtq.quantize(outlier_mlp(), _mlp_data(32), config=config, progress=False)
    fc2 = next(n for n in result.model.graph.node if n.name == "fc2")
    assert fc2.input[0] == "h1_to_fp16" and result.report["check"]["ok"]
    assert result.report["fallback"]["dtype"] == "fp16" and result.report["fallback"]["reached"]


def test_cli_fallback_flags(tmp_path):
    model_path, calib = tmp_path / "mlp.onnx", tmp_path / "calib.npz"
    onnx.save(outlier_mlp(), str(model_path))
    np.savez(calib, **_mlp_data(32))
    out = tmp_path / "q.onnx"
    assert main(["quantize", str(model_path), "-o", str(out), "--calib-data", str(calib), "--quiet",
                 "--fallback-budget", "1", "--fallback-samples", "8"]) == 0
    report = json.loads((tmp_path / "q.trtq.json").read_text())
    assert report["fallback"]["kept_float"] == ["fc2"] and report["fallback"]["samples"] == 8
    assert report["config"]["fallback_budget"] == 1
    assert main(["quantize", str(model_path), "-o", str(out), "--calib-data", str(calib),
                 "--fallback-dtype", "fp64"]) == 2


def test_quantize_runs_the_automatic_fallback_by_default_and_no_fallback_turns_it_off(tmp_path, capsys):
    model_path, calib = tmp_path / "mlp.onnx", tmp_path / "calib.npz"
    onnx.save(outlier_mlp(), str(model_path))
    np.savez(calib, **_mlp_data(32))
    out = tmp_path / "q.onnx"
    assert main(["quantize", str(model_path), "-o", str(out), "--calib-data", str(calib), "--quiet",
                 "--max-float-macs", "60"]) == 0
    fb = json.loads((tmp_path / "q.trtq.json").read_text())["fallback"]
    assert fb["auto"] and fb["kept_float"] == ["fc2"] and fb["max_float_macs"] == 0.6
    assert "fallback (automatic" in capsys.readouterr().out
    assert main(["quantize", str(model_path), "-o", str(out), "--calib-data", str(calib), "--quiet",
                 "--no-fallback"]) == 0
    report = json.loads((tmp_path / "q.trtq.json").read_text())
    assert "fallback" not in report and report["summary"]["quantized_nodes"] == 3
    with pytest.raises(TrtqError, match="no fallback"):
        QuantConfig(fallback=False, fallback_budget=1)
