"""Degradation-aware calibration and evaluation: seeded noise, blur, contrast, JPEG, motion and low light.

QRID (algorithms.md §2) calibrates on a 50/50 mix of clean images and images degraded by one
transform drawn uniformly from a pool. `Degraded` wraps any `ImageSource` the same way, on uint8
RGB pixels before preprocessing: a fixed `round(N * ratio)` of the N candidate indexes, drawn by a
seeded permutation, are degraded; each gets one (degradation, level) of the pool and its parameters
from a generator seeded with `(seed, index)`, so the result depends on neither batch size nor order.

Levels follow QRID's Albumentations 1.x calls ("mild" = its low/moderate, "strong" = its
medium/heavy); entries QRID does not have are trtq's own and say so in `SPECS[...]["reference"]`:

| name     | mild                  | strong                      |
|----------|-----------------------|-----------------------------|
| noise    | var U(10, 50)         | var U(50, 150)              |
| blur     | k in 3..5             | k in 7..11                  |
| contrast | alpha U(0.4, 0.7)     | alpha U(0.2, 0.4) (trtq)    |
| jpeg     | quality 50..75        | quality 20..45              |
| motion   | length 5..9 (trtq)    | length 11..17 (trtq)        |
| lowlight | gamma 1.5-2, gain 0.6-0.8, sigma 2-4 (trtq) | gamma 2.5-3.5, gain 0.3-0.5, sigma 4-8 (trtq) |

Semantics (Albumentations 1.x, reproduced with numpy, scipy and Pillow):
- noise (`GaussNoise`, per_channel): x + N(0, var) per pixel and channel, clipped, truncated to uint8.
- blur (`GaussianBlur`, sigma 0): k = randrange(lo, hi + 1), an even k becomes (k + 1) % (hi + 1);
  OpenCV's kernel for k (its fixed tables for k <= 7, else sigma = 0.3((k - 1)/2 - 1) + 0.8);
  reflect-101 border.
- contrast (`RandomBrightnessContrast`, brightness 0): LUT trunc(clip(alpha * v)), so it darkens too.
- jpeg (`ImageCompression`): encode at the drawn quality, 4:2:0, and decode.
- motion: a line kernel of the drawn length through the centre at angle U(0, 180), reflect-101.
- lowlight: 255 * gain * (v / 255) ** gamma + N(0, sigma), rounded and clipped.

Where trtq differs from QRID: QRID degrades BGR images from `cv2.imread` (every transform here is
channel-symmetric or, for JPEG, colour-correct, so RGB gives the same result); its random draws come
from Python's `random` and NumPy's global state, trtq's from NumPy generators (same distributions,
different values); blur rounds in float where OpenCV uses fixed point (within 1 grey level); JPEG
goes through Pillow's libjpeg instead of OpenCV's (same IJG tables and 4:2:0 subsampling); QRID
re-encodes every degraded file as JPEG quality 95 (`cv2.imwrite`), which trtq does only when
`reencode_jpeg=95` (`DegradeConfig.qrid()` sets it).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from trtq.calibrators.images import ImageSource
from trtq.config import JsonConfig
from trtq.errors import TrtqError

__all__ = [
    "DEGRADATIONS",
    "LEVELS",
    "LEVEL_CHOICES",
    "SPECS",
    "DegradeConfig",
    "Degraded",
    "degrade",
    "degrade_config",
    "evaluation_sets",
    "jpeg_roundtrip",
]

logger = logging.getLogger(__name__)

DEGRADATIONS = ("noise", "blur", "contrast", "jpeg", "motion", "lowlight")
LEVELS = ("mild", "strong")
LEVEL_CHOICES = (*LEVELS, "mixed")
# Separate streams of the seed: which indexes are degraded, and each index's own draws.
_SELECT_STREAM, _SAMPLE_STREAM = 0x5E1EC7, 0xDE9AD3

SPECS: dict[tuple[str, str], dict[str, Any]] = {
    ("noise", "mild"): {"var": (10.0, 50.0), "reference": "QRID noise_low: A.GaussNoise(var_limit=(10, 50))"},
    ("noise", "strong"): {"var": (50.0, 150.0),
                          "reference": "QRID noise_med: A.GaussNoise(var_limit=(50, 150))"},
    ("blur", "mild"): {"ksize": (3, 5), "reference": "QRID blur_low: A.GaussianBlur(blur_limit=(3, 5))"},
    ("blur", "strong"): {"ksize": (7, 11), "reference": "QRID blur_med: A.GaussianBlur(blur_limit=(7, 11))"},
    ("contrast", "mild"): {"alpha": (0.4, 0.7), "reference": "QRID contrast_low: A.RandomBrightnessContrast("
                           "brightness_limit=0, contrast_limit=(-0.6, -0.3))"},
    ("contrast", "strong"): {"alpha": (0.2, 0.4), "reference": "trtq: contrast_limit=(-0.8, -0.6)"},
    ("jpeg", "mild"): {"quality": (50, 75), "reference": "QRID jpeg_mod: A.ImageCompression(quality 50-75)"},
    ("jpeg", "strong"): {"quality": (20, 45),
                         "reference": "QRID jpeg_heavy: A.ImageCompression(quality 20-45)"},
    ("motion", "mild"): {"length": (5, 9), "reference": "trtq: centred line kernel, angle U(0, 180)"},
    ("motion", "strong"): {"length": (11, 17), "reference": "trtq: centred line kernel, angle U(0, 180)"},
    ("lowlight", "mild"): {"gamma": (1.5, 2.0), "gain": (0.6, 0.8), "sigma": (2.0, 4.0),
                           "reference": "trtq: 255 * gain * (v / 255) ** gamma + N(0, sigma)"},
    ("lowlight", "strong"): {"gamma": (2.5, 3.5), "gain": (0.3, 0.5), "sigma": (4.0, 8.0),
                             "reference": "trtq: 255 * gain * (v / 255) ** gamma + N(0, sigma)"},
}

# OpenCV getGaussianKernel's fixed kernels for odd k <= 7 when sigma <= 0.
_CV_SMALL_KERNELS = {
    1: (1.0,),
    3: (0.25, 0.5, 0.25),
    5: (0.0625, 0.25, 0.375, 0.25, 0.0625),
    7: (0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125),
}

Drawn = dict[str, float]


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _noise(img: np.ndarray, rng: np.random.Generator, spec: dict[str, Any]) -> tuple[np.ndarray, Drawn]:
    var = float(rng.uniform(*spec["var"]))
    noisy = img.astype(np.float32) + rng.normal(0.0, var**0.5, img.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8), {"var": var}  # truncation, as Albumentations 1.x


def _cv_gaussian_kernel(k: int) -> np.ndarray:
    if k in _CV_SMALL_KERNELS:
        return np.asarray(_CV_SMALL_KERNELS[k])
    sigma = 0.3 * ((k - 1) * 0.5 - 1) + 0.8
    x = np.arange(k) - (k - 1) / 2
    w = np.exp(-(x**2) / (2 * sigma**2))
    return w / w.sum()


def _blur(img: np.ndarray, rng: np.random.Generator, spec: dict[str, Any]) -> tuple[np.ndarray, Drawn]:
    lo, hi = spec["ksize"]
    k = int(rng.integers(lo, hi + 1))
    if k % 2 == 0:
        k = (k + 1) % (hi + 1)
    kernel = _cv_gaussian_kernel(k)
    from scipy import ndimage

    x = ndimage.correlate1d(img.astype(np.float32), kernel, axis=0, mode="mirror")
    x = ndimage.correlate1d(x, kernel, axis=1, mode="mirror")
    return _to_uint8(x), {"ksize": float(k)}


def _contrast(img: np.ndarray, rng: np.random.Generator, spec: dict[str, Any]) -> tuple[np.ndarray, Drawn]:
    alpha = float(rng.uniform(*spec["alpha"]))
    lut = np.clip(np.arange(256, dtype=np.float32) * np.float32(alpha), 0, 255).astype(np.uint8)
    return lut[img], {"alpha": alpha}


def jpeg_roundtrip(img: np.ndarray, quality: int) -> np.ndarray:
    """Encode as JPEG (4:2:0) at `quality` and decode again."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=int(quality), subsampling=2)
    buf.seek(0)
    with Image.open(buf) as out:
        return np.asarray(out.convert("RGB"))


def _jpeg(img: np.ndarray, rng: np.random.Generator, spec: dict[str, Any]) -> tuple[np.ndarray, Drawn]:
    quality = int(rng.integers(spec["quality"][0], spec["quality"][1] + 1))
    return jpeg_roundtrip(img, quality), {"quality": float(quality)}


def _line_kernel(length: int, angle_deg: float) -> np.ndarray:
    """A normalised anti-aliased line of `length` pixels through the centre of an odd square kernel."""
    k = length | 1
    c = (k - 1) / 2
    t = np.linspace(-(length - 1) / 2, (length - 1) / 2, 4 * length)
    theta = np.deg2rad(angle_deg)
    xs, ys = c + t * np.cos(theta), c - t * np.sin(theta)
    kernel = np.zeros((k, k))
    x0, y0 = np.floor(xs).astype(int), np.floor(ys).astype(int)
    fx, fy = xs - x0, ys - y0
    corners = ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy))
    for dx, dy, w in corners:
        xi, yi = np.clip(x0 + dx, 0, k - 1), np.clip(y0 + dy, 0, k - 1)
        np.add.at(kernel, (yi, xi), w)
    return kernel / kernel.sum()


def _motion(img: np.ndarray, rng: np.random.Generator, spec: dict[str, Any]) -> tuple[np.ndarray, Drawn]:
    length = int(rng.integers(spec["length"][0], spec["length"][1] + 1))
    angle = float(rng.uniform(0.0, 180.0))
    kernel = _line_kernel(length, angle)[..., None]
    from scipy import ndimage

    return _to_uint8(ndimage.correlate(img.astype(np.float32), kernel, mode="mirror")), {
        "length": float(length), "angle": angle}


def _lowlight(img: np.ndarray, rng: np.random.Generator, spec: dict[str, Any]) -> tuple[np.ndarray, Drawn]:
    gamma, gain, sigma = (float(rng.uniform(*spec[p])) for p in ("gamma", "gain", "sigma"))
    dark = 255.0 * gain * (img.astype(np.float64) / 255.0) ** gamma
    return _to_uint8(dark + rng.normal(0.0, sigma, img.shape)), {"gamma": gamma, "gain": gain, "sigma": sigma}


_APPLY: dict[str, Callable[[np.ndarray, np.random.Generator, dict[str, Any]], tuple[np.ndarray, Drawn]]] = {
    "noise": _noise,
    "blur": _blur,
    "contrast": _contrast,
    "jpeg": _jpeg,
    "motion": _motion,
    "lowlight": _lowlight,
}


def _rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, index, _SAMPLE_STREAM])


def _check_image(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise TrtqError(f"degradations take uint8 RGB images (H, W, 3), not {arr.dtype}{list(arr.shape)}.",
                        "degrade images before preprocessing (wrap the image source with Degraded).")
    return np.ascontiguousarray(arr)


def degrade(image: np.ndarray, name: str, level: str = "mild", *, seed: int = 0,
            index: int = 0) -> np.ndarray:
    """One degradation of one uint8 RGB image (H, W, 3), its parameters drawn from `(seed, index)`.

    Raises:
        TrtqError: an unknown degradation or level, or an image that is not uint8 RGB.
    """
    _check_entry(name, level)
    return _APPLY[name](_check_image(image), _rng(seed, index), SPECS[(name, level)])[0]


def _check_entry(name: str, level: str) -> None:
    if name not in DEGRADATIONS:
        raise TrtqError(f"unknown degradation {name!r}.",
                        f"use --degrade with some of: {', '.join(DEGRADATIONS)}.")
    if level not in LEVELS:
        raise TrtqError(f"unknown degradation level {level!r}.", f"use one of: {', '.join(LEVEL_CHOICES)}.")


@dataclass(frozen=True)
class DegradeConfig(JsonConfig):
    """Which degradations, how many samples, how strong.

    Args:
        degradations: names from `DEGRADATIONS`, each optionally with its own level ("blur:strong").
        ratio: fraction of the candidates degraded, in (0, 1]; exactly `round(N * ratio)` of N.
        levels: mild | strong | mixed (both levels of each name enter the pool); entries that name a
            level keep it.
        seed: seed of every draw.
        reencode_jpeg: JPEG quality every degraded image is re-encoded at afterwards (QRID: 95, a
            side effect of `cv2.imwrite`); None: no re-encoding.
    """

    degradations: tuple[str, ...] = ("noise", "blur", "contrast", "jpeg")
    ratio: float = 0.5
    levels: str = "mild"
    seed: int = 0
    reencode_jpeg: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.degradations, str) or not self.degradations:
            raise TrtqError(f"degradations={self.degradations!r} is not a non-empty list of names.",
                            f"pass e.g. ('noise', 'blur'); names: {', '.join(DEGRADATIONS)}.")
        object.__setattr__(self, "degradations", tuple(self.degradations))
        if self.levels not in LEVEL_CHOICES:
            raise TrtqError(f"unknown degradation level {self.levels!r}.",
                            f"use --degrade-levels with one of: {', '.join(LEVEL_CHOICES)}.")
        if not isinstance(self.ratio, (int, float)) or not 0.0 < self.ratio <= 1.0:
            raise TrtqError(f"degradation ratio {self.ratio!r} is outside (0, 1].",
                            "pass e.g. --degrade-ratio 0.5 (or leave --degrade out for clean calibration).")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise TrtqError(f"degradation seed {self.seed!r} is not a non-negative int.", "use e.g. 0.")
        q = self.reencode_jpeg
        if q is not None and (not isinstance(q, int) or isinstance(q, bool) or not 1 <= q <= 100):
            raise TrtqError(f"reencode_jpeg={q!r} is not a JPEG quality in 1..100.", "use e.g. 95, or None.")
        _ = self.pool  # validates every name and level

    @property
    def pool(self) -> tuple[tuple[str, str], ...]:
        """The (degradation, level) pairs a degraded sample draws one of, uniformly."""
        pairs: list[tuple[str, str]] = []
        for entry in self.degradations:
            name, _, level = str(entry).strip().partition(":")
            levels = (level,) if level else (LEVELS if self.levels == "mixed" else (self.levels,))
            for lvl in levels:
                _check_entry(name, lvl)
                pairs.append((name, lvl))
        return tuple(dict.fromkeys(pairs))

    @classmethod
    def qrid(cls, seed: int = 42) -> DegradeConfig:
        """QRID's mixed calibration set: its 7-transform pool, half degraded, JPEG-95 re-encoding."""
        pool = ("noise:mild", "noise:strong", "blur:mild", "blur:strong", "contrast:mild", "jpeg:mild",
                "jpeg:strong")
        return cls(degradations=pool, ratio=0.5, levels="mild", seed=seed, reencode_jpeg=95)


def degrade_config(spec: str, *, ratio: float | None = None, levels: str | None = None, seed: int = 0,
                   reencode_jpeg: int | None = None) -> DegradeConfig:
    """A `DegradeConfig` from CLI words: "noise,blur:strong,..." or "qrid"; given options override.

    "qrid" is `DegradeConfig.qrid` (QRID's 7-transform pool, ratio 0.5, JPEG-95 re-encoding) drawn
    with `seed` (QRID's own is 42).

    Raises:
        TrtqError: an unknown name or level, or a bad ratio.
    """
    if spec.strip().lower() == "qrid":
        base = DegradeConfig.qrid(seed)
    else:
        names = tuple(s.strip() for s in spec.split(",") if s.strip())
        base = DegradeConfig(degradations=names or ("",), seed=seed)
    changes = {"ratio": ratio, "levels": levels, "reencode_jpeg": reencode_jpeg}
    return DegradeConfig.from_dict({**base.to_dict(), **{k: v for k, v in changes.items() if v is not None}})


class Degraded(ImageSource):
    """An image source whose images are a seeded mix of clean and degraded ones (see module docstring).

    Args:
        source: any `ImageSource` (its preprocessing and batch size are kept).
        config: the recipe (a `DegradeConfig`, or a dict of its fields).

    `report()` is the source's report plus `degradation`: the recipe, and per (degradation, level)
    its parameters and how many samples got it in the last pass.
    """

    def __init__(self, source: ImageSource, config: DegradeConfig | dict[str, Any] | None = None) -> None:
        if not isinstance(source, ImageSource):
            raise TrtqError(f"cannot degrade a {type(source).__name__}: degradations apply to image sources.",
                            "wrap an ImageFolder or ImageList (an .npz holds model tensors, not pixels).")
        super().__init__(source.preprocess, source.batch_size)
        self.source = source
        if isinstance(config, dict):
            config = DegradeConfig.from_dict(config)
        self.config = config or DegradeConfig()
        self._pool = self.config.pool
        self._chosen: np.ndarray | None = None
        self._counts: dict[str, int] = {}
        self._clean = 0

    def __len__(self) -> int:
        return len(self.source)

    def chosen(self) -> np.ndarray:
        """Boolean mask over the source's indexes: True where the image is degraded."""
        if self._chosen is None:
            n = len(self.source)
            k = int(round(n * self.config.ratio))
            order = np.random.default_rng([self.config.seed, _SELECT_STREAM]).permutation(n)
            self._chosen = np.zeros(n, dtype=bool)
            self._chosen[order[:k]] = True
        return self._chosen

    def images(self) -> Iterator[tuple[int, np.ndarray]]:
        chosen = self.chosen()
        self._counts = {f"{n}:{lvl}": 0 for n, lvl in self._pool}
        self._clean = 0
        for index, rgb in self.source.images():
            if not chosen[index]:
                self._clean += 1
                yield index, rgb
                continue
            out, name, level = self.degrade_one(rgb, index)
            self._counts[f"{name}:{level}"] += 1
            yield index, out
        logger.info("degraded %d of %d images (%s)", sum(self._counts.values()),
                    self._clean + sum(self._counts.values()), self._counts)

    def degrade_one(self, rgb: np.ndarray, index: int) -> tuple[np.ndarray, str, str]:
        """The degraded image of `index` (whether or not it is chosen), and its degradation and level."""
        rng = _rng(self.config.seed, index)
        name, level = self._pool[int(rng.integers(len(self._pool)))]
        out, _ = _APPLY[name](_check_image(rgb), rng, SPECS[(name, level)])
        if self.config.reencode_jpeg is not None:
            out = jpeg_roundtrip(out, self.config.reencode_jpeg)
        return out, name, level

    def recipe(self) -> dict[str, Any]:
        """The recipe and what the last pass did, for the sidecar report."""
        pool = {f"{n}:{lvl}": {**_parameters(n, lvl), "count": self._counts.get(f"{n}:{lvl}", 0)}
                for n, lvl in self._pool}
        return {**self.config.to_dict(), "candidates": len(self), "selected": int(self.chosen().sum()),
                "clean": self._clean, "degraded": sum(self._counts.values()), "pool": pool}

    def report(self) -> dict[str, Any]:
        return {**self.source.report(), "upscaled": self._upscaled, "degradation": self.recipe()}


def _parameters(name: str, level: str) -> dict[str, Any]:
    spec = SPECS[(name, level)]
    return {"reference": spec["reference"],
            "parameters": {k: list(v) for k, v in spec.items() if k != "reference"}}


def evaluation_sets(source: ImageSource, degradations: tuple[str, ...] | list[str] = DEGRADATIONS, *,
                    levels: str = "mild", seed: int = 0) -> dict[str, ImageSource]:
    """The same evaluation images clean and under each single degradation (QRID's evaluation sets).

    Returns:
        {"clean": source, "noise:mild": every image of source with noise at the mild level, ...}:
        one entry per (degradation, level) of the pool `DegradeConfig(degradations, levels=levels)`
        gives, each degrading all images (ratio 1) with draws seeded by `(seed, index)`.
    """
    pool = DegradeConfig(degradations=tuple(degradations), ratio=1.0, levels=levels, seed=seed).pool
    sets: dict[str, ImageSource] = {"clean": source}
    for name, level in pool:
        sets[f"{name}:{level}"] = Degraded(source, DegradeConfig((f"{name}:{level}",), ratio=1.0, seed=seed))
    return sets
