"""Streaming statistics: exclusion of non-finite values, independence of batch size and order."""

from __future__ import annotations

import numpy as np

from trtq.calibrators.data import open_batches
from trtq.calibrators.stats import TensorStats, collect_stats

import graphs


def test_nonfinite_and_mask_sentinels_are_excluded_and_counted():
    st = TensorStats("t")
    x = np.array([1.0, -2.0, np.inf, -np.inf, np.nan, np.finfo(np.float32).min, 0.5], np.float32)
    st.update(x, 1)
    assert st.amax == 2.0 and st.excluded == 4 and st.count == 3 and st.min == -2.0


def test_attention_mask_tensor_is_calibrated_without_infinite_range():
    model = graphs.attention_block()
    stream = open_batches(graphs.attention_data(6), model, batch_size=4)
    stats = collect_stats(model, ["masked", "probs"], stream, histograms=True, num_bins=256, progress=False)
    assert np.isfinite(stats["masked"].amax) and stats["masked"].excluded > 0
    assert stats["probs"].excluded == 0 and stats["probs"].amax <= 1.0
    assert stats["masked"].hist.sum() == stats["masked"].count


def _ranges(batch_size: int, order: np.ndarray) -> dict[str, tuple]:
    model = graphs.attention_block()
    data = graphs.attention_data(12)
    data = {k: v[order] for k, v in data.items()}
    stream = open_batches(data, model, batch_size=batch_size)
    stats = collect_stats(model, ["x", "mask", "probs"], stream, histograms=True, num_bins=512, progress=False)
    return {n: (s.amax, s.count, s.excluded, s.samples, s.hist.tolist()) for n, s in stats.items()}


def test_statistics_do_not_depend_on_batch_size_or_order():
    base = _ranges(12, np.arange(12))
    assert _ranges(1, np.arange(12)) == base
    assert _ranges(5, np.random.RandomState(0).permutation(12)) == base
