"""Passes chained in their real order, and the default passes, keep the FP32 outputs within float32 rounding.

Each pass is tested alone in its own module; here they run one after another through `run_passes`, as
`trtq.quantize` runs them, on a CNN and on a post-LayerNorm transformer block. `bias_correction` changes
outputs on purpose (it folds the expected weight-quantization shift into biases): with it, only biases
may differ from the folding passes' output.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from trtq.exporter.passes.registry import default_passes, registered_passes, resolve_passes, run_passes

import graphs
import helpers

FOLDING = [name for name, p in registered_passes().items() if not p.reads_plan]

CASES = {
    "cnn": (graphs.conv_block, lambda n, seed: graphs.conv_data(n, seed=seed)),
    "transformer": (graphs.bert_block, lambda n, seed: graphs.bert_data(n, seed=seed)),
}


def _chain(model: onnx.ModelProto, names: list[str], calib: dict[str, np.ndarray], precision: str = "int8"):
    ordered = resolve_passes(names, model, precision)
    return run_passes(model, ordered, helpers.pass_context(model, calib, precision))


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_folding_pass_in_order_keeps_fp32_outputs(case: str) -> None:
    build, data = CASES[case]
    model, calib, feeds = build(), data(16, 1), data(8, 2)
    run = _chain(model, FOLDING, calib)
    assert list(run.reports) == [n for n in resolve_passes(FOLDING, model, "int8")]
    helpers.assert_same_outputs(model, run.model, feeds)
    with_bias = _chain(model, [*FOLDING, "bias_correction"], calib)
    assert with_bias.reports["bias_correction"]["layers"]
    assert _changed_are_biases(run.model, with_bias.model)


def _changed_are_biases(before: onnx.ModelProto, after: onnx.ModelProto) -> bool:
    """Every initializer of `after` that is new or differs from `before` is only read as a bias: input 2 of a
    Conv/Gemm, or the constant of an Add."""
    old, new = helpers.initializers(before), helpers.initializers(after)
    changed = {n for n, v in new.items() if n not in old or not np.array_equal(v, old[n])}
    reads = [(node.op_type, i, name) for node in after.graph.node for i, name in enumerate(node.input)]
    return bool(changed) and all(op == "Add" or (op in ("Conv", "Gemm") and i == 2)
                                 for op, i, name in reads if name in changed)


@pytest.mark.parametrize(("case", "precision"), [("cnn", "int8"), ("cnn", "fp8"), ("transformer", "int8")])
def test_default_passes_keep_fp32_outputs(case: str, precision: str) -> None:
    build, data = CASES[case]
    model, calib, feeds = build(), data(16, 1), data(8, 2)
    names = default_passes(model, precision)
    assert names
    run = _chain(model, list(names), calib, precision)
    folding = [n for n in names if not registered_passes()[n].reads_plan]
    if folding == list(names):
        helpers.assert_same_outputs(model, run.model, feeds)
    else:  # bias_correction only moves biases: every other initializer is bit-identical
        assert _changed_are_biases(model, run.model)
