"""Peak memory of calibration does not grow with the number of calibration samples."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx

import graphs

_SCRIPT = """
import resource, sys
import trtq
trtq.quantize(sys.argv[1], sys.argv[2], sys.argv[3], calib_method="mse", progress=False)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""

SIZE = 64


def _write_calib(path: Path, samples: int) -> None:
    rs = np.random.RandomState(0)
    arr = np.lib.format.open_memmap(path.with_suffix(".npy"), mode="w+", dtype=np.float32,
                                    shape=(samples, 3, SIZE, SIZE))
    for start in range(0, samples, 256):
        arr[start : start + 256] = rs.randn(min(256, samples - start), 3, SIZE, SIZE)
    arr.flush()
    del arr
    np.savez(path, input=np.load(path.with_suffix(".npy"), mmap_mode="r"))
    path.with_suffix(".npy").unlink()


def _peak_kb(model: Path, calib: Path, out: Path) -> int:
    res = subprocess.run([sys.executable, "-c", _SCRIPT, str(model), str(calib), str(out)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    return int(res.stdout.split()[-1])


def test_four_times_more_samples_do_not_raise_peak_memory(tmp_path):
    model = tmp_path / "conv.onnx"
    onnx.save(graphs.conv_block(size=SIZE), str(model))
    small, large = tmp_path / "small.npz", tmp_path / "large.npz"
    _write_calib(small, 400)
    _write_calib(large, 1600)  # 4x the samples: 59 MB more data than `small`
    peak_small = _peak_kb(model, small, tmp_path / "s.onnx")
    peak_large = _peak_kb(model, large, tmp_path / "l.onnx")
    data_growth_kb = (1600 - 400) * 3 * SIZE * SIZE * 4 // 1024
    assert peak_large - peak_small < data_growth_kb // 4, (peak_small, peak_large)
