"""Image sources: folder listing, corrupt files, preprocessing numerics, layouts, determinism, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trtq.calibrators.data import BatchStream, InputSpec
from trtq.calibrators.images import (
    ANY_INPUT,
    ImageFolder,
    ImageList,
    ImagePreprocess,
    load_preprocess,
    parse_size,
    read_rgb,
)
from trtq.errors import TrtqError

import graphs
import helpers

SPEC = [InputSpec("input", np.dtype(np.float32), (None, 3, 12, 12))]


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _save(path: Path, arr: np.ndarray, **kwargs: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kwargs)
    return path


def _corrupt(folder: Path) -> list[str]:
    """A truncated JPEG, random bytes named .png, a text file named .jpg, an empty .webp."""
    jpeg = _save(folder / "c_trunc.jpg", _image(64, 64, 9), quality=90)
    jpeg.write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])
    noise = np.random.default_rng(1).integers(0, 256, 300, dtype=np.uint8)
    (folder / "c_noise.png").write_bytes(noise.tobytes())
    (folder / "c_text.jpg").write_text("this is not an image\n")
    (folder / "c_empty.webp").write_bytes(b"")
    return ["c_empty.webp", "c_noise.png", "c_text.jpg", "c_trunc.jpg"]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "imgs"
    _save(root / "b.png", _image(16, 20, 1))
    _save(root / "A.JPG", _image(14, 18, 2), quality=95)
    _save(root / "sub" / "c.bmp", _image(20, 16, 3))
    _save(root / "sub" / "deeper" / "d.webp", _image(18, 18, 4), lossless=True)
    (root / "notes.txt").write_text("ignored")
    return root


def _all(source, batch_size: int = 1) -> np.ndarray:
    return np.concatenate([b[ANY_INPUT] for b in source.batches(batch_size)])


def test_folder_lists_recursively_sorted_any_case(folder):
    src = ImageFolder(folder, ImagePreprocess(crop=12))
    assert [p.relative_to(folder).as_posix() for p in src.files] == [
        "A.JPG", "b.png", "sub/c.bmp", "sub/deeper/d.webp"]
    assert len(src) == 4 and _all(src).shape == (4, 3, 12, 12)


def test_corrupt_files_are_skipped_and_counted(folder):
    bad = _corrupt(folder)
    src = ImageFolder(folder, ImagePreprocess(crop=12))
    assert _all(src, 3).shape[0] == 4
    report = src.report()
    assert (report["files"], report["read"], report["skipped"]) == (8, 4, 4)
    assert sorted(e["path"] for e in report["skipped_examples"]) == bad
    assert all(e["reason"] for e in report["skipped_examples"])
    json.dumps(report)  # goes into the sidecar as is


def test_only_corrupt_files_is_a_clear_error(tmp_path):
    _corrupt(tmp_path)
    src = ImageFolder(tmp_path, ImagePreprocess(crop=12))
    with pytest.raises(TrtqError, match="none of the 4 image files .* could be read") as err:
        list(src)
    assert "c_trunc.jpg" in str(err.value)


@pytest.mark.parametrize("make", [lambda p: p.mkdir(), lambda p: (p.mkdir(), (p / "a.txt").write_text("x")),
                                  lambda p: None, lambda p: p.write_text("x")])
def test_no_images_is_a_clear_error(tmp_path, make):
    path = tmp_path / "data"
    make(path)
    with pytest.raises(TrtqError, match="no image files|no such folder|not a folder"):
        ImageFolder(path, ImagePreprocess(crop=12))


def test_known_image_gives_the_expected_tensor():
    img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
    pre = ImagePreprocess(resize=(3, 2), mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 2.0))
    got = pre.apply(img)
    x = img.astype(np.float32) * np.float32(1 / 255)
    expected = ((x - np.float32([0.5, 0.25, 0.0])) / np.float32([0.5, 0.25, 2.0])).transpose(2, 0, 1)
    assert got.dtype == np.float32 and got.shape == (3, 2, 3)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    bgr = ImagePreprocess(resize=(3, 2), layout="NHWC", channel_order="BGR", scale=1.0, mean=(1.0, 2.0, 3.0))
    np.testing.assert_array_equal(bgr.apply(img), img[..., ::-1].astype(np.float32) - np.float32([1, 2, 3]))


def test_center_crop_offsets_follow_torchvision():
    img = np.arange(5 * 6 * 3, dtype=np.uint8).reshape(5, 6, 3)
    got = ImagePreprocess(crop=(3, 2), scale=1.0, layout="NHWC").apply(img)
    top, left = round((5 - 2) / 2.0), round((6 - 3) / 2.0)  # 2 (round half to even) and 2
    np.testing.assert_array_equal(got, img[top : top + 2, left : left + 3].astype(np.float32))


def test_resize_shorter_side_then_center_crop_matches_pillow():
    img = _image(20, 40, 5)
    got = ImagePreprocess(resize=10, crop=10, dtype="uint8", layout="NHWC").apply(img)
    # shorter side 20 -> 10, longer side int(10 * 40 / 20) = 20
    resized = np.asarray(Image.fromarray(img).resize((20, 10), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(got, resized[:, 5:15])


@pytest.mark.parametrize(("layout", "dtype", "shape"), [
    ("NCHW", "float32", (2, 3, 8, 10)), ("NHWC", "float16", (2, 8, 10, 3)),
    ("NCHW", "float64", (2, 3, 8, 10)), ("NHWC", "uint8", (2, 8, 10, 3))])
def test_layouts_and_dtypes(layout, dtype, shape):
    imgs = [_image(12, 12, 0), _image(9, 14, 1)]
    out = _all(ImageList(imgs, ImagePreprocess(crop=(10, 8), layout=layout, dtype=dtype)), 2)
    assert out.shape == shape and out.dtype == np.dtype(dtype)
    if dtype == "uint8":
        np.testing.assert_array_equal(out[0], imgs[0][2:10, 1:11])


def test_small_images_are_scaled_up_to_cover_the_crop():
    src = ImageList([_image(6, 8), _image(30, 30)], ImagePreprocess(crop=12))
    assert _all(src).shape == (2, 3, 12, 12) and src.report()["upscaled"] == 1


def test_a_second_pass_yields_the_same_batches(folder):
    src = ImageFolder(folder, ImagePreprocess(resize=14, crop=12, crop_mode="random", seed=3))
    first, second = [b[ANY_INPUT] for b in src.batches(3)], [b[ANY_INPUT] for b in src.batches(3)]
    assert [b.shape[0] for b in first] == [3, 1]
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


def test_random_crop_is_seeded_per_image_and_independent_of_batch_size():
    imgs = [_image(32, 32, s) for s in range(5)]

    def crops(seed: int, batch: int) -> np.ndarray:
        return _all(ImageList(imgs, ImagePreprocess(crop=8, crop_mode="random", seed=seed)), batch)

    np.testing.assert_array_equal(crops(7, 1), crops(7, 4))
    np.testing.assert_array_equal(crops(7, 2), crops(7, 5))
    assert not np.array_equal(crops(7, 1), crops(8, 1))
    same = ImageList([imgs[0]] * 4, ImagePreprocess(crop=8, crop_mode="random", seed=7))
    assert len({a.tobytes() for a in _all(same)}) > 1  # offsets differ from image to image


def test_colour_modes_decode_to_rgb(tmp_path):
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    Image.fromarray(grey).save(tmp_path / "g.png")
    Image.fromarray(np.dstack([_image(8, 8), np.full((8, 8), 7, np.uint8)])).save(tmp_path / "a.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    Image.fromarray(grey).convert("P").save(tmp_path / "p.bmp")
    for name in ("g.png", "g16.png", "p.bmp"):
        rgb = read_rgb(tmp_path / name)
        assert rgb.shape == (8, 8, 3) and rgb.dtype == np.uint8
        np.testing.assert_array_equal(rgb[..., 1], grey)
    assert read_rgb(tmp_path / "a.png").shape == (8, 8, 3)


def test_plugs_into_batch_stream_without_spilling(folder):
    stream = BatchStream(ImageFolder(folder, ImagePreprocess(crop=12)), SPEC)
    first, second = np.concatenate([b["input"] for b in stream]), np.concatenate([b["input"] for b in stream])
    np.testing.assert_array_equal(first, second)
    assert first.shape == (4, 3, 12, 12) and stream.num_samples == 4 and stream._spill is None


def test_quantize_calibrates_on_an_image_folder(folder, conv_model):
    import trtq

    pre = ImagePreprocess(resize=14, crop=12, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    result = trtq.quantize(conv_model, ImageFolder(folder, pre), progress=False)
    assert result.report["summary"]["calibration_samples"] == 4
    ref = helpers.run(graphs.conv_block(), {"input": _all(ImageFolder(folder, pre))})
    assert np.isfinite(ref).all()


def test_preprocess_json_round_trip_and_overrides(tmp_path):
    pre = ImagePreprocess(resize=(32, 24), crop=16, crop_mode="random", layout="NHWC", mean=(1.0, 2.0, 3.0),
                          std=(4.0,), channel_order="BGR", input_name="pixels", seed=5)
    path = tmp_path / "pre.json"
    path.write_text(json.dumps(pre.to_dict()))
    assert load_preprocess(path) == pre
    assert load_preprocess(path, crop=8, seed=None).crop == 8
    assert load_preprocess(None, crop=224).output_size == (224, 224)
    assert ImagePreprocess(crop=224, layout="nhwc", channel_order="bgr").layout == "NHWC"


@pytest.mark.parametrize(("fields", "message"), [
    ({"resize": 256}, "different sizes"),
    ({"crop": 224, "layout": "CHW"}, "layout"),
    ({"crop": 224, "dtype": "int32"}, "dtype"),
    ({"crop": [224, 0]}, "not a size"),
    ({"crop": "big"}, "not a size"),
    ({"crop": 224, "std": [1.0, 0.0, 1.0]}, "std"),
    ({"crop": 224, "mean": [1.0, 2.0]}, "mean"),
    ({"crop": 224, "dtype": "uint8", "mean": 0.5}, "raw pixels"),
    ({"crop": 224, "scale": -1}, "scale"),
    ({"crop": 224, "crop_mode": "corner"}, "crop_mode"),
    ({"crop": 224, "colour": "RGB"}, "unknown ImagePreprocess field"),
])
def test_bad_preprocess_configs_are_clear_errors(tmp_path, fields, message):
    path = tmp_path / "pre.json"
    path.write_text(json.dumps(fields))
    with pytest.raises(TrtqError, match=message):
        load_preprocess(path)


def test_bad_preprocess_files_are_clear_errors(tmp_path):
    with pytest.raises(TrtqError, match="no such file"):
        load_preprocess(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{crop: 224")
    with pytest.raises(TrtqError, match="not readable JSON"):
        load_preprocess(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[224]")
    with pytest.raises(TrtqError, match="not a JSON object"):
        load_preprocess(tmp_path / "list.json")


def test_parse_size():
    assert parse_size("224") == 224 and parse_size("320x240") == (320, 240)
    for bad in ("", "0", "2x3x4", "axb", "-5"):
        with pytest.raises(TrtqError, match="not N or WxH"):
            parse_size(bad)


def test_image_list_rejects_non_uint8_images():
    with pytest.raises(TrtqError, match="image 1 is float64"):
        ImageList([_image(4, 4), np.zeros((4, 4, 3))], ImagePreprocess(crop=4))
    with pytest.raises(TrtqError, match="empty"):
        ImageList([], ImagePreprocess(crop=4))


def test_image_size_shorthand():
    assert load_preprocess(image_size=224) == ImagePreprocess(resize=224, crop=224)
    assert load_preprocess(image_size=224, resize=256) == ImagePreprocess(resize=256, crop=224)
    assert load_preprocess(image_size=(32, 24), crop=16).crop == 16
