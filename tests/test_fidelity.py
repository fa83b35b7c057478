"""quantize measures its own output on calibration samples and warns, naming layers and flags, when it is low."""

from __future__ import annotations

import logging

import numpy as np
from test_sensitivity import _mlp_data, outlier_mlp

import trtq
from trtq.config import QuantConfig
from trtq.fidelity import LOW_SQNR_DB, choose_samples

import graphs


def test_low_output_sqnr_warns_with_the_noisy_layer_and_the_flags(caplog):
    with caplog.at_level(logging.WARNING, logger="trtq.fidelity"):
        report = trtq.quantize(outlier_mlp(), _mlp_data(32), precision="int8", progress=False).report
    fidelity = report["fidelity"]
    assert fidelity["samples"] == 8 and fidelity["outputs"]["y"] < LOW_SQNR_DB
    assert fidelity["noisiest"][0]["tensor"] == "h1"  # the per-tensor range spent on one outlier channel
    warning = fidelity["warning"]
    assert "h1" in warning and "--target-sqnr" in warning and "--fallback-budget" in warning
    assert [r.getMessage() for r in caplog.records] == [warning]
    # the flag it names fixes it: fc2 stays in floating point
    fixed = trtq.quantize(outlier_mlp(), _mlp_data(32), config=QuantConfig(target_sqnr=20), progress=False)
    assert fixed.report["fidelity"]["warning"] is None


def test_a_graph_that_quantizes_well_gets_figures_and_no_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="trtq.fidelity"):
        report = trtq.quantize(graphs.conv_block(), graphs.conv_data(32), progress=False).report
    assert report["fidelity"]["warning"] is None and report["fidelity"]["outputs"]["logits"] > 30
    assert caplog.records == []


def test_samples_are_chosen_by_content_not_order_or_batching():
    data = graphs.conv_data(40)["input"]
    perm = np.random.default_rng(0).permutation(40)
    a = choose_samples([{"input": data[i:i + 7]} for i in range(0, 40, 7)], 5)
    b = choose_samples([{"input": data[perm][i:i + 1]} for i in range(40)], 5)
    assert len(a) == 5 and all(np.array_equal(x["input"], y["input"]) for x, y in zip(a, b))
