"""Helpers for trtq's tests and benchmarks: the real models it is measured on."""

from __future__ import annotations

from trtq.testing.models import (
    EFFICIENTNET_INPUT_SHAPE,
    SAMPLE_SENTENCES,
    export_efficientnet_lite0,
    export_minilm,
    load_efficientnet_lite0,
    load_minilm,
    minilm_inputs,
)

__all__ = [
    "EFFICIENTNET_INPUT_SHAPE",
    "SAMPLE_SENTENCES",
    "export_efficientnet_lite0",
    "export_minilm",
    "load_efficientnet_lite0",
    "load_minilm",
    "minilm_inputs",
]
