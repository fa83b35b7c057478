"""Real, offline evaluation data: the photos scikit-image and scikit-learn ship, and English prose.

Images: calibration and evaluation use different photos; each photo gives deterministic square crops
(three scales, four positions, mirrored or not) resized to 224x224 and normalised with the ImageNet
mean/std (float32 NCHW).
Text: prose sentences of Python's own documentation (`pydoc_data.topics`); topics alternate between
the calibration and evaluation splits, so the two share no sentence.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

__all__ = ["CALIB_PHOTOS", "EVAL_PHOTOS", "IMAGENET_MEAN", "IMAGENET_STD", "IMAGE_SIZE", "image_batch", "load_photo",
           "mean_pooled", "prose_sentences", "sentence_pool", "sentences", "token_batch"]

IMAGE_SIZE = 224
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)

CALIB_PHOTOS = ("astronaut", "rocket", "china", "motorcycle")
EVAL_PHOTOS = ("coffee", "chelsea", "flower")

# (crop side as a fraction of the photo's shorter side, (y, x) position in [0, 1], mirrored);
# ordered so that any prefix mixes scales, positions and mirroring.
_VIEWS = [
    (scale, pos, flip)
    for flip in (False, True)
    for pos in ((0.5, 0.5), (0.0, 0.0), (1.0, 1.0), (0.0, 1.0))
    for scale in (1.0, 0.75, 0.55)
]
_VIEWS = _VIEWS[0::2] + _VIEWS[1::2]


def load_photo(name: str) -> np.ndarray:
    """An RGB uint8 photo that scikit-learn or scikit-image ships (no download)."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        return load_sample_image(f"{name}.jpg")
    import skimage.data

    if name == "motorcycle":
        return skimage.data.stereo_motorcycle()[0]
    return getattr(skimage.data, name)()


def _crop(photo: np.ndarray, scale: float, pos: tuple[float, float], flip: bool) -> np.ndarray:
    from skimage.transform import resize

    h, w = photo.shape[:2]
    side = int(round(scale * min(h, w)))
    y, x = int(round(pos[0] * (h - side))), int(round(pos[1] * (w - side)))
    crop = photo[y : y + side, x : x + side]
    if flip:
        crop = crop[:, ::-1]
    return resize(crop, (IMAGE_SIZE, IMAGE_SIZE), order=1, anti_aliasing=True, preserve_range=True)


def image_batch(photos: tuple[str, ...], n: int) -> np.ndarray:
    """`n` crops spread evenly over `photos`, as float32 NCHW ImageNet-normalised tensors."""
    per_photo = -(-n // len(photos))
    if per_photo > len(_VIEWS):
        raise ValueError(f"at most {len(_VIEWS) * len(photos)} crops from {len(photos)} photos")
    views = [(name, *_VIEWS[i]) for i in range(per_photo) for name in photos][:n]
    cache: dict[str, np.ndarray] = {}
    out = np.empty((n, 3, IMAGE_SIZE, IMAGE_SIZE), np.float32)
    for k, (name, scale, pos, flip) in enumerate(views):
        if name not in cache:
            cache[name] = load_photo(name)
        rgb = _crop(cache[name], scale, pos, flip).astype(np.float32) / 255.0
        out[k] = ((rgb - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)
    return out


def prose_sentences(text: str) -> list[str]:
    """Sentences from the prose paragraphs of a documentation page (code and headings dropped)."""
    found = []
    for para in re.split(r"\n\s*\n", text):
        lines = para.split("\n")
        if any(line.startswith((" ", "\t")) for line in lines):
            continue  # code, grammar or an indented block
        if len(lines) > 1 and re.fullmatch(r"[*=\-~^]+", lines[-1].strip() or "x"):
            continue  # a heading with its underline
        flat = " ".join(line.strip() for line in lines)
        for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", flat):
            letters = sum(c.isalpha() or c == " " for c in s)
            if 40 <= len(s) <= 300 and s.endswith(".") and letters >= 0.85 * len(s):
                found.append(s)
    return found


def sentence_pool(split: str) -> list[str]:
    """The sentences of every other Python documentation topic: even topics "calib", odd ones "eval"."""
    from pydoc_data.topics import topics

    keys = sorted(topics)[0 if split == "calib" else 1 :: 2]
    return list(dict.fromkeys(s for key in keys for s in prose_sentences(topics[key])))


def sentences(split: str, n: int) -> list[str]:
    """`n` sentences spread evenly over one split ("calib" or "eval"); the splits share none."""
    pool = sentence_pool(split)
    if split == "eval":
        calib = set(sentence_pool("calib"))
        pool = [s for s in pool if s not in calib]
    if len(pool) < n:
        raise ValueError(f"only {len(pool)} {split} sentences available, {n} asked")
    return [pool[i] for i in np.linspace(0, len(pool) - 1, n).round().astype(int)]


def token_batch(tokenizer: Any, texts: list[str], seq_len: int) -> dict[str, np.ndarray]:
    """int64 `input_ids` / `attention_mask` padded to `seq_len`, so the attention mask matters."""
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=seq_len, return_tensors="np")
    return {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": enc["attention_mask"].astype(np.int64)}


def mean_pooled(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Sentence embeddings as sentence-transformers makes them: masked mean, L2-normalised."""
    m = mask[..., None].astype(np.float64)
    emb = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)
