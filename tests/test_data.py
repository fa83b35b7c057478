"""Calibration data sources: validation, streaming, replay."""

from __future__ import annotations

import numpy as np
import pytest

from trtq.calibrators.data import BatchStream, InputSpec, model_inputs, open_batches
from trtq.errors import TrtqError

import graphs

SPEC = [InputSpec("input", np.dtype(np.float32), (None, 3, 12, 12))]


def _collect(stream) -> np.ndarray:
    return np.concatenate([b["input"] for b in stream])


def test_model_inputs_reads_names_types_and_dynamic_dims():
    specs = model_inputs(graphs.attention_block())
    assert [s.name for s in specs] == ["x", "mask"]
    assert specs[0].shape == (None, 8, 128) and specs[0].dtype == np.float32


def test_npz_streams_in_batches(tmp_path):
    data = graphs.conv_data(21)["input"]
    np.savez(tmp_path / "d.npz", input=data)
    stream = BatchStream(tmp_path / "d.npz", SPEC, batch_size=8)
    sizes = [b["input"].shape[0] for b in stream]
    assert sizes == [8, 8, 5] and stream.num_samples == 21
    np.testing.assert_array_equal(_collect(stream), data)  # replays identically


def test_compressed_npz_and_npy(tmp_path):
    data = graphs.conv_data(5)["input"]
    np.savez_compressed(tmp_path / "c.npz", input=data)
    np.save(tmp_path / "d.npy", data)
    np.testing.assert_array_equal(_collect(BatchStream(tmp_path / "c.npz", SPEC, batch_size=2)), data)
    np.testing.assert_array_equal(_collect(BatchStream(tmp_path / "d.npy", SPEC, batch_size=2)), data)


def test_one_shot_generator_is_spilled_and_replayed():
    data = graphs.conv_data(10)["input"]
    stream = BatchStream(({"input": data[i : i + 3]} for i in range(0, 10, 3)), SPEC)
    first, second = _collect(stream), _collect(stream)
    np.testing.assert_array_equal(first, data)
    np.testing.assert_array_equal(second, data)
    stream.close()


def test_calibration_data_reader():
    class Reader:  # the onnxruntime CalibrationDataReader protocol
        def __init__(self) -> None:
            self.items = iter([{"input": graphs.conv_data(2, seed=i)["input"]} for i in range(3)])

        def get_next(self):
            return next(self.items, None)

    stream = BatchStream(Reader(), SPEC)
    assert _collect(stream).shape[0] == 6 and _collect(stream).shape[0] == 6


def test_max_samples_and_dtype_conversion():
    data = graphs.conv_data(10)["input"].astype(np.float64)
    stream = BatchStream({"input": data}, SPEC, batch_size=4, max_samples=6)
    out = _collect(stream)
    assert out.shape[0] == 6 and out.dtype == np.float32


def test_static_batch_dimension_sets_batch_size():
    spec = [InputSpec("input", np.dtype(np.float32), (1, 3, 12, 12))]
    sizes = [b["input"].shape[0] for b in BatchStream(graphs.conv_data(3), spec, batch_size=8)]
    assert sizes == [1, 1, 1]


@pytest.mark.parametrize(
    ("source", "match"),
    [
        ({"wrong": np.zeros((2, 3, 12, 12), np.float32)}, "do not match the model inputs"),
        ({"input": np.zeros((2, 3, 10, 10), np.float32)}, "expects input"),
        ({"input": np.zeros((2, 3, 12), np.float32)}, "rank"),
        ({"input": np.zeros((0, 3, 12, 12), np.float32)}, "empty"),
        ([], "empty"),
        ({"input": np.full((2, 3, 12, 12), "a")}, "dtype"),
        (42, "not understood"),
        (None, "no calibration data"),
    ],
)
def test_bad_sources_raise_clear_errors(source, match):
    with pytest.raises(TrtqError, match=match) as err:
        list(BatchStream(source, SPEC))
    assert err.value.fix


def test_bad_paths(tmp_path):
    (tmp_path / "x.npz").write_text("not a zip")
    with pytest.raises(TrtqError, match="not an .npz"):
        list(BatchStream(tmp_path / "x.npz", SPEC))
    with pytest.raises(TrtqError, match="no such file"):
        list(BatchStream(tmp_path / "missing.npz", SPEC))


def test_open_batches_validates_against_model():
    stream = open_batches(graphs.attention_data(4), graphs.attention_block(), batch_size=3)
    assert [b["x"].shape[0] for b in stream] == [3, 1]
