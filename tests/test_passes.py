"""The pass contract: registration, typed context and options, input left alone, failures named."""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import onnx
import pytest
from onnx import helper

import trtq
from trtq.cli import build_parser
from trtq.config import QuantConfig
from trtq.errors import TrtqError
from trtq.exporter.passes import PassContext, PassResult, registered_passes, registry, run_passes
from trtq.exporter.passes.registry import GraphPass, parse_pass_option, resolve_passes

import graphs
from helpers import pass_context

PASSES = list(registered_passes())


def conv_bn_block() -> onnx.ModelProto:
    """conv_block with a BatchNormalization after its first convolution (so fold_batchnorm has work)."""
    model = graphs.conv_block()
    first = model.graph.node[0]
    c = 16
    rs = np.random.RandomState(0)
    params = {"bn_scale": 1 + 0.1 * rs.randn(c), "bn_bias": 0.1 * rs.randn(c), "bn_mean": 0.1 * rs.randn(c),
              "bn_var": 1 + 0.1 * rs.rand(c)}
    model.graph.initializer.extend(graphs.init(k, v) for k, v in params.items())
    out = first.output[0]
    first.output[0] = "pre_bn"
    bn = helper.make_node("BatchNormalization", ["pre_bn", *params], [out], name="bn")
    model.graph.node.insert(1, bn)
    onnx.checker.check_model(model)
    return model


CASES = {
    "cnn": (conv_bn_block, lambda: graphs.conv_data(8)),
    "transformer": (graphs.bert_block, lambda: graphs.bert_data(16)),
}


@pytest.mark.parametrize("family", list(CASES))
@pytest.mark.parametrize("name", PASSES)
def test_a_pass_never_modifies_its_input(name: str, family: str) -> None:
    build, data = CASES[family]
    model = build()
    before = model.SerializeToString()
    result = registered_passes()[name](model, pass_context(model, data()))
    assert isinstance(result, PassResult)
    assert model.SerializeToString() == before


def test_registry_names_are_module_names_and_contexts_typed() -> None:
    expected_order = ["fold_batchnorm", "cle", "rotate", "rotate_online", "smoothquant", "repq", "bias_correction"]
    assert expected_order == PASSES
    for name, graph_pass in registered_passes().items():
        module = graph_pass.fn.__module__.rsplit(".", 1)[-1]
        assert module == name or (name, module) == ("rotate_online", "rotate")
        params = list(inspect.signature(graph_pass.fn).parameters.values())
        assert params[1].annotation in ("PassContext", PassContext)
        if graph_pass.options is not None:
            assert dataclasses.is_dataclass(graph_pass.options)
            assert params[2].annotation == type(graph_pass.options).__name__


def test_runner_names_the_failing_pass_and_those_already_run(monkeypatch) -> None:
    def explode(model, ctx):
        raise ValueError("boom")

    monkeypatch.setitem(registry._REGISTRY, "explode", GraphPass("explode", explode, 50, None, "fails"))
    model = conv_bn_block()
    with pytest.raises(TrtqError, match=r"the explode pass \(after fold_batchnorm, cle\) failed: ValueError: boom"):
        run_passes(model, ["fold_batchnorm", "cle", "explode"], PassContext())


def test_options_reach_the_pass_from_config_and_the_cli(conv_model, conv_calib) -> None:
    assert parse_pass_option("smoothquant.alphas=0.5,0.6") == ("smoothquant", "alphas", (0.5, 0.6))
    assert parse_pass_option("repq.shift=false") == ("repq", "shift", False)
    for bad, match in (("cle.sweeps=3", "unknown option"), ("cle.relu6", "NAME.FIELD=VALUE"),
                       ("cle.max_sweeps=many", "not a int"), ("bias_correction.x=1", "takes no options")):
        with pytest.raises(TrtqError, match=match):
            parse_pass_option(bad)
    with pytest.raises(TrtqError, match="not a CLE mode"):
        QuantConfig(pass_options={"cle": {"relu6": "clip"}})
    config = QuantConfig(passes=("cle",), pass_options={"cle": {"relu6": "skip"}})
    assert QuantConfig.from_dict(config.to_dict()) == config
    report = trtq.quantize(conv_model, conv_calib, config=config, progress=False).report
    assert report["passes"]["cle"]["relu6"].startswith("skipped")


def test_passes_help_lists_every_registered_pass() -> None:
    quantize = next(a for a in build_parser()._subparsers._group_actions[0].choices.items() if a[0] == "quantize")[1]
    text = quantize.format_help().replace("\n", " ")
    assert all(name in text for name in PASSES) and "biascorr" in text


def test_biascorr_alias_and_placement_decided_once(conv_model, conv_calib, monkeypatch) -> None:
    assert resolve_passes(["biascorr", "cle"], onnx.ModelProto(), "int8") == ("cle", "bias_correction")
    from trtq.exporter import placement

    calls = []
    real = placement.plan_quantization
    monkeypatch.setattr("trtq.pipeline.plan_quantization", lambda *a, **k: calls.append(1) or real(*a, **k))
    trtq.quantize(conv_model, conv_calib, config=QuantConfig(passes=("biascorr",)), progress=False)
    assert len(calls) == 1


def test_weight_only_precision_runs_passes_without_data() -> None:
    model = graphs.bert_block()
    ctx = PassContext(QuantConfig(precision="int4"))
    run = run_passes(model, resolve_passes(["smoothquant", "repq", "bias_correction"], model, "int4"), ctx)
    assert run.model is model and run.plan is None
    assert all(r["skipped"] for r in run.reports.values())  # each says why it left the graph alone
