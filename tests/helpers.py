"""Numeric helpers the tests share: running a graph, comparing outputs, pass contexts (no builders: graphs.py)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

import trtq
from trtq._ort import make_session
from trtq.calibrators.data import open_batches
from trtq.config import QuantConfig
from trtq.exporter.passes.context import PassContext
from trtq.metrics import cosine, sqnr_db

__all__ = ["assert_exact_and_helps_int8", "assert_same_outputs", "cosine", "initializers", "minilm_sentences",
           "pass_context", "relative_error", "run", "run_all", "sqnr_db"]


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """The first output of `model` on `feeds` (ONNX Runtime, exact Q/DQ)."""
    return make_session(model).run(None, feeds)[0]


def run_all(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Every output of `model` on `feeds`."""
    return make_session(model).run(None, feeds)


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializer name -> array."""
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def assert_same_outputs(before: onnx.ModelProto, after: onnx.ModelProto, feeds: dict[str, np.ndarray], *,
                        rtol: float = 1e-5, max_relative_norm: float | None = None) -> None:
    """Every output of `after` equals `before`'s within float32 rounding (atol 1e-5 of the largest value)."""
    for want, got in zip(run_all(before, feeds), run_all(after, feeds), strict=True):
        if max_relative_norm is not None:
            assert np.linalg.norm(got - want) / np.linalg.norm(want) < max_relative_norm
        np.testing.assert_allclose(got, want, rtol=rtol, atol=1e-5 * float(np.abs(want).max()))


def pass_context(model: onnx.ModelProto, data: dict[str, np.ndarray], precision: str = "int8",
                 exclude: tuple[str, ...] = ()) -> PassContext:
    config = QuantConfig(precision=precision, exclude=exclude)
    return PassContext(config, open_batches(data, model, batch_size=4))


def relative_error(want: onnx.ModelProto, got: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> float:
    """max |Δ| / max |y| over every graph output."""
    a, b = run_all(want, feeds), run_all(got, feeds)
    return max(float(np.abs(x - y).max() / np.abs(x).max()) for x, y in zip(a, b))




def minilm_sentences(tokenizer: object) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """24 calibration and 16 evaluation sentences of 64 tokens."""
    from trtq.testing.data import sentences, token_batch

    return token_batch(tokenizer, sentences("calib", 24), 64), token_batch(tokenizer, sentences("eval", 16), 64)


def assert_exact_and_helps_int8(model: onnx.ModelProto, folded: onnx.ModelProto, calib: dict[str, np.ndarray],
                                feeds: dict[str, np.ndarray]) -> None:
    """`folded` computes what `model` does (FP32) and quantizes to INT8 at least as well (embedding cosine)."""
    from trtq.testing.data import mean_pooled

    want = make_session(model).run(None, feeds)[0]
    got = make_session(folded).run(None, feeds)[0]
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-5
    ref = mean_pooled(want, feeds["attention_mask"])

    def int8_cosine(fp32: onnx.ModelProto) -> float:  # INT8 minmax, no further passes
        quantized = trtq.quantize(fp32, calib, config=QuantConfig(passes=()), progress=False).model
        out = mean_pooled(make_session(quantized).run(None, feeds)[0], feeds["attention_mask"])
        return float((ref * out).sum(axis=1).mean())

    assert int8_cosine(folded) >= int8_cosine(model)
