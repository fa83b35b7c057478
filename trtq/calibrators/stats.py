"""Streaming statistics of tensors on the calibration data: the reducers `trtq.calibrators.observer` feeds.

Activation ranges take up to two passes over the data (DESIGN.md "Statistics"):
1. max |x|, min, max, finite-value and excluded-value counts per tensor (`RangeReducer`);
2. (histogram methods only) a histogram of |x| with `num_bins` bins over [0, max|x|] fixed by pass 1
   (`HistogramReducer`).
Both are sums and maxima over samples, so the result does not depend on batch size or order, and memory
is bounded by one batch of activations plus `num_bins` counters per tensor.

The other reducers: per-channel max |x|, mean and mean square (`ChannelStatsReducer`), per-channel min
and max of rows (`ChannelRangeReducer`), Σ x·xᵀ over unpadded rows (`GramReducer`), a seeded uniform
sample of rows (`ReservoirReducer`) and the first samples of the data itself (`FirstSamples`). Each
merges with another of its kind taken over other batches.

Non-finite values and the "minus infinity" sentinels that attention masks use (|x| >= 1e30, e.g.
`torch.finfo(float32).min`) are counted in `excluded` and never enter a range (`observer.SENTINEL`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from trtq.calibrators.data import Batch
from trtq.calibrators.observer import SENTINEL, Reducer, finite_rows, observe, token_keep

__all__ = [
    "ChannelRangeReducer",
    "ChannelStats",
    "ChannelStatsReducer",
    "FirstSamples",
    "GramReducer",
    "HistogramReducer",
    "RangeReducer",
    "ReservoirReducer",
    "SecondMoment",
    "TensorStats",
    "collect_channel_stats",
    "collect_second_moments",
    "collect_stats",
]


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

    def merge(self, other: TensorStats) -> None:
        """Fold in the numbers of `other` (the same tensor over other batches; histograms are not merged here)."""
        self.amax = max(self.amax, other.amax)
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        self.count += other.count
        self.excluded += other.excluded
        self.samples += other.samples

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


class RangeReducer(Reducer):
    """Pass 1 of activation ranges: a `TensorStats` per tensor."""

    def __init__(self, tensors: Sequence[str]) -> None:
        self.tensors = tuple(tensors)
        self.stats = {n: TensorStats(n) for n in self.tensors}

    def update(self, values: Mapping[str, np.ndarray], batch: Batch, samples: int) -> None:
        for name in self.tensors:
            self.stats[name].update(values[name], samples)

    def merge(self, other: RangeReducer) -> None:
        for name, st in other.stats.items():
            self.stats[name].merge(st)


class HistogramReducer(Reducer):
    """Pass 2: a histogram of finite |x| per tensor, `num_bins` equal bins over the fixed [0, amax]."""

    def __init__(self, amax: Mapping[str, float], num_bins: int) -> None:
        self.tensors = tuple(amax)
        self.amax = dict(amax)
        self.num_bins = num_bins
        self.hist = {n: np.zeros(num_bins, dtype=np.int64) for n in self.tensors}

    def update(self, values: Mapping[str, np.ndarray], batch: Batch, samples: int) -> None:
        for name in self.tensors:
            absx = np.abs(np.asarray(values[name], dtype=np.float32).ravel())
            absx = absx[absx < SENTINEL]
            amax, hist = self.amax[name], self.hist[name]
            if amax <= 0.0 or absx.size == 0:
                hist[0] += absx.size
                continue
            idx = np.minimum((absx * (self.num_bins / amax)).astype(np.int64), self.num_bins - 1)
            hist += np.bincount(idx, minlength=self.num_bins)

    def merge(self, other: HistogramReducer) -> None:
        for name, hist in other.hist.items():
            self.hist[name] += hist


@dataclass
class ChannelStats:
    """Per-channel statistics of one tensor along one axis (finite values only)."""

    absmax: np.ndarray
    mean: np.ndarray
    sqmean: np.ndarray
    count: np.ndarray


class ChannelStatsReducer(Reducer):
    """Per-channel max |x|, Σx, Σx² and finite count of each tensor along its axis.

    The mean of x² is the per-input-channel weight of a linear layer's output error: for y = x W,
    E||Δy||² = sum_k E[x_k²] ||ΔW_k||² when channels are uncorrelated.
    """

    def __init__(self, axes: Mapping[str, int]) -> None:
        self.axes = dict(axes)
        self.tensors = tuple(sorted(axes))
        self.acc: dict[str, list[np.ndarray]] = {}

    def update(self, values: Mapping[str, np.ndarray], batch: Batch, samples: int) -> None:
        for name in self.tensors:
            x = np.moveaxis(np.asarray(values[name], dtype=np.float64), self.axes[name], -1)
            x = x.reshape(-1, x.shape[-1])
            finite = np.abs(x) < SENTINEL
            x = np.where(finite, x, 0.0)
            self._add(name, [np.abs(x).max(axis=0), x.sum(axis=0), (x * x).sum(axis=0), finite.sum(axis=0)])

    def _add(self, name: str, parts: list[np.ndarray]) -> None:
        if name in self.acc:
            old = self.acc[name]
            parts = [np.maximum(old[0], parts[0]), *(o + p for o, p in zip(old[1:], parts[1:]))]
        self.acc[name] = parts

    def merge(self, other: ChannelStatsReducer) -> None:
        for name, parts in other.acc.items():
            self._add(name, list(parts))

    def result(self) -> dict[str, ChannelStats]:
        out = {}
        for name, (absmax, total, squares, count) in self.acc.items():
            n = np.maximum(count, 1)
            out[name] = ChannelStats(absmax, total / n, squares / n, count)
        return out


class ChannelRangeReducer(Reducer):
    """Per-channel (last axis) min and max of each tensor's rows, and the rows seen (rows holding a
    sentinel or non-finite value are skipped)."""

    def __init__(self, tensors: Sequence[str]) -> None:
        self.tensors = tuple(sorted(tensors))
        self.ranges: dict[str, tuple[np.ndarray, np.ndarray, int]] = {}

    def update(self, values: Mapping[str, np.ndarray], batch: Batch, samples: int) -> None:
        for name in self.tensors:
            x = np.asarray(values[name], np.float64)
            x = finite_rows(x.reshape(-1, x.shape[-1]))
            if len(x):
                self._add(name, (x.min(axis=0), x.max(axis=0), len(x)))

    def _add(self, name: str, part: tuple[np.ndarray, np.ndarray, int]) -> None:
        lo, hi, rows = part
        if name in self.ranges:
            old = self.ranges[name]
            lo, hi, rows = np.minimum(old[0], lo), np.maximum(old[1], hi), rows + old[2]
        self.ranges[name] = (lo, hi, rows)

    def merge(self, other: ChannelRangeReducer) -> None:
        for name, part in other.ranges.items():
            self._add(name, part)


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


class GramReducer(Reducer):
    """Σ x·xᵀ of each tensor's rows (vectors along its last axis); K × K memory each.

    With `mask` (a batch input (N, S) whose zeros mark padded tokens), a rank-3 tensor (N, S, K) drops
    those rows (the model's outputs never use them); other shapes are not masked. Rows holding a
    non-finite value or a sentinel are left out. Rows are summed in chunks of exactly K (a K × K
    float32 buffer per tensor), so the sums do not depend on the batch size.
    """

    def __init__(self, tensors: Sequence[str], mask: str | None = None) -> None:
        self.tensors = tuple(sorted(set(tensors)))
        self.mask = mask
        self.grams: dict[str, _Gram] = {}

    def update(self, values: Mapping[str, np.ndarray], batch: Batch, samples: int) -> None:
        tokens = batch.get(self.mask) if self.mask is not None else None
        for name in self.tensors:
            x = np.asarray(values[name], np.float32)
            keep = token_keep(tokens, x.shape)
            if keep is not None:
                x = x[keep]
            x = x.reshape(-1, x.shape[-1])
            if name not in self.grams:
                self.grams[name] = _Gram(x.shape[1])
            self.grams[name].add(finite_rows(x))

    def merge(self, other: GramReducer) -> None:
        for name, gram in other.grams.items():
            if name in self.grams:
                self.grams[name].merge(gram)
            else:
                self.grams[name] = gram

    def result(self) -> dict[str, SecondMoment]:
        return {name: gram.result() for name, gram in self.grams.items()}


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

    def merge(self, other: _Gram) -> None:
        self._flush()
        other._flush()
        self._xtx += other._xtx
        self._rows += other._rows

    def result(self) -> SecondMoment:
        self._flush()
        return SecondMoment(self._xtx, self._rows)


class ReservoirReducer(Reducer):
    """Up to `size` rows (vectors along each tensor's channel axis) of each tensor, drawn uniformly.

    A seeded reservoir sample (Algorithm R) over the whole data: memory is `size` × channels per tensor
    whatever the number of samples. Rows holding non-finite values are skipped. `merge` combines two
    reservoirs into a uniform sample of the union: how many rows come from each side is drawn from the
    hypergeometric law of their row counts.
    """

    def __init__(self, axes: Mapping[str, int], size: int, rng: np.random.Generator) -> None:
        self.axes = dict(axes)
        self.tensors = tuple(sorted(axes))
        self.size = size
        self.rng = rng
        self.rows: dict[str, np.ndarray] = {}
        self.seen = dict.fromkeys(self.tensors, 0)

    def update(self, values: Mapping[str, np.ndarray], batch: Batch, samples: int) -> None:
        for name in self.tensors:
            x = np.moveaxis(np.asarray(values[name], np.float32), self.axes[name], -1)
            x = finite_rows(x.reshape(-1, x.shape[-1]))
            self.rows[name] = _reservoir_add(self.rows.get(name), x, self.seen[name], self.size, self.rng)
            self.seen[name] += len(x)

    def merge(self, other: ReservoirReducer) -> None:
        for name, theirs in other.rows.items():
            mine, n_mine, n_theirs = self.rows.get(name), self.seen.get(name, 0), other.seen[name]
            self.seen[name] = n_mine + n_theirs
            if mine is None or n_mine + n_theirs <= self.size:
                self.rows[name] = theirs if mine is None else np.concatenate([mine, theirs])
                continue
            from_mine = int(self.rng.hypergeometric(n_mine, n_theirs, self.size))
            pick_mine = self.rng.choice(len(mine), min(from_mine, len(mine)), replace=False)
            pick_theirs = self.rng.choice(len(theirs), min(self.size - len(pick_mine), len(theirs)), replace=False)
            self.rows[name] = np.concatenate([mine[np.sort(pick_mine)], theirs[np.sort(pick_theirs)]])


def _reservoir_add(res: np.ndarray | None, rows: np.ndarray, seen: int, size: int,
                   rng: np.random.Generator) -> np.ndarray:
    """Algorithm R over a block of rows: every row seen so far is kept with probability size/seen."""
    if res is None:
        res = np.empty((0, rows.shape[1]), rows.dtype)
    take = max(0, min(size - len(res), len(rows)))
    res = np.concatenate([res, rows[:take]])
    for i in range(take, len(rows)):
        j = rng.integers(0, seen + i + 1)
        if j < size:
            res[j] = rows[i]
    return res


class FirstSamples(Reducer):
    """The first `count` samples of the data itself (graph inputs), as the batches they came in.

    Sensitivity fallback measures on them; taking them during another pass saves one over the data.
    """

    def __init__(self, count: int) -> None:
        self.count = count
        self.batches: list[Batch] = []
        self.taken = 0

    def update(self, values: Mapping[str, np.ndarray], batch: Batch, samples: int) -> None:
        if self.taken < self.count:
            self.batches.append({k: np.array(v[: self.count - self.taken]) for k, v in batch.items()})
            self.taken += min(samples, self.count - self.taken)

    def merge(self, other: FirstSamples) -> None:
        for batch in other.batches:
            self.update({}, batch, int(next(iter(batch.values())).shape[0]))


def collect_stats(
    model: onnx.ModelProto,
    tensors: Sequence[str],
    batches: Iterable[Batch],
    *,
    histograms: bool,
    num_bins: int = 2048,
    progress: bool = True,
    also: Sequence[Reducer] = (),
) -> dict[str, TensorStats]:
    """Run `model` over `batches` and reduce every tensor in `tensors` to `TensorStats`.

    Args:
        model: the FP32 graph (the one whose tensors will be quantized).
        tensors: names of the activation tensors to observe.
        batches: validated calibration batches; iterated twice when `histograms` is set.
        histograms: also fill |x| histograms (needed by percentile, entropy, mse).
        num_bins: histogram bins.
        progress: show a progress bar with samples/second on stderr.
        also: further reducers fed by the first pass (one pass over the data serves them all).
    """
    ranges = RangeReducer(tensors)
    observe(model, batches, [ranges, *also], desc="calibrate: ranges", progress=progress)
    if histograms:
        hist = HistogramReducer({n: st.amax for n, st in ranges.stats.items()}, num_bins)
        observe(model, batches, [hist], desc="calibrate: histograms", progress=progress)
        for name, st in ranges.stats.items():
            st.hist = hist.hist[name]
    return ranges.stats


def collect_channel_stats(model: onnx.ModelProto, axes: Mapping[str, int], batches: Iterable[Batch], *,
                          progress: bool = True) -> dict[str, ChannelStats]:
    """Per-channel max |x|, mean and mean of x² of each tensor along its axis, in one pass.

    Args:
        model: the graph to run.
        axes: tensor name -> channel axis (negative counts from the end: -1 for a MatMul input's
            features, 1 for an NCHW activation's channels).
        batches: the data.
        progress: show a progress bar.
    """
    reducer = ChannelStatsReducer(axes)
    observe(model, batches, [reducer], desc="calibrate: channel statistics", progress=progress)
    return reducer.result()


def collect_second_moments(model: onnx.ModelProto, tensors: Sequence[str], batches: Iterable[Batch], *,
                           mask: str | None = None, progress: bool = True) -> dict[str, SecondMoment]:
    """Σ x·xᵀ of each tensor's rows (vectors along its last axis), in one pass (`GramReducer`)."""
    reducer = GramReducer(tensors, mask)
    observe(model, batches, [reducer], desc="calibrate: second moments", progress=progress)
    return reducer.result()
