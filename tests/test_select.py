"""Calibration-sample selection: known clusters and outliers, determinism, streaming, errors."""

from __future__ import annotations

import dataclasses
import json
import tracemalloc

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import trtq
from trtq.calibrators.data import BatchSource
from trtq.calibrators.select import (
    SelectConfig,
    Selection,
    default_feature,
    extract_features,
    reduce_feature,
    select_samples,
)
from trtq.errors import TrtqError

DIM = 8
SIZES = (150, 90, 60, 40, 25)  # five clusters of unequal sizes
OUTLIERS = 6


def _passthrough(dim: int = DIM) -> onnx.ModelProto:
    """x -> Identity -> feat -> MatMul(I) -> y: the features are the inputs themselves."""
    nodes = [helper.make_node("Identity", ["x"], ["feat"], name="id"),
             helper.make_node("MatMul", ["feat", "w"], ["y"], name="proj")]
    graph = helper.make_graph(
        nodes, "passthrough",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", dim])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", dim])],
        [numpy_helper.from_array(np.eye(dim, dtype=np.float32), "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _clusters(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Five Gaussian clusters at 20·e_k (same norm: only their direction differs) plus far outliers.

    Returns the shuffled samples and their labels (0..4, -1 for an outlier).
    """
    rng = np.random.default_rng(seed)
    parts = [20.0 * np.eye(DIM)[k] + rng.normal(0, 1, (size, DIM)) for k, size in enumerate(SIZES)]
    directions = rng.normal(0, 1, (OUTLIERS, DIM))
    parts.append(200.0 * directions / np.linalg.norm(directions, axis=1, keepdims=True))
    labels = np.concatenate([np.full(s, k) for k, s in enumerate(SIZES)] + [np.full(OUTLIERS, -1)])
    order = rng.permutation(len(labels))
    return np.concatenate(parts).astype(np.float32)[order], labels[order]


@pytest.fixture(scope="module")
def clusters() -> tuple[onnx.ModelProto, dict[str, np.ndarray], np.ndarray]:
    x, labels = _clusters()
    return _passthrough(), {"x": x}, labels


def test_the_default_feature_is_the_input_of_the_last_weighted_op():
    assert default_feature(_passthrough()) == "feat"


def test_noise_filtered_diverse_drops_the_outliers_and_covers_every_cluster(clusters):
    model, data, labels = clusters
    sel = select_samples(model, data, 10, method="noise-filtered-diverse", progress=False)
    chosen = labels[sel.indices]
    assert len(sel.indices) == 10 and np.all(np.diff(sel.indices) > 0)
    assert -1 not in chosen and set(chosen) == set(range(len(SIZES)))
    dropped = {f["index"] for f in sel.filtered}
    assert set(np.flatnonzero(labels == -1)) <= dropped  # every outlier is filtered, with a reason
    assert len(dropped) < 0.05 * len(labels) and all(f["reasons"] for f in sel.filtered)
    assert np.all(sel.scores["cluster"][list(dropped)] == -1)
    assert sel.details["clusters"] == 10 and sel.features.tensor == "feat"


def test_fewer_clusters_than_samples_are_sampled_evenly(clusters):
    model, data, labels = clusters
    sel = select_samples(model, data, 10, method="noise-filtered-diverse", clusters=5, progress=False)
    assert np.bincount(labels[sel.indices], minlength=5).tolist() == [2, 2, 2, 2, 2]
    assert sorted(sel.details["cluster_sizes"], reverse=True) == sel.details["cluster_sizes"]


def test_the_filter_gives_back_the_least_outlying_when_too_few_remain(clusters):
    model, data, labels = clusters
    n = len(labels) - 3
    sel = select_samples(model, data, n, method="noise-filtered-diverse", progress=False)
    assert len(sel.indices) == n and len(sel.filtered) == 3
    assert sel.details["refilled"] == sel.details["flagged"] - 3
    assert {f["index"] for f in sel.filtered} <= set(np.flatnonzero(labels == -1))  # the farthest stay out


def test_density_diversity_covers_every_cluster_and_prefers_dense_points(clusters):
    model, data, labels = clusters
    sel = select_samples(model, data, 10, method="density-diversity", progress=False)
    chosen = labels[sel.indices]
    assert -1 not in chosen and set(chosen) == set(range(len(SIZES)))
    density = sel.scores["density"]
    assert sel.picks[0]["index"] == int(np.argmax(density))  # the densest candidate first
    assert np.median(density[sel.indices]) > 0.75  # chosen from the dense cores
    assert density[labels == -1].max() < 0.05  # the outliers are the sparsest candidates


def test_random_is_seeded_and_reproducible(clusters):
    model, data, _ = clusters
    a = select_samples(model, data, 10, seed=3, progress=False)
    b = select_samples(model, data, 10, seed=3, progress=False)
    c = select_samples(model, data, 10, seed=4, progress=False)
    np.testing.assert_array_equal(a.indices, b.indices)
    assert not np.array_equal(a.indices, c.indices)
    assert a.features is None and a.candidates == len(data["x"])  # random needs no features


@pytest.mark.parametrize("method", ["density-diversity", "noise-filtered-diverse"])
def test_feature_methods_are_deterministic_under_the_seed(clusters, method):
    model, data, _ = clusters
    runs = [select_samples(model, data, 12, method=method, seed=1, progress=False) for _ in range(2)]
    assert runs[0].to_dict() == runs[1].to_dict()


def test_precomputed_features_give_the_same_selection(clusters):
    model, data, _ = clusters
    feats = extract_features(model, data, progress=False)
    assert feats.values.shape == (len(data["x"]), DIM) and feats.values.dtype == np.float32
    direct = select_samples(model, data, 10, method="noise-filtered-diverse", progress=False)
    reused = select_samples(model, data, 10, method="noise-filtered-diverse", features=feats, progress=False)
    np.testing.assert_array_equal(direct.indices, reused.indices)


class _Generated:
    """A BatchSource making its samples on the fly (never all in memory); counts its passes."""

    def __init__(self, count: int, shape: tuple[int, ...] = (3, 64, 64)) -> None:
        self.count, self.shape, self.passes = count, shape, 0

    def sample(self, i: int) -> np.ndarray:
        return np.random.default_rng(i).normal(i % 7, 1.0, self.shape).astype(np.float32)

    def batches(self, batch_size: int):
        self.passes += 1
        for start in range(0, self.count, batch_size):
            stop = min(start + batch_size, self.count)
            yield {"x": np.stack([self.sample(i) for i in range(start, stop)])}

    def report(self) -> dict:
        return {"source": "generated", "count": self.count}


def _conv_passthrough() -> onnx.ModelProto:
    """x (N, 3, 64, 64) -> 1x1 Conv(I) -> y: the default feature is the input x, averaged over H and W."""
    w = numpy_helper.from_array(np.eye(3, dtype=np.float32).reshape(3, 3, 1, 1), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], "conv_passthrough",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 64, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3, 64, 64])], [w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_selection_streams_only_the_chosen_samples_in_order_and_reiterates():
    model = _conv_passthrough()
    select_samples(model, _Generated(40), 4, method="density-diversity", progress=False)  # imports, warm
    source = _Generated(600)
    tracemalloc.start()
    sel = select_samples(model, source, 25, method="density-diversity", batch_size=16, progress=False)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    raw_bytes = 600 * 3 * 64 * 64 * 4  # 29.5 MB of candidates went through
    assert sel.features.values.nbytes == 600 * 3 * 4 and peak < raw_bytes / 4, peak  # [N, C], not the data
    chosen = sel.source(batch_size=4)
    assert isinstance(chosen, BatchSource) and len(chosen) == 25
    expected = np.stack([source.sample(int(i)) for i in sel.indices])
    for _ in range(2):  # re-iterable: every pass reads the candidates again
        batches = list(chosen)
        assert [b["x"].shape[0] for b in batches] == [4] * 6 + [1]
        np.testing.assert_array_equal(np.concatenate([b["x"] for b in batches]), expected)
    assert source.passes == 3  # features once, then once per pass over the chosen


def test_one_shot_candidates_are_spilled_and_replayed():
    x, _ = _clusters()
    gen = ({"x": x[i : i + 32]} for i in range(0, len(x), 32))
    sel = select_samples(_passthrough(), gen, 10, method="density-diversity", progress=False)
    rows = np.concatenate([b["x"] for b in sel.source().batches(3)])
    np.testing.assert_array_equal(rows, x[sel.indices])
    sel.close()


def test_masked_tokens_do_not_change_the_feature():
    x = np.random.default_rng(0).normal(0, 1, (2, 5, 4)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    padded = x.copy()
    padded[0, 3:] = 1e4
    vec, stats = reduce_feature(padded, mask)
    np.testing.assert_allclose(vec[0], x[0, :3].mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(vec[1], x[1].mean(axis=0), rtol=1e-6)
    assert stats["absmax"][0] == pytest.approx(np.abs(x[0, :3]).max())
    sentinel = x.copy()
    sentinel[1, 0, 0] = -np.inf
    vec, stats = reduce_feature(sentinel)
    assert np.isfinite(vec).all() and np.isfinite(stats["std"]).all()


def test_selection_feeds_quantize_and_lands_in_the_calibration_report(clusters, tmp_path):
    model, data, _ = clusters
    sel = select_samples(model, data, 10, method="noise-filtered-diverse", progress=False)
    result = trtq.quantize(model, sel.source(), tmp_path / "q.onnx", progress=False)
    sidecar = json.loads(result.report_path.read_text())
    assert sidecar["summary"]["calibration_samples"] == 10
    report = sidecar["calibration_data"]
    assert (report["source"], report["selected"], report["candidates"]) == ("selection", 10, len(data["x"]))
    record = json.loads(json.dumps(sel.to_dict(scores=True, timings=True)))
    assert record["indices"] == sel.indices.tolist() and len(record["scores"]["cluster"]) == len(data["x"])
    assert "timings" not in sel.to_dict()
    assert SelectConfig.from_dict(json.loads(json.dumps(sel.config.to_dict()))) == sel.config


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"n": 0}, r"n=0 is not an int >= 1"),
    ({"n": 1000}, r"cannot select 1000 samples from 371 candidates"),
    ({"n": 5, "method": "kmeans"}, r"unknown selection method 'kmeans'"),
    ({"n": 5, "method": "density-diversity", "feature": "nope"}, r"feature 'nope' is not a tensor of the model"),
    ({"n": 5, "method": "density-diversity", "feature": "w"}, r"is a weight"),
    ({"n": 5, "neighbours": 3}, r"unknown selection option"),
])
def test_user_errors_are_clear(clusters, kwargs, message):
    model, data, _ = clusters
    with pytest.raises(TrtqError, match=message):
        select_samples(model, data, progress=False, **kwargs)


def test_a_closed_selection_cannot_stream(clusters):
    model, data, _ = clusters
    sel = select_samples(model, data, 3, progress=False)
    assert isinstance(sel, Selection)
    sel.close()
    with pytest.raises(TrtqError, match="no candidates to stream"):
        sel.source()


@pytest.mark.parametrize("method", ["density-diversity", "noise-filtered-diverse"])
def test_quantize_selects_from_its_calibration_data(clusters, tmp_path, method):
    """`QuantConfig.select` calibrates on exactly the chosen rows, and the sidecar says which and why."""
    model, data, _ = clusters
    config = trtq.QuantConfig(select=SelectConfig(n=12, method=method, seed=3), passes=())
    result = trtq.quantize(model, data, tmp_path / "q.onnx", config=config, progress=False)
    sidecar = json.loads(result.report_path.read_text())
    chosen = sidecar["selection"]["indices"]
    assert len(chosen) == 12 and sidecar["summary"]["calibration_samples"] == 12
    assert sidecar["config"]["select"]["method"] == method
    assert sidecar["calibration_data"]["candidates"] == len(data["x"])
    subset = trtq.quantize(model, {"x": data["x"][chosen]}, None, config=dataclasses.replace(config, select=None),
                           progress=False)
    assert subset.model.SerializeToString() == result.model.SerializeToString()
    again = trtq.quantize(model, data, tmp_path / "again.onnx", config=config, progress=False)
    assert again.report_path.read_bytes() == result.report_path.read_bytes()
    assert (tmp_path / "again.onnx").read_bytes() == (tmp_path / "q.onnx").read_bytes()
    assert trtq.QuantConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_quantize_with_selection_needs_candidates(clusters, tmp_path):
    model, _, _ = clusters
    config = trtq.QuantConfig(precision="int4", block_size=8, select=SelectConfig(n=4))
    with pytest.raises(TrtqError, match="sample selection needs candidates"):
        trtq.quantize(model, None, tmp_path / "q.onnx", config=config, progress=False)
    assert not (tmp_path / "q.onnx").exists()
