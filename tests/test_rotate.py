"""rotate: Hadamard construction, exact per-head / residual-stream / online folds, and what it must skip."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtq._ort import make_session
from trtq.config import QuantConfig
from trtq.errors import TrtqError
from trtq.exporter.passes import hadamard as had
from trtq.exporter.passes.context import PassContext
from trtq.exporter.passes.rotate import (
    ONLINE_DOWN,
    ROTATION_MARKER,
    RotateOptions,
    apply_rotations,
    rotate,
    rotate_online,
)

import graphs
from helpers import assert_same_outputs, initializers

HIDDEN, HEADS, HEAD_DIM, FFN, SEQ = 64, 4, 16, 192, 6


def _ctx(seed: int = 0) -> PassContext:
    return PassContext(QuantConfig(seed=seed))


# --- Hadamard construction -------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [12, 20, 128, 12 * 128, 28, 36])
def test_hadamard_is_hadamard(n):
    h = had.hadamard(n)
    assert set(np.unique(h)) == {-1.0, 1.0}
    np.testing.assert_array_equal(h @ h.T, n * np.eye(n))


def test_hadamard_1536_is_kronecker_of_paley12_and_sylvester128():
    assert had.hadamard_base(1536) == 12
    np.testing.assert_array_equal(had.hadamard(1536), np.kron(had.hadamard(12), had.hadamard(128)))
    # Paley I (q = 11, 19) are skew-Hadamard: H + Hᵀ = 2I
    for n in (12, 20):
        np.testing.assert_array_equal(had.hadamard(n) + had.hadamard(n).T, 2 * np.eye(n))


def test_signed_rotations_are_orthogonal_and_seeded():
    r1, rec1 = had.random_rotation(384, np.random.default_rng(7))
    r2, rec2 = had.random_rotation(384, np.random.default_rng(7))
    r3, _ = had.random_rotation(384, np.random.default_rng(8))
    np.testing.assert_allclose(r1 @ r1.T, np.eye(384), atol=1e-12)
    np.testing.assert_array_equal(r1, r2)
    assert rec1 == rec2 and rec1["kind"] == "hadamard" and rec1["factors"] == [12, 32]
    assert not np.array_equal(r1, r3)
    q, rec = had.random_rotation(100, np.random.default_rng(0))  # no Hadamard of order 100 here
    assert rec == {"kind": "random_orthogonal", "size": 100}
    np.testing.assert_allclose(q @ q.T, np.eye(100), atol=1e-12)


def test_kronecker_split_and_unknown_orders():
    assert had.kronecker_split(1536) == (48, 32)
    assert had.kronecker_split(384) == (24, 16)
    assert not had.has_hadamard(100) and had.kronecker_split(100) is None
    with pytest.raises(ValueError):
        had.hadamard(100)


# --- generated graphs ------------------------------------------------------------------------------------


_init = graphs.init


def _linear(nodes, inits, rng, x, out, k, n, name, bias=True):
    inits.append(_init(f"{name}.w", rng.standard_normal((k, n)) / np.sqrt(k)))
    if not bias:
        nodes.append(helper.make_node("MatMul", [x, f"{name}.w"], [out], name=name))
        return
    inits.append(_init(f"{name}.b", rng.standard_normal(n) * 0.1))
    nodes += [helper.make_node("MatMul", [x, f"{name}.w"], [f"{name}.mm"], name=name),
              helper.make_node("Add", [f"{name}.mm", f"{name}.b"], [out], name=f"{name}.bias")]


def _attention(nodes, inits, rng, x, out, prefix, bias=True):
    """Q/K/V -> per-head Reshape/Transpose -> softmax(QKᵀ·s) -> P·V -> Transpose/Reshape -> output proj."""
    def t(name: str) -> str:
        return f"{prefix}.{name}"

    def node(op, ins, outs, name, **attrs):
        return helper.make_node(op, [t(i) for i in ins], [t(o) for o in outs], name=t(name), **attrs)

    inits += [numpy_helper.from_array(np.array([0, 0, HEADS, HEAD_DIM], np.int64), t("heads")),
              numpy_helper.from_array(np.array([0, 0, HEADS * HEAD_DIM], np.int64), t("merged")),
              _init(t("scale"), np.array(HEAD_DIM**-0.5))]
    for p in "qkv":
        _linear(nodes, inits, rng, x, t(p), HIDDEN, HIDDEN, t(f"{p}_proj"), bias)
        nodes.append(node("Reshape", [p, "heads"], [f"{p}_h"], f"{p}_split"))
    nodes += [
        node("Transpose", ["q_h"], ["qt"], "q_t", perm=[0, 2, 1, 3]),
        node("Transpose", ["k_h"], ["kt"], "k_t", perm=[0, 2, 3, 1]),
        node("Transpose", ["v_h"], ["vt"], "v_t", perm=[0, 2, 1, 3]),
        node("MatMul", ["qt", "kt"], ["s"], "scores"),
        node("Mul", ["s", "scale"], ["ss"], "scaled"),
        node("Softmax", ["ss"], ["p"], "softmax", axis=-1),
        node("MatMul", ["p", "vt"], ["c"], "context"),
        node("Transpose", ["c"], ["ct"], "c_t", perm=[0, 2, 1, 3]),
        node("Reshape", ["ct", "merged"], ["cm"], "merge"),
    ]
    _linear(nodes, inits, rng, t("cm"), out, HIDDEN, HIDDEN, t("o_proj"), bias)


def _gelu(nodes, inits, x, out, prefix):
    inits += [_init(f"{prefix}.sqrt2", np.array(np.sqrt(2.0))), _init(f"{prefix}.one", np.array(1.0)),
              _init(f"{prefix}.half", np.array(0.5))]
    nodes += [helper.make_node("Div", [x, f"{prefix}.sqrt2"], [f"{prefix}.d"]),
              helper.make_node("Erf", [f"{prefix}.d"], [f"{prefix}.e"]),
              helper.make_node("Add", [f"{prefix}.e", f"{prefix}.one"], [f"{prefix}.a"]),
              helper.make_node("Mul", [f"{prefix}.half", f"{prefix}.a"], [f"{prefix}.m"]),
              helper.make_node("Mul", [x, f"{prefix}.m"], [out], name=f"{prefix}.gelu")]


def _layernorm(nodes, inits, rng, x, out, name):
    inits += [_init(f"{name}.g", rng.uniform(0.5, 1.5, HIDDEN)),
              _init(f"{name}.b", rng.standard_normal(HIDDEN) * 0.1)]
    nodes.append(helper.make_node("LayerNormalization", [x, f"{name}.g", f"{name}.b"], [out], axis=-1,
                                  name=name))


def _model(nodes, inits, inputs, outputs, opset=18) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model, full_check=True)
    return model


def post_ln_layer(seed: int = 0, share_output_weight: bool = False) -> onnx.ModelProto:
    """One post-LayerNorm BERT layer: attention -> +x -> LN -> up -> GELU -> down -> + -> LN."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    _attention(nodes, inits, rng, "x", "attn", "l0")
    nodes.append(helper.make_node("Add", ["attn", "x"], ["r1"], name="residual1"))
    _layernorm(nodes, inits, rng, "r1", "h1", "ln1")
    _linear(nodes, inits, rng, "h1", "up", HIDDEN, FFN, "up_proj")
    _gelu(nodes, inits, "up", "act", "ffn")
    _linear(nodes, inits, rng, "act", "down", FFN, HIDDEN, "down_proj")
    nodes.append(helper.make_node("Add", ["down", "h1"], ["r2"], name="residual2"))
    _layernorm(nodes, inits, rng, "r2", "y", "ln2")
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", SEQ, HIDDEN])]
    if share_output_weight:  # the output projection's and down projection's weights also feed another node
        nodes += [helper.make_node("MatMul", ["x", "l0.o_proj.w"], ["side"], name="side_reader"),
                  helper.make_node("MatMul", ["act", "down_proj.w"], ["side2"], name="side_reader2")]
        outputs += [helper.make_tensor_value_info("side", TensorProto.FLOAT, ["batch", SEQ, HIDDEN]),
                    helper.make_tensor_value_info("side2", TensorProto.FLOAT, ["batch", SEQ, HIDDEN])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", SEQ, HIDDEN])]
    return _model(nodes, inits, inputs, outputs)


def _rmsnorm(nodes, inits, rng, x, out, name, as_op):
    inits.append(_init(f"{name}.g", rng.uniform(0.5, 1.5, HIDDEN)))
    if as_op:
        nodes.append(helper.make_node("RMSNormalization", [x, f"{name}.g"], [out], axis=-1, epsilon=1e-6,
                                      name=name))
        return
    inits += [_init(f"{name}.two", np.array(2.0)), _init(f"{name}.eps", np.array(1e-6))]
    axes = numpy_helper.from_array(np.array([-1], np.int64), f"{name}.axes")
    inits.append(axes)
    nodes += [helper.make_node("Pow", [x, f"{name}.two"], [f"{name}.sq"]),
              helper.make_node("ReduceMean", [f"{name}.sq", f"{name}.axes"], [f"{name}.ms"], name=name),
              helper.make_node("Add", [f"{name}.ms", f"{name}.eps"], [f"{name}.mse"]),
              helper.make_node("Sqrt", [f"{name}.mse"], [f"{name}.rms"]),
              helper.make_node("Reciprocal", [f"{name}.rms"], [f"{name}.inv"]),
              helper.make_node("Mul", [x, f"{name}.inv"], [f"{name}.n"]),
              helper.make_node("Mul", [f"{name}.n", f"{name}.g"], [out])]


def pre_rms_model(seed: int = 0, as_op: bool = False, lm_head: bool = True) -> onnx.ModelProto:
    """Llama-like: embedding -> [RMSNorm -> attention -> +] -> [RMSNorm -> up -> SiLU -> down -> +]
    -> RMSNorm -> lm_head."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], [_init("embed", rng.standard_normal((50, HIDDEN)))]
    nodes.append(helper.make_node("Gather", ["embed", "ids"], ["h0"], axis=0, name="embedding"))
    _rmsnorm(nodes, inits, rng, "h0", "n1", "norm1", as_op)
    _attention(nodes, inits, rng, "n1", "attn", "l0", bias=False)
    nodes.append(helper.make_node("Add", ["h0", "attn"], ["h1"], name="residual1"))
    _rmsnorm(nodes, inits, rng, "h1", "n2", "norm2", as_op)
    _linear(nodes, inits, rng, "n2", "up", HIDDEN, FFN, "up_proj", bias=False)
    nodes += [helper.make_node("Sigmoid", ["up"], ["sig"]),
              helper.make_node("Mul", ["up", "sig"], ["act"], name="silu")]
    _linear(nodes, inits, rng, "act", "down", FFN, HIDDEN, "down_proj", bias=True)
    nodes.append(helper.make_node("Add", ["h1", "down"], ["h2"], name="residual2"))
    _rmsnorm(nodes, inits, rng, "h2", "n3" if lm_head else "y", "norm_final", as_op)
    shape = ["batch", SEQ, 50 if lm_head else HIDDEN]
    if lm_head:
        _linear(nodes, inits, rng, "n3", "y", HIDDEN, 50, "lm_head", bias=False)
    inputs = [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", SEQ])]
    return _model(nodes, inits, inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
                  opset=23 if as_op else 18)


def _feeds(model: onnx.ModelProto, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    if model.graph.input[0].name == "ids":
        return {"ids": rng.integers(0, 50, (3, SEQ))}
    return {"x": rng.standard_normal((3, SEQ, HIDDEN)).astype(np.float32)}


def _assert_same_outputs(before: onnx.ModelProto, after: onnx.ModelProto) -> None:
    assert_same_outputs(before, after, _feeds(before), rtol=1e-4, max_relative_norm=1e-5)


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


# --- value/output per head; LayerNorm streams skipped ----------------------------------------------------


def test_value_output_fold_is_exact_and_per_head():
    model = post_ln_layer()
    original = model.SerializeToString()
    result = rotate(model, _ctx())
    assert model.SerializeToString() == original  # the input model is not modified
    onnx.checker.check_model(result.model, full_check=True)
    assert sorted(_ops(result.model)) == sorted(_ops(model))  # offline: no node added
    (entry,) = result.report["value_output"]
    assert (entry["value"], entry["output"]) == ("l0.v_proj", "l0.o_proj")
    assert (entry["heads"], entry["head_dim"]) == (HEADS, HEAD_DIM)
    assert entry["rotation"] == "hadamard" and len(entry["signs"]) == HEADS * HEAD_DIM // 4
    before, after = initializers(model), initializers(result.model)
    for name in ("l0.v_proj.w", "l0.v_proj.b", "l0.o_proj.w"):
        assert not np.allclose(before[name], after[name])
    # one orthogonal block per head: each head's columns of Wv keep their row norms
    wv, wv2 = (w.reshape(HIDDEN, HEADS, HEAD_DIM) for w in (before["l0.v_proj.w"], after["l0.v_proj.w"]))
    np.testing.assert_allclose(np.linalg.norm(wv2, axis=2), np.linalg.norm(wv, axis=2), rtol=1e-5)
    for name in ("l0.q_proj.w", "l0.k_proj.w", "up_proj.w", "down_proj.w", "l0.o_proj.b"):
        np.testing.assert_array_equal(before[name], after[name])
    assert result.report["added_macs_per_token"] == 0 and result.report["seed"] == 0
    _assert_same_outputs(model, result.model)


def test_post_layernorm_residual_stream_is_skipped_with_reason():
    report = rotate(post_ln_layer(), _ctx()).report
    assert report["residual_stream"] == []
    skipped = [s for s in report["skipped"] if s["what"] == "residual_stream"]
    assert [s["node"] for s in skipped] == ["ln1", "ln2"]
    assert all("post-LayerNorm" in s["reason"] and "does not commute" in s["reason"] for s in skipped)


def test_shared_weights_are_left_alone():
    model = post_ln_layer(share_output_weight=True)
    result = apply_rotations(model, _ctx(), ONLINE_DOWN)
    assert result.report["value_output"] == [] and result.report["online"] == []
    reasons = {s["what"]: s["reason"] for s in result.report["skipped"] if s["what"] != "residual_stream"}
    assert "'l0.o_proj.w' is shared with ['side_reader']" in reasons["value_output"]
    assert "'down_proj.w' is shared with ['side_reader2']" in reasons["online"]
    assert result.model is model  # nothing changed


def test_same_seed_same_graph_other_seed_other_signs():
    model = post_ln_layer()
    a, b, c = (rotate_online(model, _ctx(seed)).model for seed in (3, 3, 4))
    assert a.SerializeToString() == b.SerializeToString()
    assert not np.array_equal(initializers(a)["l0.v_proj.w"], initializers(c)["l0.v_proj.w"])


# --- online Hadamard before the FFN down projection ------------------------------------------------------


def test_online_down_projection_hadamard_is_exact():
    model = post_ln_layer()
    result = apply_rotations(model, _ctx(), ONLINE_DOWN)
    onnx.checker.check_model(result.model, full_check=True)
    (entry,) = result.report["online"]
    assert entry["kind"] == "ffn_down" and entry["consumers"] == ["down_proj"] and entry["size"] == FFN
    assert entry["mode"] == "kronecker" and entry["factors"] == [16, 12]
    assert entry["added_macs_per_token"] == FFN * (16 + 12)
    macs = 4 * HIDDEN * HIDDEN + 2 * HIDDEN * FFN
    assert result.report["model_macs_per_token"] == macs
    assert result.report["added_macs_percent"] == pytest.approx(100 * FFN * 28 / macs, abs=1e-3)
    added = [n for n in result.model.graph.node if n.name.startswith(ROTATION_MARKER)]
    assert sorted(n.op_type for n in added) == ["MatMul", "MatMul", "Reshape", "Reshape", "Shape"]
    assert sorted(n.name for n in added) == sorted(entry["nodes"])
    down = next(n for n in result.model.graph.node if n.name == "down_proj")
    assert down.input[0] == next(n for n in added if n.name.endswith("reshape_out")).output[0]
    _assert_same_outputs(model, result.model)


def test_online_small_sizes_use_one_dense_matmul():
    model = post_ln_layer()
    result = apply_rotations(model, _ctx(), RotateOptions(value_output=False, online=("ffn_down", "norm"),
                                                          dense_max=FFN))
    entries = {e["consumers"][0]: e for e in result.report["online"]}
    assert set(entries) == {"up_proj", "down_proj"}  # ln1 feeds up_proj; ln2 is the graph output
    assert entries["down_proj"]["mode"] == "dense"
    assert entries["down_proj"]["added_macs_per_token"] == FFN * FFN
    assert entries["up_proj"]["kind"] == "norm" and entries["up_proj"]["factors"] == [HIDDEN]
    assert result.report["value_output"] == []
    _assert_same_outputs(model, result.model)


def test_rotate_online_also_rotates_layernorm_outputs():
    model = post_ln_layer()
    result = rotate_online(model, _ctx())
    kinds = {e["consumers"][0]: (e["kind"], e["mode"]) for e in result.report["online"]}
    assert kinds == {"up_proj": ("norm", "dense"), "down_proj": ("ffn_down", "kronecker")}
    assert result.report["added_macs_per_token"] == HIDDEN * HIDDEN + FFN * (16 + 12)
    assert len(result.report["value_output"]) == 1
    _assert_same_outputs(model, result.model)


def test_unknown_online_kind_is_a_user_error():
    with pytest.raises(TrtqError, match="unknown online rotation kind"):
        RotateOptions(online=("everything",))


# --- residual stream of RMSNorm pre-norm blocks ----------------------------------------------------------


@pytest.mark.parametrize("as_op", [False, True], ids=["decomposed", "RMSNormalization"])
def test_rmsnorm_prenorm_residual_stream_fold_is_exact(as_op):
    model = pre_rms_model(as_op=as_op)
    result = rotate(model, _ctx())
    onnx.checker.check_model(result.model, full_check=True)
    (stream,) = result.report["residual_stream"]
    assert stream["hidden"] == HIDDEN and stream["rotation"]["kind"] == "hadamard"
    assert stream["rotation"]["factors"] == [HIDDEN]
    assert stream["norms"] == ["norm1", "norm2", "norm_final"]
    assert sorted(stream["writers"]) == ["down_proj", "embedding", "l0.o_proj"]
    assert sorted(stream["readers"]) == ["l0.k_proj", "l0.q_proj", "l0.v_proj", "lm_head", "up_proj"]
    assert len(result.report["value_output"]) == 1
    before, after = initializers(model), initializers(result.model)
    # E' = E·Q: every embedding row keeps its norm, but the rows change
    norms = [np.linalg.norm(w["embed"], axis=1) for w in (before, after)]
    np.testing.assert_allclose(norms[1], norms[0], rtol=1e-5)
    assert not np.allclose(after["embed"], before["embed"])
    if not as_op:  # γ now lives in the readers: the Mul by γ is gone
        assert _ops(result.model).count("Mul") == _ops(model).count("Mul") - 3
    _assert_same_outputs(model, result.model)
    online = rotate_online(model, _ctx())
    assert [e["consumers"] for e in online.report["online"]] == [["down_proj"]]
    _assert_same_outputs(model, online.model)


def test_rmsnorm_stream_reaching_a_graph_output_is_skipped():
    model = pre_rms_model(lm_head=False)
    result = rotate(model, _ctx())
    assert result.report["residual_stream"] == []
    (skip, *_) = [s for s in result.report["skipped"] if s["what"] == "residual_stream"]
    assert "graph output" in skip["reason"]
    _assert_same_outputs(model, result.model)  # the value/output fold still applies


def test_quantize_runs_the_registered_rotate_pass():
    import trtq

    model = post_ln_layer()
    calib = {"x": np.random.default_rng(2).standard_normal((8, SEQ, HIDDEN)).astype(np.float32)}
    result = trtq.quantize(model, calib, config=QuantConfig(passes=("rotate",), seed=5), progress=False)
    report = result.report["passes"]["rotate"]
    assert report["seed"] == 5 and len(report["value_output"]) == 1 and "rotate" in result.pass_seconds


# --- a real model ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_minilm_rotations_are_exact(minilm_fp32):
    from trtq.testing.data import sentences, token_batch

    model, tokenizer = minilm_fp32
    feeds = token_batch(tokenizer, sentences("eval", 8), 128)
    result = rotate_online(model, _ctx())
    report = result.report
    assert [(e["heads"], e["head_dim"]) for e in report["value_output"]] == [(12, 32)] * 6
    assert [e["kind"] for e in report["online"]].count("ffn_down") == 6
    assert {e["factors"][0] * e["factors"][1] for e in report["online"]} == {384, 1536}
    skipped = [s for s in report["skipped"] if s["what"] == "residual_stream"]
    assert len(skipped) == 13 and all("post-LayerNorm" in s["reason"] for s in skipped)
    want = make_session(model).run(None, feeds)[0]
    got = make_session(result.model).run(None, feeds)[0]
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-5
