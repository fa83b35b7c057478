"""Real, offline calibration and evaluation data, saved as .npz files shared by every tool.

The photos and sentences come from `trtq.testing.data` (the same the integration tests use): crops of
the photos scikit-image and scikit-learn ship, calibration and evaluation from different photos; prose
sentences of Python's own documentation, tokenised with the all-MiniLM-L6-v2 tokenizer and padded to a
fixed length so the attention mask matters.

Each .npz maps the model's input names to arrays whose first axis is the sample.

Also the pieces selection.py and degrade.py share: the MiniLM tokenizer, and photo crops on a scale x
position x mirror grid resized with PIL (made on the fly there, not saved).
"""

from __future__ import annotations

import functools
import itertools
from pathlib import Path
from typing import Any

import numpy as np

from trtq.testing.data import CALIB_PHOTOS, EVAL_PHOTOS, IMAGE_SIZE, image_batch, sentences
from trtq.testing.data import token_batch as _token_batch


@functools.cache
def tokenizer() -> Any:
    """The all-MiniLM-L6-v2 tokenizer (loaded once per process)."""
    from transformers import AutoTokenizer

    from models import minilm_path

    return AutoTokenizer.from_pretrained(minilm_path())


def token_batch(texts: list[str], seq_len: int) -> dict[str, np.ndarray]:
    return _token_batch(tokenizer(), texts, seq_len)


def crop_views(photos: tuple[str, ...], scales: np.ndarray, positions: int, count: int) -> list[tuple]:
    """`count` views (photo, scale, y, x, mirrored) of photos x scales x positions² x mirroring, in a fixed
    shuffled order; y and x run over `positions` points of [0, 1]."""
    grid = np.linspace(0, 1, positions)
    views = list(itertools.product(photos, scales, grid, grid, (False, True)))
    if count > len(views):
        raise SystemExit(f"at most {len(views)} crops of {len(photos)} photos")
    return [views[i] for i in np.random.default_rng(0).permutation(len(views))[:count]]


def photo_crop(photo: np.ndarray, scale: float, py: float, px: float, flip: bool) -> np.ndarray:
    """uint8 IMAGE_SIZE² RGB: the square of side `scale` x the photo's shorter side at relative position
    (py, px), mirrored or not, resized with PIL bilinear."""
    from PIL import Image

    h, w = photo.shape[:2]
    side = int(round(scale * min(h, w)))
    y, x = int(round(py * (h - side))), int(round(px * (w - side)))
    crop = photo[y : y + side, x : x + side]
    img = Image.fromarray(np.ascontiguousarray(crop[:, ::-1] if flip else crop))
    return np.asarray(img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR))


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
