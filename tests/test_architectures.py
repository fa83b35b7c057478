"""A light sweep of graphs nobody here wrote: small random-weight architectures from `transformers` configs
and plain torch, exported with `trtq.export` and with torch's TorchScript exporter, quantized to INT8, FP8
and INT4: no traceback, `trtq.check` clean (no error, no warning) on what is written, a fidelity floor, and
the quantized graph runs at another batch size (and sequence length).

The fast cases use the TorchScript exporter (seconds); `trtq.export` (torch.export, tens of seconds per
model) runs on one tiny torch model here and on the rest in the `slow` cases, which CI runs too.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest

import trtq
from trtq.config import QuantConfig

import helpers

torch = pytest.importorskip("torch")
nn = torch.nn

FLOOR_DB = {"int8": 30.0, "fp8": 25.0, "int4": 20.0}  # measured lowest: 39.5 / 34.8 / 31.3 (GPT-2, ViT)
BLOCK = 32  # hidden sizes are 32: one INT4 block along K


# --- models: (module, input names, calibration data, evaluation data, dynamic axes) -------------------------

class _Hidden(nn.Module):
    """A `transformers` model as a module returning one tensor, with named inputs."""

    def __init__(self, model: nn.Module, output: str) -> None:
        super().__init__()
        self.model, self.output = model, output


class _Text(_Hidden):
    def forward(self, input_ids, attention_mask):
        return getattr(self.model(input_ids=input_ids, attention_mask=attention_mask), self.output)


class _Ids(_Hidden):
    def forward(self, input_ids):
        return getattr(self.model(input_ids=input_ids), self.output)


class _Pixels(_Hidden):
    def forward(self, pixel_values):
        return getattr(self.model(pixel_values=pixel_values), self.output)


def _tokens(n: int, seq: int, mask: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(n * 100 + seq)
    data = {"input_ids": rng.integers(0, 64, (n, seq)).astype(np.int64)}
    if mask:
        m = np.ones((n, seq), np.int64)
        m[::2, seq * 2 // 3:] = 0
        data["attention_mask"] = m
    return data


def _pixels(n: int, size: int) -> dict[str, np.ndarray]:
    return {"pixel_values": np.random.default_rng(n).standard_normal((n, 3, size, size)).astype(np.float32)}


TEXT_AXES = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}
PIXEL_AXES = {"pixel_values": {0: "batch"}}


def bert():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=32)
    return _Text(transformers.BertModel(cfg), "last_hidden_state"), _tokens(8, 12, True), \
        _tokens(3, 7, True), TEXT_AXES


def gpt2():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2, n_positions=32,
                                  bos_token_id=0, eos_token_id=0)
    return _Ids(transformers.GPT2Model(cfg), "last_hidden_state"), _tokens(8, 12, False), \
        _tokens(3, 7, False), {"input_ids": TEXT_AXES["input_ids"]}


def vit():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=64)
    return _Pixels(transformers.ViTModel(cfg), "last_hidden_state"), _pixels(8, 16), _pixels(3, 16), PIXEL_AXES


def resnet():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic")
    return _Pixels(transformers.ResNetModel(cfg), "pooler_output"), _pixels(8, 32), _pixels(3, 32), PIXEL_AXES


def convnext():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ConvNextConfig(num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], patch_size=2)
    return _Pixels(transformers.ConvNextModel(cfg), "pooler_output"), _pixels(8, 32), _pixels(3, 32), PIXEL_AXES


class _TinyCnn(nn.Module):
    """conv-BN-ReLU stem, a residual block whose branch ends in a layer-scale Mul, pooling, two Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.branch = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.Conv2d(32, 64, 1), nn.GELU(),
                                    nn.Conv2d(64, 32, 1))
        self.gamma = nn.Parameter(torch.full((1, 32, 1, 1), 0.5))
        self.head = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, pixel_values):
        x = self.stem(pixel_values)
        x = x + self.gamma * self.branch(x)
        return self.head(x.mean((2, 3)))


def tiny_cnn():
    return _TinyCnn(), _pixels(8, 16), _pixels(3, 16), PIXEL_AXES


ARCHS: dict[str, Callable] = {"bert": bert, "gpt2": gpt2, "vit": vit, "resnet": resnet, "convnext": convnext,
                              "tiny_cnn": tiny_cnn}
# INT4 quantizes MatMul/Gemm weights only: a model whose only matrix products are convolutions says so
NO_INT4 = {"resnet"}
FAST = {("bert", "torchscript"), ("resnet", "torchscript"), ("tiny_cnn", "torchscript"), ("tiny_cnn", "trtq")}
CASES = [pytest.param(a, e, marks=() if (a, e) in FAST else pytest.mark.slow, id=f"{a}-{e}")
         for a in ARCHS for e in ("torchscript", "trtq")]


def _export(module: nn.Module, data: dict[str, np.ndarray], axes: dict, exporter: str, path: Path) -> None:
    names = list(data)
    example = tuple(torch.from_numpy(data[n][:1]) for n in names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "trtq":
            trtq.export(module, example, path, input_names=names, output_names=["y"], dynamic_axes=axes)
        else:
            torch.onnx.export(module, example, str(path), dynamo=False, opset_version=17, input_names=names,
                              output_names=["y"], dynamic_axes=axes)


@pytest.mark.parametrize(("arch", "exporter"), CASES)
def test_architecture_quantizes_cleanly(arch: str, exporter: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    module, calib, evaluation, axes = ARCHS[arch]()
    path = tmp_path / f"{arch}.onnx"
    _export(module.eval(), calib, axes, exporter, path)
    fp32 = onnx.load(str(path))
    reference = helpers.run(fp32, evaluation)
    for precision in ("int8", "fp8", "int4"):
        config = QuantConfig(precision=precision, block_size=BLOCK)
        if precision == "int4" and arch in NO_INT4:
            with pytest.raises(trtq.TrtqError, match="no quantizable op for INT4"):
                trtq.quantize(path, calib, config=config, progress=False)
            continue
        out = tmp_path / f"{arch}.{precision}.onnx"
        result = trtq.quantize(path, calib, out, config=config, progress=False)
        findings = [(f.severity, f.rule, f.node) for f in trtq.check(out).findings if f.severity != "info"]
        assert findings == [], (precision, findings)
        assert result.report["summary"]["quantized_nodes"] > 0
        sqnr = helpers.sqnr_db(reference, helpers.run(onnx.load(str(out)), evaluation))
        assert sqnr > FLOOR_DB[precision], (precision, sqnr)
