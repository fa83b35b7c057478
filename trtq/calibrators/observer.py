"""The observer: one pass of the data through one FP32 ONNX Runtime session, feeding small reducers.

Every statistic trtq takes of a model's tensors on the calibration data (ranges, histograms, channel
statistics, Gram matrices, sampled rows, selection features, bias-correction tap sums, the samples
sensitivity fallback replays) is a `Reducer`: it names the tensors it reads, folds one batch at a
time into a small state and drops the batch, and `merge`s with another state of the same kind taken
over other batches, so the result over batches B₁ ∪ B₂ is `r₁.merge(r₂)` (exact for sums, maxima,
histograms over a fixed range and Gram matrices; reservoirs merge into a uniform sample of the union).
`observe` is the one loop: it builds one session exposing every tensor its reducers ask for (graph
inputs are read from the batch), runs it once per batch, and hands every reducer the same values;
stages that read the same graph share one pass over the data. Progress bars and the memory count
(the largest batch of exposed tensors held at once) live here too.

The sentinel rule, in one place: a value with |x| ≥ `SENTINEL` (the "minus infinity" attention masks
write, e.g. `torch.finfo(float32).min`), NaN or ±inf never enters a statistic; per-value reducers
count and drop such values, per-row reducers drop the rows that hold one (`finite_rows`), and
per-token reducers also drop padded tokens (`token_keep`: the attention-mask input's zeros).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from trtq.calibrators.data import Batch, InputSpec, model_inputs

__all__ = [
    "SENTINEL",
    "Observation",
    "Reducer",
    "finite_rows",
    "observe",
    "progress_bar",
    "token_keep",
    "token_mask_input",
]

logger = logging.getLogger(__name__)

SENTINEL = 1e30  # |x| at or above this is a mask sentinel, not an activation value


class Reducer:
    """One statistic over the data: the tensors it reads, a per-batch update and a merge.

    Subclasses set `tensors` (graph inputs or intermediate tensor names) and implement `update` and
    `merge`; their results are read off their attributes or a method of their own.
    """

    tensors: tuple[str, ...] = ()

    def update(self, values: Mapping[str, np.ndarray], batch: Batch, samples: int) -> None:
        """Fold one batch: `values` holds every tensor of `tensors`, `batch` the graph inputs."""
        raise NotImplementedError

    def merge(self, other: Any) -> None:
        """Fold in the state `other` (the same kind of reducer, same settings) took over other batches."""
        raise NotImplementedError


@dataclass
class Observation:
    """What one pass saw: samples, batches, and the most bytes of exposed tensors one batch held."""

    samples: int = 0
    batches: int = 0
    peak_batch_bytes: int = 0


def observe(model: onnx.ModelProto, batches: Iterable[Batch], reducers: Sequence[Reducer], *,
            desc: str = "observe", progress: bool = False) -> Observation:
    """Stream `batches` once through `model` (FP32) and feed every batch to every reducer.

    Args:
        model: the graph whose tensors the reducers read.
        batches: validated batches (`trtq.calibrators.data.BatchStream`), read once, in order.
        reducers: the statistics to take; the tensors they name are exposed in one session.
        desc: the progress bar's label.
        progress: show a progress bar (samples/second) on stderr.

    Returns:
        The `Observation` (samples, batches, peak bytes of one batch's exposed tensors).
    """
    from trtq._ort import make_session

    inputs = {i.name for i in model.graph.input}
    names = sorted({t for r in reducers for t in r.tensors} - inputs)
    session = make_session(model, outputs=names) if names else None
    seen = Observation()
    started = time.perf_counter()
    for batch in progress_bar(batches, desc, progress):
        values = dict(zip(names, session.run(names, batch))) if session is not None else {}
        values.update((k, v) for k, v in batch.items() if k in inputs)
        samples = _samples(batch)
        seen.samples += samples
        seen.batches += 1
        seen.peak_batch_bytes = max(seen.peak_batch_bytes, sum(np.asarray(v).nbytes for v in values.values()))
        for reducer in reducers:
            reducer.update(values, batch, samples)
    logger.info("%s: %d tensors over %d samples (%d batches, at most %.1f MB of tensors per batch) in %.1f s",
                desc, len(names), seen.samples, seen.batches, seen.peak_batch_bytes / 2**20,
                time.perf_counter() - started)
    return seen


def _samples(batch: Batch) -> int:
    first = next(iter(batch.values()))
    return int(first.shape[0]) if np.ndim(first) else 1


def progress_bar(batches: Iterable[Batch], desc: str, enabled: bool, total: int | None = None) -> Iterator[Batch]:
    """Yield `batches`, advancing a tqdm bar by the samples in each (samples/second shown)."""
    from tqdm.auto import tqdm

    with tqdm(total=total, desc=desc, unit="sample", disable=not enabled, leave=False, dynamic_ncols=True) as bar:
        for batch in batches:
            yield batch
            bar.update(next(iter(batch.values())).shape[0])


def finite_rows(x: np.ndarray) -> np.ndarray:
    """The rows of `x` [rows, channels] that hold no sentinel, NaN or infinity."""
    return x[np.all(np.abs(x) < SENTINEL, axis=1)]


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
