"""Streaming per-tensor statistics: each batch is reduced to numbers and dropped.

Two passes over the data (DESIGN.md "Statistics"):
1. max |x|, min, max, finite-value and excluded-value counts per tensor;
2. (histogram methods only) a histogram of |x| with `num_bins` bins over [0, max|x|] fixed by pass 1.
Both are sums and maxima over samples, so the result does not depend on batch size or order, and memory
is bounded by one batch of activations plus `num_bins` counters per tensor.

Non-finite values and the "minus infinity" sentinels that attention masks use (|x| >= 1e30, e.g.
`torch.finfo(float32).min`) are counted in `excluded` and never enter a range.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from trtq._ort import make_session
from trtq.calibrators.data import BatchStream, InputSpec, model_inputs

__all__ = ["SENTINEL", "ChannelStats", "SecondMoment", "TensorStats", "collect_channel_stats",
           "collect_second_moments", "collect_stats", "progress_bar", "token_keep", "token_mask_input"]

logger = logging.getLogger(__name__)

SENTINEL = 1e30  # |x| at or above this is a mask sentinel, not an activation value


@dataclass
class TensorStats:
    """What calibration learned about one activation tensor."""

    name: str
    amax: float = 0.0
    min: float = float("inf")
    max: float = float("-inf")
    count: int = 0
    excluded: int = 0
    samples: int = 0
    hist: np.ndarray | None = field(default=None, repr=False)

    def update(self, x: np.ndarray, samples: int) -> np.ndarray:
        """Fold one batch into the running numbers; return its finite |x| values."""
        x = np.asarray(x, dtype=np.float32).ravel()
        absx = np.abs(x)
        keep = absx < SENTINEL  # False for nan, ±inf and sentinels
        n_keep = int(np.count_nonzero(keep))
        if n_keep != x.size:
            self.excluded += x.size - n_keep
            x, absx = x[keep], absx[keep]
        self.samples += samples
        self.count += n_keep
        if n_keep:
            self.amax = max(self.amax, float(absx.max()))
            self.min = min(self.min, float(x.min()))
            self.max = max(self.max, float(x.max()))
        return absx

    def add_to_histogram(self, absx: np.ndarray, num_bins: int) -> None:
        """Count finite |x| values into `num_bins` bins over [0, amax] (amax fixed by pass 1)."""
        if self.hist is None:
            self.hist = np.zeros(num_bins, dtype=np.int64)
        if self.amax <= 0.0 or absx.size == 0:
            self.hist[0] += absx.size
            return
        idx = np.minimum((absx * (num_bins / self.amax)).astype(np.int64), num_bins - 1)
        self.hist += np.bincount(idx, minlength=num_bins)

    @property
    def edges(self) -> np.ndarray:
        n = len(self.hist) if self.hist is not None else 0
        return np.linspace(0.0, self.amax, n + 1)

    def to_dict(self) -> dict[str, float | int]:
        return {
            "samples": self.samples,
            "values": self.count,
            "excluded_nonfinite": self.excluded,
            "min": self.min if self.count else 0.0,
            "max": self.max if self.count else 0.0,
            "absmax": self.amax,
        }


def collect_stats(
    model: onnx.ModelProto,
    tensors: Sequence[str],
    batches: BatchStream,
    *,
    histograms: bool,
    num_bins: int = 2048,
    progress: bool = True,
) -> dict[str, TensorStats]:
    """Run `model` over `batches` and reduce every tensor in `tensors` to `TensorStats`.

    Args:
        model: the FP32 graph (the one whose tensors will be quantized).
        tensors: names of the activation tensors to observe.
        batches: validated calibration batches; iterated twice when `histograms` is set.
        histograms: also fill |x| histograms (needed by percentile, entropy, mse).
        num_bins: histogram bins.
        progress: show a progress bar with samples/second on stderr.
    """
    session = make_session(model, outputs=list(tensors))
    names = list(tensors)
    stats = {n: TensorStats(n) for n in names}
    started = time.perf_counter()
    for batch in progress_bar(batches, "calibrate: ranges", progress):
        n = next(iter(batch.values())).shape[0]
        for name, value in zip(names, session.run(names, batch)):
            stats[name].update(value, n)
    if histograms:
        for batch in progress_bar(batches, "calibrate: histograms", progress, total=batches.num_samples):
            for name, value in zip(names, session.run(names, batch)):
                finite = np.abs(np.asarray(value, dtype=np.float32).ravel())
                stats[name].add_to_histogram(finite[finite < SENTINEL], num_bins)
    logger.info("calibrated %d tensors on %s samples in %.1f s", len(names), batches.num_samples,
                time.perf_counter() - started)
    return stats


def progress_bar(batches: Iterable[dict[str, np.ndarray]], desc: str, enabled: bool, total: int | None = None):
    """Yield `batches`, advancing a tqdm bar by the samples in each (samples/second shown)."""
    from tqdm.auto import tqdm

    with tqdm(total=total, desc=desc, unit="sample", disable=not enabled, leave=False, dynamic_ncols=True) as bar:
        for batch in batches:
            yield batch
            bar.update(next(iter(batch.values())).shape[0])


@dataclass
class ChannelStats:
    """Per-channel statistics of one tensor along one axis (finite values only)."""

    absmax: np.ndarray
    mean: np.ndarray
    sqmean: np.ndarray
    count: np.ndarray


def collect_channel_stats(
    model: onnx.ModelProto,
    axes: Mapping[str, int],
    batches: BatchStream,
    *,
    progress: bool = True,
) -> dict[str, ChannelStats]:
    """Per-channel max |x|, mean and mean of x² of each tensor along its axis, in one pass.

    Args:
        model: the graph to run.
        axes: tensor name -> channel axis (negative counts from the end: -1 for a MatMul input's
            features, 1 for an NCHW activation's channels).
        batches: the data.
        progress: show a progress bar.

    The mean of x² is the per-input-channel weight of a linear layer's output error: for y = x W,
    E||Δy||² = sum_k E[x_k²] ||ΔW_k||² when channels are uncorrelated.
    """
    names = sorted(axes)
    session = make_session(model, outputs=names)
    acc: dict[str, list[np.ndarray]] = {}
    for batch in progress_bar(batches, "calibrate: channel statistics", progress):
        for name, value in zip(names, session.run(names, batch)):
            x = np.moveaxis(np.asarray(value, dtype=np.float64), axes[name], -1)
            x = x.reshape(-1, x.shape[-1])
            finite = np.abs(x) < SENTINEL
            x = np.where(finite, x, 0.0)
            parts = [np.abs(x).max(axis=0), x.sum(axis=0), (x * x).sum(axis=0), finite.sum(axis=0)]
            if name in acc:
                old = acc[name]
                parts = [np.maximum(old[0], parts[0]), *(o + p for o, p in zip(old[1:], parts[1:]))]
            acc[name] = parts
    out = {}
    for name, (absmax, total, squares, count) in acc.items():
        n = np.maximum(count, 1)
        out[name] = ChannelStats(absmax, total / n, squares / n, count)
    return out


@dataclass
class SecondMoment:
    """Σ x·xᵀ (float64, K × K) over the observed rows x of one tensor, and how many rows.

    `hessian` is GPTQ's H = (2/n)·Σ x·xᵀ; its diagonal is twice `ChannelStats.sqmean` on the same rows.
    """

    xtx: np.ndarray
    rows: int

    @property
    def hessian(self) -> np.ndarray:
        return self.xtx * (2.0 / max(self.rows, 1))


def token_mask_input(model: onnx.ModelProto | list[InputSpec]) -> str | None:
    """The rank-2 graph input whose name holds "mask" (an attention mask (N, S)), if any."""
    inputs = model_inputs(model) if isinstance(model, onnx.ModelProto) else model
    return next((s.name for s in inputs if "mask" in s.name.lower() and len(s.shape) == 2), None)


def token_keep(mask: Any, shape: tuple[int, ...]) -> np.ndarray | None:
    """(N, S) bool, True on unpadded tokens, when `mask` (N, S) fits a rank-3 (N, S, K) tensor of `shape`.

    None when there is no mask or the tensor is not rank 3 with those leading axes (not masked).
    """
    if mask is None or len(shape) != 3 or np.shape(mask) != tuple(shape[:2]):
        return None
    return np.asarray(mask) != 0


def collect_second_moments(
    model: onnx.ModelProto,
    tensors: Sequence[str],
    batches: BatchStream,
    *,
    mask: str | None = None,
    progress: bool = True,
) -> dict[str, SecondMoment]:
    """Σ x·xᵀ of each tensor's rows (vectors along its last axis), in one pass; K × K memory each.

    Args:
        model: the graph to run.
        tensors: tensor names (MatMul inputs: features on the last axis).
        batches: the data, in its fixed order (sums in float64, so the result is reproducible).
        mask: a batch input (N, S) whose zeros mark padded tokens; a rank-3 tensor (N, S, K) drops
            those rows (the model's outputs never use them). Other shapes are not masked.
        progress: show a progress bar.

    Rows holding a non-finite value or a mask sentinel are left out. Rows are summed in chunks of
    exactly K (a K × K float32 buffer per tensor), so the sums do not depend on the batch size.
    """
    names = sorted(set(tensors))
    session = make_session(model, outputs=names)
    acc: dict[str, _Gram] = {}
    for batch in progress_bar(batches, "calibrate: second moments", progress):
        tokens = batch.get(mask) if mask is not None else None
        for name, value in zip(names, session.run(names, batch)):
            x = np.asarray(value, np.float32)
            keep = token_keep(tokens, x.shape)
            if keep is not None:
                x = x[keep]
            x = x.reshape(-1, x.shape[-1])
            if name not in acc:
                acc[name] = _Gram(x.shape[1])
            acc[name].add(x[np.all(np.abs(x) < SENTINEL, axis=1)])
    return {name: gram.result() for name, gram in acc.items()}


class _Gram:
    """Σ x·xᵀ in float64, fed rows in chunks of exactly K (one BLAS product each, no per-batch K × K temporary)."""

    def __init__(self, k: int) -> None:
        self._xtx = np.zeros((k, k))
        self._rows = 0
        self._buf = np.empty((k, k), np.float32)
        self._fill = 0

    def add(self, x: np.ndarray) -> None:
        while len(x):
            take = min(len(x), len(self._buf) - self._fill)
            self._buf[self._fill:self._fill + take] = x[:take]
            self._fill, x = self._fill + take, x[take:]
            if self._fill == len(self._buf):
                self._flush()

    def _flush(self) -> None:
        chunk = self._buf[:self._fill].astype(np.float64)
        self._xtx += chunk.T @ chunk
        self._rows, self._fill = self._rows + self._fill, 0

    def result(self) -> SecondMoment:
        self._flush()
        return SecondMoment(self._xtx, self._rows)
