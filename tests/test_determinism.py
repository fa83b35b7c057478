"""Same model, same samples: byte-identical model and sidecar whatever `--batch-size` and sample order.

Under the default passes: `bias_correction` for CNNs in INT8 and FP8 (its input sums are exact), `rotate_online`
for transformers in INT8; FP8 attention runs no pass.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

import trtq
from trtq.config import QuantConfig

import graphs

CASES = {
    "cnn-int8": (graphs.conv_block, graphs.conv_data, "int8"),
    "cnn-fp8": (graphs.conv_block, graphs.conv_data, "fp8"),
    "transformer-int8": (graphs.attention_block, graphs.attention_data, "int8"),
    "transformer-fp8": (graphs.attention_block, graphs.attention_data, "fp8"),
}


def _quantize(model: Path, data: Path, out: Path, precision: str, batch_size: int) -> tuple[bytes, dict]:
    cfg = QuantConfig(precision=precision)
    cfg = dataclasses.replace(cfg, calib=dataclasses.replace(cfg.calib, batch_size=batch_size))
    trtq.quantize(model, data, out, config=cfg, progress=False)
    sidecar = json.loads(out.with_suffix(".trtq.json").read_text())
    assert sidecar["config"]["calib"]["batch_size"] == batch_size  # the option is recorded: the one difference
    sidecar["config"]["calib"]["batch_size"] = None
    return out.read_bytes(), sidecar


@pytest.mark.parametrize("case", sorted(CASES))
def test_batch_size_and_sample_order_change_no_byte(case: str, tmp_path: Path) -> None:
    build, make_data, precision = CASES[case]
    model = tmp_path / "model.onnx"
    onnx.save(build(), str(model))
    data = make_data(32)
    runs = []
    for i, (batch_size, order) in enumerate([(1, None), (7, None), (32, None), (5, 1), (1, 2)]):
        path = tmp_path / f"calib{i}.npz"
        perm = np.arange(32) if order is None else np.random.default_rng(order).permutation(32)
        np.savez(path, **{k: v[perm] for k, v in data.items()})
        runs.append(_quantize(model, path, tmp_path / f"q{i}" / "q.onnx", precision, batch_size))
    passes = runs[0][1]["passes"]
    assert list(passes) == {"cnn-int8": ["bias_correction"], "cnn-fp8": ["bias_correction"],
                            "transformer-int8": ["rotate_online"], "transformer-fp8": []}[case]
    for model_bytes, sidecar in runs[1:]:
        assert model_bytes == runs[0][0]
        assert json.dumps(sidecar, sort_keys=True) == json.dumps(runs[0][1], sort_keys=True)
