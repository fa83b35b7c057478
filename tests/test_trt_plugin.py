"""trtq.plugins.trt_plugin against the real `tensorrt.plugin` package of each TensorRT version (no GPU).

`trtq.testing.tensorrt_api` imports each version's real bindings over stub native libraries. What runs
for real: `tensorrt.plugin`'s validation of every decorated function (signatures, annotations,
attribute types), its plugin registry entries, our shape/type descriptors and AOT implementations
called with its (symbolic, here "fake") TensorDescs, and the Triton PTX they return, compiled for
Orin (sm_87). Where it stops: an immediate registration builds the QDP creator, then asks the native
plugin registry (`trt.get_plugin_registry()`), which the stub returns as None; the ONNX parser and
the engine build are native too.
"""

from __future__ import annotations

import json

import pytest

from trtq.testing.tensorrt_api import run_python

pytest.importorskip("triton", reason="the AOT implementations compile Triton kernels (pip install 'trtq[kernels]')")

_PROBE = r"""
import json
out = {}
try:
    from trtq.plugins import trt_plugin
except ImportError as exc:
    print(json.dumps({"import_error": str(exc)}))
    raise SystemExit(0)
import tensorrt as trt
import tensorrt.plugin as trtp
from tensorrt.plugin._lib import QDP_REGISTRY
from triton.backends.compiler import GPUTarget

trt_plugin.TARGET = GPUTarget("cuda", 87, 32)
trt_plugin.PTX_VERSION = 85  # PTX a CUDA 12.5+ driver JITs
out["ids"] = trt_plugin.register(lazy=True)
for pid in out["ids"]:
    d = QDP_REGISTRY[pid]
    out[pid] = {"tensors": d.input_tensor_names, "attrs": {k: v.__name__ for k, v in d.input_attrs.items()},
                "aot_attrs": d.aot_impl_attr_names, "outputs": d.num_outputs, "jit": d.impl_func is not None}

def fake(rank, dtype):
    return trtp.TensorDesc(trtp.ShapeExprs(rank, _is_dummy=True), dtype)

codes, book, scales = fake(2, trt.int32), fake(2, trt.float16), fake(2, trt.float16)
for out_dtype, bits in ((10, 3), (1, 4)):
    y = trt_plugin._codebook_desc(codes, book, scales, bits, 64, 100, out_dtype)
    name, ptx, launch, extra = trt_plugin._codebook_aot(codes, book, scales, bits, 64, 100, out_dtype, (y,), 0)
    out[f"codebook{bits}"] = {"dtype": str(y.dtype), "rank": len(y.shape_expr), "kernel": name,
                              "sm87": ".target sm_87" in ptx, "extra": len(extra), "ptx85": ".version 8.5" in ptx}
x = fake(3, trt.float16)
y = trt_plugin._log_desc(x, 4, 1.0, 0.5, 0.0)
name, ptx, launch, extra = trt_plugin._log_aot(x, 4, 1.0, 0.5, 0.0, (y,), 0)
out["log"] = {"dtype": str(y.dtype), "kernel": name, "sm87": ".target sm_87" in ptx, "extra": len(extra)}
print(json.dumps(out))
"""

_NATIVE = r"""
import json, os, runpy, traceback
import trtq.plugins
script = os.path.join(os.path.dirname(trtq.plugins.__file__), "qdp_register.py")  # for trtq build --plugins
try:
    runpy.run_path(script, run_name="qdp_register")
    print(json.dumps({"registered": True}))
except Exception as exc:
    frames = [f.name for f in traceback.extract_tb(exc.__traceback__)]
    print(json.dumps({"error": type(exc).__name__, "message": str(exc), "frames": frames}))
"""


def _last_json(done) -> dict:
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_plugin_definitions_pass_tensorrt_plugin_validation(tensorrt_api) -> None:
    got = _last_json(run_python(tensorrt_api, _PROBE, timeout=300))
    if tensorrt_api.version == "10.3":  # no tensorrt.plugin in 10.3: a clear ImportError naming the C++ plugin
        assert "tensorrt.plugin" in got["import_error"] and "trtq/plugins/cpp" in got["import_error"]
        return
    assert got["ids"] == ["trtq::CodebookDequantize", "trtq::LogFakeQuantize"]
    codebook = got["trtq::CodebookDequantize"]
    assert codebook["tensors"] == ["codes", "codebook", "scales"]
    assert codebook["attrs"] == {"bits": "int", "group_size": "int", "k": "int", "out_dtype": "int"}
    assert codebook["aot_attrs"] == ["bits", "group_size", "k", "out_dtype"] and codebook["outputs"] == 1
    assert not codebook["jit"]  # AOT only: the engine needs no Python at run time
    log = got["trtq::LogFakeQuantize"]
    assert log["attrs"] == {"bits": "int", "scale": "float", "step": "float", "shift": "float"}
    assert got["codebook3"]["dtype"] == "DataType.HALF" and got["codebook4"]["dtype"] == "DataType.FLOAT"
    for key in ("codebook3", "codebook4"):
        assert got[key]["rank"] == 2 and got[key]["kernel"] == "codebook_dequant_kernel" and got[key]["sm87"]
        assert got[key]["extra"] == 2  # rows and codebook stride, between the inputs and the output
        assert got[key]["ptx85"]
    assert got["log"] == {"dtype": "DataType.HALF", "kernel": "log_fake_quant_kernel", "sm87": True, "extra": 1}


def test_immediate_registration_stops_at_the_native_registry(tensorrt_api) -> None:
    """The plugin script registers for real: creator built, then the native registry (a stub here)."""
    if tensorrt_api.version == "10.3":
        pytest.skip("TensorRT 10.3 has no tensorrt.plugin (covered by the validation test)")
    got = _last_json(run_python(tensorrt_api, _NATIVE, timeout=300))
    # everything up to the creator ran; the stub libnvinfer's getPluginRegistry returned NULL
    assert got["error"] == "AttributeError" and "register_creator" in got["message"]
    assert got["frames"][-1] == "_register_plugin_creator" and "register" in got["frames"]
