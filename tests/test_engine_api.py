"""trtq's TensorRT code path against each version's real Python API (10.3, 10.16, 11.4 bindings, stub libraries).

Every build scenario runs `trtq.engine._trt` itself (parse, Polygraphy's CreateConfig / EngineBytesFromNetwork,
trtq's own config additions, the engine inspector, the I/O read-back) with `trtq.testing.trt_spy` spies in place
of the native objects: each attribute TensorRT or Polygraphy touches is looked up on the real class of that
version. A missing name fails the test; the version-dependent spellings come from `plan.decide` through
`_trt.resolve`, the very functions a real build runs. Polygraphy's TrtRunner (trtq run / compare) needs CUDA and
is not exercised here.
"""

from __future__ import annotations

import json

import pytest

from trtq.testing.tensorrt_api import run_python

pytest.importorskip("polygraphy")

_DRIVER = r"""
import json, os, sys, tempfile
import tensorrt as trt
from polygraphy.backend import trt as poly
from trtq.engine import _trt
from trtq.engine.plan import BuildConfig, decide, parse_shapes, trt_name
from trtq.errors import TrtqError
from trtq.testing.trt_spy import SpyFactory

lib = sys.argv[1]
scratch = tempfile.mkdtemp()
qdp = os.path.join(scratch, "qdp_plugins.py")
with open(qdp, "w") as fh:
    fh.write("import tensorrt.plugin as trtp\nassert callable(trtp.register) and callable(trtp.aot_impl)\n")
cache = os.path.join(scratch, "calib.cache")
with open(cache, "w") as fh:
    fh.write("TRT-100300-EntropyCalibration2\nx: 3c010204\n")
shapes = parse_shapes(["input:1x3x8x8,4x3x8x8,8x3x8x8"])
scenarios = {
    "strong": dict(shapes=shapes, workspace_gb=1, timing_cache=os.path.join(scratch, "timing.cache"),
                   builder_opt_level=4, plugins=(lib,)),
    "version_compatible": dict(version_compatible=True, plugins=(lib,)),
    "weak_calib_cache": dict(weakly_typed=True, calib_cache=cache),
    "dla": dict(target="orin", dla_core=1),
    "python_plugin": dict(plugins=(qdp,)),
}
version = trt_name(trt.__version__)
out = {"version": version,
       "weak_flags_in_bindings": {f: hasattr(trt.BuilderFlag, f) for f in ("INT8", "FP16", "FP8", "INT4")}}
for name, options in scenarios.items():
    config = BuildConfig(**options)
    try:
        decisions = decide(version, config)
    except TrtqError as exc:
        out[name] = {"refused": str(exc)}
        continue
    # the parsed network and the engine each have one I/O tensor, "input"
    make = SpyFactory(trt, overrides={"ICudaEngine.num_io_tensors": 1, "INetworkDefinition.num_inputs": 1,
                                      "ITensor.name": "input", "ITensor.is_shape_tensor": False})
    resolved = _trt.resolve(trt, decisions)
    engine = _trt.build_serialized(trt, poly, "model.onnx", config, decisions, make=make)
    info = _trt.inspect_engine(trt, engine, make=make)
    out[name] = {"names": list(resolved.names), "typing": decisions.typing, "used": sorted(make.used),
                 "missing": sorted(make.missing), "io": info["io"]}
control = SpyFactory(trt)  # the spy itself: a name the version lacks is caught, a present one passes
try:
    control("Builder").create_builder_config().int8_calibrator = None
except AttributeError:
    pass
out["control_missing"] = sorted(control.missing)
print(json.dumps(out))
"""


# Names Polygraphy looks for only inside `try: ... except AttributeError` or `hasattr` (backend/trt/util.py
# try_setup_polygraphy_calibrator): absent is a handled answer there, not an error.
_GUARDED_PROBES = {"IBuilderConfig.int8_calibrator", "IInt8Calibrator.is_polygraphy_calibrator"}


_SURFACES: dict[str, dict] = {}


def _surface(tensorrt_api) -> dict:
    """The driver's findings for one version (run once per version, shared by the tests below)."""
    if tensorrt_api.version not in _SURFACES:
        _SURFACES[tensorrt_api.version] = _run_driver(tensorrt_api)
    return _SURFACES[tensorrt_api.version]


def _run_driver(tensorrt_api) -> dict:
    plugin_lib = str(tensorrt_api.lib / f"libnvinfer_plugin.so.{tensorrt_api.wheel_version.split('.')[0]}")
    done = run_python(tensorrt_api, _DRIVER.replace("sys.argv[1]", repr(plugin_lib)))
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_engine_code_path_uses_only_names_the_version_has(tensorrt_api) -> None:
    got = _surface(tensorrt_api)
    built = {k: v for k, v in got.items() if isinstance(v, dict) and "used" in v}
    assert built, got
    for name, scenario in built.items():
        assert set(scenario["missing"]) <= _GUARDED_PROBES, (name, scenario["missing"])
        assert "NetworkDefinitionCreationFlag.EXPLICIT_BATCH" not in scenario["names"]  # gone since 10.0
        assert scenario["io"] and scenario["io"][0]["mode"] in ("input", "output")
    used = set().union(*(s["used"] for s in built.values()))
    # the builder config settings trtq asks for, as real attributes of this version's IBuilderConfig
    for attr in ("set_memory_pool_limit", "builder_optimization_level", "set_timing_cache", "create_timing_cache",
                 "add_optimization_profile", "set_flag", "profiling_verbosity"):
        assert f"IBuilderConfig.{attr}" in used, attr
    assert {"Builder.create_network", "OnnxParser.parse_from_file", "Builder.build_serialized_network",
            "Runtime.deserialize_cuda_engine", "ICudaEngine.create_engine_inspector",
            "EngineInspector.get_engine_information", "IOptimizationProfile.set_shape"} <= used
    assert "IBuilderConfig.plugins_to_serialize" in built["version_compatible"]["used"]
    assert "BuilderFlag.VERSION_COMPATIBLE" in built["version_compatible"]["names"]


def test_version_branches_pick_each_versions_spelling(tensorrt_api) -> None:
    got = _surface(tensorrt_api)
    version = got["version"]
    assert version == tensorrt_api.version
    strong = got["strong"]["names"]
    # the spy catches what a version lacks: TensorRT 11 removed IBuilderConfig.int8_calibrator
    assert got["control_missing"] == (["IBuilderConfig.int8_calibrator"] if version == "11" else [])
    weak_flags = [f"BuilderFlag.{f}" for f in got["weak_flags_in_bindings"]]
    if version == "11":  # strongly typed is the only mode: no flag, no weak typing, no calibrator
        assert not any(got["weak_flags_in_bindings"].values())  # INT8 / FP16 / FP8 / INT4 flags are gone
        for scenario in (s for s in got.values() if isinstance(s, dict) and "names" in s):
            assert not set(weak_flags) & set(scenario["names"])
        assert "NetworkDefinitionCreationFlag.STRONGLY_TYPED" not in strong
        assert "weakly typed" in got["weak_calib_cache"]["refused"]
        assert got["dla"]["typing"] == "strong" and "BuilderFlag.INT8" not in got["dla"]["names"]
    else:
        assert all(got["weak_flags_in_bindings"].values())
        assert "NetworkDefinitionCreationFlag.STRONGLY_TYPED" in strong and not set(weak_flags) & set(strong)
        weak = got["weak_calib_cache"]
        assert {"BuilderFlag.INT8", "BuilderFlag.FP16"} <= set(weak["names"])
        assert "IBuilderConfig.int8_calibrator" in weak["used"]
    if version == "10.16":  # no DLA between 10.8 and 11.4.1
        assert "no DLA" in got["dla"]["refused"]
    else:
        dla = got["dla"]
        assert "BuilderFlag.GPU_FALLBACK" in dla["names"]
        assert {"IBuilderConfig.DLA_core", "IBuilderConfig.default_device_type"} <= set(dla["used"])
        assert dla["typing"] == ("weak" if version == "10.3" else "strong")
    if version == "10.3":  # tensorrt.plugin (QDP) is not in the 10.3 bindings
        assert "10.9 or newer" in got["python_plugin"]["refused"]
    else:
        assert "NetworkDefinitionCreationFlag.PREFER_AOT_PYTHON_PLUGINS" in got["python_plugin"]["names"]
