"""Every command line README.md shows in a bash block runs as written, on tiny generated files.

The README and the CLI cannot drift: a flag renamed, a spelling the parser refuses (`--mean 0.485 0.456
0.406`), a command removed, fails here. Lines are read from the README itself; `[--json]` runs both ways.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

import graphs
from trtq.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"

# command lines shown but not run here, by how they start, and why
NOT_RUN = {
    "python3 -m venv": "the README's install-and-run commands: CI runs them on a fresh clone (.ci/run)",
    "pip install": "installs optional packages (TensorRT, GPU builds of onnxruntime)",
    "SRC=": "builds the C++ plugin library: needs CUDA and TensorRT headers (tests/test_plugin_cpp*)",
    "cmake ": "builds the C++ plugin library: needs CUDA and TensorRT headers",
    "trtexec ": "TensorRT's own tool",
}
# commands that need TensorRT: without it they must end with the README's one message, exit status 2
NEEDS_TENSORRT = re.compile(r"^trtq (build|run)\b(?!.*--print)|^trtq compare \S+ \S+\.engine\b")


def readme_commands() -> list[str]:
    """The command lines of README.md's bash blocks (continuations joined)."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), re.S):
        lines += [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]
    return lines


def _expand(line: str) -> list[list[str]]:
    """`[--json]`: the line with and without the optional flag."""
    words = shlex.split(line, comments=True)
    optional = [w for w in words if w.startswith("[") and w.endswith("]")]
    plain = [w for w in words if w not in optional]
    return [plain] + [plain + [w[1:-1] for w in optional]] if optional else [plain]


def _workspace(root: Path) -> None:
    """The files the README's commands read, tiny: a classifier of any image size and its data."""
    onnx.save(graphs.pooled_classifier(), str(root / "model.onnx"))
    rng = np.random.default_rng(0)
    np.savez(root / "calib.npz", input=rng.standard_normal((8, 3, 16, 16)).astype(np.float32))
    np.savez(root / "eval.npz", input=rng.standard_normal((4, 3, 16, 16)).astype(np.float32))
    (root / "images").mkdir()
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
    (root / "preprocess.json").write_text('{"resize": 20, "crop": 16, "mean": [0.485, 0.456, 0.406]}')


def test_readme_shows_commands_this_test_can_read():
    commands = readme_commands()
    assert sum(c.startswith("trtq quantize") for c in commands) >= 4
    unknown = [c for c in commands if not c.startswith("trtq ") and not any(c.startswith(p) for p in NOT_RUN)]
    assert unknown == [], "a README command this test neither runs nor lists in NOT_RUN"


def test_every_readme_command_runs(tmp_path, monkeypatch, capsys):
    _workspace(tmp_path)
    monkeypatch.chdir(tmp_path)
    has_tensorrt = importlib.util.find_spec("tensorrt") is not None
    ran = 0
    for line in readme_commands():
        if not line.startswith("trtq "):
            continue
        for words in _expand(line):
            try:
                status = main(words[1:])
            except SystemExit as exc:  # argparse refusing the line
                status = exc.code
            out, err = capsys.readouterr()
            assert "Traceback" not in out + err, line
            if NEEDS_TENSORRT.search(line) and not has_tensorrt:
                # the README's message naming TensorRT, or the missing engine the build above did not write
                assert status == 2 and err.startswith("trtq: error:"), f"{line}\n{err}"
            else:
                assert status == 0, f"{line}\nexit {status}\n{err}"
            ran += 1
    assert ran >= 10
