"""The README's error promise, through the command line: every error a user can cause ends with one
message naming the fix, exit status 2, no partial output (no model, no sidecar, no temp file) and every
input byte-for-byte unchanged.

Each case runs `python -m trtq ...` in a fresh workspace (model, calibration and evaluation data, an image
folder, a preprocessing JSON) with TMPDIR inside it; the test hashes every file of the workspace before
and after and asserts that nothing changed, was added or was left behind. One parametrized test per class:
paths, data, options, interruption. Each subprocess runs under an address-space limit, so a case that
would grow without bound fails instead of taking the machine down.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import graphs

_MEMORY_LIMIT = 6 << 30  # bytes of address space per trtq process (a run here needs < 2 GB)


def _limit_memory() -> None:  # pragma: no cover - runs in the child
    resource.setrlimit(resource.RLIMIT_AS, (_MEMORY_LIMIT, _MEMORY_LIMIT))


def _write_png(path: Path, seed: int, size: tuple[int, int] = (20, 16)) -> None:
    from PIL import Image

    pixels = np.random.RandomState(seed).randint(0, 256, (size[1], size[0], 3)).astype(np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    """A workspace: conv.onnx (input float32[batch, 3, 12, 12]), calib.npz, eval.npz, images/, pre.json."""
    onnx.save(graphs.conv_block(), str(tmp_path / "conv.onnx"))
    np.savez(tmp_path / "calib.npz", **graphs.conv_data(8))
    np.savez(tmp_path / "eval.npz", **graphs.conv_data(4, seed=3))
    (tmp_path / "images").mkdir()
    for i in range(2):
        _write_png(tmp_path / "images" / f"{i}.png", i)
    (tmp_path / "pre.json").write_text(json.dumps({"crop": 12, "resize": 12}))
    (tmp_path / "tmp").mkdir()
    return tmp_path


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file (and '<dir>' for every folder) under `root`.

    `tmp/.ses` is left out: ONNX Runtime (1.32) writes its own session id there on every session.
    """
    out: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if rel == "tmp/.ses":
            continue
        out[rel] = "<dir>" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def trtq(ws: Path, *args: str, code: str | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m trtq ARGS` (or `python -c CODE ARGS`) in `ws`, {ws} in the arguments replaced."""
    argv = [a.replace("{ws}", str(ws)) for a in args]
    cmd = [sys.executable, "-c", code, *argv] if code else [sys.executable, "-m", "trtq", *argv]
    env = {**os.environ, "TMPDIR": str(ws / "tmp"), "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run(cmd, cwd=ws, capture_output=True, text=True, timeout=300, env=env,
                          stdin=subprocess.DEVNULL, preexec_fn=_limit_memory)


def assert_user_error(res: subprocess.CompletedProcess[str], message: str) -> None:
    """Exit status 2 and one `trtq: error: ... Fix: ...` message as the whole stderr, no traceback."""
    err = res.stderr
    assert res.returncode == 2, (res.returncode, err[-3000:])
    assert "Traceback" not in err and not re.search(r"^\w+(Error|Exception|Interrupt)\b", err, re.M), err[-3000:]
    assert err.startswith("trtq: error: ") and err.count("trtq: error:") == 1, err
    assert message in err, err
    assert " Fix: " in err and err.endswith("\n"), err


def run_case(ws: Path, args: list[str], message: str, setup: Callable[[Path], None] | None = None) -> None:
    if setup is not None:
        setup(ws)
    before = snapshot(ws)
    res = trtq(ws, *args)
    assert_user_error(res, message)
    after = snapshot(ws)
    assert after == before, {k: (before.get(k), after.get(k)) for k in set(before) | set(after)
                             if before.get(k) != after.get(k)}


_Q = ["quantize", "{ws}/conv.onnx", "--quiet"]


# --- paths ---------------------------------------------------------------------------------------------

def _external_data(ws: Path) -> None:
    model = graphs.conv_block(channels=32)
    onnx.save(model, str(ws / "ext.onnx"), save_as_external_data=True, location="ext.onnx.data",
              size_threshold=0)


def _external_data_missing(ws: Path) -> None:
    _external_data(ws)
    (ws / "ext.onnx.data").unlink()


def _calib_named_like_sidecar(ws: Path) -> None:
    np.savez(ws / "tmpcalib.npz", **graphs.conv_data(4))
    (ws / "tmpcalib.npz").rename(ws / "q.trtq.json")


def _file_in_the_way(ws: Path) -> None:
    (ws / "afile").write_text("not a folder")


def _output_dir(ws: Path) -> None:
    (ws / "out.onnx").mkdir()


def _read_only_dir(ws: Path) -> None:
    (ws / "ro").mkdir()
    (ws / "ro").chmod(0o500)


PATH_CASES = {
    "missing-model": (["quantize", "{ws}/nope.onnx", "-o", "{ws}/q.onnx", "--calib-data", "{ws}/calib.npz"],
                      "no such file", None),
    "not-onnx": (["quantize", "{ws}/calib.npz", "-o", "{ws}/q.onnx", "--calib-data", "{ws}/calib.npz"],
                 "not a valid ONNX model", None),
    "model-is-folder": (["quantize", "{ws}/images", "-o", "{ws}/q.onnx", "--calib-data", "{ws}/calib.npz"],
                        "is a directory", None),
    "missing-calib": ([*_Q, "-o", "{ws}/q.onnx", "--calib-data", "{ws}/nope.npz"], "no such file", None),
    # the output is never an input (item 1)
    "output-is-model": ([*_Q, "-o", "{ws}/conv.onnx", "--calib-data", "{ws}/calib.npz"],
                        "would overwrite the model", None),
    "output-is-calib": ([*_Q, "-o", "{ws}/calib.npz", "--calib-data", "{ws}/calib.npz"],
                        "would overwrite the calibration data", None),
    "output-is-calib-folder": ([*_Q, "-o", "{ws}/images", "--calib-data", "{ws}/images", "--image-size", "12"],
                               "is a directory", None),
    "output-is-preprocess": ([*_Q, "-o", "{ws}/pre.json", "--calib-data", "{ws}/images", "--preprocess",
                              "{ws}/pre.json"], "would overwrite the preprocessing file", None),
    "output-is-external-data": (["quantize", "{ws}/ext.onnx", "--quiet", "-o", "{ws}/ext.onnx.data",
                                 "--calib-data", "{ws}/calib.npz"], "would overwrite the model's external data",
                                _external_data),
    "sidecar-is-calib": ([*_Q, "-o", "{ws}/q.onnx", "--calib-data", "{ws}/q.trtq.json"],
                         "would overwrite the calibration data", _calib_named_like_sidecar),
    # the output path is checked before any work (item 6)
    "output-is-directory": ([*_Q, "-o", "{ws}/out.onnx", "--calib-data", "{ws}/calib.npz"],
                            "is a directory", _output_dir),
    "output-under-a-file": ([*_Q, "-o", "{ws}/afile/q.onnx", "--calib-data", "{ws}/calib.npz"],
                            "is not a folder", _file_in_the_way),
    "output-dir-read-only": ([*_Q, "-o", "{ws}/ro/q.onnx", "--calib-data", "{ws}/calib.npz"],
                             "cannot be written", _read_only_dir),
    "output-in-proc": ([*_Q, "-o", "/proc/trtq-test.onnx", "--calib-data", "{ws}/calib.npz"],
                       "cannot be written", None),
    "missing-external-data": (["quantize", "{ws}/ext.onnx", "--quiet", "-o", "{ws}/q.onnx", "--calib-data",
                               "{ws}/calib.npz"], "ext.onnx.data", _external_data_missing),
    "compare-missing-candidate": (["compare", "{ws}/conv.onnx", "{ws}/nope.onnx", "--data", "{ws}/eval.npz"],
                                  "no such file", None),
    "check-not-onnx": (["check", "{ws}/calib.npz"], "not a valid ONNX model", None),
    "demo-out-is-a-file": (["demo", "--out", "{ws}/calib.npz"], "is a file", None),
}


@pytest.mark.parametrize("case", sorted(PATH_CASES))
def test_bad_path(ws, case):
    args, message, setup = PATH_CASES[case]
    if case == "output-in-proc" and not Path("/proc").is_dir():
        pytest.skip("no /proc on this system")
    if case == "output-dir-read-only" and os.geteuid() == 0:
        pytest.skip("root writes into a read-only folder (output-in-proc covers an unwritable folder)")
    run_case(ws, args, message, setup)


# --- data ----------------------------------------------------------------------------------------------

def _npz(name: str, **arrays: np.ndarray) -> Callable[[Path], None]:
    def setup(ws: Path) -> None:
        np.savez(ws / name, **arrays)

    return setup


def _pickle_member(ws: Path) -> None:
    with zipfile.ZipFile(ws / "bad.npz", "w") as zf:
        zf.writestr("input.npy", b"\x80\x04\x95" + b"raw pickle bytes, not an array" * 4)


def _truncated_member(ws: Path) -> None:
    np.savez(ws / "full.npz", **graphs.conv_data(8))
    with zipfile.ZipFile(ws / "full.npz") as src, zipfile.ZipFile(ws / "bad.npz", "w") as dst:
        data = src.read("input.npy")
        dst.writestr("input.npy", data[: len(data) // 2])
    (ws / "full.npz").unlink()


def _static_16(ws: Path) -> None:
    model = graphs.conv_block(size=16)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(model, str(ws / "static16.onnx"))


def _dynamic_hw(ws: Path) -> None:
    model = graphs.conv_block()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "h", "w"
    onnx.save(model, str(ws / "dynamic.onnx"))


_ZEROS = np.zeros((4, 3, 12, 12), np.float32)
_NANS = np.full((4, 3, 12, 12), np.nan, np.float32)

DATA_CASES = {
    "wrong-names": ([*_Q, "-o", "{ws}/q.onnx", "--calib-data", "{ws}/bad.npz"], "do not match the model inputs",
                    _npz("bad.npz", image=_ZEROS)),
    "wrong-shape": ([*_Q, "-o", "{ws}/q.onnx", "--calib-data", "{ws}/bad.npz"], "the model expects",
                    _npz("bad.npz", input=np.zeros((2, 3, 8, 8), np.float32))),
    "empty-calib": ([*_Q, "-o", "{ws}/q.onnx", "--calib-data", "{ws}/bad.npz"], "is empty",
                    _npz("bad.npz", input=np.zeros((0, 3, 12, 12), np.float32))),
    "not-npz": ([*_Q, "-o", "{ws}/q.onnx", "--calib-data", "{ws}/pre.json"], "not an .npz archive", None),
    "pickle-member": ([*_Q, "-o", "{ws}/q.onnx", "--calib-data", "{ws}/bad.npz"], "bad.npz", _pickle_member),
    "truncated-member": ([*_Q, "-o", "{ws}/q.onnx", "--calib-data", "{ws}/bad.npz"], "bad.npz",
                         _truncated_member),
    "compare-pickle-member": (["compare", "{ws}/conv.onnx", "{ws}/conv.onnx", "--data", "{ws}/bad.npz"],
                              "bad.npz", _pickle_member),
    # a tensor with no finite non-zero value has no scale (item 3)
    "all-nan-calib": ([*_Q, "-o", "{ws}/q.onnx", "--calib-data", "{ws}/bad.npz"],
                      "no finite non-zero value", _npz("bad.npz", input=_NANS)),
    "all-zero-calib": ([*_Q, "-o", "{ws}/q.onnx", "--calib-data", "{ws}/bad.npz"],
                       "no finite non-zero value", _npz("bad.npz", input=_ZEROS)),
    # images are checked against the model's input shape before one is read; one sample is bounded (item 2)
    "image-size-vs-static-input": (["quantize", "{ws}/static16.onnx", "--quiet", "-o", "{ws}/q.onnx",
                                    "--calib-data", "{ws}/images", "--image-size", "100000"],
                                   "--image-size 16", _static_16),
    "image-size-unbounded": (["quantize", "{ws}/dynamic.onnx", "--quiet", "-o", "{ws}/q.onnx",
                              "--calib-data", "{ws}/images", "--image-size", "100000"], "pixels", _dynamic_hw),
    # INT4 reads its calibration data like every precision (item 4)
    "int4-wrong-names": ([*_Q, "-o", "{ws}/q.onnx", "--precision", "int4", "--block-size", "16",
                          "--calib-data", "{ws}/bad.npz"], "do not match the model inputs",
                         _npz("bad.npz", image=_ZEROS)),
    "int4-not-npz": ([*_Q, "-o", "{ws}/q.onnx", "--precision", "int4", "--block-size", "16", "--calib-data",
                      "{ws}/pre.json"], "not an .npz archive", None),
    # nothing finite to compare is no measurement (item 8)
    "compare-nothing-finite": (["compare", "{ws}/conv.onnx", "{ws}/conv.onnx", "--data", "{ws}/bad.npz"],
                               "no finite", _npz("bad.npz", input=_NANS)),
    "bad-preprocess-json": ([*_Q, "-o", "{ws}/q.onnx", "--calib-data", "{ws}/images", "--preprocess",
                             "{ws}/calib.npz"], "is not readable JSON", None),
}


@pytest.mark.parametrize("case", sorted(DATA_CASES))
def test_bad_data(ws, case):
    args, message, setup = DATA_CASES[case]
    run_case(ws, args, message, setup)


# --- options -------------------------------------------------------------------------------------------

OPTION_CASES = {
    "no-calib": ([*_Q, "-o", "{ws}/q.onnx"], "needs calibration data"),
    "unknown-precision": ([*_Q, "-o", "{ws}/q.onnx", "--calib-data", "{ws}/calib.npz", "--precision", "int3"],
                          "unknown precision"),
    "unknown-method": ([*_Q, "-o", "{ws}/q.onnx", "--calib-data", "{ws}/calib.npz", "--calib-method", "magic"],
                       "unknown calibration method"),
    "fp8-on-orin": ([*_Q, "-o", "{ws}/q.onnx", "--calib-data", "{ws}/calib.npz", "--precision", "fp8",
                     "--target", "orin"], "cannot run on target 'orin'"),
    "nothing-to-quantize": ([*_Q, "-o", "{ws}/q.onnx", "--calib-data", "{ws}/calib.npz", "--exclude", "."],
                            "no quantizable op"),
    "negative-seed": ([*_Q, "-o", "{ws}/q.onnx", "--calib-data", "{ws}/calib.npz", "--seed", "-1"], "seed"),
    "opset-below-model": ([*_Q, "-o", "{ws}/q.onnx", "--calib-data", "{ws}/calib.npz", "--opset", "15"],
                          "below the model's opset 17"),
    "fallback-budget-everything": ([*_Q, "-o", "{ws}/q.onnx", "--calib-data", "{ws}/calib.npz",
                                    "--fallback-budget", "99"], "nothing would be quantized"),
    "target-sqnr-all-float": ([*_Q, "-o", "{ws}/q.onnx", "--calib-data", "{ws}/calib.npz",
                               "--target-sqnr", "150"], "nothing would be quantized"),
    "target-sqnr-past-identical": ([*_Q, "-o", "{ws}/q.onnx", "--calib-data", "{ws}/calib.npz",
                                    "--target-sqnr", "1000"], "above the 200 dB of identical outputs"),
    "check-refuses": ([*_Q, "-o", "{ws}/q.onnx", "--calib-data", "{ws}/calib.npz", "--target", "orin",
                       "--trt", "10.3", "--opset", "21"], "breaks TensorRT rules"),
    "unknown-conv-method": ([*_Q, "-o", "{ws}/q.onnx", "--calib-data", "{ws}/calib.npz", "--conv-method", "magic"],
                            "unknown conv weight method 'magic'"),
    "max-float-macs-over-100": ([*_Q, "-o", "{ws}/q.onnx", "--calib-data", "{ws}/calib.npz",
                                 "--max-float-macs", "150"], "is not a percentage in [0, 100]"),
    "no-fallback-with-budget": ([*_Q, "-o", "{ws}/q.onnx", "--calib-data", "{ws}/calib.npz", "--no-fallback",
                                 "--max-float-macs", "5"], "no fallback was asked for together with"),
    "pass-option-unknown-field": ([*_Q, "-o", "{ws}/q.onnx", "--calib-data", "{ws}/calib.npz",
                                   "--pass-option", "cle.nosuch=1"], "unknown option(s) nosuch of the cle pass"),
    "pass-option-unknown-pass": ([*_Q, "-o", "{ws}/q.onnx", "--calib-data", "{ws}/calib.npz",
                                  "--pass-option", "nopass.x=1"], "unknown pass 'nopass'"),
    "pass-option-not-assignment": ([*_Q, "-o", "{ws}/q.onnx", "--calib-data", "{ws}/calib.npz",
                                    "--pass-option", "nonsense"], "is not NAME.FIELD=VALUE"),
    "pass-option-bad-value": ([*_Q, "-o", "{ws}/q.onnx", "--calib-data", "{ws}/calib.npz",
                               "--pass-option", "cle.relu6=maybe"], "is not a CLE mode"),
    "weight-format-without-int4": ([*_Q, "-o", "{ws}/q.onnx", "--calib-data", "{ws}/calib.npz",
                                    "--weight-format", "nf4"], "is weight-only"),
    "act-quant-unknown-tensor": ([*_Q, "-o", "{ws}/q.onnx", "--calib-data", "{ws}/calib.npz", "--act-quant", "log2",
                                  "--act-quant-tensors", "nosuch"], "are read by no node of the model"),
    "act-quant-bits-out-of-range": ([*_Q, "-o", "{ws}/q.onnx", "--calib-data", "{ws}/calib.npz", "--act-quant",
                                     "log2", "--act-quant-bits", "1"], "is not an int in 2..16"),
    "act-quant-bits-alone": ([*_Q, "-o", "{ws}/q.onnx", "--calib-data", "{ws}/calib.npz", "--act-quant-bits", "4"],
                             "--act-quant-bits needs --act-quant"),
    "plugins-with-nothing-to-replace": ([*_Q, "-o", "{ws}/q.onnx", "--calib-data", "{ws}/calib.npz", "--plugins"],
                                        "--plugins has nothing to replace"),
    "unknown-high-precision": ([*_Q, "-o", "{ws}/q.onnx", "--calib-data", "{ws}/calib.npz",
                                "--high-precision", "fp12"], "unknown high precision 'fp12'"),
    "unknown-fallback-dtype": ([*_Q, "-o", "{ws}/q.onnx", "--calib-data", "{ws}/calib.npz",
                                "--fallback-dtype", "int8"], "unknown fallback dtype 'int8'"),
    "conv-samples-zero": ([*_Q, "-o", "{ws}/q.onnx", "--calib-data", "{ws}/calib.npz", "--conv-samples", "0"],
                          "conv_samples=0 must be at least 1"),
    "demo-unknown-precision": (["demo", "--out", "{ws}/demo", "--precision", "int2"], "unknown precision"),
    "demo-unknown-method": (["demo", "--out", "{ws}/demo", "--calib-method", "magic"],
                            "unknown calibration method"),
    "compare-negative-batch": (["compare", "{ws}/conv.onnx", "{ws}/conv.onnx", "--data", "{ws}/eval.npz",
                                "--batch-size", "0"], "batch"),
}


@pytest.mark.parametrize("case", sorted(OPTION_CASES))
def test_bad_option(ws, case):
    args, message = OPTION_CASES[case]
    run_case(ws, args, message)


def test_no_check_writes_what_the_check_refuses(ws):
    """`--no-check` writes the graph `quantize` refuses above (opset 21 is past TensorRT 10.3's parser)."""
    res = trtq(ws, *_Q, "-o", "{ws}/q.onnx", "--calib-data", "{ws}/calib.npz", "--target", "orin", "--trt",
               "10.3", "--opset", "21", "--no-check")
    assert res.returncode == 0, res.stderr
    assert (ws / "q.onnx").exists() and (ws / "q.trtq.json").exists()
    res = trtq(ws, "check", "{ws}/q.onnx", "--target", "orin", "--trt", "10.3")
    assert res.returncode == 1 and "opset-range" in res.stdout


# --- interruption --------------------------------------------------------------------------------------

# Ctrl-C (KeyboardInterrupt) raised at one point of a real `trtq quantize` run over an earlier run's output.
_INTERRUPT = """
import sys
import trtq._io, trtq.pipeline, trtq.calibrators.stats
point = sys.argv[1]

def interrupt(*args, **kwargs):
    raise KeyboardInterrupt

if point == "calibration":
    trtq.pipeline.collect_stats = interrupt
elif point == "model-write":
    trtq._io._serialize = interrupt
elif point == "sidecar-write":
    trtq._io._dump_json = interrupt
from trtq.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("point", ["calibration", "model-write", "sidecar-write"])
def test_interrupted_run_leaves_the_previous_output_pair(ws, point):
    """Model and sidecar appear together or not at all (item 5): an interrupted run over an earlier
    output leaves that output's model and sidecar as they were, and no temp file."""
    first = trtq(ws, *_Q, "-o", "{ws}/q.onnx", "--calib-data", "{ws}/calib.npz", "--block-size", "64")
    assert first.returncode == 0, first.stderr
    before = snapshot(ws)
    res = trtq(ws, point, *_Q, "-o", "{ws}/q.onnx", "--calib-data", "{ws}/eval.npz", "--seed", "3",
               code=_INTERRUPT)
    assert res.returncode == 130 and res.stderr == "trtq: interrupted\n", res.stderr
    assert snapshot(ws) == before


# --- output files --------------------------------------------------------------------------------------

def test_outputs_follow_the_umask(ws):
    """Written files get the mode a normal file gets (0666 & ~umask), not mkstemp's 0600 (item 9)."""
    res = trtq(ws, *_Q, "-o", "{ws}/q.onnx", "--calib-data", "{ws}/calib.npz",
               code="import os, sys; os.umask(0o022); from trtq.cli import main; sys.exit(main(sys.argv[1:]))")
    assert res.returncode == 0, res.stderr
    for name in ("q.onnx", "q.trtq.json"):
        assert (ws / name).stat().st_mode & 0o777 == 0o644, name


def test_external_data_is_read_and_never_touched(ws):
    _external_data(ws)
    before = {p: (ws / p).read_bytes() for p in ("ext.onnx", "ext.onnx.data")}
    res = trtq(ws, "quantize", "{ws}/ext.onnx", "--quiet", "-o", "{ws}/q.onnx", "--calib-data", "{ws}/calib.npz")
    assert res.returncode == 0, res.stderr
    assert {p: (ws / p).read_bytes() for p in before} == before
    w1 = next(i for i in onnx.load(str(ws / "ext.onnx")).graph.initializer if i.name == "w1")
    assert numpy_helper.to_array(w1, base_dir=str(ws)).shape == (32, 3, 3, 3)
