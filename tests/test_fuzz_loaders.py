"""Bounded fuzz of every loader: damaged bytes give a clear `TrtqError` or a success, never another
exception, and never a modified input.

Each loader gets real bytes of its format (a model, its external data, an .npz, an .npy, a PNG, a
text and a JSON Lines file, a preprocessing JSON, a config JSON) damaged by hypothesis-drawn mutations
(byte flips, truncation, insertions, duplicated ranges), seeded (`derandomize`), so CI runs the same
inputs every time. `EXAMPLES` inputs per loader (TRTQ_FUZZ_EXAMPLES overrides it); the counts are
printed (`pytest -s`).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trtq import _io
from trtq.calibrators.data import open_batches
from trtq.calibrators.images import ImageFolder, load_preprocess
from trtq.calibrators.text import TextSource
from trtq.config import QuantConfig
from trtq.errors import TrtqError

import graphs

EXAMPLES = int(os.environ.get("TRTQ_FUZZ_EXAMPLES", "50"))  # per loader; raise it for a deeper local run
TRIED: dict[str, int] = {}

_MUTATION = st.tuples(st.sampled_from(["flip", "truncate", "insert", "duplicate", "zero"]),
                      st.floats(0.0, 1.0), st.floats(0.0, 1.0), st.binary(min_size=1, max_size=16))
_FUZZ = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                 suppress_health_check=list(HealthCheck))


def mutate(data: bytes, mutations: list[tuple[str, float, float, bytes]]) -> bytes:
    buf = bytearray(data)
    for kind, a, b, extra in mutations:
        i = min(int(a * len(buf)), max(len(buf) - 1, 0))
        j = min(len(buf), i + 1 + int(b * 64))
        if kind == "flip" and buf:
            for k, byte in enumerate(extra):
                if i + k < len(buf):
                    buf[i + k] ^= byte or 0xFF
        elif kind == "truncate":
            del buf[i:]
        elif kind == "insert":
            buf[i:i] = extra
        elif kind == "duplicate":
            buf[i:i] = buf[i:j]
        elif kind == "zero":
            buf[i:j] = bytes(j - i)
    return bytes(buf)


def fuzz(loader: str, path: Path, seed: bytes, use: Callable[[Path], object]):
    """A hypothesis test: `path` holds `seed` mutated; `use(path)` succeeds or raises TrtqError; bytes kept."""

    @_FUZZ
    @given(st.lists(_MUTATION, min_size=1, max_size=4))
    def run(mutations):
        TRIED[loader] = TRIED.get(loader, 0) + 1
        data = mutate(seed, mutations)
        path.write_bytes(data)
        try:
            use(path)
        except TrtqError as exc:
            assert str(exc) and exc.fix, exc
        assert path.read_bytes() == data, f"{loader}: the input was modified"

    run()
    print(f"fuzz {loader}: {TRIED[loader]} inputs", file=sys.stderr)


@pytest.fixture
def conv(tmp_path: Path) -> onnx.ModelProto:
    return graphs.conv_block()


def _drain(source: object, model: onnx.ModelProto) -> None:
    stream = open_batches(source, model)
    try:
        for _ in stream:
            pass
    finally:
        stream.close()


def test_fuzz_model(tmp_path, conv):
    seed = conv.SerializeToString()
    fuzz("model", tmp_path / "m.onnx", seed, _io.load_model)


def test_fuzz_external_data(tmp_path, conv):
    onnx.save(conv, str(tmp_path / "m.onnx"), save_as_external_data=True, location="m.onnx.data",
              size_threshold=0)
    seed = (tmp_path / "m.onnx.data").read_bytes()
    model_bytes = (tmp_path / "m.onnx").read_bytes()

    def use(path: Path) -> None:
        _io.load_model(tmp_path / "m.onnx")
        assert (tmp_path / "m.onnx").read_bytes() == model_bytes

    fuzz("external data", tmp_path / "m.onnx.data", seed, use)


def test_fuzz_npz(tmp_path, conv):
    np.savez(tmp_path / "seed.npz", **graphs.conv_data(3))
    fuzz("npz", tmp_path / "c.npz", (tmp_path / "seed.npz").read_bytes(), lambda p: _drain(p, conv))


def test_fuzz_npz_compressed(tmp_path, conv):
    np.savez_compressed(tmp_path / "seed.npz", **graphs.conv_data(3))
    fuzz("npz (compressed)", tmp_path / "c.npz", (tmp_path / "seed.npz").read_bytes(), lambda p: _drain(p, conv))


def test_fuzz_npy(tmp_path, conv):
    np.save(tmp_path / "seed.npy", graphs.conv_data(3)["input"])
    fuzz("npy", tmp_path / "c.npy", (tmp_path / "seed.npy").read_bytes(), lambda p: _drain(p, conv))


def test_fuzz_image(tmp_path, conv):
    from PIL import Image

    pixels = np.random.RandomState(0).randint(0, 256, (16, 20, 3)).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "seed.png")
    (tmp_path / "images").mkdir()
    fuzz("image", tmp_path / "images" / "a.png", (tmp_path / "seed.png").read_bytes(),
         lambda p: _drain(ImageFolder(p.parent, {"resize": 12, "crop": 12}), conv))


def _tokenizer(texts: list[str]) -> dict[str, np.ndarray]:
    ids = np.zeros((len(texts), 8), np.int64)
    for i, text in enumerate(texts):
        codes = [ord(c) % 100 for c in text[:8]]
        ids[i, : len(codes)] = codes
    return {"ids": ids}


def _embedding_model() -> onnx.ModelProto:
    from onnx import TensorProto, helper

    table = graphs.init("table", np.random.RandomState(0).randn(100, 16))
    weight = graphs.init("w", np.random.RandomState(1).randn(16, 16))
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"], name="embed"),
             helper.make_node("MatMul", ["e", "w"], ["y"], name="proj")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["b", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 8, 16])], [table, weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_fuzz_text(tmp_path, suffix):
    model = _embedding_model()
    lines = [f"calibration sentence number {i}, with ünïcode" for i in range(6)]
    seed = ("\n".join(json.dumps({"text": t}) if suffix == ".jsonl" else t for t in lines) + "\n").encode()
    field = {"field": "text"} if suffix == ".jsonl" else {}
    fuzz(f"text {suffix}", tmp_path / f"t{suffix}", seed,
         lambda p: _drain(TextSource(p, _tokenizer, max_length=8, **field), model))


def test_fuzz_preprocess_json(tmp_path):
    seed = json.dumps({"resize": 256, "crop": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                       "layout": "NCHW", "channel_order": "RGB"}).encode()
    fuzz("preprocess JSON", tmp_path / "pre.json", seed, load_preprocess)


def _load_config(path: Path) -> QuantConfig:
    try:
        data = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise TrtqError(f"{path} is not JSON.", "write the dict of QuantConfig.to_dict().") from exc
    return QuantConfig.from_dict(data)


def test_fuzz_config_json(tmp_path):
    seed = json.dumps(QuantConfig(precision="int8", exclude=("head",), fallback_budget=2).to_dict()).encode()
    fuzz("config JSON", tmp_path / "config.json", seed, _load_config)


@settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None)
@given(st.dictionaries(st.sampled_from(["precision", "seed", "block_size", "opset", "exclude", "calib", "target",
                                        "passes", "fallback_budget", "target_sqnr", "check", "select"]),
                       st.recursive(st.none() | st.booleans() | st.integers(-3, 300) | st.floats(allow_nan=True)
                                    | st.text(max_size=6),
                                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                                        st.text(max_size=6), inner, max_size=3), max_leaves=6)))
def test_fuzz_config_values(data):
    """QuantConfig.from_dict on any JSON-like values of its fields: a QuantConfig or a TrtqError."""
    TRIED["config values"] = TRIED.get("config values", 0) + 1
    try:
        QuantConfig.from_dict(data)
    except TrtqError as exc:
        assert exc.fix
