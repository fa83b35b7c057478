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
from onnx import TensorProto, helper
from PIL import Image

from trtq.cli import main

import graphs

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
    """Optional parts in brackets (`[--json]`, `[--act-quant-bits 4]`): the line without them, and with all."""
    plain: list[str] = []
    optional: list[str] = []
    group: list[str] | None = None
    for word in shlex.split(line, comments=True):
        if group is None and word.startswith("["):
            group = []
            word = word[1:]
        if group is None:
            plain.append(word)
            continue
        closed = word.endswith("]")
        group.append(word[:-1] if closed else word)
        if closed:
            optional += group
            group = None
    return [plain, plain + optional] if optional else [plain]


def _two_softmax_attention() -> onnx.ModelProto:
    """input [batch, 8, 128] -> two self-attention products whose probabilities are `probs_0`, `probs_1`
    (the tensors the README's --act-quant line names) -> sum -> MatMul."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Transpose", ["input"], ["xt"], perm=[0, 2, 1])]
    for i in range(2):
        nodes += [helper.make_node("MatMul", ["input", "xt"], [f"s{i}"]),
                  helper.make_node("Mul", [f"s{i}", f"c{i}"], [f"z{i}"]),
                  helper.make_node("Softmax", [f"z{i}"], [f"probs_{i}"], axis=-1),
                  helper.make_node("MatMul", [f"probs_{i}", "input"], [f"a{i}"])]
    nodes += [helper.make_node("Add", ["a0", "a1"], ["a"]), helper.make_node("MatMul", ["a", "w"], ["logits"])]
    inits = [graphs.init("c0", np.array(0.05)), graphs.init("c1", np.array(0.02)),
             graphs.init("w", rng.standard_normal((128, 10)) * 0.1)]
    graph = helper.make_graph(nodes, "attention", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                                  ["batch", 8, 128])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 8, 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _workspace(root: Path, attention: bool = False) -> None:
    """The files the README's commands read, tiny: a classifier of any image size and its data, or (for the
    --act-quant lines, which name attention tensors) a two-softmax attention graph and its data."""
    rng = np.random.default_rng(0)
    root.mkdir(exist_ok=True)
    if attention:
        onnx.save(_two_softmax_attention(), str(root / "model.onnx"))
        np.savez(root / "calib.npz", input=rng.standard_normal((8, 8, 128)).astype(np.float32))
        return
    onnx.save(graphs.pooled_classifier(), str(root / "model.onnx"))
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
    _workspace(tmp_path / "attention", attention=True)
    has_tensorrt = importlib.util.find_spec("tensorrt") is not None
    ran = 0
    for line in readme_commands():
        if not line.startswith("trtq "):
            continue
        monkeypatch.chdir(tmp_path / "attention" if "--act-quant" in line else tmp_path)
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
