"""The one image reader (data/image_io.py) behind every tool and dataset: modes, limits, readers.

Each PIL mode is written to a file and read back through every reader the tools and datasets
use; the expected pixels are the closed-form conversions of the module's table (16-bit grey
65535 -> 255, 32768 -> 128, a float 0.5 -> 128, a palette index -> its colour, alpha dropped).
"""

from __future__ import annotations

import logging
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from diffvision.data.detection_transforms import resized_shape
from diffvision.data.image_folder import ImageFolderDataset, load_image
from diffvision.data.image_io import image_size, read_image_rgb
from diffvision.data.seg_folder import read_image as read_seg_image
from diffvision.errors import DataError


def _grey(values: np.ndarray) -> np.ndarray:
    return np.repeat(values.astype(np.uint8)[:, :, None], 3, axis=2)


def _mode_cases() -> dict[str, tuple[Image.Image, np.ndarray]]:
    """mode -> (image of 2x3 pixels in that mode, expected (2, 3, 3) uint8 RGB)."""
    grey8 = np.array([[0, 10, 128], [200, 254, 255]], np.uint8)
    grey16 = np.array([[0, 257, 32768], [51400, 65534, 65535]], np.uint16)
    expected16 = np.rint(grey16 / 65535.0 * 255.0)  # 0, 1, 128, 200, 255, 255
    floats = np.array([[0.0, 0.25, 0.5], [0.75, 1.0, 1.0]], np.float32)
    rgb = np.arange(18, dtype=np.uint8).reshape(2, 3, 3) * 10
    palette = Image.frombytes("P", (3, 2), bytes([0, 1, 2, 2, 1, 0]))
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    palette.putpalette(colours.flatten().tolist() + [0] * (768 - 9))
    palette_t = palette.copy()
    palette_t.info["transparency"] = 1  # index 1 transparent: its colour is still the pixel's
    bits = np.array([[0, 1, 0], [1, 1, 0]], bool)
    return {
        "1": (Image.fromarray(bits), _grey(bits * 255)),
        "L": (Image.fromarray(grey8), _grey(grey8)),
        "LA": (Image.fromarray(np.dstack([grey8, 255 - grey8])), _grey(grey8)),
        "P": (palette, colours[np.array([[0, 1, 2], [2, 1, 0]])]),
        "P+transparency": (palette_t, colours[np.array([[0, 1, 2], [2, 1, 0]])]),
        "RGB": (Image.fromarray(rgb), rgb),
        "RGBA": (Image.fromarray(np.dstack([rgb, np.full((2, 3), 7, np.uint8)])), rgb),
        "I;16": (Image.fromarray(grey16), _grey(expected16)),
        "I (16-bit values)": (
            Image.fromarray(grey16.astype(np.int32)),
            _grey(expected16),
        ),
        "I (8-bit values)": (Image.fromarray(grey8.astype(np.int32)), _grey(grey8)),
        "F": (Image.fromarray(floats), _grey(np.rint(floats * 255))),
    }


MODES = list(_mode_cases())


def _save(image: Image.Image, folder, name: str):
    path = folder / f"{name.split()[0].replace(';', '_')}_{len(list(folder.iterdir()))}"
    path = path.with_suffix(".tif" if image.mode in ("F", "I") else ".png")
    image.save(path)
    return path


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_reads_the_same_through_every_reader(tmp_path, mode):
    image, expected = _mode_cases()[mode]
    assert image.mode == mode.split()[0].replace("+transparency", "")
    path = _save(image, tmp_path, mode)
    np.testing.assert_array_equal(read_image_rgb(path), expected)  # demo, detection, TTA
    np.testing.assert_array_equal(read_seg_image(path).permute(1, 2, 0).numpy(), expected)
    # DDPM: the centre square, resized; on a 2x2 crop at size 2 nothing is resampled
    square = np.asarray(load_image(path, 2))
    np.testing.assert_array_equal(square, expected[:, :2])
    assert image_size(path) == (3, 2)  # coco registration: (width, height)


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    """PIL's own convert("RGB") clips I;16 at 255: a dark 16-bit image became all white."""
    dark = np.full((4, 4), 1000, np.uint16)  # 1.5 % of full scale
    path = tmp_path / "dark16.png"
    Image.fromarray(dark).save(path)
    assert np.asarray(Image.open(path).convert("RGB")).max() == 255  # the clipping we avoid
    assert read_image_rgb(path).max() == round(1000 / 65535 * 255)  # 4


def test_decompression_bomb_is_a_data_error_naming_the_file(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("L", (100, 60)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4000)  # 6000 pixels: over the limit
    for read in (read_image_rgb, image_size, read_seg_image):
        with pytest.raises(DataError, match=f"{path}.*100x60 = 6,000 pixels.*limit of 4,000"):
            read(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # over 2x the limit: PIL's own error
    with pytest.raises(DataError, match=str(path)):
        read_image_rgb(path)


def _png_with_size(width: int, height: int) -> bytes:
    """A PNG whose header says ``width`` x ``height`` (PIL refuses to write a zero size)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + (chunk(b"IEND", b""))
    )


@pytest.mark.parametrize("size", [(0, 10), (10, 0)])
def test_zero_size_image_is_a_data_error(tmp_path, size):
    path = tmp_path / "empty.png"
    path.write_bytes(_png_with_size(*size))
    for read in (read_image_rgb, image_size):
        with pytest.raises(DataError, match=str(path)):
            read(path)


def test_image_folder_drops_unreadable_files_with_a_count(tmp_path, caplog, monkeypatch):
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(tmp_path / f"ok{i}.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    Image.new("RGB", (100, 100)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6000)  # 100x100 is over, 8x8 under
    with caplog.at_level(logging.WARNING):
        dataset = ImageFolderDataset(tmp_path, image_size=8)
    assert len(dataset) == 3
    assert "dropped 2 of 5 images" in caplog.text
    assert "broken.png" in caplog.text and "bomb.png" in caplog.text


@pytest.mark.parametrize("height, width", [(10, 10000), (4, 4000), (10000, 10), (1, 1)])
def test_extreme_aspect_ratios_resize_to_at_least_one_pixel(height, width):
    """Short side 64, long side capped at 96: 10x10000 scales by 96/64000, 0.015 px."""
    new_h, new_w = resized_shape(height, width, 64, 96)
    assert new_h >= 1 and new_w >= 1
    assert max(new_h, new_w) <= 96
    assert resized_shape(480, 640, 800, 1333) == (800, 1067)  # detectron2's rounding kept


def test_extreme_aspect_ratio_image_goes_through_the_detector():
    """The 10000x10 image that stopped demo and training: one row of pixels after the resize."""
    import projects  # noqa: F401
    from diffvision.engine.defaults import load_config
    from projects.detection.build import build_model
    from tests.tool_helpers import DET, TINY_DET

    torch.manual_seed(0)
    model = build_model(load_config(DET, TINY_DET), with_criterion=False).eval()
    with torch.no_grad():
        (out,) = model.predict(np.zeros((10, 10000, 3), np.uint8), seed=0)
    assert out["boxes"].shape[1] == 4
    assert (out["boxes"][:, 2] <= 10000).all() and (out["boxes"][:, 3] <= 10).all()


def test_seg_folder_drops_unreadable_images_with_a_count(tmp_path, caplog):
    from diffvision.data.seg_folder import load_seg_folder

    (tmp_path / "images").mkdir()
    for i in range(2):
        Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(tmp_path / "images" / f"{i}.png")
    (tmp_path / "images" / "broken.jpg").write_bytes(b"not a jpeg")
    with caplog.at_level(logging.WARNING):
        records = load_seg_folder(tmp_path)
    assert [r["image_id"] for r in records] == ["0", "1"]
    assert "dropped 1 of 3 images" in caplog.text and "broken.jpg" in caplog.text
