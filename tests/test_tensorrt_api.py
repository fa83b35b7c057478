"""The TensorRT API-surface harness itself: each version's real bindings import, nothing native is faked."""

from __future__ import annotations

import json

from trtq.testing.tensorrt_api import BINDINGS, run_python

_PROBE = """
import json, tensorrt as trt
out = {"version": trt.__version__, "strongly_typed": hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"),
       "explicit_batch": hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"),
       "int8_flag": hasattr(trt.BuilderFlag, "INT8")}
try:
    import tensorrt.plugin
    out["plugin"] = hasattr(tensorrt.plugin, "register")
except ImportError:
    out["plugin"] = False
try:
    trt.Builder(trt.Logger())
    out["builder"] = "created"
except Exception as exc:
    out["builder"] = type(exc).__name__
print(json.dumps(out))
"""


def test_real_bindings_over_stub_libraries(tensorrt_api) -> None:
    done = run_python(tensorrt_api, _PROBE)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["version"] == BINDINGS[tensorrt_api.version]
    assert got["builder"] == "TypeError"  # the stub returns NULL: no engine can ever be faked
    assert got["strongly_typed"]
    major = int(tensorrt_api.version.split(".")[0])
    # TensorRT 11 drops implicit batch and the weakly typed precision flags; tensorrt.plugin ships from 10.16.
    assert got["explicit_batch"] == (major == 10) and got["int8_flag"] == (major == 10)
    assert got["plugin"] == (tensorrt_api.version != "10.3")
