"""Range methods against literal implementations of algorithms.md §8 and known distributions."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from trtq.calibrators.methods import compute_amax, entropy_amax, fake_quant, mse_amax, percentile_amax
from trtq.calibrators.stats import HistogramReducer, TensorStats


def _stats(values: np.ndarray, bins: int = 2048) -> TensorStats:
    st = TensorStats("t")
    st.update(values, len(values))
    histogram = HistogramReducer({"t": st.amax}, bins)  # the pipeline's second pass, over the fixed range
    histogram.update({"t": values}, {}, len(values))
    st.hist = histogram.hist["t"]
    return st


def _entropy_reference(hist: np.ndarray, edges: np.ndarray, nq: int = 128, start: int = 128) -> float:
    """algorithms.md §8 pseudocode, line by line (slow)."""
    bins = hist.astype(np.float64).copy()
    bins[0] = bins[1]
    divs = []
    for i in range(start, len(bins) + 1):
        p = bins[:i].copy()
        p[i - 1] += bins[i:].sum()
        idx = np.digitize(np.arange(i), np.linspace(0, i, nq + 1)) - 1
        idx[bins[:i] == 0] = -1
        q = np.zeros(i)
        for g in range(nq):
            members = idx == g
            if members.any():
                q[members] = bins[:i][members].sum() / members.sum()
        divs.append(scipy.stats.entropy(p / p.sum(), q / q.sum()) if q.sum() else np.inf)
    divs = np.asarray(divs)
    last_min = len(divs) - 1 - int(np.argmin(divs[::-1]))
    return float(edges[start + last_min])


def test_entropy_matches_reference_pseudocode():
    rs = np.random.RandomState(0)
    st = _stats(np.abs(rs.standard_t(4, 20000)).astype(np.float32), bins=512)
    assert entropy_amax(st.hist, st.edges) == pytest.approx(_entropy_reference(st.hist, st.edges), rel=1e-12)


def test_entropy_clips_heavy_tails():
    rs = np.random.RandomState(1)
    x = np.concatenate([rs.randn(200000), [60.0]]).astype(np.float32)
    st = _stats(x)
    amax = entropy_amax(st.hist, st.edges)
    assert 2.0 < amax < 20.0


def test_percentile():
    x = np.linspace(0, 1, 100001).astype(np.float32)
    st = _stats(x)
    assert percentile_amax(st.hist, st.edges, 90.0) == pytest.approx(0.9, abs=1e-3)
    assert percentile_amax(st.hist, st.edges, 100.0) == pytest.approx(1.0)


def test_mse_keeps_uniform_range_and_clips_outliers():
    uniform = np.random.RandomState(2).uniform(-1, 1, 100000).astype(np.float32)
    st = _stats(uniform)
    assert mse_amax(st.hist, st.edges, "int8") == pytest.approx(1.0, abs=0.01)
    gaussian = np.concatenate([np.random.RandomState(3).randn(100000), [50.0]]).astype(np.float32)
    st = _stats(gaussian)
    assert mse_amax(st.hist, st.edges, "int8") < 0.8 * st.amax  # trades the lone outlier for resolution


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_mse_beats_minmax_on_its_own_objective(precision):
    x = np.concatenate([np.random.RandomState(4).laplace(size=50000), [40.0]]).astype(np.float64)
    st = _stats(x.astype(np.float32))
    err = {m: ((fake_quant(x, compute_amax(st, m, precision), precision) - x) ** 2).mean() for m in ("minmax", "mse")}
    assert err["mse"] <= err["minmax"]


def test_fake_quant_int8_grid():
    x = np.array([-2.0, -1.0, 0.003, 0.5, 1.0, 3.0])
    out = fake_quant(x, 1.0, "int8")
    np.testing.assert_allclose(out, [-1.0, -1.0, 0.0, 64 / 127, 1.0, 1.0])


def test_zero_tensor_keeps_zero_amax():
    st = _stats(np.zeros(100, np.float32))
    for method in ("minmax", "percentile", "entropy", "mse"):
        assert compute_amax(st, method, "int8") == 0.0
