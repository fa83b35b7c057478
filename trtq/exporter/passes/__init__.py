"""ONNX graph passes: plain functions ``pass_(model, ctx) -> PassResult``, one per module."""

from __future__ import annotations

from trtq.exporter.passes.base import PassResult
from trtq.exporter.passes.context import PassContext
from trtq.exporter.passes.fold_batchnorm import fold_batchnorm
from trtq.exporter.passes.registry import PASS_ORDER, PASSES, get_pass, resolve_passes

__all__ = ["PASSES", "PASS_ORDER", "PassContext", "PassResult", "fold_batchnorm", "get_pass", "resolve_passes"]
