"""Fidelity metrics of a candidate output against its reference: SQNR, cosine, top-1 agreement.

One definition for `trtq.compare`, sensitivity fallback, the tests and the bench:

- SQNR (dB) = 10·log10(Σ ref² / Σ (ref − cand)²), sums in float64 (exact per element, so the same
  for any batching), capped at ±`SQNR_CAP_DB`: +cap when the candidate equals the reference, −cap
  when the candidate is non-finite where the reference is finite, or the reference is all zero and
  the candidate is not.
- cosine: the mean over rows (samples: the first axis) of each row pair's cosine; 1 for two zero
  rows, 0 for one.
- top-1 agreement: the fraction of rows of class scores (rank 2) whose argmax agrees.

Positions where the reference is non-finite (a mask's −inf, NaN) are left out of every sum and
counted (`excluded`); positions where only the candidate is non-finite are counted (`nonfinite`).

The streaming forms (`ErrorSums`, `SampleSums`) take one batch at a time and merge: two partial
sums over disjoint batches combine into the sums over both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "SQNR_CAP_DB",
    "ErrorSums",
    "Pair",
    "SampleSums",
    "cosine",
    "finite_pair",
    "row_cosines",
    "sqnr_db",
    "top1_agreement",
]

# SQNR of identical tensors (+) or of a candidate with NaN/inf where the reference is finite (-).
# float32 round-off alone stays below ~150 dB, so the cap never hides a real difference.
SQNR_CAP_DB = 200.0


@dataclass
class Pair:
    """A reference and a candidate array (float32 or float64), non-finite positions zeroed in both.

    Attributes:
        excluded: positions where the reference is non-finite.
        nonfinite: positions where the reference is finite and the candidate is not.
    """

    ref: np.ndarray
    cand: np.ndarray
    excluded: int
    nonfinite: int


def _real(a: np.ndarray) -> np.ndarray:
    """float32 and float64 as they are (sums are taken in float64 anyway); other types as float64."""
    a = np.asarray(a)
    return a if a.dtype in (np.float32, np.float64) else np.asarray(a, dtype=np.float64)


def finite_pair(ref: np.ndarray, cand: np.ndarray) -> Pair:
    """`ref` and `cand` with every position where either is non-finite zeroed in both, and the counts."""
    r, c = _real(ref), _real(cand)
    finite_r, finite_c = np.isfinite(r), np.isfinite(c)
    if finite_r.all() and finite_c.all():
        return Pair(r, c, 0, 0)
    keep = finite_r & finite_c
    excluded = int(r.size - np.count_nonzero(finite_r))
    nonfinite = int(np.count_nonzero(finite_r & ~finite_c))
    return Pair(np.where(keep, r, 0), np.where(keep, c, 0), excluded, nonfinite)


def _sum_sq(a: np.ndarray) -> float:
    """Σa² with float64 products and accumulation: exact per element, so independent of batching."""
    return float(np.einsum("i,i->", a.ravel(), a.ravel(), dtype=np.float64))


def _difference(pair: Pair) -> np.ndarray:
    diff = pair.ref - pair.cand
    if diff.dtype != np.float64 and not np.isfinite(diff).all():  # float32 overflow (dtype-min masks)
        diff = np.subtract(pair.ref, pair.cand, dtype=np.float64)
    return diff


class ErrorSums:
    """Σref², Σ(ref−cand)², max |ref−cand| and non-finite counts, accumulated batch by batch."""

    def __init__(self) -> None:
        self.ref2 = 0.0
        self.err2 = 0.0
        self.max_abs = 0.0
        self.excluded = 0
        self.nonfinite = 0
        self.compared = 0  # values finite in both

    def add(self, pair: Pair) -> None:
        diff = _difference(pair)
        self.compared += pair.ref.size - pair.excluded - pair.nonfinite
        self.ref2 += _sum_sq(pair.ref)
        self.err2 += _sum_sq(diff)
        self.max_abs = max(self.max_abs, float(diff.max(initial=0.0)), -float(diff.min(initial=0.0)))
        self.excluded += pair.excluded
        self.nonfinite += pair.nonfinite

    def merge(self, other: ErrorSums) -> None:
        """Add the sums of `other` (taken over other batches) to these."""
        self.ref2 += other.ref2
        self.err2 += other.err2
        self.max_abs = max(self.max_abs, other.max_abs)
        self.excluded += other.excluded
        self.nonfinite += other.nonfinite
        self.compared += other.compared

    def sqnr_db(self) -> float:
        if self.nonfinite or (self.ref2 == 0.0 and self.err2 > 0.0):
            return -SQNR_CAP_DB
        if self.err2 == 0.0:
            return SQNR_CAP_DB
        return min(max(10.0 * math.log10(self.ref2 / self.err2), -SQNR_CAP_DB), SQNR_CAP_DB)


class SampleSums:
    """Σ per-sample cosine and top-1 agreements, accumulated batch by batch."""

    def __init__(self) -> None:
        self.cosine_sum = 0.0
        self.rows = 0
        self.top1_hits = 0
        self.top1_rows = 0  # stays 0 unless the output looks like class scores

    def add(self, pair: Pair, ref: np.ndarray, cand: np.ndarray, samples: int) -> None:
        """One batch: `pair` = `finite_pair(ref, cand)`; `samples` rows when the first axis has that length."""
        rows = samples if pair.ref.ndim and pair.ref.shape[0] == samples else 1
        self.cosine_sum += float(row_cosines(pair.ref.reshape(rows, -1), pair.cand.reshape(rows, -1)).sum())
        self.rows += rows
        if ref.ndim == 2 and ref.dtype.kind == "f" and ref.shape[-1] >= 2:
            self.top1_hits += int(np.count_nonzero(np.argmax(ref, axis=-1) == np.argmax(cand, axis=-1)))
            self.top1_rows += ref.shape[0]

    def merge(self, other: SampleSums) -> None:
        self.cosine_sum += other.cosine_sum
        self.rows += other.rows
        self.top1_hits += other.top1_hits
        self.top1_rows += other.top1_rows

    def cosine(self) -> float:
        return self.cosine_sum / self.rows if self.rows else 1.0

    def top1(self) -> float | None:
        return self.top1_hits / self.top1_rows if self.top1_rows else None


def row_cosines(r: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Cosine of each row pair (float64 sums); 1 where both rows are zero, 0 where only one is."""
    dot = np.einsum("ij,ij->i", r, c, dtype=np.float64)
    rr = np.einsum("ij,ij->i", r, r, dtype=np.float64)
    cc = np.einsum("ij,ij->i", c, c, dtype=np.float64)
    norms = np.sqrt(rr) * np.sqrt(cc)
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.where(norms > 0, dot / norms, 0.0)
    return np.where((rr == 0) & (cc == 0), 1.0, np.clip(cos, -1.0, 1.0))


def sqnr_db(ref: np.ndarray, cand: np.ndarray) -> float:
    """SQNR (dB) of `cand` against `ref` over all their finite positions (module docstring)."""
    sums = ErrorSums()
    sums.add(finite_pair(ref, cand))
    return sums.sqnr_db()


def cosine(ref: np.ndarray, cand: np.ndarray) -> float:
    """Mean cosine of the rows (first axis) of `ref` and `cand` (a rank-1 pair is one row)."""
    pair = finite_pair(ref, cand)
    rows = pair.ref.shape[0] if pair.ref.ndim > 1 else 1
    return float(row_cosines(pair.ref.reshape(rows, -1), pair.cand.reshape(rows, -1)).mean())


def top1_agreement(ref: np.ndarray, cand: np.ndarray) -> float:
    """Fraction of rows of class scores (N, classes) whose argmax is the same in both."""
    ref, cand = np.asarray(ref), np.asarray(cand)
    if ref.ndim != 2 or ref.shape != cand.shape:
        raise ValueError(f"top-1 agreement needs two (N, classes) arrays, not {ref.shape} and {cand.shape}")
    return float(np.mean(np.argmax(ref, axis=-1) == np.argmax(cand, axis=-1)))
