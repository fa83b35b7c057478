"""Peak memory of calibration does not grow with the number of calibration samples (.npz, one-shot
iterators, image folders), and the spill folder of a one-shot iterator is removed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

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


# A one-shot generator (spilled to a temporary folder for the second pass) or a folder of images (decoded
# again on each pass); prints the peak RSS and what is left in the temporary folder afterwards.
_SOURCE_SCRIPT = """
import os, resource, sys
import numpy as np
import trtq
from trtq.calibrators.images import ImageFolder
model, kind, arg, out = sys.argv[1:5]
if kind == "generator":
    rs = np.random.RandomState(0)
    data = ({"input": rs.randn(1, 3, %(size)d, %(size)d).astype(np.float32)} for _ in range(int(arg)))
else:
    data = ImageFolder(arg, {"resize": %(size)d, "crop": %(size)d})
trtq.quantize(model, data, out, calib_method="mse", progress=False)
left = sorted(n for n in os.listdir(os.environ["TMPDIR"]) if n != ".ses")  # .ses: ONNX Runtime's own file
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, left)
""" % {"size": SIZE}  # noqa: UP031 (the script holds dict braces: %-format keeps it readable)


def _write_images(folder: Path, count: int) -> None:
    from PIL import Image

    folder.mkdir()
    rs = np.random.RandomState(1)
    for i in range(count):
        Image.fromarray(rs.randint(0, 256, (SIZE, SIZE, 3)).astype(np.uint8)).save(folder / f"{i:05d}.png")


def _source_peak_kb(model: Path, kind: str, arg: str, out: Path, tmp: Path) -> int:
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}
    res = subprocess.run([sys.executable, "-c", _SOURCE_SCRIPT, str(model), kind, arg, str(out)],
                         capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr
    peak, left = res.stdout.split(maxsplit=1)
    assert left.strip() == "[]", f"left in the temporary folder: {left}"  # the spill folder is removed
    return int(peak)


@pytest.mark.parametrize("kind", ["generator", "images"])
def test_streaming_sources_do_not_raise_peak_memory(tmp_path, kind):
    """Four times the samples from a one-shot generator (spilled to disk for the histogram pass) or an image
    folder (decoded on each pass) leave the peak memory where it was, and nothing behind in TMPDIR."""
    model = tmp_path / "conv.onnx"
    onnx.save(graphs.conv_block(size=SIZE), str(model))
    small, large = 200, 800
    args = {"generator": (str(small), str(large))}
    if kind == "images":
        _write_images(tmp_path / "small", small)
        _write_images(tmp_path / "large", large)
        args["images"] = (str(tmp_path / "small"), str(tmp_path / "large"))
    peak_small = _source_peak_kb(model, kind, args[kind][0], tmp_path / "s.onnx", tmp_path / "tmp_s")
    peak_large = _source_peak_kb(model, kind, args[kind][1], tmp_path / "l.onnx", tmp_path / "tmp_l")
    data_growth_kb = (large - small) * 3 * SIZE * SIZE * 4 // 1024  # 29 MB of float32 samples
    assert peak_large - peak_small < data_growth_kb // 4, (peak_small, peak_large)
