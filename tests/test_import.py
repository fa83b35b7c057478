"""`import trtq` works without torch, CUDA or TensorRT, and exposes exactly its public API."""

from __future__ import annotations

import subprocess
import sys

import trtq


def test_import_without_torch_or_tensorrt():
    code = (
        "import sys\n"
        "for name in ('torch', 'tensorrt', 'pycuda', 'cupy'):\n"
        "    sys.modules[name] = None  # importing any of them now raises ImportError\n"
        "import trtq, trtq.cli, trtq.pipeline, trtq.exporter.check, trtq.evaluate\n"
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "print(trtq.__version__)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


def test_public_api_is_explicit():
    for name in trtq.__all__:
        assert getattr(trtq, name) is not None
    assert sorted(dir(trtq)) == sorted(trtq.__all__)
