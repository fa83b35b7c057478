"""The observer: one pass feeds every reducer, and each reducer's merge of two halves equals one pass."""

from __future__ import annotations

import numpy as np
import pytest

from trtq.calibrators.observer import observe
from trtq.calibrators.select import FeatureRows
from trtq.calibrators.stats import (
    ChannelRangeReducer,
    ChannelStatsReducer,
    FirstSamples,
    GramReducer,
    HistogramReducer,
    RangeReducer,
    ReservoirReducer,
)
from trtq.exporter.passes.bias_correction import TapSums
from trtq.plugins.apply import ValueSample

import graphs

MODEL = graphs.attention_block(hidden=32)
DATA = graphs.attention_data(12, hidden=32)  # masks hold -inf: the sentinel rule is exercised
BATCHES = [{k: v[i:i + 3] for k, v in DATA.items()} for i in range(0, 12, 3)]


def reducers():
    """One of each reducer kind, fresh (the same settings every call)."""
    rng = np.random.default_rng(0)
    return {
        "ranges": RangeReducer(["scores", "masked", "probs"]),
        "hist": HistogramReducer({"masked": 10.0, "probs": 1.0}, 256),
        "channels": ChannelStatsReducer({"q": -1, "ctx": -1}),
        "channel_ranges": ChannelRangeReducer(["res", "masked"]),
        "gram": GramReducer(["x", "ctx"]),
        "reservoir": ReservoirReducer({"q": -1}, 1000, rng),
        "first": FirstSamples(5),
        "taps": TapSums({("q", "rows"), ("ctx", "rows")}),
        "features": FeatureRows("o", None),
        "values": ValueSample(["masked"], np.random.default_rng(0)),
    }


def state(kind: str, r) -> list:
    """Comparable numbers of reducer `r` of kind `kind`."""
    if kind == "ranges":
        return [(s.amax, s.min, s.max, s.count, s.excluded, s.samples) for s in r.stats.values()]
    if kind == "hist":
        return list(r.hist.values())
    if kind == "channels":
        return [p for parts in r.acc.values() for p in parts]
    if kind == "channel_ranges":
        return [p for lo_hi_rows in r.ranges.values() for p in lo_hi_rows]
    if kind == "gram":
        return [(m.xtx, m.rows) for m in r.result().values()]
    if kind == "reservoir":
        return [r.rows["q"], r.seen["q"]]
    if kind == "first":
        return [v for b in r.batches for v in b.values()]
    if kind == "taps":
        return [(t.value(), t.count) for sums in r.sums.values() for t in sums.values()]
    if kind == "features":
        return [np.concatenate(r.rows)]
    return list(r.result().values())


def assert_close(a, b) -> None:
    if isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_close(x, y)
    else:
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=0)


def test_one_pass_feeds_every_reducer_and_merges_equal_one_pass() -> None:
    whole = reducers()
    seen = observe(MODEL, BATCHES, list(whole.values()))
    assert (seen.samples, seen.batches) == (12, 4) and seen.peak_batch_bytes > 0
    first, second = reducers(), reducers()
    observe(MODEL, BATCHES[:2], list(first.values()))
    observe(MODEL, BATCHES[2:], list(second.values()))
    for kind, reducer in first.items():
        reducer.merge(second[kind])
        assert_close(state(kind, reducer), state(kind, whole[kind]))


def test_sentinels_never_enter_a_statistic() -> None:
    ranges = RangeReducer(["masked"])
    observe(MODEL, BATCHES, [ranges])
    st = ranges.stats["masked"]
    assert st.excluded > 0 and np.isfinite(st.min) and st.amax < 1e30


def test_full_reservoirs_merge_into_a_sample_of_the_union() -> None:
    whole, first, second = (ReservoirReducer({"q": -1}, 16, np.random.default_rng(s)) for s in (0, 1, 2))
    observe(MODEL, BATCHES, [whole])
    observe(MODEL, BATCHES[:2], [first])
    observe(MODEL, BATCHES[2:], [second])
    first.merge(second)
    assert first.rows["q"].shape == whole.rows["q"].shape == (16, 32) and first.seen == whole.seen
    rows = {r.tobytes() for r in whole.rows["q"]} | {r.tobytes() for r in first.rows["q"]}
    all_rows = {r.tobytes() for b in BATCHES for r in observe_rows(b)}
    assert rows <= all_rows  # every kept row is a row of the data


def observe_rows(batch) -> np.ndarray:
    every = ReservoirReducer({"q": -1}, 10**6, np.random.default_rng(0))
    observe(MODEL, [batch], [every])
    return every.rows["q"]


@pytest.mark.parametrize("split", [1, 3])
def test_first_samples_take_exactly_the_leading_samples(split: int) -> None:
    keep = FirstSamples(5)
    observe(MODEL, BATCHES[:split], [keep])
    rest = FirstSamples(5)
    observe(MODEL, BATCHES[split:], [rest])
    keep.merge(rest)
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in keep.batches]), DATA["x"][:5])
