"""trtq.export: torch.nn.Module -> FP32 ONNX, checked against torch on tiny seeded models."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from trtq._shapes import add_inferred_shapes
from trtq.errors import TrtqError
from trtq.exporter import torch_export
from trtq.exporter.torch_export import export

import requires

torch = requires.module("torch")
nn = torch.nn

RTOL, ATOL = 1e-4, 1e-5


def _randomize_bn(module: nn.Module) -> None:
    generator = torch.Generator().manual_seed(1)
    for bn in module.modules():
        if isinstance(bn, nn.BatchNorm2d):
            n = bn.num_features
            bn.running_mean.copy_(torch.rand(n, generator=generator) * 2 - 1)
            bn.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            bn.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            bn.bias.data.copy_(torch.rand(n, generator=generator) * 2 - 1)


class ConvBnAdd(nn.Module):
    """conv-bn-relu6 twice, with a residual add."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        return y + self.block(y)


class Depthwise(nn.Module):
    """Depthwise 3x3 + BN, pointwise 1x1 + BN."""

    def __init__(self) -> None:
        super().__init__()
        self.dw = nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False)
        self.dw_bn = nn.BatchNorm2d(6)
        self.pw = nn.Conv2d(6, 4, 1)
        self.pw_bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw_bn(self.pw(torch.relu(self.dw_bn(self.dw(x)))))


class LinearNorm(nn.Module):
    """Linear -> LayerNorm -> GELU -> Linear on a token sequence."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.norm = nn.LayerNorm(32)
        self.fc2 = nn.Linear(32, 8)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc2(nn.functional.gelu(self.norm(self.fc1(tokens))))


class KeywordInputs(nn.Module):
    """Takes keyword inputs; the mask is optional in the signature."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        scores = self.proj(features)
        if mask is not None:
            scores = scores + (1.0 - mask[..., None]) * -1e4
        return scores.softmax(dim=1)


class DataDependentGate(nn.Module):
    """Branches in Python on a tensor value: torch.export cannot trace it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.mean() > 0:
            return x * 2
        return x


class Eigenvalues(nn.Module):
    """Traces fine, but aten.linalg_eig has no ONNX translation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.eigvals(x[..., :4, :4]).real


class WithBadPart(nn.Module):
    def __init__(self, bad: nn.Module) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.ReLU(), bad))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def _seeded(cls: type[nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    model = cls()
    _randomize_bn(model)
    return model.eval()


def _run(path: Path, feeds: dict[str, torch.Tensor]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {name: t.numpy() for name, t in feeds.items()})


def _assert_matches_torch(path: Path, model: nn.Module, feeds: dict[str, torch.Tensor], args=None) -> None:
    with torch.no_grad():
        want = model(*args) if args is not None else model(**feeds)
    (got,) = _run(path, feeds)
    np.testing.assert_allclose(got, want.numpy(), rtol=RTOL, atol=ATOL)


def _dims(value: onnx.ValueInfoProto) -> list[str | int]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def _ops(path: Path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path)).graph.node]


@pytest.fixture(scope="module")
def conv_bn_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    model = _seeded(ConvBnAdd)
    model.train()
    model.block[1].eval()  # mixed flags must come back as they were
    path = tmp_path_factory.mktemp("conv") / "conv.onnx"
    example = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    export(
        model,
        (example,),
        path,
        input_names=["images"],
        output_names=["features"],
        dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}},
    )
    return model, path


def test_conv_bn_relu6_add(conv_bn_export: tuple[nn.Module, Path]) -> None:
    model, path = conv_bn_export
    assert model.training and model.stem[1].training and not model.block[1].training
    onnx_model = onnx.load(str(path))
    onnx.checker.check_model(onnx_model, full_check=True)
    assert [i.name for i in onnx_model.graph.input] == ["images"]
    assert [o.name for o in onnx_model.graph.output] == ["features"]
    assert _dims(onnx_model.graph.input[0]) == ["batch", 3, 16, 16]
    assert _dims(onnx_model.graph.output[0]) == ["batch", 8, 16, 16]
    assert sorted(_ops(path)) == ["Add", "Clip", "Clip", "Conv", "Conv"]
    assert onnx_model.opset_import[0].version == torch_export.MIN_OPSET
    model.eval()
    x = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    _assert_matches_torch(path, model, {"images": x}, args=(x,))


def test_shapes_are_inferred_and_paths_stripped(conv_bn_export: tuple[nn.Module, Path]) -> None:
    onnx_model = onnx.load(str(conv_bn_export[1]))
    shaped = {v.name for v in onnx_model.graph.value_info if v.type.tensor_type.HasField("shape")}
    intermediate = {out for node in onnx_model.graph.node for out in node.output} - {"features"}
    assert intermediate <= shaped
    keys = {p.key for node in onnx_model.graph.node for p in node.metadata_props}
    assert "pkg.torch.onnx.stack_trace" not in keys
    assert "namespace" in keys


def test_same_inputs_give_identical_bytes(conv_bn_export: tuple[nn.Module, Path], tmp_path: Path) -> None:
    model, first = conv_bn_export
    again = tmp_path / "again.onnx"
    example = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    export(
        model,
        (example,),
        again,
        input_names=["images"],
        output_names=["features"],
        dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}},
    )
    assert again.read_bytes() == first.read_bytes()


def test_depthwise_conv(tmp_path: Path) -> None:
    model = _seeded(Depthwise)
    x = torch.randn(1, 6, 10, 10, generator=torch.Generator().manual_seed(4))
    path = export(model, x, tmp_path / "dw.onnx")
    assert "BatchNormalization" not in _ops(path)
    conv = next(n for n in onnx.load(str(path)).graph.node if n.op_type == "Conv")
    assert {a.name: a.i for a in conv.attribute}.get("group") == 6
    _assert_matches_torch(path, model, {"x": x}, args=(x,))


def test_fold_batchnorm_false_keeps_batchnorm(tmp_path: Path) -> None:
    model = _seeded(Depthwise)
    x = torch.randn(1, 6, 10, 10, generator=torch.Generator().manual_seed(4))
    path = export(model, x, tmp_path / "dw_bn.onnx", fold_batchnorm=False)
    assert _ops(path).count("BatchNormalization") == 2
    _assert_matches_torch(path, model, {"x": x}, args=(x,))


def test_linear_layernorm_dynamic_axes(tmp_path: Path) -> None:
    model = _seeded(LinearNorm)
    tokens = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(5))
    path = export(
        model,
        (tokens,),
        tmp_path / "ln.onnx",
        dynamic_axes={"tokens": {0: "batch", 1: "seq"}},
    )
    onnx_model = onnx.load(str(path))
    assert _dims(onnx_model.graph.input[0]) == ["batch", "seq", 16]
    assert "LayerNormalization" in _ops(path)
    other = torch.randn(3, 9, 16, generator=torch.Generator().manual_seed(6))
    _assert_matches_torch(path, model, {"tokens": other}, args=(other,))


def test_dict_inputs_follow_dict_order_and_names(tmp_path: Path) -> None:
    model = _seeded(KeywordInputs)
    generator = torch.Generator().manual_seed(7)
    inputs = {"mask": (torch.rand(2, 4, generator=generator) > 0.3).float(), "features": torch.randn(2, 4, 8)}
    path = export(
        model,
        inputs,
        tmp_path / "kw.onnx",
        output_names=["probs"],
        dynamic_axes={"mask": {0: "batch", 1: "seq"}, "features": {0: "batch", 1: "seq"}},
    )
    onnx_model = onnx.load(str(path))
    assert [i.name for i in onnx_model.graph.input] == ["mask", "features"]
    assert [o.name for o in onnx_model.graph.output] == ["probs"]
    bigger = {"mask": torch.ones(3, 6), "features": torch.randn(3, 6, 8, generator=generator)}
    bigger["mask"][:, 4:] = 0
    _assert_matches_torch(path, model, bigger)


@pytest.mark.parametrize(
    ("bad", "where"),
    [
        (DataDependentGate, "`features.1.1` (DataDependentGate)"),
        (Eigenvalues, "`features.1.1` (Eigenvalues)"),
    ],
)
def test_export_failure_names_submodule_and_leaves_no_file(tmp_path: Path, bad: type, where: str) -> None:
    model = WithBadPart(bad()).eval()
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"previous file")
    with pytest.raises(TrtqError) as info:
        export(model, torch.randn(1, 3, 8, 8), path)
    assert where in info.value.message
    assert info.value.fix
    assert path.read_bytes() == b"previous file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.onnx"]
    assert all(not module._forward_hooks and not module._forward_pre_hooks for module in model.modules())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"model": "not a module"}, "not a torch.nn.Module"),
        ({"example_inputs": [torch.zeros(1, 6, 4, 4)]}, "example_inputs is a list"),
        ({"example_inputs": np.zeros((1, 6, 4, 4), np.float32)}, "example_inputs is a ndarray"),
        ({"example_inputs": (1, 2)}, "holds no torch.Tensor"),
        ({"example_inputs": {"image": torch.zeros(1, 6, 4, 4)}}, "keys ['image'] that Depthwise.forward"),
        ({"input_names": ["a", "b"]}, "input_names has 2 names but example_inputs has 1"),
        ({"output_names": ["o", "o"]}, "output_names repeats ['o']"),
        ({"dynamic_axes": {"images": {0: "batch"}}}, "dynamic_axes names ['images']"),
        ({"dynamic_axes": {"x": {4: "batch"}}}, "names axis 4 of a rank-4 input"),
        ({"opset": 17}, "opset 17 is not supported"),
    ],
)
def test_bad_arguments_raise_trtq_error(tmp_path: Path, kwargs: dict, message: str) -> None:
    arguments = {"model": Depthwise(), "example_inputs": torch.zeros(1, 6, 4, 4), "path": tmp_path / "m.onnx"}
    arguments.update(kwargs)
    with pytest.raises(TrtqError) as info:
        export(arguments.pop("model"), arguments.pop("example_inputs"), arguments.pop("path"), **arguments)
    assert message in info.value.message
    assert not (tmp_path / "m.onnx").exists()


def test_unwritable_paths_raise_trtq_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    for path in (tmp_path, blocker / "model.onnx"):
        with pytest.raises(TrtqError, match="directory"):
            export(Depthwise(), torch.zeros(1, 6, 4, 4), path)


def test_shape_inference_without_weights_matches_full() -> None:
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    weight = onnx.numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    shape = onnx.numpy_helper.from_array(np.array([-1, 1, 3], np.int64), "shape")
    nodes = [
        onnx.helper.make_node("MatMul", ["x", "w"], ["h"]),
        onnx.helper.make_node("Reshape", ["h", "shape"], ["y"]),
    ]
    graph = onnx.helper.make_graph(nodes, "g", [x], [y], [weight, shape])
    full = add_inferred_shapes(onnx.helper.make_model(graph))
    stripped_model = onnx.helper.make_model(graph)
    before = stripped_model.SerializeToString()
    stripped = add_inferred_shapes(stripped_model, stub_elements=0)
    assert stripped.graph.value_info == full.graph.value_info
    assert [_dims(v) for v in stripped.graph.value_info] == [["n", 3]]
    assert stripped.graph.initializer == onnx.load_from_string(before).graph.initializer


def test_import_needs_no_torch() -> None:
    code = (
        "import sys, trtq.exporter.torch_export, trtq.exporter.passes, trtq.testing; "
        "sys.exit('torch' in sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
