"""trtq.metrics: known answers, the caps, and merged partial sums equal to one pass."""

from __future__ import annotations

import numpy as np
import pytest

from trtq import metrics
from trtq.metrics import SQNR_CAP_DB, ErrorSums, SampleSums, finite_pair


def test_known_answers() -> None:
    ref = np.array([[3.0, 4.0], [1.0, 0.0]])
    cand = np.array([[3.0, 4.0], [0.0, 1.0]])
    assert metrics.sqnr_db(ref, cand) == pytest.approx(10 * np.log10(26 / 2))
    assert metrics.cosine(ref, cand) == pytest.approx(0.5)  # rows: 1 and 0
    assert metrics.top1_agreement(ref, cand) == 0.5
    assert metrics.sqnr_db(ref, ref) == SQNR_CAP_DB
    assert metrics.sqnr_db(ref, np.full_like(ref, np.nan)) == -SQNR_CAP_DB


def test_reference_masks_are_left_out() -> None:
    ref = np.array([1.0, -np.inf, 2.0], np.float32)
    cand = np.array([1.0, 5.0, 2.0], np.float32)
    pair = finite_pair(ref, cand)
    assert (pair.excluded, pair.nonfinite) == (1, 0)
    assert metrics.sqnr_db(ref, cand) == SQNR_CAP_DB


def test_merged_sums_equal_one_pass() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(12, 10)).astype(np.float32)
    cand = ref + rng.normal(scale=0.1, size=ref.shape).astype(np.float32)
    one_e, one_s = ErrorSums(), SampleSums()
    pair = finite_pair(ref, cand)
    one_e.add(pair)
    one_s.add(pair, ref, cand, 12)
    parts = []
    for lo, hi in ((0, 5), (5, 12)):
        e, s = ErrorSums(), SampleSums()
        p = finite_pair(ref[lo:hi], cand[lo:hi])
        e.add(p)
        s.add(p, ref[lo:hi], cand[lo:hi], hi - lo)
        parts.append((e, s))
    (e, s), (e2, s2) = parts
    e.merge(e2)
    s.merge(s2)
    assert e.sqnr_db() == pytest.approx(one_e.sqnr_db(), abs=1e-12) and e.max_abs == one_e.max_abs
    assert s.cosine() == pytest.approx(one_s.cosine(), abs=1e-12) and s.top1() == one_s.top1()
