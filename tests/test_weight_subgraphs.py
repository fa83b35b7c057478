"""Weights behind Transpose / Identity nodes are folded into initializers before planning (tied, shared,
stored-transposed weights), exactly, and shared when equal."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

import trtq
from trtq.exporter.placement import plan_quantization
from trtq.exporter.weight_subgraphs import fold_weight_subgraphs

import graphs
import helpers


def tied_mlp() -> onnx.ModelProto:
    """x·W -> ·V (through two Identity nodes) -> ·W -> ·Wᵀ -> ·W -> ·Wᵀ: W [128, 256] is also read through
    two Transpose nodes, as a tied or twice-applied layer exports."""
    rng = np.random.default_rng(0)
    inits = [graphs.init("W", rng.standard_normal((128, 256)) * 0.1),
             graphs.init("V", rng.standard_normal((256, 128)) * 0.1)]
    nodes = [helper.make_node("Transpose", ["W"], ["Wt1"], name="t1", perm=[1, 0]),
             helper.make_node("MatMul", ["x", "W"], ["h1"], name="mm1"),
             helper.make_node("Identity", ["V"], ["V1"], name="dedup"),
             helper.make_node("Identity", ["V1"], ["V2"], name="dedup2"),
             helper.make_node("MatMul", ["h1", "V2"], ["h2"], name="mm2"),
             helper.make_node("MatMul", ["h2", "W"], ["h3"], name="mm3"),
             helper.make_node("Transpose", ["W"], ["Wt2"], name="t2", perm=[1, 0]),
             helper.make_node("MatMul", ["h3", "Wt2"], ["h4"], name="mm4"),
             helper.make_node("MatMul", ["h4", "W"], ["h5"], name="mm5"),
             helper.make_node("Transpose", ["W"], ["Wt3"], name="t3", perm=[1, 0]),
             helper.make_node("MatMul", ["h5", "Wt3"], ["y"], name="mm6")]
    return graphs.single_io_model(nodes, inits, ["batch", 128], ["batch", 128], opset=17)


def test_weights_behind_transpose_and_identity_become_shared_initializers():
    model = tied_mlp()
    before = model.SerializeToString()
    folded_model, folded = fold_weight_subgraphs(model)
    assert model.SerializeToString() == before  # the input is never modified
    assert folded == ["V2", "Wt2", "Wt3"]
    assert {n.op_type for n in folded_model.graph.node} == {"MatMul"}
    readers = {n.name: n.input[1] for n in folded_model.graph.node}
    assert readers["mm4"] == readers["mm6"] == "Wt2"  # equal values: one initializer
    assert readers["mm2"] == "V"  # equal to an initializer: that one
    x = {"x": np.random.default_rng(1).standard_normal((4, 128)).astype(np.float32)}
    assert np.array_equal(helpers.run(model, x), helpers.run(folded_model, x))
    int8 = plan_quantization(folded_model, "int8")
    assert set(int8.activations) == {"x", "h1", "h2", "h3", "h4", "h5"}
    assert {(s.tensor, s.axis) for s in int8.weights} == {("W", 1), ("V", 1), ("Wt2", 1)}
    assert fold_weight_subgraphs(folded_model)[0] is folded_model  # nothing left to fold


def test_quantize_treats_folded_subgraphs_as_weights():
    model = tied_mlp()
    data = {"x": np.random.default_rng(2).standard_normal((16, 128)).astype(np.float32)}
    int4 = trtq.quantize(model, None, precision="int4", progress=False)
    # before: 3 (mm1, mm3, mm5), the rest "activation x activation"
    assert int4.report["summary"]["quantized_nodes"] == 6
    assert int4.report["folded_weight_subgraphs"] == ["V2", "Wt2", "Wt3"]
    int8 = trtq.quantize(model, data, precision="int8", progress=False)
    weights = {n for n, t in int8.report["tensors"].items() if t["kind"] == "weight"}
    assert weights == {"W", "V", "Wt2"}
    assert helpers.sqnr_db(helpers.run(model, data), helpers.run(int8.model, data)) > 25
