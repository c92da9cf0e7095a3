"""The generated toy-shapes set: created when missing, deterministic, atomic."""

from __future__ import annotations

import numpy as np
import pytest

from diffvision.data.toy_shapes import (
    TOY_SHAPES,
    ToyShapesDataset,
    draw_toy_shape,
    ensure_toy_shapes,
)


def test_created_when_missing_and_reused(tmp_path):
    root = ensure_toy_shapes(tmp_path / "toy", num_per_class=4)
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    assert len(files) == 12 and files[0] == "circle/00000.png"
    mtime = (root / "circle" / "00000.png").stat().st_mtime_ns
    assert ensure_toy_shapes(root, num_per_class=4) == root
    assert (root / "circle" / "00000.png").stat().st_mtime_ns == mtime  # not rewritten
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".toy")]  # no temp left


def test_dataset_labels_and_default_root(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFVISION_DATASETS", str(tmp_path))
    ensure_toy_shapes(num_per_class=2)  # under datasets_root()/toy_shapes
    ds = ToyShapesDataset(image_size=32, random_flip=False)
    assert ds.classes == list(TOY_SHAPES) and sorted(set(ds.labels)) == [0, 1, 2]
    img, _ = ds[0]
    assert img.shape == (3, 32, 32)


def test_shapes_are_distinguishable_and_deterministic():
    def fill(shape):
        img = np.asarray(draw_toy_shape(np.random.default_rng(1), shape=shape))
        return (img.max(axis=2) > 60).mean(), img

    circle, c1 = fill("circle")
    square, _ = fill("square")
    triangle, _ = fill("triangle")
    # Same random size/position: square box ⊃ circle (π/4) ⊃ triangle (1/2).
    assert square > circle > triangle > 0
    np.testing.assert_array_equal(c1, fill("circle")[1])
    with pytest.raises(ValueError, match="hexagon"):
        draw_toy_shape(np.random.default_rng(0), shape="hexagon")
