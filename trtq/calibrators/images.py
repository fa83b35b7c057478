"""Image sources: a folder of image files (or decoded arrays) with a declared preprocessing -> batches.

An image source yields uint8 RGB images (H, W, 3) with a stable index each (`images()`), and turns
them into model batches with its `ImagePreprocess` (`batches(n)`, or plain iteration). Decoding is
lazy: one image at a time, never the whole folder, so `BatchStream` can replay the source for a
second pass without spilling anything. Unreadable files are skipped and counted in `report()`.

Preprocessing, in order (the torchvision PIL conventions, so a model trained with them sees the
same pixels): `resize` (an int: shorter side to that length, longer side `int(n * long / short)`;
a pair: exactly (width, height)), then `crop` (center: offsets `round((H - h) / 2)`, or random:
seeded per image from `(seed, index)`); an image still smaller than the crop is first scaled up so
its shorter side covers it (counted as `upscaled`). Then `x = (pixel * scale - mean) / std` in the
output channel order (mean and std are given in that order, so BGR models take BGR means), the
layout (NCHW or NHWC) and the dtype.
"""

from __future__ import annotations

import abc
import json
import logging
import math
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trtq.config import JsonConfig
from trtq.errors import TrtqError

__all__ = [
    "ANY_INPUT",
    "CHANNEL_ORDERS",
    "CROP_MODES",
    "DTYPES",
    "IMAGE_EXTENSIONS",
    "INTERPOLATIONS",
    "LAYOUTS",
    "MAX_PIXELS",
    "ImageFolder",
    "ImageList",
    "ImagePreprocess",
    "ImageSource",
    "list_images",
    "load_preprocess",
    "parse_size",
    "read_rgb",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".bmp", ".jpeg", ".jpg", ".png", ".webp")
# `BatchStream` maps this key to the only input of a one-input model (as it does for an .npy file).
ANY_INPUT = "__single__"

LAYOUTS = ("NCHW", "NHWC")
DTYPES = ("float32", "float16", "float64", "uint8")
CROP_MODES = ("center", "random")
CHANNEL_ORDERS = ("RGB", "BGR")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")
_EXAMPLES = 5  # skipped files named in a report and in an error
# the most pixels one image may have after any resize or crop step: one float32 RGB sample of this size
# takes 805 MB, so a typo such as --image-size 100000 (120 GB a sample) is refused instead of run
_MAX_SIDE = 8192
MAX_PIXELS = _MAX_SIDE * _MAX_SIDE

Size = int | tuple[int, int]


def _size(value: Any, name: str) -> Size | None:
    """None, a positive int, or a (width, height) pair of positive ints (a list becomes a tuple)."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(_positive_int(v) for v in value):
        return (int(value[0]), int(value[1]))
    if _positive_int(value):
        return int(value)
    raise TrtqError(f"preprocess {name}={value!r} is not a size.",
                    f"give {name} as a positive int (e.g. 224) or [width, height] (e.g. [320, 240]).")


def _positive_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0


def _floats(value: Any, name: str, positive: bool) -> tuple[float, ...]:
    items = value if isinstance(value, (list, tuple)) else (value,)
    try:
        out = tuple(float(v) for v in items)
    except (TypeError, ValueError):
        out = ()
    if len(out) not in (1, 3) or not all(math.isfinite(v) and (v > 0 or not positive) for v in out):
        kind = "positive numbers" if positive else "numbers"
        raise TrtqError(f"preprocess {name}={value!r} is not 1 or 3 finite {kind}.",
                        f"give {name} as one value or one per channel, e.g. [0.229, 0.224, 0.225].")
    return out


def _choice(value: Any, allowed: tuple[str, ...], name: str) -> str:
    if not isinstance(value, str) or value.lower() not in {a.lower() for a in allowed}:
        raise TrtqError(f"preprocess {name}={value!r} is not one of {', '.join(allowed)}.",
                        f"set {name} to one of: {', '.join(allowed)}.")
    return next(a for a in allowed if a.lower() == value.lower())


@dataclass(frozen=True)
class ImagePreprocess(JsonConfig):
    """How decoded RGB images become model input (see the module docstring for the exact steps).

    Args:
        resize: None (keep), an int (shorter side to that length, aspect kept), or (width, height).
        crop: None (no crop), an int (square) or (width, height). Either `crop` or a (width, height)
            `resize` is required, so every image comes out the same size.
        crop_mode: center | random (random offsets drawn per image from `seed` and its index).
        interpolation: nearest | bilinear | bicubic | lanczos (Pillow's, antialiased when shrinking).
        layout: NCHW | NHWC of the batch.
        dtype: float32 | float16 | float64 | uint8 (uint8 takes the raw pixels: no scale/mean/std).
        scale: pixels are multiplied by it first; None: 1/255 for float dtypes, 1 for uint8.
        mean: subtracted after scaling; one value or one per output channel (in `channel_order`).
        std: divided by last; one value or one per output channel.
        channel_order: RGB | BGR (the channel order the model expects).
        input_name: the model input the batches feed; None: the model's only input.
        seed: seed of the random crop.
    """

    resize: int | tuple[int, int] | None = None
    crop: int | tuple[int, int] | None = None
    crop_mode: str = "center"
    interpolation: str = "bilinear"
    layout: str = "NCHW"
    dtype: str = "float32"
    scale: float | None = None
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    channel_order: str = "RGB"
    input_name: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        fields = {
            "resize": _size(self.resize, "resize"),
            "crop": _size(self.crop, "crop"),
            "crop_mode": _choice(self.crop_mode, CROP_MODES, "crop_mode"),
            "interpolation": _choice(self.interpolation, INTERPOLATIONS, "interpolation"),
            "layout": _choice(self.layout, LAYOUTS, "layout"),
            "dtype": _choice(self.dtype, DTYPES, "dtype"),
            "channel_order": _choice(self.channel_order, CHANNEL_ORDERS, "channel_order"),
            "mean": _floats(self.mean, "mean", positive=False),
            "std": _floats(self.std, "std", positive=True),
        }
        for name, value in fields.items():
            object.__setattr__(self, name, value)
        self._check_numbers()
        if self.crop is None and not isinstance(self.resize, tuple):
            raise TrtqError("the preprocessing gives images of different sizes (no crop, no [width, height] "
                            "resize), which cannot be batched.",
                            "set crop (e.g. --image-size 224) or resize to [width, height].")

    def _check_numbers(self) -> None:
        scale = self.scale
        if scale is not None and not (isinstance(scale, (int, float)) and 0 < scale < math.inf):
            raise TrtqError(f"preprocess scale={scale!r} is not a positive number.",
                            "use e.g. 0.00392156862745098 (1/255), or leave it out.")
        normalised = scale not in (None, 1) or set(self.mean) != {0.0} or set(self.std) != {1.0}
        if self.dtype == "uint8" and normalised:
            raise TrtqError("a uint8 input takes raw pixels; scale, mean and std cannot apply.",
                            "leave scale, mean and std out, or choose dtype float32.")
        if self.input_name is not None and (not isinstance(self.input_name, str) or not self.input_name):
            raise TrtqError(f"preprocess input_name={self.input_name!r} is not a name.",
                            "give the model input's name.")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise TrtqError(f"preprocess seed={self.seed!r} is not a non-negative int.", "use e.g. 0.")

    @property
    def output_size(self) -> tuple[int, int]:
        """(width, height) of every preprocessed image."""
        size = self.crop if self.crop is not None else self.resize
        return (size, size) if isinstance(size, int) else size  # type: ignore[return-value]

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """The shape of one preprocessed sample: (3, H, W) for NCHW, (H, W, 3) for NHWC."""
        w, h = self.output_size
        return (3, h, w) if self.layout == "NCHW" else (h, w, 3)

    @property
    def key(self) -> str:
        """The batch key: the input name, or `ANY_INPUT` for a one-input model."""
        return self.input_name or ANY_INPUT

    def apply(self, image: np.ndarray, index: int = 0) -> np.ndarray:
        """One uint8 RGB image (H, W, 3) -> one sample ((C, H, W) or (H, W, C)) of `dtype`."""
        return self.transform(image, index)[0]

    def transform(self, image: np.ndarray, index: int = 0) -> tuple[np.ndarray, bool]:
        """Like `apply`, and whether the image had to be scaled up to cover the crop."""
        pixels, upscaled = self._geometry(image, index)
        return self._values(pixels), upscaled

    def _geometry(self, image: np.ndarray, index: int) -> tuple[np.ndarray, bool]:
        pil = _pil()
        img = pil.fromarray(np.ascontiguousarray(image))
        img = _resized(img, self._bounded(img.size, self._target(img.size)), self.interpolation)
        upscaled = False
        if self.crop is not None:
            cw, ch = self.output_size
            w, h = img.size
            if w < cw or h < ch:
                f = max(cw / w, ch / h)
                img = _resized(img, self._bounded(img.size, (max(cw, round(w * f)), max(ch, round(h * f)))),
                               self.interpolation)
                upscaled = True
        arr = np.asarray(img)
        return (self._crop(arr, index) if self.crop is not None else arr), upscaled

    def _bounded(self, size: tuple[int, int], target: tuple[int, int]) -> tuple[int, int]:
        """`target`, unless resizing to it would exceed `MAX_PIXELS` (checked before any pixel is made)."""
        if target[0] * target[1] > MAX_PIXELS:
            raise TrtqError(
                f"the preprocessing (resize={self.resize!r}, crop={self.crop!r}) makes a {size[0]}x{size[1]} image "
                f"{target[0]}x{target[1]}: {target[0] * target[1]:,} pixels, over the {MAX_PIXELS:,} pixels "
                f"({_MAX_SIDE} x {_MAX_SIDE}) trtq takes per image.",
                "use the model's input size, e.g. --image-size 224 (or resize to [width, height]).")
        return target

    def _target(self, size: tuple[int, int]) -> tuple[int, int]:
        w, h = size
        if self.resize is None:
            return size
        if isinstance(self.resize, tuple):
            return self.resize
        n = self.resize
        return (n, int(n * h / w)) if w <= h else (int(n * w / h), n)

    def _crop(self, arr: np.ndarray, index: int) -> np.ndarray:
        cw, ch = self.output_size
        h, w = arr.shape[:2]
        if self.crop_mode == "center":
            top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
        else:
            rng = np.random.default_rng([self.seed, index])
            top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        return arr[top : top + ch, left : left + cw]

    def _values(self, pixels: np.ndarray) -> np.ndarray:
        x = pixels[..., ::-1] if self.channel_order == "BGR" else pixels
        if self.dtype != "uint8":
            work = np.float64 if self.dtype == "float64" else np.float32
            scale = 1.0 / 255.0 if self.scale is None else self.scale
            mean, std = np.asarray(self.mean, dtype=work), np.asarray(self.std, dtype=work)
            x = (x.astype(work) * work(scale) - mean) / std
        if self.layout == "NCHW":
            x = x.transpose(2, 0, 1)
        return np.ascontiguousarray(x, dtype=self.dtype)


def _resized(img: Any, size: tuple[int, int], interpolation: str) -> Any:
    if tuple(img.size) == tuple(size):
        return img
    pil = _pil()
    return img.resize(size, resample=getattr(pil.Resampling, interpolation.upper()))


def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError as exc:  # Pillow is what reads image files; nothing else in trtq needs it
        raise TrtqError("image sources need Pillow.", "pip install pillow.") from exc
    return Image


def load_preprocess(path: str | os.PathLike[str] | None = None, *, image_size: Size | None = None,
                    **overrides: Any) -> ImagePreprocess:
    """An `ImagePreprocess` from a JSON file (its fields as keys), with non-None `overrides` on top.

    `image_size` is the shorthand of `--image-size`: crop to it (unless `crop` is overridden), and
    resize the shorter side (or to W x H) to it unless the file or `overrides` give a resize.

    Raises:
        TrtqError: the file is missing, not JSON, not an object, or holds unknown or invalid fields.
    """
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise TrtqError(f"preprocess file {p}: no such file.",
                            "check the path given to --preprocess.") from exc
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise TrtqError(f"preprocess file {p} is not readable JSON ({exc}).",
                            'write a JSON object such as {"resize": 256, "crop": 224}.') from exc
        if not isinstance(data, dict):
            raise TrtqError(f"preprocess file {p} holds a {type(data).__name__}, not a JSON object.",
                            'write a JSON object such as {"resize": 256, "crop": 224}.')
    data.update({k: v for k, v in overrides.items() if v is not None})
    if image_size is not None:
        data.setdefault("resize", image_size)
        if overrides.get("crop") is None:
            data["crop"] = image_size
    try:
        return ImagePreprocess.from_dict(data)
    except TypeError as exc:  # a field given the wrong kind of value that __post_init__ did not reach
        raise TrtqError(f"invalid preprocessing {data} ({exc}).", "check the preprocess fields.") from exc


def parse_size(text: str) -> Size:
    """'224' -> 224 (shorter side / square); '320x240' -> (320, 240) (width x height)."""
    parts = text.lower().split("x")
    if len(parts) in (1, 2) and all(p.strip().isdigit() and int(p) > 0 for p in parts):
        return int(parts[0]) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
    raise TrtqError(f"image size {text!r} is not N or WxH.", "use e.g. 224 or 320x240.")


def read_rgb(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode one image file to uint8 RGB (H, W, 3): alpha dropped, grey and palettes expanded.

    16-bit grey images are scaled to 8 bits (v / 257). EXIF orientation is not applied (as
    torchvision's PIL loader). Raises whatever Pillow raises for a file it cannot decode.
    """
    pil = _pil()
    with pil.open(path) as img:
        img.load()
        if img.mode.startswith("I"):
            grey = np.clip(np.rint(np.asarray(img, dtype=np.float64) / 257.0), 0, 255).astype(np.uint8)
            return np.repeat(grey[..., None], 3, axis=2)
        return np.asarray(img.convert("RGB"))


class ImageSource(abc.ABC):
    """Base of image sources: indexed uint8 RGB images -> preprocessed `{input: array}` batches.

    Subclasses give `__len__` (candidate images, readable or not: the index range) and `images()`.
    Iterating the source yields batches of `batch_size` (1 if None); `batches(n)` is what
    `BatchStream` calls with the size it wants, unless `batch_size` was set explicitly.
    """

    def __init__(self, preprocess: ImagePreprocess | dict[str, Any], batch_size: int | None = None) -> None:
        if isinstance(preprocess, dict):
            preprocess = load_preprocess(**preprocess)
        if not isinstance(preprocess, ImagePreprocess):
            raise TrtqError(f"preprocess is a {type(preprocess).__name__}, not an ImagePreprocess.",
                            "pass ImagePreprocess(crop=224, ...) or a dict of its fields.")
        if batch_size is not None and not _positive_int(batch_size):
            raise TrtqError(f"batch_size={batch_size!r} is not a positive int.", "pass 1 or more, or None.")
        self.preprocess = preprocess
        self.batch_size = batch_size
        self._upscaled = 0

    @abc.abstractmethod
    def __len__(self) -> int:
        """Candidate images (the range of the indexes `images()` yields)."""

    @abc.abstractmethod
    def images(self) -> Iterator[tuple[int, np.ndarray]]:
        """(index, uint8 RGB (H, W, 3)) for every readable image, in a fixed order."""

    @property
    def sample_key_and_shape(self) -> tuple[str, tuple[int, ...]]:
        """(batch key, shape of one sample), for `BatchStream` to check before an image is read."""
        return self.preprocess.key, self.preprocess.sample_shape

    def report(self) -> dict[str, Any]:
        """What the last pass read, for the sidecar report."""
        return {"upscaled": self._upscaled, "preprocess": self.preprocess.to_dict()}

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self.batches(self.batch_size or 1)

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """Preprocessed batches of `batch_size` samples (the last one may be smaller)."""
        size = self.batch_size or batch_size
        self._upscaled = 0
        samples: list[np.ndarray] = []
        for index, rgb in self.images():
            sample, upscaled = self.preprocess.transform(rgb, index)
            self._upscaled += upscaled
            samples.append(sample)
            if len(samples) == size:
                yield {self.preprocess.key: np.stack(samples)}
                samples = []
        if samples:
            yield {self.preprocess.key: np.stack(samples)}


class ImageFolder(ImageSource):
    """Every .jpg/.jpeg/.png/.bmp/.webp file under `root` (recursive, any case), in sorted order.

    Files are decoded one at a time on each pass. A file Pillow cannot decode (corrupt, truncated,
    empty, not an image, unreadable) is skipped and counted; `report()` names the first few.

    Args:
        root: the folder.
        preprocess: the declared preprocessing (an `ImagePreprocess` or a dict of its fields).
        batch_size: samples per batch (None: what the caller asks for; 1 when iterated directly).

    Raises:
        TrtqError: `root` is missing or not a folder, or holds no image file; on iteration, when no
            file could be decoded.
    """

    def __init__(self, root: str | os.PathLike[str], preprocess: ImagePreprocess | dict[str, Any],
                 batch_size: int | None = None) -> None:
        super().__init__(preprocess, batch_size)
        self.root = Path(root)
        self.files = list_images(self.root)
        self._read = 0
        self._skipped: list[tuple[str, str]] = []
        self._passes = 0

    def __len__(self) -> int:
        return len(self.files)

    def images(self) -> Iterator[tuple[int, np.ndarray]]:
        self._read, self._skipped = 0, []
        first_pass = self._passes == 0
        self._passes += 1
        for index, path in enumerate(self.files):
            try:
                rgb = read_rgb(path)
            except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, bombs...: skip any
                self._skip(path, exc, first_pass)
                continue
            self._read += 1
            yield index, rgb
        if self._skipped:
            logger.log(logging.WARNING if first_pass else logging.DEBUG,
                       "%s: skipped %d of %d files that are not readable images",
                       self.root, len(self._skipped), len(self.files))
        if self._read == 0:
            raise TrtqError(f"none of the {len(self.files)} image files under {self.root} could be read "
                            f"({self._examples()}).", "check the files: they are corrupt or not images.")

    def _skip(self, path: Path, exc: Exception, log: bool) -> None:
        rel = path.relative_to(self.root).as_posix()
        reason = f"{type(exc).__name__}: {exc}".replace(repr(str(path)), repr(rel)).replace(str(path), rel)
        self._skipped.append((rel, reason))
        if log and len(self._skipped) <= _EXAMPLES:
            logger.warning("skipping %s (%s)", path, reason)

    def _examples(self) -> str:
        return "; ".join(f"{p}: {r}" for p, r in self._skipped[:_EXAMPLES])

    def report(self) -> dict[str, Any]:
        examples = [{"path": p, "reason": r} for p, r in self._skipped[:_EXAMPLES]]
        return {"source": "image_folder", "root": str(self.root), "files": len(self.files),
                "read": self._read, "skipped": len(self._skipped), "skipped_examples": examples,
                **super().report()}


class ImageList(ImageSource):
    """Images already in memory: uint8 arrays (H, W), (H, W, 3) or (H, W, 4), or Pillow images.

    Raises:
        TrtqError: the sequence is empty or an item is not a uint8 grey/RGB/RGBA image.
    """

    def __init__(self, images: Sequence[Any], preprocess: ImagePreprocess | dict[str, Any],
                 batch_size: int | None = None) -> None:
        super().__init__(preprocess, batch_size)
        self._images = [_as_rgb(img, i) for i, img in enumerate(images)]
        if not self._images:
            raise TrtqError("the image list is empty.", "pass at least one image.")

    def __len__(self) -> int:
        return len(self._images)

    def images(self) -> Iterator[tuple[int, np.ndarray]]:
        yield from enumerate(self._images)

    def report(self) -> dict[str, Any]:
        return {"source": "image_list", "images": len(self), **super().report()}


def _as_rgb(image: Any, index: int) -> np.ndarray:
    if hasattr(image, "convert") and hasattr(image, "mode"):  # a Pillow image
        return np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise TrtqError(f"image {index} is {arr.dtype}{list(arr.shape)}, not a uint8 (H, W[, 3|4]) image.",
                        "pass uint8 pixels (convert with (x * 255).round().astype(numpy.uint8)).")
    if arr.ndim == 2:
        return np.repeat(arr[..., None], 3, axis=2)
    return np.ascontiguousarray(arr[..., :3])


def list_images(root: Path) -> list[Path]:
    """The image files under `root`, recursively, sorted by their path relative to `root`."""
    if not root.exists():
        raise TrtqError(f"image folder {root}: no such folder.",
                        "check the path given to --calib-data / --data.")
    if not root.is_dir():
        raise TrtqError(f"{root} is not a folder of images.", "pass a folder (or an .npz of arrays).")
    found: list[Path] = []
    others: Counter[str] = Counter()
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        for name in names:
            ext = os.path.splitext(name)[1].lower()
            if ext in IMAGE_EXTENSIONS:
                found.append(Path(folder) / name)
            else:
                others[ext or "(no extension)"] += 1
    if not found:
        seen = ", ".join(f"{n} {e}" for e, n in others.most_common(3))
        raise TrtqError(f"no image files under {root}" + (f" (found {seen})." if seen else " (it is empty)."),
                        f"put {'/'.join(e.lstrip('.') for e in IMAGE_EXTENSIONS)} files in it.")
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())
