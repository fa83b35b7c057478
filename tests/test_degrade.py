"""Degradations: QRID semantics, levels, seeded mixes independent of batch size, recipes, evaluation sets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from trtq.calibrators import degrade as dg
from trtq.calibrators.degrade import (
    DEGRADATIONS,
    DegradeConfig,
    Degraded,
    degrade,
    degrade_config,
    evaluation_sets,
)
from trtq.calibrators.images import ANY_INPUT, ImageFolder, ImageList, ImagePreprocess
from trtq.errors import TrtqError

PRE = ImagePreprocess(crop=32, layout="NHWC", dtype="uint8")


def _photo(seed: int = 0, h: int = 48, w: int = 64) -> np.ndarray:
    """Smooth texture plus hard edges: every degradation has something to destroy."""
    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(rng.uniform(0, 255, (h, w, 3)), (2, 2, 0))
    yy, xx = np.mgrid[0:h, 0:w]
    return np.clip(0.5 * smooth + 100 * ((xx // 8 + yy // 8) % 2)[..., None], 0, 255).astype(np.uint8)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


def _stack(source, batch_size: int) -> np.ndarray:
    return np.concatenate([b[ANY_INPUT] for b in source.batches(batch_size)])


@pytest.mark.parametrize("name", DEGRADATIONS)
def test_every_degradation_is_deterministic_under_the_seed(name):
    img = _photo()
    a, b = degrade(img, name, "strong", seed=1, index=3), degrade(img, name, "strong", seed=1, index=3)
    assert a.dtype == np.uint8 and a.shape == img.shape
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, img)
    others = [degrade(img, name, "strong", seed=s, index=i) for s, i in ((2, 3), (1, 4), (5, 9))]
    assert any(not np.array_equal(a, o) for o in others)


@pytest.mark.parametrize("name", DEGRADATIONS)
def test_strong_degrades_more_than_mild(name):
    img = _photo()
    mild = np.mean([_psnr(img, degrade(img, name, "mild", seed=0, index=i)) for i in range(6)])
    strong = np.mean([_psnr(img, degrade(img, name, "strong", seed=0, index=i)) for i in range(6)])
    assert strong < mild - 1.0, (mild, strong)


def test_noise_sigma_matches_the_albumentations_variance_range():
    flat = np.full((64, 64, 3), 128, np.uint8)
    for level, (lo, hi) in (("mild", (10, 50)), ("strong", (50, 150))):
        for i in range(4):
            diff = degrade(flat, "noise", level, index=i).astype(np.float64) - 128
            assert np.sqrt(lo) * 0.9 < diff.std() < np.sqrt(hi) * 1.1


def test_contrast_is_a_truncating_lut_about_zero():
    img = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    out = degrade(img, "contrast", "mild", index=2).astype(np.int64)
    alpha = out[img == 255].max() / 255.0  # the drawn alpha, up to truncation
    assert 0.39 < alpha <= 0.7
    assert (out <= img).all() and out[img == 0].max() == 0  # darkens: multiplicative about 0


def test_blur_uses_opencv_kernels():
    np.testing.assert_array_equal(dg._cv_gaussian_kernel(3), [0.25, 0.5, 0.25])
    k9 = dg._cv_gaussian_kernel(9)
    assert k9.sum() == pytest.approx(1.0) and k9[4] == k9.max() and np.allclose(k9, k9[::-1])
    draws = {int(dg._blur(_photo(), np.random.default_rng(s), dg.SPECS[("blur", "strong")])[1]["ksize"])
             for s in range(40)}
    assert draws == {7, 9, 11}  # even draws move up, as Albumentations 1.x does


def test_jpeg_matches_a_pillow_round_trip_at_the_drawn_quality():
    img = _photo()
    out = degrade(img, "jpeg", "strong", index=1)
    candidates = [dg.jpeg_roundtrip(img, q) for q in range(20, 46)]
    assert any(np.array_equal(out, c) for c in candidates)


def _source(n: int = 10) -> ImageList:
    return ImageList([_photo(i) for i in range(n)], PRE)


def test_mix_degrades_exactly_round_n_ratio_and_keeps_the_rest_clean():
    clean = _stack(_source(), 4)
    mixed = Degraded(_source(), DegradeConfig(ratio=0.3, seed=4))
    out = _stack(mixed, 4)
    changed = [not np.array_equal(a, b) for a, b in zip(out, clean, strict=True)]
    assert sum(changed) == 3 and list(mixed.chosen()) == changed
    recipe = mixed.report()["degradation"]
    assert (recipe["selected"], recipe["degraded"], recipe["clean"]) == (3, 3, 7)
    assert sum(e["count"] for e in recipe["pool"].values()) == 3
    json.dumps(recipe)


def test_mix_is_independent_of_batch_size_and_pass():
    mixed = Degraded(_source(), DegradeConfig(degradations=DEGRADATIONS, ratio=0.6, levels="mixed", seed=11))
    a, b = _stack(mixed, 1), _stack(mixed, 3)
    report_a = mixed.report()
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, _stack(Degraded(_source(), mixed.config), 7))
    assert mixed.report() == report_a


def test_each_index_gets_its_own_draw_whatever_the_order():
    mixed = Degraded(_source(), DegradeConfig(ratio=1.0, seed=2))
    out = _stack(mixed, 5)
    for i in (0, 4, 9):
        expected = PRE.apply(mixed.degrade_one(_photo(i), i)[0], i)
        np.testing.assert_array_equal(out[i], expected)


def test_seed_changes_the_mix():
    a = _stack(Degraded(_source(), DegradeConfig(seed=0)), 10)
    b = _stack(Degraded(_source(), DegradeConfig(seed=1)), 10)
    assert not np.array_equal(a, b)


def test_pool_levels_and_the_qrid_preset():
    assert DegradeConfig(("noise", "blur:strong"), levels="mixed").pool == (
        ("noise", "mild"), ("noise", "strong"), ("blur", "strong"))
    qrid = DegradeConfig.qrid()
    assert len(qrid.pool) == 7 and qrid.ratio == 0.5 and qrid.reencode_jpeg == 95 and qrid.seed == 42
    cfg = degrade_config("qrid", ratio=0.25, seed=3)
    assert cfg.pool == qrid.pool and cfg.ratio == 0.25 and cfg.seed == 3
    strong = degrade_config("noise, motion", levels="strong")
    assert strong.pool == (("noise", "strong"), ("motion", "strong"))
    assert DegradeConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_reencoding_changes_degraded_images_only():
    plain = _stack(Degraded(_source(), DegradeConfig(("contrast",), seed=1)), 10)
    reenc = Degraded(_source(), DegradeConfig(("contrast",), seed=1, reencode_jpeg=95))
    out = _stack(reenc, 10)
    chosen = reenc.chosen()
    assert all(not np.array_equal(plain[i], out[i]) for i in np.flatnonzero(chosen))
    np.testing.assert_array_equal(plain[~chosen], out[~chosen])


def test_wraps_a_folder_with_corrupt_files(tmp_path: Path):
    for i in range(6):
        Image.fromarray(_photo(i)).save(tmp_path / f"{i}.png")
    (tmp_path / "9_bad.jpg").write_text("not an image")
    mixed = Degraded(ImageFolder(tmp_path, PRE), DegradeConfig(ratio=0.5, seed=5))
    assert _stack(mixed, 4).shape[0] == 6
    report = mixed.report()
    assert report["skipped"] == 1 and report["degradation"]["candidates"] == 7
    assert report["degradation"]["degraded"] + report["degradation"]["clean"] == 6


def test_evaluation_sets_degrade_every_image_with_one_degradation():
    src = _source(4)
    sets = evaluation_sets(src, ("noise", "jpeg"), levels="mixed", seed=0)
    assert list(sets) == ["clean", "noise:mild", "noise:strong", "jpeg:mild", "jpeg:strong"]
    clean = _stack(sets["clean"], 4)
    for name, s in sets.items():
        if name == "clean":
            continue
        out = _stack(s, 2)
        assert all(not np.array_equal(a, b) for a, b in zip(out, clean, strict=True))
        assert list(s.report()["degradation"]["pool"]) == [name]
        assert s.report()["degradation"]["pool"][name]["count"] == 4


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"degradations": ("fog",)}, "unknown degradation 'fog'"),
    ({"degradations": ("noise:extreme",)}, "unknown degradation level"),
    ({"levels": "medium"}, "unknown degradation level"),
    ({"ratio": 0.0}, "outside"),
    ({"ratio": 1.5}, "outside"),
    ({"degradations": ()}, "non-empty"),
    ({"degradations": "noise"}, "non-empty"),
    ({"reencode_jpeg": 0}, "JPEG quality"),
    ({"seed": -1}, "seed"),
])
def test_bad_configs_are_clear_errors(kwargs, message):
    with pytest.raises(TrtqError, match=message):
        DegradeConfig(**kwargs)


def test_degrading_what_is_not_pixels_is_a_clear_error():
    with pytest.raises(TrtqError, match="image sources"):
        Degraded([{"input": np.zeros((1, 3, 4, 4), np.float32)}])  # type: ignore[arg-type]
    with pytest.raises(TrtqError, match="uint8 RGB"):
        degrade(np.zeros((4, 4, 3), np.float32), "noise")
    with pytest.raises(TrtqError, match="unknown degradation"):
        degrade_config("noise,,fog")
