"""The real TensorRT Python API on a machine without TensorRT: ground truth for API-surface tests.

TensorRT's Python bindings (`tensorrt-cu12-bindings` on PyPI, about 1.3 MB per version) are ordinary
wheels, but their `tensorrt.so` links against TensorRT's native libraries, whose wheels come from a host
that trtq's development machines cannot reach. From those libraries the bindings need only three
SONAMEs and nine entry points:

    libnvinfer.so.N         createInferBuilder_INTERNAL, createInferRefitter_INTERNAL,
                            createInferRuntime_INTERNAL, getBuilderPluginRegistry, getPluginRegistry
    libnvonnxparser.so.N    createNvOnnxParser_INTERNAL, createNvOnnxParserRefitter_INTERNAL,
                            getNvOnnxParserVersion
    libnvinfer_plugin.so.N  initLibNvInferPlugins

`prepare(version)` downloads the bindings wheel of that version (cached), unpacks its
`tensorrt_bindings` package under the name `tensorrt` (as the `tensorrt` meta-package does), and
compiles three tiny C libraries with those SONAMEs whose functions return 0 / NULL. A Python started
with `environment(version)` then imports `tensorrt` with the real enums, classes, methods and
docstrings of that version, and `tensorrt.plugin` where the version ships it (10.16 and later). Nothing
native can be created: a `trt.Builder(...)` fails. This is a check of names and signatures, never a
fake engine.

Each version runs in its own process (`run_python`): the versions share module and library names.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BINDINGS", "StubUnavailable", "TensorRTApi", "prepare", "run_python"]

# trtq's TensorRT version names -> the bindings wheel (tensorrt-cu12-bindings) of that release.
BINDINGS = {"10.3": "10.3.0", "10.16": "10.16.1.11", "11": "11.4.0.106"}

_LIBRARIES = {
    "libnvinfer": ("createInferBuilder_INTERNAL", "createInferRefitter_INTERNAL", "createInferRuntime_INTERNAL",
                   "getBuilderPluginRegistry", "getPluginRegistry"),
    "libnvonnxparser": ("createNvOnnxParser_INTERNAL", "createNvOnnxParserRefitter_INTERNAL",
                        "getNvOnnxParserVersion"),
    "libnvinfer_plugin": ("initLibNvInferPlugins",),
}


class StubUnavailable(RuntimeError):
    """The bindings wheel could not be had or the stub libraries not compiled (the reason says which)."""


@dataclass(frozen=True)
class TensorRTApi:
    """Where one version's `tensorrt` package and stub libraries live."""

    version: str
    wheel_version: str
    site: Path  # holds the `tensorrt` package
    lib: Path  # holds the stub libraries

    def environment(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Environment variables for a Python process that imports this version as `tensorrt`."""
        env = dict(os.environ if base is None else base)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(self.site), env.get("PYTHONPATH", "")) if p)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(self.lib), env.get("LD_LIBRARY_PATH", "")) if p)
        return env


def _cache_root() -> Path:
    root = os.environ.get("TRTQ_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or
                                                        os.path.expanduser("~/.cache"), "trtq")
    return Path(root) / "tensorrt-api"


def prepare(version: str, cache: str | os.PathLike[str] | None = None) -> TensorRTApi:
    """The `tensorrt` package of `version` ("10.3", "10.16", "11") with stub libraries, built once and cached.

    Raises:
        StubUnavailable: the wheel cannot be downloaded (no registry) or no C compiler is found.
    """
    if version not in BINDINGS:
        raise ValueError(f"unknown TensorRT version {version!r}; known: {', '.join(BINDINGS)}")
    wheel_version = BINDINGS[version]
    root = (Path(cache) if cache is not None else _cache_root()) / wheel_version
    api = TensorRTApi(version, wheel_version, root / "site", root / "lib")
    if (api.site / "tensorrt" / "__init__.py").is_file() and all(
        (api.lib / f"{name}.so.{_major(wheel_version)}").is_file() for name in _LIBRARIES
    ):
        return api
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as scratch:
        staged = Path(scratch)
        _unpack(_download(wheel_version, staged), staged / "site")
        _compile_stubs(_major(wheel_version), staged / "lib")
        for part in ("site", "lib"):
            shutil.rmtree(root / part, ignore_errors=True)
            os.replace(staged / part, root / part)
    return api


def run_python(api: TensorRTApi, code: str, *, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh Python process that imports `api`'s TensorRT version as `tensorrt`."""
    return subprocess.run([sys.executable, "-c", code], env=api.environment(), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def _major(wheel_version: str) -> str:
    return wheel_version.split(".")[0]


def _download(wheel_version: str, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
           "--dest", str(dest), f"tensorrt-cu12-bindings=={wheel_version}"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StubUnavailable(f"pip could not download tensorrt-cu12-bindings=={wheel_version}: {exc}") from exc
    wheels = sorted(dest.glob("tensorrt_cu12_bindings-*.whl"))
    if done.returncode != 0 or not wheels:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no wheel"]
        raise StubUnavailable(f"pip could not download tensorrt-cu12-bindings=={wheel_version}: {tail[0]}")
    return wheels[0]


def _unpack(wheel: Path, site: Path) -> None:
    """The wheel's `tensorrt_bindings/` as `site/tensorrt/` (the name the `tensorrt` package gives it)."""
    prefix = "tensorrt_bindings/"
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.namelist():
            if not member.startswith(prefix) or member.endswith("/"):
                continue
            target = site / "tensorrt" / member[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read(member))


def _compile_stubs(major: str, lib: Path) -> None:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        raise StubUnavailable("no C compiler (cc, gcc or clang) to build the stub TensorRT libraries")
    lib.mkdir(parents=True)
    for name, symbols in _LIBRARIES.items():
        source = lib / f"{name}.c"
        source.write_text("".join(f"void *{symbol}(void) {{ return 0; }}\n" for symbol in symbols))
        soname = f"{name}.so.{major}"
        done = subprocess.run([compiler, "-shared", "-fPIC", "-o", str(lib / soname), f"-Wl,-soname,{soname}",
                               str(source)], capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise StubUnavailable(f"{compiler} could not build {soname}: {done.stderr.strip()[:300]}")
        source.unlink()
