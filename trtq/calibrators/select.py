"""Calibration-sample selection: pick N of many candidates by deep features of the FP32 model.

Features. One intermediate tensor of the FP32 model (`feature`; default: the data input of the last
weighted op, i.e. the last Conv/ConvTranspose/Gemm/MatMul with a constant weight, which is the
classifier's input in a CNN and the last FFN's hidden activation in a transformer; the first graph
output when the graph has no weighted op) is computed batch by batch and each sample's map reduced
to one vector of C channels as it streams: rank 2 (N, C) is kept, rank 3 (N, S, C) is averaged over
the tokens (masked by the model's rank-2 input whose name holds "mask", when its shape is (N, S)),
rank >= 4 (N, C, ...) over the spatial axes. Non-finite values and mask sentinels (|x| >= 1e30) are
left out. Besides the vector, each sample keeps three scalars of its raw map over the valid
positions: mean, std and absmax. Only these ([N, C] + 3N float32) are held, never the candidates.

Geometry. Distances are Euclidean on the centred vectors projected on their top `components`
principal directions (randomized PCA with a fixed seed; no whitening, so distances are the raw ones
minus the discarded variance; the kept fraction is recorded as `explained_variance`). The selection
arithmetic runs on one thread (threadpoolctl, when installed): it is small next to the feature pass,
and the picks then do not depend on the machine's BLAS or OpenMP thread count.

random: `numpy.random.default_rng(seed).choice(N, n, replace=False)`; needs no features.

density-diversity (EDA-DM's density + λ·diversity score, algorithms.md §1, carried from time steps
to samples and made greedy): with r_i the mean distance of candidate i to its k nearest other
candidates (k = `neighbors`),
    D_i = (rank of -r_i - 1) / (N - 1)                     density in [0, 1], 1 = densest (ties: mean rank)
    V_i(S) = min(1, min_{j in S} ||z_i - z_j|| / tau)       diversity in [0, 1] (V = 1 while S is empty)
    tau = median pairwise distance between candidates (over a seeded subsample of 2048 when N > 2048)
    pick argmax_i (D_i + λ·V_i(S)) over unchosen i, add it to S, repeat n times (ties: lowest index).
λ = `diversity_weight` (default 1.0, EDA-DM's value for LSUN). The first pick is the densest
candidate. Capping V at tau makes every candidate at least a typical distance away from the chosen
set equally new, so density then decides among them, and an isolated candidate (D near 0) scores
at most about λ: any denser candidate at least tau from the chosen set (D + λ) beats it. Ranks replace
EDA-DM's min-max normalisation and its raw-unit radius (algorithms.md §1 pitfalls): no division by
zero, nothing to tune per model. Deterministic (the seed only draws tau's subsample).

noise-filtered-diverse (QuantVGGT's noise-filtered diverse sampling, algorithms.md §3a):
1. Filter: for each statistic s in (mean, std, absmax) of the deep map, Tukey fences
   [Q1 - k·IQR, Q3 + k·IQR] (`numpy.percentile`, linear; k = `iqr_k`, default 1.5); a candidate outside
   any fence is dropped, and the reason recorded. QuantVGGT's released code computes this filter and
   then clusters all samples anyway; trtq applies it, as the paper describes. If fewer than n remain,
   the dropped candidates closest to their fences (excess / IQR) are taken back until n remain.
2. Cluster the kept candidates (projected as above) with
   `sklearn.cluster.KMeans(K, random_state=seed, n_init=kmeans_init)`, K = `clusters` (default n).
3. Take samples evenly from the clusters: quotas go round-robin over the clusters, largest first,
   until n are placed (a cluster gives at most its size); each cluster gives its members nearest to
   its centroid. With K = n that is one medoid-like sample per cluster, so dense regions (which
   attract more centroids) give more samples and every well-separated group gives at least one.
   QuantVGGT draws each cluster's members at random; trtq takes the nearest, which is deterministic.

Every choice is deterministic under the seed. `Selection.source()` streams only the chosen samples
from the candidates again (in candidate order), as a `BatchSource` that `trtq.quantize` accepts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from trtq._io import load_model
from trtq.calibrators.data import Batch, BatchStream, model_inputs
from trtq.calibrators.observer import SENTINEL, Reducer, observe, token_keep, token_mask_input
from trtq.config import SELECT_METHODS as METHODS
from trtq.config import SelectConfig
from trtq.errors import TrtqError
from trtq.precision import WEIGHTED_OPS

__all__ = [
    "DEFAULT_METHOD",
    "METHODS",
    "STATISTICS",
    "FeatureRows",
    "FeatureSet",
    "SelectConfig",
    "SelectedSource",
    "Selection",
    "default_feature",
    "extract_features",
    "reduce_feature",
    "run_selection",
    "select_samples",
]

logger = logging.getLogger(__name__)

DEFAULT_METHOD = SelectConfig.method
STATISTICS = ("mean", "std", "absmax")
_TAU_SAMPLE = 2048  # candidates whose pairwise distances give tau
_CHUNK = 256  # rows of the distance matrix held at once
_POWER_ITERATIONS = 3


@dataclass
class FeatureSet:
    """Reduced deep features of every candidate: what selection reads instead of the candidates.

    Attributes:
        tensor: the FP32 tensor the features come from.
        values: [N, C] float32, one reduced vector per candidate, in candidate order.
        stats: per-candidate mean, std and absmax of the raw map (valid positions), [N] float32 each.
        shape: the per-sample shape of the raw map in the first batch.
        mask: the input used to mask tokens, if any.
        seconds: wall time of the extraction.
    """

    tensor: str
    values: np.ndarray
    stats: dict[str, np.ndarray]
    shape: tuple[int, ...]
    mask: str | None = None
    seconds: float = 0.0

    @property
    def count(self) -> int:
        return int(self.values.shape[0])


def default_feature(model: onnx.ModelProto) -> str:
    """The data input of the last Conv/ConvTranspose/Gemm/MatMul with a constant weight (else output 0)."""
    consts = {i.name for i in model.graph.initializer}
    consts |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    for node in reversed(model.graph.node):
        if node.op_type not in WEIGHTED_OPS or len(node.input) < 2:
            continue
        a, b = node.input[0], node.input[1]
        if b in consts and a not in consts:
            return a
        if a in consts and b not in consts:
            return b
    return model.graph.output[0].name


def _check_feature(model: onnx.ModelProto, name: str) -> None:
    if name in {i.name for i in model.graph.initializer}:
        raise TrtqError(f"selection feature {name!r} is a weight (an initializer), not an activation.",
                        "name an activation tensor, e.g. a node output.")
    known = {i.name for i in model.graph.input} | {o for n in model.graph.node for o in n.output}
    if name not in known:
        raise TrtqError(f"selection feature {name!r} is not a tensor of the model.",
                        f"name a node output (the default would be {default_feature(model)!r}), or leave "
                        "--select-feature out.")


def _positions(x: np.ndarray) -> np.ndarray:
    """[N, positions, C]: rank 1 and 2 have one position, rank 3 is (N, S, C), rank >= 4 is (N, C, ...)."""
    n = x.shape[0]
    if x.ndim <= 2:
        return x.reshape(n, 1, -1)
    if x.ndim == 3:
        return x
    return x.reshape(n, x.shape[1], -1).transpose(0, 2, 1)


def reduce_feature(value: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One batch of a feature map -> ([N, C] mean vectors, {mean, std, absmax: [N]}) over valid positions.

    Args:
        value: the map, samples on axis 0 (see the module docstring for the axes averaged).
        mask: (N, S) attention mask for a rank-3 map; positions where it is 0 are left out.
    """
    x = _positions(np.asarray(value, dtype=np.float32))
    valid = np.abs(x) < SENTINEL  # False for nan, inf and mask sentinels
    keep = token_keep(mask, np.shape(value))
    if keep is not None:
        valid &= keep[:, :, None]
    xv = np.where(valid, x, np.float32(0.0))
    per_channel = valid.sum(axis=1)
    vec = xv.sum(axis=1, dtype=np.float64) / np.maximum(per_channel, 1)
    count = np.maximum(per_channel.sum(axis=1), 1)
    mean = xv.sum(axis=(1, 2), dtype=np.float64) / count
    var = np.maximum(np.square(xv, dtype=np.float64).sum(axis=(1, 2)) / count - mean**2, 0.0)
    stats = {"mean": mean, "std": np.sqrt(var), "absmax": np.abs(xv).max(axis=(1, 2))}
    return vec.astype(np.float32), {k: v.astype(np.float32) for k, v in stats.items()}


def _as_model(model: Any) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, (str, os.PathLike)):
        return load_model(model)
    raise TrtqError(f"selection needs an ONNX model, not a {type(model).__name__}.",
                    "pass an ONNX path or an onnx.ModelProto (export a torch module first: trtq.export).")


def _extract(model: onnx.ModelProto, stream: BatchStream, feature: str | None, progress: bool) -> FeatureSet:
    name = feature or default_feature(model)
    _check_feature(model, name)
    inputs = model_inputs(model)
    mask = token_mask_input(inputs)
    started = time.perf_counter()
    features = FeatureRows(name, mask)
    observe(model, stream, [features], desc="select: features", progress=progress)
    values = np.concatenate(features.rows)
    seconds = time.perf_counter() - started
    logger.info("selection features: %s %s over %d candidates in %.1f s", name, values.shape[1:], len(values),
                seconds)
    return FeatureSet(name, values, {s: np.concatenate(p) for s, p in features.stats.items()}, features.shape,
                      mask, seconds)


class FeatureRows(Reducer):
    """Each sample's reduced feature vector and statistics (`reduce_feature`), in data order."""

    def __init__(self, feature: str, mask: str | None) -> None:
        self.tensors = (feature,)
        self.mask = mask
        self.rows: list[np.ndarray] = []
        self.stats: dict[str, list[np.ndarray]] = {s: [] for s in STATISTICS}
        self.shape: tuple[int, ...] = ()

    def update(self, values: Mapping[str, np.ndarray], batch: Batch, samples: int) -> None:
        name = self.tensors[0]
        value = values[name]
        self.shape = self.shape or tuple(np.shape(value)[1:])
        vec, stats = reduce_feature(value, batch.get(self.mask) if self.mask else None)
        if self.rows and vec.shape[1] != self.rows[0].shape[1]:
            raise TrtqError(f"selection feature {name!r} has {self.rows[0].shape[1]} channels in one batch and "
                            f"{vec.shape[1]} in another.", "name a tensor whose channel count is fixed.")
        self.rows.append(vec)
        for s in STATISTICS:
            self.stats[s].append(stats[s])

    def merge(self, other: FeatureRows) -> None:
        """Append `other`'s samples (taken over later batches) after these."""
        self.rows += other.rows
        for s in STATISTICS:
            self.stats[s] += other.stats[s]
        self.shape = self.shape or other.shape


def extract_features(model: Any, candidates: Any, *, feature: str | None = None, batch_size: int = 8,
                     progress: bool = True) -> FeatureSet:
    """Stream `candidates` through the FP32 `model` and keep each one's reduced `feature` vector.

    Args:
        model: the FP32 ONNX model (path or ModelProto).
        candidates: anything `trtq.calibrators.data.open_batches` accepts.
        feature: the tensor to read (None: `default_feature(model)`).
        batch_size: candidates per run.
        progress: show a progress bar.

    Raises:
        TrtqError: the feature is unknown or a weight, or the candidates do not fit the model.
    """
    model = _as_model(model)
    stream = BatchStream(candidates, model_inputs(model), batch_size=batch_size, what="candidate")
    try:
        return _extract(model, stream, feature, progress)
    finally:
        stream.close()


def _count(stream: BatchStream) -> int:
    return sum(next(iter(b.values())).shape[0] for b in stream)


# --- the methods ---------------------------------------------------------------------------------


@dataclass
class _Choice:
    indices: np.ndarray
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    picks: list[dict[str, Any]] = field(default_factory=list)
    filtered: list[dict[str, Any]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


def _pick_random(count: int, cfg: SelectConfig, features: FeatureSet | None) -> _Choice:
    rng = np.random.default_rng(cfg.seed)
    return _Choice(np.sort(rng.choice(count, cfg.n, replace=False)).astype(np.int64))


def _centred_matmul(values: np.ndarray, mean: np.ndarray, right: np.ndarray) -> np.ndarray:
    """(values - mean) @ right in float32, in row blocks."""
    right = right.astype(np.float32)
    return np.concatenate([(values[s : s + 4096] - mean) @ right for s in range(0, len(values), 4096)])


def _centred_rmatmul(values: np.ndarray, mean: np.ndarray, left: np.ndarray) -> np.ndarray:
    """(values - mean).T @ left, accumulated in float64 over float32 row blocks."""
    out = np.zeros((values.shape[1], left.shape[1]))
    left = left.astype(np.float32)
    for s in range(0, len(values), 4096):
        out += (values[s : s + 4096] - mean).T @ left[s : s + 4096]
    return out


def _orthonormal(a: np.ndarray) -> np.ndarray:
    """An orthonormal basis of a's columns, from the eigenvectors of its small Gram matrix (twice).

    Only matrix products and a k x k eigendecomposition: LAPACK's QR is far slower on a busy machine.
    """
    for _ in range(2):
        eigval, eigvec = np.linalg.eigh(a.T @ a)
        keep = eigval > eigval[-1] * 1e-12
        a = a @ (eigvec[:, keep] / np.sqrt(eigval[keep]))
    return a


def _project(values: np.ndarray, components: int) -> tuple[np.ndarray, float]:
    """Centred values on their top principal directions (float64 [N, d]) and the variance fraction kept.

    Randomized subspace iteration (Halko, Martinsson, Tropp 2011: range finder with 16 extra
    directions and 3 power iterations, a fixed seed), then PCA inside that subspace: no C x C
    matrix is formed, so memory stays O((N + C) d) whatever the channel count.
    """
    mean64 = values.mean(axis=0, dtype=np.float64)
    n, c = values.shape
    if c <= components or n < 2:
        return values.astype(np.float64) - mean64, 1.0
    mean = mean64.astype(np.float32)
    width = min(components + 16, n, c)
    q = _orthonormal(_centred_rmatmul(values, mean, np.random.default_rng(0).standard_normal((n, width))))
    for _ in range(_POWER_ITERATIONS):
        q = _orthonormal(_centred_rmatmul(values, mean, _centred_matmul(values, mean, q)))
    y = _centred_matmul(values, mean, q).astype(np.float64)
    eigval, eigvec = np.linalg.eigh(y.T @ y)
    d = min(components, len(eigval))
    total = sum(float(np.square(values[s : s + 4096] - mean, dtype=np.float64).sum()) for s in range(0, n, 4096))
    return y @ eigvec[:, ::-1][:, :d], float(np.maximum(eigval[::-1][:d], 0.0).sum() / max(total, 1e-300))


def _knn_distance(z: np.ndarray, k: int) -> np.ndarray:
    """Mean distance of each row to its k nearest other rows (exact, in row chunks)."""
    n = len(z)
    k = min(k, n - 1)
    if k < 1:
        return np.zeros(n)
    sq = np.einsum("ij,ij->i", z, z)
    out = np.empty(n)
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        d2 = z[start:stop] @ z.T
        d2 *= -2.0
        d2 += sq[None, :]
        d2 += sq[start:stop, None]
        np.maximum(d2, 0.0, out=d2)
        d2[np.arange(stop - start), np.arange(start, stop)] = np.inf
        out[start:stop] = np.sqrt(np.partition(d2, k - 1, axis=1)[:, :k]).mean(axis=1)
    return out


def _median_distance(z: np.ndarray, rng: np.random.Generator) -> float:
    from scipy.spatial.distance import pdist

    rows = z if len(z) <= _TAU_SAMPLE else z[np.sort(rng.choice(len(z), _TAU_SAMPLE, replace=False))]
    return float(np.median(pdist(rows))) if len(rows) > 1 else 0.0


def _density(knn: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    n = len(knn)
    return np.ones(n) if n == 1 else (rankdata(-knn, method="average") - 1.0) / (n - 1)


def _greedy(z: np.ndarray, density: np.ndarray, tau: float, weight: float, n: int) -> list[dict[str, Any]]:
    """Pick n rows by argmax of density + weight * min(1, distance to the chosen / tau)."""
    nearest = np.full(len(z), np.inf)
    chosen = np.zeros(len(z), dtype=bool)
    picks = []
    for _ in range(n):
        diversity = np.minimum(nearest / tau, 1.0) if tau > 0 else np.where(nearest > 0, 1.0, 0.0)
        score = np.where(chosen, -np.inf, density + weight * diversity)
        i = int(np.argmax(score))
        picks.append({"index": i, "score": float(score[i]), "density": float(density[i]),
                      "diversity": float(diversity[i])})
        chosen[i] = True
        nearest = np.minimum(nearest, np.sqrt(np.square(z - z[i]).sum(axis=1)))
    return picks


def _pick_density_diversity(count: int, cfg: SelectConfig, features: FeatureSet | None) -> _Choice:
    z, kept = _project(features.values, cfg.components)
    knn = _knn_distance(z, cfg.neighbors)
    density = _density(knn)
    tau = _median_distance(z, np.random.default_rng(cfg.seed))
    picks = _greedy(z, density, tau, cfg.diversity_weight, cfg.n)
    details = {"neighbors": min(cfg.neighbors, count - 1), "tau": tau, "diversity_weight": cfg.diversity_weight,
               "components": z.shape[1], "explained_variance": kept}
    indices = np.sort(np.array([p["index"] for p in picks], dtype=np.int64))
    return _Choice(indices, {"density": density, "knn_distance": knn}, picks, details=details)


def _fences(stats: dict[str, np.ndarray], k: float) -> tuple[dict[str, dict[str, float]], np.ndarray]:
    """Tukey fences per statistic and each candidate's worst excess beyond them, in IQRs (<= 0: inside)."""
    fences: dict[str, dict[str, float]] = {}
    excess = np.full(len(next(iter(stats.values()))), -np.inf)
    for name in STATISTICS:
        v = stats[name].astype(np.float64)
        q1, q3 = (float(q) for q in np.percentile(v, [25, 75]))
        iqr = q3 - q1
        low, high = q1 - k * iqr, q3 + k * iqr
        out = np.maximum(low - v, v - high) / max(iqr, 1e-12 * max(abs(q1), abs(q3), 1e-30))
        excess = np.maximum(excess, out)
        fences[name] = {"q1": q1, "q3": q3, "low": low, "high": high,
                        "flagged": int(np.count_nonzero((v < low) | (v > high)))}
    return fences, excess


def _reasons(i: int, stats: dict[str, np.ndarray], fences: dict[str, dict[str, float]], k: float) -> list[str]:
    out = []
    for name in STATISTICS:
        v, f = float(stats[name][i]), fences[name]
        if v < f["low"]:
            out.append(f"{name} {v:.6g} < Q1 - {k:g}*IQR = {f['low']:.6g}")
        elif v > f["high"]:
            out.append(f"{name} {v:.6g} > Q3 + {k:g}*IQR = {f['high']:.6g}")
    return out


def _noise_filter(features: FeatureSet, cfg: SelectConfig) -> tuple[np.ndarray, list[dict[str, Any]], dict]:
    """Indexes kept by the IQR fences (refilled up to n), the dropped ones with reasons, the fences."""
    fences, excess = _fences(features.stats, cfg.iqr_k)
    flagged = np.flatnonzero(excess > 0)
    refill = max(cfg.n - (features.count - len(flagged)), 0)
    back = flagged[np.lexsort((flagged, excess[flagged]))[:refill]]
    keep = np.setdiff1d(np.arange(features.count), np.setdiff1d(flagged, back))
    taken_back = set(back.tolist())
    dropped = [{"index": int(i), "reasons": _reasons(int(i), features.stats, fences, cfg.iqr_k)}
               for i in flagged.tolist() if i not in taken_back]
    info = {"iqr_k": cfg.iqr_k, "fences": fences, "flagged": len(flagged), "refilled": int(len(back))}
    return keep, dropped, info


def _kmeans(z: np.ndarray, clusters: int, seed: int, n_init: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.cluster import KMeans
    except ImportError as exc:
        raise TrtqError("noise-filtered-diverse selection needs scikit-learn.",
                        "pip install scikit-learn, or use --select-method density-diversity.") from exc
    km = KMeans(n_clusters=clusters, random_state=seed, n_init=n_init).fit(z)
    return km.labels_.astype(np.int64), km.cluster_centers_


def _quotas(sizes: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The cluster order (largest first, then lowest label) and quotas dealt round-robin in it, each <= its size."""
    order = np.lexsort((np.arange(len(sizes)), -sizes))
    quota = np.zeros(len(sizes), dtype=np.int64)
    left = min(n, int(sizes.sum()))
    while left > 0:
        for c in order:
            if left and quota[c] < sizes[c]:
                quota[c] += 1
                left -= 1
    return order, quota


def _pick_noise_filtered(count: int, cfg: SelectConfig, features: FeatureSet | None) -> _Choice:
    keep, dropped, info = _noise_filter(features, cfg)
    z, kept_var = _project(features.values[keep], cfg.components)
    k = min(cfg.clusters or cfg.n, len(keep))
    labels, centers = _kmeans(z, k, cfg.seed, cfg.kmeans_init)
    dist = np.sqrt(np.square(z - centers[labels]).sum(axis=1))
    sizes = np.bincount(labels, minlength=k)
    order, quota = _quotas(sizes, cfg.n)
    members = [np.flatnonzero(labels == c)[np.argsort(dist[labels == c], kind="stable")] for c in range(k)]
    picks = [{"index": int(keep[members[c][r]]), "cluster": int(c), "centroid_distance": float(dist[members[c][r]]),
              "cluster_size": int(sizes[c])}
             for r in range(int(quota.max(initial=0))) for c in order if quota[c] > r]
    cluster = np.full(count, -1, dtype=np.int64)
    cluster[keep] = labels
    to_centroid = np.full(count, np.nan)
    to_centroid[keep] = dist
    info.update({"clusters": k, "components": z.shape[1], "explained_variance": kept_var,
                 "cluster_sizes": sorted(sizes.tolist(), reverse=True)})
    indices = np.sort(np.array([p["index"] for p in picks], dtype=np.int64))
    return _Choice(indices, {"cluster": cluster, "centroid_distance": to_centroid}, picks, dropped, info)


def _one_thread() -> contextlib.AbstractContextManager[Any]:
    """BLAS and OpenMP limited to one thread (threadpoolctl ships with scikit-learn), else no limit."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1)


_METHODS = {
    "random": _pick_random,
    "density-diversity": _pick_density_diversity,
    "noise-filtered-diverse": _pick_noise_filtered,
}


# --- results -------------------------------------------------------------------------------------


def _round(value: Any) -> Any:
    """Floats to 6 significant digits (stable sidecars), recursively; NaN/inf to None."""
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_round(v) for v in value]
    if isinstance(value, np.ndarray):
        return _round(value.tolist())
    if isinstance(value, (float, np.floating)):
        return float(f"{value:.6g}") if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


class SelectedSource:
    """A `BatchSource` that streams only the chosen candidates, in candidate order, on every pass.

    It reads the candidates again each pass (a one-shot iterator's spill, if it had to be spilled)
    and stops after the last chosen one; only one batch of candidates is in memory at a time.
    """

    def __init__(self, stream: BatchStream, indices: np.ndarray, summary: dict[str, Any],
                 batch_size: int | None = None) -> None:
        self._stream = stream
        self._indices = np.asarray(indices, dtype=np.int64)
        self._summary = summary
        self.batch_size = batch_size

    def __len__(self) -> int:
        return len(self._indices)

    def __iter__(self) -> Iterator[Batch]:
        return self.batches(self.batch_size or 1)

    def batches(self, batch_size: int) -> Iterator[Batch]:
        """The chosen samples in batches of `batch_size` (the last one may be smaller)."""
        size = self.batch_size or batch_size
        held: list[Batch] = []
        for rows in self._chosen_rows():
            held.append(rows)
            while held and sum(_rows(b) for b in held) >= size:
                merged = _concat(held)
                yield {k: v[:size] for k, v in merged.items()}
                rest = {k: v[size:] for k, v in merged.items()}
                held = [rest] if _rows(rest) else []
        if held:
            yield _concat(held)

    def _chosen_rows(self) -> Iterator[Batch]:
        want, pos, offset = self._indices, 0, 0
        finished = self._stream.num_samples is not None  # a full pass happened: safe to stop early
        for batch in self._stream:
            n = _rows(batch)
            hi = int(np.searchsorted(want, offset + n))
            if hi > pos:
                yield {k: v[want[pos:hi] - offset] for k, v in batch.items()}
                pos = hi
            offset += n
            if pos == len(want) and finished:
                return
        if pos < len(want):
            raise TrtqError(f"the candidates changed since selection: {len(want) - pos} chosen samples (from "
                            f"index {int(want[pos])}) are past their end ({offset} samples).",
                            "select again, or pass candidates that give the same samples on every pass.")

    def report(self) -> dict[str, Any]:
        return dict(self._summary)


def _rows(batch: Batch) -> int:
    return int(next(iter(batch.values())).shape[0])


def _concat(parts: list[Batch]) -> Batch:
    return parts[0] if len(parts) == 1 else {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


@dataclass
class Selection:
    """Which candidates were chosen, why, and how to stream them.

    Attributes:
        config: the options used.
        indices: chosen candidate indexes (positions in the candidate stream), sorted.
        candidates: how many candidates there were.
        features: the reduced features (None for random, which needs none).
        scores: per-candidate arrays ([N]): density-diversity: density, knn_distance;
            noise-filtered-diverse: cluster (-1: filtered out), centroid_distance (NaN: filtered out).
        picks: the chosen, in pick order, with their scores at the time of the pick.
        filtered: candidates dropped as outliers: {index, reasons}.
        details: method figures (tau, fences, cluster sizes, explained variance, ...).
        timings: seconds of feature extraction, of the choice, and in total.
        candidates_report: what a `BatchSource` reported after the feature pass (files skipped, ...).
    """

    config: SelectConfig
    indices: np.ndarray
    candidates: int
    features: FeatureSet | None
    scores: dict[str, np.ndarray]
    picks: list[dict[str, Any]]
    filtered: list[dict[str, Any]]
    details: dict[str, Any]
    timings: dict[str, float]
    candidates_report: dict[str, Any] | None = None
    _stream: BatchStream | None = field(default=None, repr=False)

    def summary(self) -> dict[str, Any]:
        """Method, counts and feature tensor: one line of the sidecar's calibration data."""
        return {"source": "selection", "method": self.config.method, "selected": len(self.indices),
                "candidates": self.candidates, "filtered": len(self.filtered),
                "feature": self.features.tensor if self.features else None,
                "candidates_source": self.candidates_report}

    def source(self, batch_size: int | None = None) -> SelectedSource:
        """The chosen samples as a calibration source (re-iterable; streams from the candidates)."""
        if self._stream is None:
            raise TrtqError("this selection has no candidates to stream (it was closed or rebuilt from JSON).",
                            "run select_samples again with the candidates.")
        return SelectedSource(self._stream, self.indices, self.summary(), batch_size)

    def close(self) -> None:
        """Delete the spill folder of one-shot candidates, if any; `source()` stops working."""
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def to_dict(self, *, scores: bool = False, timings: bool = False) -> dict[str, Any]:
        """A JSON-able record for the sidecar; per-candidate scores and timings only when asked.

        Without timings, equal inputs give an equal dict (floats rounded to 6 significant digits).
        """
        f = self.features
        out: dict[str, Any] = {
            "config": self.config.to_dict(), "candidates": self.candidates, "selected": len(self.indices),
            "feature": None if f is None else {"tensor": f.tensor, "shape": list(f.shape),
                                               "channels": int(f.values.shape[1]), "mask": f.mask},
            "indices": self.indices.tolist(), "picks": self.picks, "filtered": self.filtered,
            "details": self.details,
        }
        if scores:
            out["scores"] = {k: v for k, v in self.scores.items()}
            if f is not None:
                out["statistics"] = dict(f.stats)
        if timings:
            out["timings"] = dict(self.timings)
        return _round(out)


def run_selection(model: Any, candidates: Any, config: SelectConfig, *, progress: bool = True,
                  features: FeatureSet | None = None) -> Selection:
    """Pick `config.n` of `candidates` by `config.method` (see the module docstring).

    Args:
        model: the FP32 ONNX model (path or ModelProto) whose features describe the candidates.
        candidates: anything `trtq.calibrators.data.open_batches` accepts.
        config: the options.
        progress: show a progress bar during feature extraction.
        features: features already extracted from these candidates (skips the feature pass).

    Raises:
        TrtqError: n exceeds the candidates, the feature tensor is unknown, or the data does not fit.
    """
    started = time.perf_counter()
    model = _as_model(model)
    if config.feature is not None:
        _check_feature(model, config.feature)  # random reads no feature, but a wrong name is still an error
    inputs = model_inputs(model)
    stream = BatchStream(candidates, inputs, batch_size=config.batch_size, what="candidate")
    try:
        if features is None and config.method != "random":
            features = _extract(model, stream, config.feature, progress)
        count = features.count if features is not None else _count(stream)
        if config.n > count:
            raise TrtqError(f"cannot select {config.n} samples from {count} candidates.",
                            f"pass --select {count} or fewer, or more candidates.")
        chose = time.perf_counter()
        with _one_thread():
            choice = _METHODS[config.method](count, config, features)
    except BaseException:
        stream.close()
        raise
    done = time.perf_counter()
    timings = {"features_s": features.seconds if features is not None else 0.0, "select_s": done - chose,
               "total_s": done - started}
    logger.info("selected %d of %d candidates (%s) in %.2f s", config.n, count, config.method, done - started)
    return Selection(config, choice.indices, count, features, choice.scores, choice.picks, choice.filtered,
                     choice.details, timings, stream.source_report(), stream)


def select_samples(model: Any, candidates: Any, n: int, *, method: str = DEFAULT_METHOD, feature: str | None = None,
                   seed: int = 0, batch_size: int = 8, progress: bool = True,
                   features: FeatureSet | None = None, **options: Any) -> Selection:
    """Pick `n` of `candidates` for calibration from the FP32 model's deep features.

    Args:
        model: the FP32 ONNX model (path or ModelProto).
        candidates: anything `trtq.calibrators.data.open_batches` accepts (.npz, arrays, batches,
            an image folder or text source).
        n: how many to keep.
        method: random | density-diversity | noise-filtered-diverse.
        feature: the tensor that describes a sample (None: `default_feature(model)`).
        seed: seed of every random choice.
        batch_size: candidates per ONNX Runtime run during feature extraction.
        progress: show a progress bar.
        features: features already extracted from these candidates (e.g. to try several n).
        **options: the other `SelectConfig` fields (neighbors, diversity_weight, iqr_k, clusters,
            kmeans_init, components).

    Returns:
        A `Selection`; `selection.source()` streams the chosen samples into `trtq.quantize`.

    Raises:
        TrtqError: n < 1 or more than the candidates, an unknown method, option or feature tensor.

    Example:
        >>> sel = select_samples("model.onnx", "candidates.npz", 128, method="density-diversity")  # doctest: +SKIP
        >>> trtq.quantize("model.onnx", sel.source(), "model.int8.onnx")  # doctest: +SKIP
    """
    try:
        config = SelectConfig(n=n, method=method, feature=feature, seed=seed, batch_size=batch_size, **options)
    except TypeError as exc:
        raise TrtqError(f"unknown selection option ({exc}).",
                        "use neighbors, diversity_weight, iqr_k, clusters, kmeans_init or components.") from exc
    return run_selection(model, candidates, config, progress=progress, features=features)
