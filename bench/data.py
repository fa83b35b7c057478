"""Real, offline calibration and evaluation data, saved as .npz files shared by every tool.

The photos and sentences come from `trtq.testing.data` (the same the integration tests use): crops of
the photos scikit-image and scikit-learn ship, calibration and evaluation from different photos; prose
sentences of Python's own documentation, tokenised with the all-MiniLM-L6-v2 tokenizer and padded to a
fixed length so the attention mask matters.

Each .npz maps the model's input names to arrays whose first axis is the sample.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trtq.testing.data import CALIB_PHOTOS, EVAL_PHOTOS, image_batch, sentences
from trtq.testing.data import token_batch as _token_batch


def token_batch(texts: list[str], seq_len: int) -> dict[str, np.ndarray]:
    from transformers import AutoTokenizer

    from models import minilm_path

    return _token_batch(AutoTokenizer.from_pretrained(minilm_path()), texts, seq_len)


def prepare(model: str, out_dir: Path, input_names: list[str], *, n_images: int = 64, n_sentences: int = 128,
            seq_len: int = 128) -> dict:
    """Write `<model>_calib.npz` and `<model>_eval.npz` into out_dir; return their paths.

    Files already there are kept when their arrays are keyed by `input_names` (the model's inputs).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {split: out_dir / f"{model}_{split}.npz" for split in ("calib", "eval")}
    for split, path in paths.items():
        if path.exists():
            with np.load(path) as z:
                if sorted(z.files) == sorted(input_names):
                    continue
        if model == "effnet":
            (name,) = input_names
            arrays = {name: image_batch(CALIB_PHOTOS if split == "calib" else EVAL_PHOTOS, n_images)}
        elif model == "minilm":
            arrays = token_batch(sentences(split, n_sentences), seq_len)
        else:
            raise ValueError(f"unknown model {model!r}")
        if sorted(arrays) != sorted(input_names):
            raise ValueError(f"{model}: the model's inputs are {input_names}, the data has {sorted(arrays)}")
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(path)
    return {split: str(p) for split, p in paths.items()}
