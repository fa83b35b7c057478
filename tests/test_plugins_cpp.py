"""The C++/CUDA TensorRT plugins (trtq/plugins/cpp): their math against the numpy reference on the CPU, the
CMake build, and a host-side check of the library.

The per-element math the CUDA kernels call (cpp/src/quant_math.h) compiles as plain C++: cpp/test/math_check.cpp
runs it on the CPU with any C++ compiler, and it must equal `trtq.plugins.reference` (dequantize bit for bit;
log fake quantize to 2 ulps, the host's logf/expf against numpy's, with a code flip only at a rounding boundary).

The library build:
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

import numpy as np
import pytest

import trtq.plugins
from trtq.plugins import reference
from trtq.plugins.trt_face import codes_to_words

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


@pytest.fixture(scope="module")
def math_check(tmp_path_factory) -> Path:
    cxx = _tool("c++") or _tool("g++") or _tool("clang++")
    if cxx is None:
        pytest.skip("no C++ compiler (c++, g++ or clang++)")
    binary = tmp_path_factory.mktemp("math") / "math_check"
    done = _run([cxx, "-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror", "-ffp-contract=off", "-I", str(CPP / "src"),
                 "-o", str(binary), str(CPP / "test" / "math_check.cpp")])
    assert done.returncode == 0, done.stderr[-3000:]
    return binary


def _call(binary: Path, payload: bytes, count: int) -> np.ndarray:
    done = subprocess.run([str(binary)], input=payload, capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return np.frombuffer(done.stdout, dtype="<f4", count=count)


@pytest.mark.parametrize(("bits", "n", "k", "group", "per_row"),
                         [(4, 5, 37, 8, False), (3, 7, 101, 16, True), (3, 3, 300, 128, False), (4, 4, 1, 1, True)])
def test_cpp_dequantize_math_equals_reference(math_check, bits, n, k, group, per_row) -> None:
    rng = np.random.default_rng(n * k + bits)
    packed = reference.pack_codes(rng.integers(0, 1 << bits, (n, k)).astype(np.uint8), bits)
    codebook = rng.standard_normal((n if per_row else 1, 1 << bits)).astype(np.float16)
    scales = (rng.random((n, -(-k // group))) + 0.05).astype(np.float16)
    head = np.array([0, bits, n, k, group, codebook.shape[0]], "<i4")
    payload = b"".join(a.tobytes() for a in (head, codes_to_words(packed).astype("<i4"),
                                             codebook.astype("<f4"), scales.astype("<f4")))
    got = _call(math_check, payload, n * k).reshape(n, k)
    np.testing.assert_array_equal(got, reference.dequantize_codebook(packed, codebook, scales, bits, group, k))


@pytest.mark.parametrize(("scale", "step", "shift", "bits"),
                         [(1.0, 1.0, 0.0, 4), (0.8, 0.5, 0.0, 3), (2.5, 23 / 37, reference.GELU_SHIFT, 8)])
def test_cpp_log_math_equals_reference(math_check, scale, step, shift, bits) -> None:
    rng = np.random.default_rng(bits)
    x = np.concatenate([rng.random(4000) ** 6 * 3 - shift, [-shift, -1.0, 0.0, 1e-30, scale, 10 * scale, np.nan]])
    x = x.astype(np.float32)
    ln2 = np.log(2.0)
    constants = np.array([scale, shift, -1 / (step * ln2), np.log(scale) / (step * ln2), -step * ln2,
                          (1 << bits) - 1], "<f4")
    payload = np.array([1, x.size], "<i4").tobytes() + constants.tobytes() + x.astype("<f4").tobytes()
    got = _call(math_check, payload, x.size)
    want = reference.fake_quantize_log(x, scale, step, shift, bits)
    # the host's logf/expf (glibc: correctly rounded) and numpy's float32 log/exp differ by up to an ulp: levels
    # match to 2 ulps, and a code may flip (one level apart) only for a value on a rounding boundary
    level_got, level_want = got.astype(np.float64) + shift, want.astype(np.float64) + shift
    rel = np.abs(level_got - level_want) / np.maximum(np.abs(level_want), 1e-30)
    assert np.mean(rel > 2.5e-7) < 2e-3
    assert got[-1] == np.float32(-shift) and got[-7] == np.float32(-shift)  # NaN and x + shift = 0: the zero code


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
