"""The C++/CUDA TensorRT plugins (trtq/plugins/cpp): CMake build and a host-side check of the library.

Needs cmake, nvcc (and the C++ compiler it uses) and TensorRT's public headers (NvInferRuntime.h ...), which are not on
PyPI: set TRTQ_TENSORRT_INCLUDE to a folder holding them (a TensorRT install, a JetPack, or the
`include/` of NVIDIA's TensorRT OSS repository); otherwise the test skips, as it does in CI. No GPU and
no libnvinfer are needed: the library uses TensorRT's interfaces only, and the check program
(cpp/test/plugin_api_check.cpp) drives it through `getCreators` like TensorRT's plugin registry would,
without launching a kernel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

import trtq.plugins

CPP = Path(trtq.plugins.__file__).parent / "cpp"
_HEADER_DIRS = ("/usr/include/x86_64-linux-gnu", "/usr/include/aarch64-linux-gnu", "/usr/include",
                "/usr/local/TensorRT/include")


def _tool(name: str, *extra: str) -> str | None:
    found = shutil.which(name)
    return found or next((p for p in extra if os.access(p, os.X_OK)), None)


def _tensorrt_include() -> str | None:
    candidates = [os.environ.get("TRTQ_TENSORRT_INCLUDE", ""), *_HEADER_DIRS]
    return next((d for d in candidates if d and (Path(d) / "NvInferRuntime.h").is_file()), None)


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
                          **kwargs)


def test_cpp_plugins_build_and_pass_the_api_check(tmp_path: Path) -> None:
    cmake, nvcc = _tool("cmake"), _tool("nvcc", "/usr/local/cuda/bin/nvcc")
    include = _tensorrt_include()
    if include is None:
        pytest.skip("TensorRT headers not found (not on PyPI): set TRTQ_TENSORRT_INCLUDE to a folder with "
                    "NvInferRuntime.h")
    if cmake is None or nvcc is None:
        pytest.skip(f"needs cmake and nvcc (found: cmake={cmake}, nvcc={nvcc})")
    build = tmp_path / "build"
    configure = _run([cmake, "-S", str(CPP), "-B", str(build), f"-DTENSORRT_INCLUDE_DIR={include}",
                      "-DCMAKE_CUDA_ARCHITECTURES=87", f"-DCMAKE_CUDA_COMPILER={nvcc}", "-DTRTQ_PLUGINS_CHECK=ON"])
    assert configure.returncode == 0, configure.stdout[-2000:] + configure.stderr[-2000:]
    built = _run([cmake, "--build", str(build)])
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    assert "warning" not in built.stdout.lower()
    done = _run([str(build / "plugin_api_check"), str(build / "libtrtq_plugins.so")])
    assert done.returncode == 0 and "0 failed" in done.stdout, done.stdout[-3000:]
