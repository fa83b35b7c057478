"""Real, offline calibration and evaluation data, saved as .npz files shared by every tool.

Images (the held-out split): calibration and evaluation crops come from disjoint sets of the photos
scikit-image and scikit-learn ship (both packages on both sides; `CALIB_PHOTOS` / `EVAL_PHOTOS`). Each
crop is a random square of 25-100 % of the photo's shorter side at a random position, mirrored with
probability 1/2, resized with PIL bilinear (seeded: the same crops every run; the evaluation split
draws from its own seed). Grey photos are repeated over the three channels. 128 calibration and 256
evaluation crops by default; effnet gets them at 224² ImageNet-normalised, yolo at 320² in [0, 1].
Text: prose sentences of Python's own documentation (`trtq.testing.data.sentences`, topics alternate
between the splits), tokenised with the all-MiniLM-L6-v2 tokenizer and padded to a fixed length so
the attention mask matters.

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

from trtq.testing.data import IMAGE_SIZE, IMAGENET_MEAN, IMAGENET_STD, load_photo, sentences
from trtq.testing.data import token_batch as _token_batch

# (photo, package): every photo of each split is a different scene; both splits draw on both packages.
CALIB_PHOTOS = ("astronaut", "rocket", "motorcycle", "coins", "china")  # scikit-image x4, scikit-learn
EVAL_PHOTOS = ("coffee", "chelsea", "camera", "hubble_deep_field", "retina", "flower")  # skimage x5, sklearn
SPLIT_SEEDS = {"calib": 1, "eval": 2}
CROP_SCALES = (0.25, 1.0)  # crop side as a fraction of the photo's shorter side
# model -> (input side, normalisation): effnet ImageNet mean/std, yolo (Ultralytics) plain [0, 1]
IMAGE_MODELS = {"effnet": (IMAGE_SIZE, "imagenet"), "yolo": (320, "unit")}


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


def photo_crop(photo: np.ndarray, scale: float, py: float, px: float, flip: bool,
               size: int = IMAGE_SIZE) -> np.ndarray:
    """uint8 size² RGB: the square of side `scale` x the photo's shorter side at relative position
    (py, px), mirrored or not, resized with PIL bilinear."""
    from PIL import Image

    h, w = photo.shape[:2]
    side = int(round(scale * min(h, w)))
    y, x = int(round(py * (h - side))), int(round(px * (w - side)))
    crop = photo[y : y + side, x : x + side]
    img = Image.fromarray(np.ascontiguousarray(crop[:, ::-1] if flip else crop))
    return np.asarray(img.resize((size, size), Image.Resampling.BILINEAR))


@functools.cache
def rgb_photo(name: str) -> np.ndarray:
    """uint8 RGB of a shipped photo (grey ones repeated over three channels)."""
    photo = np.asarray(load_photo(name))
    if photo.ndim == 2:
        photo = np.repeat(photo[..., None], 3, axis=2)
    return np.ascontiguousarray(photo[..., :3])


def random_views(split: str, count: int) -> list[tuple]:
    """`count` views (photo, scale, y, x, mirrored) of the split's photos, round-robin over the photos,
    scale uniform in CROP_SCALES, position uniform, mirrored with probability 1/2 (seeded per split)."""
    photos = CALIB_PHOTOS if split == "calib" else EVAL_PHOTOS
    rng = np.random.default_rng(SPLIT_SEEDS[split])
    draws = rng.random((count, 4))
    lo, hi = CROP_SCALES
    return [(photos[i % len(photos)], lo + (hi - lo) * d[0], d[1], d[2], bool(d[3] < 0.5))
            for i, d in enumerate(draws)]


def image_split(model: str, split: str, count: int) -> np.ndarray:
    """float32 NCHW crops of one split as `model` takes them."""
    size, norm = IMAGE_MODELS[model]
    out = np.empty((count, 3, size, size), np.float32)
    for k, (name, *view) in enumerate(random_views(split, count)):
        rgb = photo_crop(rgb_photo(name), *view, size=size).astype(np.float32) / 255.0
        if norm == "imagenet":
            rgb = (rgb - IMAGENET_MEAN) / IMAGENET_STD
        out[k] = rgb.transpose(2, 0, 1)
    return out


def prepare(model: str, out_dir: Path, input_names: list[str], *, n_calib_images: int = 128,
            n_eval_images: int = 256, n_sentences: int = 128, seq_len: int = 128) -> dict:
    """Write `<model>_calib.npz` and `<model>_eval.npz` into out_dir; return their paths.

    Files already there are kept when their arrays are keyed by `input_names` (the model's inputs)
    and hold the asked number of samples.
    """
    counts = {"calib": n_calib_images, "eval": n_eval_images} if model in IMAGE_MODELS else \
        {"calib": n_sentences, "eval": n_sentences}
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {split: out_dir / f"{model}_{split}.npz" for split in ("calib", "eval")}
    for split, path in paths.items():
        if path.exists():
            with np.load(path) as z:
                if sorted(z.files) == sorted(input_names) and len(z[z.files[0]]) == counts[split]:
                    continue
        if model in IMAGE_MODELS:
            (name,) = input_names
            arrays = {name: image_split(model, split, counts[split])}
        elif model == "minilm":
            arrays = token_batch(sentences(split, counts[split]), seq_len)
        else:
            raise ValueError(f"unknown model {model!r}")
        if sorted(arrays) != sorted(input_names):
            raise ValueError(f"{model}: the model's inputs are {input_names}, the data has {sorted(arrays)}")
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(path)
    return {split: str(p) for split, p in paths.items()}
