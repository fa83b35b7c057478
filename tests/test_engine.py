"""trtq build / run / calib-cache without a GPU: command lines per TensorRT version, the version decisions,
the calibration-cache format, and the one clear failure when TensorRT is absent. Engine builds and runs on a
GPU are at the end, marked `tensorrt` and `gpu`; they skip where TensorRT cannot be imported."""

from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from trtq.cli import main
from trtq.engine import BuildConfig, command_lines, decide, parse_cache, parse_shapes, write_calib_cache
from trtq.engine.calib_cache import cache_text, header
from trtq.errors import TrtqError

import graphs

SHAPES = parse_shapes(["input:1x3x12x12,8x3x12x12,32x3x12x12"])
HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def _lines(version: str, tool: str = "trtexec", **options) -> str:
    config = BuildConfig(**{"shapes": SHAPES, **options})
    return command_lines("m.onnx", "m.engine", config, tool=tool, trt=version)


# --- trtexec / polygraphy command lines, per TensorRT version --------------------------------------


@pytest.mark.parametrize("version", ["10.3", "10.16", "11"])
def test_trtexec_spelling_per_version(version):
    text = _lines(version, workspace_gb=2, timing_cache="t.cache", builder_opt_level=5, plugins=("libp.so",))
    build, run = text.split("trtexec")[1:]
    # 10.x: strong typing is opt-in (--stronglyTyped, in trtexec since 10.3); 11: the only mode, the flag a no-op
    assert ("--stronglyTyped" in build) == (version != "11")
    assert "--int8" not in build and "--fp16" not in build  # precisions come from the ONNX when strongly typed
    assert "--memPoolSize=workspace:2048M" in build and "--workspace" not in build  # no --workspace in 10.x
    assert "--minShapes=input:1x3x12x12" in build and "--maxShapes=input:32x3x12x12" in build
    assert "--timingCacheFile=t.cache" in build and "--builderOptimizationLevel=5" in build
    assert "--staticPlugins=libp.so" in build and "--plugins=" not in build  # --plugins: deprecated
    assert "--loadEngine=m.engine" in run and "--shapes=input:8x3x12x12" in run


def test_trtexec_weak_typing_dla_and_serialized_plugins():
    text = _lines("10.3", target="orin", dla_core=1, calib_cache="calib.cache")
    assert "--int8 \\\n    --fp16" in text and "--calib=calib.cache" in text and "--stronglyTyped" not in text
    assert "--useDLACore=1 \\\n    --allowGPUFallback" in text
    text = _lines("10.16", version_compatible=True, plugins=("libp.so",))
    assert "--dynamicPlugins=libp.so \\\n    --setPluginsToSerialize=libp.so" in text
    assert "--versionCompatible" in text and "--staticPlugins" not in text


@pytest.mark.parametrize("version", ["10.3", "10.16", "11"])
def test_polygraphy_spelling_per_version(version):
    text = _lines(version, "polygraphy", workspace_gb=0.5, timing_cache="t.cache", plugins=("libp.so",))
    assert "polygraphy convert m.onnx \\\n    -o m.engine" in text
    assert ("--strongly-typed" in text) == (version != "11")
    assert "--trt-opt-shapes 'input:[8,3,12,12]'" in text and "--pool-limit workspace:512M" in text
    assert "--load-timing-cache t.cache" in text and "--save-timing-cache t.cache" in text
    assert "--plugins libp.so" in text


def test_print_refuses_what_the_version_cannot_build():
    with pytest.raises(TrtqError, match="no weakly typed mode"):
        _lines("11", weakly_typed=True)
    with pytest.raises(TrtqError, match="no DLA engines"):
        _lines("10.16", target="orin", dla_core=0)
    with pytest.raises(TrtqError, match="target with a DLA"):
        _lines("10.3", target="thor", dla_core=0)
    with pytest.raises(TrtqError, match="10.9 or newer"):
        _lines("10.3", plugins=("plugins.py",))


def test_decisions_per_version():
    strong = {v: decide(v, BuildConfig()) for v in ("10.3", "10.16", "11")}
    assert strong["10.3"].network_flags == ("STRONGLY_TYPED",) == strong["10.16"].network_flags
    assert strong["11"].network_flags == () and strong["11"].strongly_typed
    dla = decide("10.3", BuildConfig(target="orin", dla_core=0))
    assert dla.typing == "weak" and dla.precisions == ("int8", "fp16") and "GPU_FALLBACK" in dla.builder_flags
    assert decide("11", BuildConfig(target="orin", dla_core=0)).typing == "strong"
    qdp = decide("10.16", BuildConfig(plugins=("p.py",)))
    assert qdp.network_flags == ("STRONGLY_TYPED", "PREFER_AOT_PYTHON_PLUGINS")


def test_build_print_cli_needs_no_tensorrt(tmp_path, capsys):
    model = tmp_path / "conv.onnx"
    model.write_bytes(graphs.conv_block().SerializeToString())
    assert main(["build", str(model), "--shapes", "input:1x3x12x12,4x3x12x12,8x3x12x12", "--print", "trtexec",
                 "--target", "orin"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# TensorRT 10.3, strongly typed, target orin") and "--saveEngine=" in out
    assert not list(tmp_path.glob("*.engine*"))
    # the model's dynamic batch needs a range, even for --print when the model is at hand
    assert main(["build", str(model), "--print", "trtexec"]) == 2
    assert "--shapes input:MIN,OPT,MAX" in capsys.readouterr().err


def test_shapes_are_validated():
    with pytest.raises(TrtqError, match="MIN <= OPT <= MAX"):
        parse_shapes(["x:4x3,2x3,8x3"])
    with pytest.raises(TrtqError, match="not NAME:MIN,OPT,MAX"):
        parse_shapes(["x:1x3,2x3"])
    assert parse_shapes(["a:b:1x3"])[0].name == "a:b"  # the last colon separates the name
    assert parse_shapes(["x:2x3"])[0].max == (2, 3)


def test_layer_precisions_from_inspector_json():
    from trtq.engine._trt import _layers

    # the shape of IEngineInspector JSON at detailed verbosity (layer names only below it)
    info = {"Layers": ["named only", {"Name": "conv", "LayerType": "CaskConvolution", "TacticName": "sm87_xmma",
                                      "Inputs": [{"Name": "x", "Format/Datatype": "Int8 NC/32HW32"}],
                                      "Outputs": [{"Name": "y", "Format/Datatype": "Row major linear FP16 format"}]}]}
    assert _layers(json.dumps(info)) == [
        {"name": "named only"},
        {"name": "conv", "type": "CaskConvolution", "inputs": ["int8"], "outputs": ["fp16"], "tactic": "sm87_xmma"}]
    assert _layers("") == [] and _layers("not json") == []


# --- without TensorRT: one message, exit status 2, nothing written ----------------------------------


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here: the missing-TensorRT message cannot show")
def test_build_and_run_without_tensorrt_name_what_to_install(tmp_path, capsys):
    model = tmp_path / "conv.onnx"
    model.write_bytes(graphs.conv_block().SerializeToString())
    engine = tmp_path / "conv.engine"
    assert main(["build", str(model), "-o", str(engine), "--shapes", "input:1x3x12x12"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "TensorRT" in err and "tensorrt-cu12" in err and "docker/Dockerfile" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conv.onnx"]
    engine.write_bytes(b"not an engine")
    np.savez(tmp_path / "eval.npz", **graphs.conv_data(2))
    assert main(["run", str(engine), "--data", str(tmp_path / "eval.npz"), "-o", str(tmp_path / "out.npz")]) == 2
    assert "tensorrt-cu12" in capsys.readouterr().err and not (tmp_path / "out.npz").exists()
    assert main(["compare", str(model), str(engine), "--data", str(tmp_path / "eval.npz")]) == 2
    assert "tensorrt-cu12" in capsys.readouterr().err


def test_build_flag_errors_come_before_tensorrt(tmp_path, capsys):
    model = tmp_path / "conv.onnx"
    model.write_bytes(graphs.conv_block().SerializeToString())
    assert main(["build", str(model), "--shapes", "images:1x3x12x12"]) == 2
    assert "not an input" in capsys.readouterr().err
    assert main(["build", str(model), "--shapes", "input:1x3x12x12", "--trt", "10.3"]) == 2
    assert "--trt applies to --print" in capsys.readouterr().err
    assert main(["build", str(model), "--shapes", "input:1x4x12x12"]) == 2
    assert "fixed dimensions" in capsys.readouterr().err


# --- legacy INT8 calibration cache ------------------------------------------------------------------


def test_calib_cache_round_trips_bit_for_bit():
    rng = np.random.default_rng(0)
    scales = {f"/layer{i}/Conv_output_0": float(np.float32(s)) for i, s in enumerate(rng.uniform(1e-6, 10, 50))}
    scales["tiny"] = float(np.finfo(np.float32).tiny)
    text = cache_text(scales, "10.3.0")
    head, back = parse_cache(text)
    assert head == "TRT-100300-EntropyCalibration2"
    assert list(back) == sorted(scales)
    for name, value in scales.items():
        assert back[name].tobytes() == np.float32(value).tobytes()
    # one known line: 1/127 as float32 big-endian
    assert cache_text({"x": np.float32(1 / 127)}, "10.16.1").splitlines() == [
        "TRT-101601-EntropyCalibration2", "x: " + struct.pack(">f", np.float32(1 / 127)).hex()]


def test_calib_cache_refuses_tensorrt_11_and_bad_scales():
    assert header("10.3") == "TRT-100300-EntropyCalibration2"
    with pytest.raises(TrtqError, match="no implicit INT8"):
        header("11")
    with pytest.raises(TrtqError, match="positive scales"):
        cache_text({"x": 0.0}, "10.3")


def test_calib_cache_from_a_quantize_sidecar(conv_model, conv_calib, tmp_path, capsys):
    out = tmp_path / "q.onnx"
    assert main(["quantize", str(conv_model), "-o", str(out), "--calib-data", str(conv_calib), "--quiet"]) == 0
    sidecar = json.loads((tmp_path / "q.trtq.json").read_text())
    assert main(["calib-cache", str(tmp_path / "q.trtq.json"), "-o", str(tmp_path / "calib.cache")]) == 0
    assert "TRT-100300-EntropyCalibration2" in capsys.readouterr().out
    _, scales = parse_cache((tmp_path / "calib.cache").read_text())
    activations = {n: t for n, t in sidecar["tensors"].items() if t["kind"] == "activation"}
    assert set(scales) == set(activations) and activations
    for name, entry in activations.items():  # the very float32 scale of the QDQ graph
        assert scales[name] == np.float32(entry["scale"])
    result = write_calib_cache(tmp_path / "q.trtq.json", tmp_path / "c2.cache", trt="10.16.1")
    assert result.header == "TRT-101601-EntropyCalibration2" and result.tensors == len(activations)


def test_calib_cache_refuses_a_non_int8_sidecar(tmp_path, capsys):
    report = tmp_path / "m.trtq.json"
    report.write_text(json.dumps({"summary": {"precision": "fp8"}, "tensors": {}}))
    assert main(["calib-cache", str(report), "-o", str(tmp_path / "c.cache")]) == 2
    assert "INT8 scales" in capsys.readouterr().err and not (tmp_path / "c.cache").exists()


# --- on a GPU with TensorRT (skip here) -----------------------------------------------------------


@pytest.fixture
def real_tensorrt():
    trt = pytest.importorskip("tensorrt", reason="needs TensorRT (pip install tensorrt-cu12) and an NVIDIA GPU")
    pytest.importorskip("polygraphy")
    from polygraphy import cuda

    try:
        cuda.wrapper()
    except Exception as exc:  # no libcudart / no driver
        pytest.skip(f"needs an NVIDIA GPU with CUDA: {exc}")
    return trt


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_build_run_compare_on_gpu(real_tensorrt, conv_model, conv_calib, tmp_path):
    from trtq.engine import build, run
    from trtq.evaluate import compare

    qdq = tmp_path / "q.onnx"
    assert main(["quantize", str(conv_model), "-o", str(qdq), "--calib-data", str(conv_calib), "--quiet"]) == 0
    cache = tmp_path / "timing.cache"
    result = build(qdq, tmp_path / "q.engine", shapes=["input:1x3x12x12,4x3x12x12,8x3x12x12"],
                   timing_cache=str(cache))
    report = json.loads(Path(result.report_path).read_text())
    assert report["onnx"]["sha256"] and report["gpu"]["compute_capability"] and report["layers"]
    assert "int8" in report["layer_output_precisions"] and cache.exists()
    assert not report["timing_cache"]["reused"]
    again = build(qdq, tmp_path / "q2.engine", shapes=["input:1x3x12x12,4x3x12x12,8x3x12x12"],
                  timing_cache=str(cache))
    assert again.report["timing_cache"]["reused"]
    np.savez(tmp_path / "eval.npz", **graphs.conv_data(8, seed=4))
    ran = run(result.path, tmp_path / "eval.npz", output=tmp_path / "out.npz", batch_size=4)
    assert ran.samples == 8 and np.load(tmp_path / "out.npz")["logits"].shape[0] == 8
    fidelity = compare(conv_model, result.path, tmp_path / "eval.npz", batch_size=4)
    assert fidelity.outputs[0].cosine > 0.99 and fidelity.tensors == []


def test_engine_package_imports_without_tensorrt_or_polygraphy():
    import subprocess
    import sys

    code = ("import sys\nfor name in ('tensorrt', 'polygraphy'):\n    sys.modules[name] = None\n"
            "import trtq.engine, trtq.evaluate, trtq.cli\nprint(trtq.build)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_implicit_int8_from_trtq_calibration_cache_on_gpu(real_tensorrt, conv_model, conv_calib, tmp_path, capsys):
    if int(real_tensorrt.__version__.split(".")[0]) >= 11:
        pytest.skip("TensorRT 11 has no implicit INT8 (calibration caches end with TensorRT 10)")
    qdq = tmp_path / "q.onnx"
    assert main(["quantize", str(conv_model), "-o", str(qdq), "--calib-data", str(conv_calib), "--quiet"]) == 0
    version = ".".join(real_tensorrt.__version__.split(".")[:3])
    assert main(["calib-cache", str(tmp_path / "q.trtq.json"), "-o", str(tmp_path / "c.cache"), "--trt", version]) == 0
    engine = tmp_path / "fp32.engine"
    assert main(["build", str(conv_model), "-o", str(engine), "--calib-cache", str(tmp_path / "c.cache"),
                 "--shapes", "input:1x3x12x12,4x3x12x12,8x3x12x12"]) == 0
    report = json.loads((tmp_path / "fp32.engine.json").read_text())
    assert report["decisions"]["typing"] == "weak" and "int8" in report["layer_output_precisions"]
    assert "weakly typed" in capsys.readouterr().out
