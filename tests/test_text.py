"""Text sources: lines and JSONL, blank and invalid lines counted, tokenizer outputs cut and padded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from trtq.calibrators.data import BatchStream, InputSpec
from trtq.calibrators.text import TextOptions, TextSource
from trtq.errors import TrtqError

import requires


def toy_tokenizer(texts: list[str]) -> dict[str, list[list[int]]]:
    """One id per character (ragged lists), like a tokenizer called without padding."""
    ids = [[ord(c) % 1000 + 1 for c in t] for t in texts]
    return {"input_ids": ids, "attention_mask": [[1] * len(i) for i in ids]}


class HFStyle:
    """The keywords a Hugging Face tokenizer takes; records how it was called."""

    pad_token_id = 7

    def __init__(self) -> None:
        self.calls: list[dict[str, object]] = []

    def __call__(self, text, padding=False, truncation=None, max_length=None, return_tensors=None):
        self.calls.append({"padding": padding, "truncation": truncation, "max_length": max_length,
                           "return_tensors": return_tensors})
        out = toy_tokenizer(text)
        out["token_type_ids"] = [[0] * len(i) for i in out["input_ids"]]
        return out


@pytest.fixture
def lines(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("\ufeffthe cat sat\n\n   \nhello\r\na much longer sentence than the others here\nok\n",
                    encoding="utf-8")
    return path


@pytest.fixture
def jsonl(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.jsonl"
    rows = [json.dumps({"text": "first"}), "{not json", json.dumps({"other": "x"}), json.dumps({"text": 3}),
            json.dumps({"text": "   "}), "", json.dumps(["text"]), json.dumps({"text": "second one"})]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def _all(source, batch_size: int) -> dict[str, np.ndarray]:
    batches = list(source.batches(batch_size))
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def test_lines_are_tokenized_cut_and_padded(lines):
    src = TextSource(lines, toy_tokenizer, max_length=8)
    out = _all(src, 2)
    assert out["input_ids"].shape == (4, 8) and out["attention_mask"].shape == (4, 8)
    np.testing.assert_array_equal(out["attention_mask"].sum(axis=1), [8, 5, 8, 2])
    assert out["input_ids"][1, :5].tolist() == [ord(c) + 1 for c in "hello"]
    assert (out["input_ids"][1, 5:] == 0).all()
    report = src.report()
    assert (report["texts"], report["blank"], report["invalid"], report["format"]) == (4, 2, 0, "lines")


def test_batches_do_not_depend_on_the_batch_size_and_replay(lines):
    src = TextSource(lines, toy_tokenizer, max_length=16)
    a, b, c = _all(src, 1), _all(src, 3), _all(src, 3)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
        np.testing.assert_array_equal(b[k], c[k])


def test_longest_padding_pads_to_the_batch(lines):
    src = TextSource(lines, toy_tokenizer, TextOptions(max_length=64, padding="longest"))
    widths = [b["input_ids"].shape[1] for b in src.batches(2)]
    assert widths == [len("the cat sat"), len("a much longer sentence than the others here")]


def test_jsonl_field_and_invalid_lines_are_counted(jsonl):
    src = TextSource(jsonl, toy_tokenizer, field="text", max_length=12)
    out = _all(src, 4)
    assert out["input_ids"].shape == (2, 12)
    report = src.report()
    assert (report["texts"], report["blank"], report["invalid"], report["format"]) == (2, 2, 4, "jsonl")
    assert [e["line"] for e in report["invalid_examples"]] == [2, 3, 4, 7]
    json.dumps(report)


def test_non_utf8_lines_are_invalid_not_fatal(tmp_path):
    path = tmp_path / "mixed.txt"
    path.write_bytes(b"good line\n\xff\xfe broken\nanother\n")
    src = TextSource(path, toy_tokenizer, max_length=4)
    assert _all(src, 8)["input_ids"].shape == (2, 4)
    assert src.report()["invalid_examples"][0]["line"] == 2


def test_hf_style_tokenizer_gets_the_declared_length_and_pad_id(lines):
    tok = HFStyle()
    src = TextSource(lines, tok, max_length=6, input_names=("input_ids", "attention_mask"))
    out = _all(src, 4)
    assert tok.calls[0] == {"padding": "max_length", "truncation": True, "max_length": 6,
                            "return_tensors": "np"}
    assert set(out) == {"input_ids", "attention_mask"} and out["input_ids"].shape == (4, 6)
    assert out["input_ids"][3, 2:].tolist() == [7] * 4 and out["attention_mask"][3, 2:].tolist() == [0] * 4


def test_plugs_into_batch_stream_without_spilling(lines):
    specs = [InputSpec("input_ids", np.dtype(np.int32), (None, 8)),
             InputSpec("attention_mask", np.dtype(np.int64), (None, 8))]
    stream = BatchStream(TextSource(lines, toy_tokenizer, max_length=8), specs)
    first = [b["input_ids"] for b in stream]
    second = [b["input_ids"] for b in stream]
    assert stream.num_samples == 4 and stream._spill is None and first[0].dtype == np.int32
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


def test_real_transformers_tokenizer(tmp_path, lines):
    transformers = requires.module("transformers")
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "cat", "sat", "hello", "ok", "a"]))
    tok = transformers.BertTokenizer(str(vocab))  # positional: vocab_file in 4.x, vocab in 5.x
    out = _all(TextSource(lines, tok, max_length=10), 3)
    assert out["input_ids"].shape == (4, 10) and out["input_ids"][0, :5].tolist() == [2, 4, 5, 6, 3]
    assert set(out) == {"input_ids", "token_type_ids", "attention_mask"}


def test_empty_or_blank_file_is_a_clear_error(tmp_path):
    path = tmp_path / "blank.txt"
    path.write_text("\n  \n\t\n")
    with pytest.raises(TrtqError, match=r"no text in .*3 blank"):
        list(TextSource(path, toy_tokenizer))
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(TrtqError, match="no text"):
        list(TextSource(tmp_path / "empty.txt", toy_tokenizer))


def test_bad_tokenizers_are_clear_errors(lines):
    def broken(texts):
        raise ValueError("boom")

    with pytest.raises(TrtqError, match="tokenizer failed on lines 1-1.*boom"):
        list(TextSource(lines, broken))
    with pytest.raises(TrtqError, match="not a mapping"):
        list(TextSource(lines, lambda texts: [[1, 2]] * len(texts)))
    with pytest.raises(TrtqError, match="rows for 2 texts"):
        list(TextSource(lines, lambda texts: {"input_ids": np.zeros((1, 4), np.int64)}, batch_size=2))
    with pytest.raises(TrtqError, match="not \\['token_type_ids'\\]"):
        list(TextSource(lines, toy_tokenizer, input_names=("input_ids", "token_type_ids")))
    with pytest.raises(TrtqError, match="not a callable"):
        TextSource(lines, "bert-base-uncased")  # type: ignore[arg-type]


def test_bad_options_and_paths_are_clear_errors(tmp_path, jsonl):
    with pytest.raises(TrtqError, match="no such file"):
        TextSource(tmp_path / "missing.txt", toy_tokenizer)
    with pytest.raises(TrtqError, match="JSON Lines but no field"):
        TextSource(jsonl, toy_tokenizer)
    for kwargs, message in (({"max_length": 0}, "max_length"), ({"padding": "right"}, "padding"),
                            ({"field": ""}, "field"), ({"input_names": "input_ids"}, "input_names")):
        with pytest.raises(TrtqError, match=message):
            TextOptions(**kwargs)
    assert TextOptions.from_dict(TextOptions(field="t", input_names=("a",)).to_dict()) == TextOptions(
        field="t", input_names=("a",))
