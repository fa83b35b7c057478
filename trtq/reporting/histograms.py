"""Histograms of the values entering chosen quantizers, over the range the quantizer covers and beyond.

One pass over the evaluation data through the quantized model (exact Q/DQ, `trtq._ort.make_session`),
exposing only the chosen tensors (the QuantizeLinear inputs): the values the quantizer sees, after
every pass and every earlier quantized layer, with the range calibration chose for them. Each batch
is binned and dropped. Bins span [lo, 1.25·amax] (lo = -1.25·amax when calibration saw negative values,
else 0), values outside fall into the end bins; `clipped` counts |x| > amax: what the quantizer
saturates. Non-finite values and mask sentinels (|x| >= 1e30) are left out, as in calibration.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from trtq._ort import make_session
from trtq.calibrators.data import BatchStream, model_inputs
from trtq.calibrators.stats import SENTINEL

__all__ = ["BINS", "MARGIN", "ValueHistogram", "value_histograms"]

BINS = 120
MARGIN = 1.25


@dataclass
class ValueHistogram:
    """The values one quantizer's input took on the evaluation data."""

    tensor: str
    amax: float
    edges: np.ndarray
    counts: np.ndarray
    values: int = 0
    clipped: int = 0
    absmax_seen: float = 0.0

    @property
    def clipped_fraction(self) -> float:
        return self.clipped / self.values if self.values else 0.0

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float32).ravel()
        x = x[np.abs(x) < SENTINEL]
        if not x.size:
            return
        self.values += x.size
        self.clipped += int(np.count_nonzero(np.abs(x) > self.amax))
        self.absmax_seen = max(self.absmax_seen, float(np.abs(x).max()))
        lo, hi = self.edges[0], self.edges[-1]
        idx = np.clip(((x - lo) * (len(self.counts) / (hi - lo))).astype(np.int64), 0, len(self.counts) - 1)
        self.counts += np.bincount(idx, minlength=len(self.counts))

    def to_panel(self) -> dict[str, Any]:
        return {"tensor": self.tensor, "edges": self.edges, "counts": self.counts, "amax": self.amax,
                "clipped_fraction": self.clipped_fraction}


def value_histograms(model: onnx.ModelProto, ranges: Mapping[str, tuple[float, bool]], data: Any, *,
                     batch_size: int = 8, max_samples: int | None = None) -> list[ValueHistogram]:
    """Histogram every tensor of `ranges` (name -> (amax, signed)) over `data` run through `model`."""
    names = [n for n in ranges if ranges[n][0] > 0]
    if not names:
        return []
    hists = {}
    for n in names:
        amax, signed = ranges[n]
        hi = MARGIN * amax
        hists[n] = ValueHistogram(n, amax, np.linspace(-hi if signed else 0.0, hi, BINS + 1),
                                  np.zeros(BINS, dtype=np.int64))
    session = make_session(model, outputs=names)
    stream = BatchStream(data, model_inputs(model), batch_size=batch_size, max_samples=max_samples,
                         what="evaluation")
    try:
        for batch in stream:
            for name, value in zip(names, session.run(names, batch), strict=True):
                hists[name].add(value)
    finally:
        stream.close()
    return [hists[n] for n in names]
