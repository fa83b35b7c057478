"""`trtq demo`: the README's first command does the whole job on the embedded model and data."""

from __future__ import annotations

from trtq.cli import main

import requires

requires.module("torch")
requires.module("sklearn")


def test_demo_quantizes_and_compares(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "[4/4]" in out and "accuracy vs labels" in out
    # the check's findings in words (not a raw dict), what top-1 means, and a next step
    assert "{'error'" not in out and "check against TensorRT's rules" in out
    assert "top-1: how often both pick the same digit" in out and "next: " in out
    check = __import__("json").loads((tmp_path / "digits_int8.trtq.json").read_text())["check"]
    for finding in check["findings"]:
        assert f"{finding['rule']} at {finding['node']}" in out
    assert (tmp_path / "digits_int8.onnx").exists() and (tmp_path / "digits_int8.trtq.json").exists()
    from trtq.evaluate import compare

    report = compare(tmp_path / "digits_fp32.onnx", tmp_path / "digits_int8.onnx", tmp_path / "eval.npz")
    assert report.outputs[0].sqnr_db > 25 and report.outputs[0].top1_agreement > 0.98


def test_default_demo_folder_is_ignored_by_git():
    """The README's first command runs `trtq demo` in the checkout: its default folder leaves git clean."""
    from pathlib import Path

    from trtq.cli import build_parser

    assert build_parser().parse_args(["demo"]).out == "trtq-demo"
    ignored = (Path(__file__).parent.parent / ".gitignore").read_text().split()
    assert "trtq-demo/" in ignored
