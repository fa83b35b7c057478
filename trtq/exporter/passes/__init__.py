"""ONNX graph passes: plain functions ``pass_(model, ctx) -> PassResult``, one per module."""

from __future__ import annotations

from trtq.exporter.passes.base import PassResult
from trtq.exporter.passes.fold_batchnorm import fold_batchnorm

__all__ = ["PassResult", "fold_batchnorm"]
