"""Text sources: a file of lines or JSON Lines, tokenized by a Python callable into calibration batches.

The file is read line by line on each pass (never loaded whole), `batch_size` texts at a time are
given to the tokenizer, and its outputs are cut and padded to the declared length. Blank lines and
blank texts are skipped and counted; JSONL lines that are not JSON objects with a string field, and
lines that are not UTF-8, are skipped and counted as invalid, with the first few line numbers in
`report()`.

A tokenizer is any callable `list[str] -> {name: array-like}`. One that takes `padding`,
`truncation` and `max_length` keywords (a Hugging Face tokenizer) is called with them (and
`return_tensors="np"` if it takes that); trtq then cuts every output of rank >= 2 to `max_length`
along axis 1 and pads it to `max_length` (padding "max_length") or to the batch's longest
("longest") with 0, or with the tokenizer's `pad_token_id` for `input_ids`. Ranges of a model fed
"max_length" batches do not depend on the batch size; "longest" ones can.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trtq.calibrators.data import to_numpy
from trtq.config import JsonConfig
from trtq.errors import TrtqError

__all__ = ["JSONL_SUFFIXES", "PADDINGS", "TextOptions", "TextSource"]

logger = logging.getLogger(__name__)

PADDINGS = ("max_length", "longest")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
_EXAMPLES = 5
_HF_KEYWORDS = ("padding", "truncation", "max_length")

Tokenizer = Callable[[list[str]], Mapping[str, Any]]


@dataclass(frozen=True)
class TextOptions(JsonConfig):
    """How texts are read and tokenized.

    Args:
        field: the JSONL field holding the text (None: the file holds one text per line).
        max_length: tokens per text after cutting (and padding, with "max_length").
        padding: max_length | longest (pad to the batch's longest text).
        input_names: keep only these tokenizer outputs (e.g. drop token_type_ids the model does not
            take); None: keep all.
    """

    field: str | None = None
    max_length: int = 128
    padding: str = "max_length"
    input_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.field is not None and (not isinstance(self.field, str) or not self.field):
            raise TrtqError(f"text field {self.field!r} is not a name.",
                            "give the JSONL key that holds the text.")
        if not isinstance(self.max_length, int) or isinstance(self.max_length, bool) or self.max_length < 1:
            raise TrtqError(f"max_length={self.max_length!r} is not a positive int.", "use e.g. 128.")
        if self.padding not in PADDINGS:
            raise TrtqError(f"padding {self.padding!r} is not one of {', '.join(PADDINGS)}.",
                            "use max_length (ranges independent of batch size) or longest.")
        if self.input_names is not None:
            names = tuple(self.input_names) if not isinstance(self.input_names, str) else ()
            if not names or not all(isinstance(n, str) and n for n in names):
                raise TrtqError(f"input_names={self.input_names!r} is not a list of names.",
                                "pass e.g. ('input_ids', 'attention_mask'), or None.")
            object.__setattr__(self, "input_names", names)


class TextSource:
    """Tokenized batches over a text file (one text per line) or a JSONL file (`field` of each object).

    Re-iterable: each iteration reads the file again, so `BatchStream` replays it without spilling.

    Args:
        path: the file (.jsonl / .ndjson, or any file with `field` set, is read as JSON Lines).
        tokenizer: `list[str] -> {name: array}` (see the module docstring).
        options: a `TextOptions`; keyword `overrides` (field=, max_length=, ...) replace its fields.
        batch_size: texts per batch (None: what the caller asks for; 1 when iterated directly).

    Raises:
        TrtqError: the file is missing, a .jsonl file has no `field`, the tokenizer is not callable;
            on iteration, the tokenizer fails or returns something that is not {name: array}, or the
            file holds no text.
    """

    def __init__(self, path: str | os.PathLike[str], tokenizer: Tokenizer, options: TextOptions | None = None,
                 *, batch_size: int | None = None, **overrides: Any) -> None:
        self.path = Path(path)
        self.options = dataclasses.replace(options or TextOptions(), **overrides) if overrides else (
            options or TextOptions())
        if not self.path.is_file():
            raise TrtqError(f"text file {self.path}: no such file.", "check the path of the text file.")
        if not callable(tokenizer):
            raise TrtqError(f"the tokenizer is a {type(tokenizer).__name__}, not a callable.",
                            "pass a callable texts -> {name: array}, e.g. a transformers tokenizer.")
        if self.path.suffix.lower() in JSONL_SUFFIXES and self.options.field is None:
            raise TrtqError(f"{self.path} is JSON Lines but no field names the text.",
                            'pass field="text" (the key holding each text).')
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise TrtqError(f"batch_size={batch_size!r} is not a positive int.", "pass 1 or more, or None.")
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self._hf = all(_takes(tokenizer, k) for k in _HF_KEYWORDS)
        self._texts = self._blank = 0
        self._invalid: list[tuple[int, str]] = []

    @property
    def format(self) -> str:
        return "lines" if self.options.field is None else "jsonl"

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self.batches(self.batch_size or 1)

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """Tokenized batches of `batch_size` texts (the last one may be smaller)."""
        size = self.batch_size or batch_size
        self._texts = self._blank = 0
        self._invalid = []
        texts: list[str] = []
        first = lineno = 0
        for lineno, text in self._read():
            if not texts:
                first = lineno
            texts.append(text)
            if len(texts) == size:
                yield self._tokenize(texts, first, lineno)
                texts = []
        if texts:
            yield self._tokenize(texts, first, lineno)
        if self._texts == 0:
            field = self.options.field
            raise TrtqError(f"no text in {self.path} ({self._blank} blank, {len(self._invalid)} invalid lines"
                            + (f"; first: {self._examples()}" if self._invalid else "") + ").",
                            f"give JSON objects with a string {field!r}, one per line." if field
                            else "give a file with one text per line.")

    def report(self) -> dict[str, Any]:
        """What the last pass read, for the sidecar report."""
        return {"source": "text", "path": str(self.path), "format": self.format, "texts": self._texts,
                "blank": self._blank, "invalid": len(self._invalid),
                "invalid_examples": [{"line": n, "reason": r} for n, r in self._invalid[:_EXAMPLES]],
                "options": self.options.to_dict()}

    def _examples(self) -> str:
        return "; ".join(f"line {n}: {r}" for n, r in self._invalid[:_EXAMPLES])

    def _read(self) -> Iterator[tuple[int, str]]:
        with open(self.path, "rb") as fh:
            for lineno, raw in enumerate(fh, start=1):
                text = self._text(lineno, raw)
                if text is None:
                    continue
                if not text.strip():
                    self._blank += 1
                    continue
                self._texts += 1
                yield lineno, text

    def _text(self, lineno: int, raw: bytes) -> str | None:
        try:
            line = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as exc:
            return self._bad(lineno, f"not UTF-8 ({exc.reason} at byte {exc.start})")
        if lineno == 1:
            line = line.removeprefix("\ufeff")
        if self.options.field is None or not line.strip():
            return line
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            return self._bad(lineno, f"not JSON ({exc.msg})")
        if not isinstance(obj, dict) or not isinstance(obj.get(self.options.field), str):
            return self._bad(lineno, f"no string field {self.options.field!r}")
        return obj[self.options.field]

    def _bad(self, lineno: int, reason: str) -> None:
        self._invalid.append((lineno, reason))
        if len(self._invalid) <= _EXAMPLES:
            logger.debug("%s line %d skipped: %s", self.path, lineno, reason)
        return None

    def _tokenize(self, texts: list[str], first: int, last: int) -> dict[str, np.ndarray]:
        opts = self.options
        try:
            if self._hf:
                kwargs: dict[str, Any] = {"padding": opts.padding, "truncation": True,
                                          "max_length": opts.max_length}
                if _takes(self.tokenizer, "return_tensors"):
                    kwargs["return_tensors"] = "np"
                out = self.tokenizer(texts, **kwargs)
            else:
                out = self.tokenizer(texts)
        except Exception as exc:
            raise TrtqError(f"the tokenizer failed on lines {first}-{last} of {self.path}: {exc}",
                            "check that it takes a list of strings and returns {name: array}.") from exc
        if not isinstance(out, Mapping):
            raise TrtqError(f"the tokenizer returned a {type(out).__name__}, not a mapping of name to array.",
                            "return {name: array}, e.g. {'input_ids': ..., 'attention_mask': ...}.")
        return {name: self._fit(name, out[name], len(texts)) for name in self._names(out)}

    def _names(self, out: Mapping[str, Any]) -> list[str]:
        wanted = self.options.input_names
        if wanted is None:
            return list(out)
        missing = [n for n in wanted if n not in out]
        if missing:
            raise TrtqError(f"the tokenizer gives {sorted(out)}, not {missing}.",
                            "fix input_names to name the tokenizer's outputs the model takes.")
        return list(wanted)

    def _fit(self, name: str, value: Any, n: int) -> np.ndarray:
        """Cut rank >= 2 outputs to max_length along axis 1 and pad them as declared."""
        value = to_numpy(value)
        rows = _rows(value)
        if rows is None:
            arr = np.asarray(value)
            if arr.ndim < 2:
                _check_rows(name, arr.shape[0] if arr.ndim else 1, n)
                return arr
            rows = list(arr)
        _check_rows(name, len(rows), n)
        rows = [np.asarray(r)[: self.options.max_length] for r in rows]
        width = self.options.max_length if self.options.padding == "max_length" else max(len(r) for r in rows)
        pad = getattr(self.tokenizer, "pad_token_id", None) if name == "input_ids" else None
        dtype = np.result_type(*rows) if rows else np.int64
        out = np.full((n, width, *rows[0].shape[1:]), 0 if pad is None else pad, dtype=dtype)
        for i, r in enumerate(rows):
            out[i, : len(r)] = r
        return out


def _rows(value: Any) -> list[Any] | None:
    """The rows of a ragged list of sequences, or None when `value` is a regular array."""
    if (isinstance(value, (list, tuple)) and value and isinstance(value[0], (list, tuple, np.ndarray))
            and len({len(r) for r in value}) > 1):
        return list(value)
    return None


def _check_rows(name: str, count: int, n: int) -> None:
    if count != n:
        raise TrtqError(f"the tokenizer's {name!r} has {count} rows for {n} texts.",
                        "return one row per text, with the texts on the first axis.")


def _takes(fn: Any, keyword: str) -> bool:
    """Whether `fn` declares a parameter named `keyword` (a bare **kwargs does not count)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return keyword in params
