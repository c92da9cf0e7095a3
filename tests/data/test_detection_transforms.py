"""Detection augmentations: detectron2 sizes, PIL bilinear, box bookkeeping, the mapper."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from diffvision.data.detection_mapper import DetectionDatasetMapper
from diffvision.data.detection_transforms import (
    CropTransform,
    FlipTransform,
    RandomCrop,
    RandomFlip,
    ResizeShortestEdge,
    ResizeTransform,
    apply_augmentations,
    filter_empty_boxes,
    resized_shape,
    transform_boxes,
)


@pytest.mark.parametrize(
    "hw,short,max_size,expected",
    [
        ((480, 640), 800, 1333, (800, 1067)),  # 640 * 800/480 = 1066.67 -> 1067
        ((427, 640), 800, 1333, (800, 1199)),  # 1199.06
        ((300, 1000), 800, 1333, (400, 1333)),  # long side capped: 1333/1000 * 300 = 399.9 -> 400
        ((640, 480), 600, 1e9, (800, 600)),
        ((183, 137), 160, 256, (214, 160)),  # 183 * 160/137 = 213.7
    ],
)
def test_resized_shape_matches_detectron2_rounding(hw, short, max_size, expected):
    assert resized_shape(*hw, short, max_size) == expected


def test_resize_is_pil_bilinear_and_scales_boxes():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    tfm = ResizeTransform(30, 40, 45, 60)
    expected = np.asarray(Image.fromarray(image).resize((60, 45), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(tfm.apply_image(image), expected)
    boxes = np.array([[4.0, 6.0, 20.0, 30.0]], dtype=np.float32)
    np.testing.assert_allclose(tfm.apply_boxes(boxes), [[6.0, 9.0, 30.0, 45.0]])


def test_flip_and_crop_boxes():
    boxes = np.array([[10.0, 2.0, 30.0, 15.0]], dtype=np.float32)  # not centred on either axis
    np.testing.assert_allclose(FlipTransform(20, 100).apply_boxes(boxes), [[70, 2, 90, 15]])
    np.testing.assert_allclose(
        FlipTransform(20, 100, horizontal=False).apply_boxes(boxes), [[10, 5, 30, 18]]
    )
    image = np.arange(20 * 100 * 3, dtype=np.uint8).reshape(20, 100, 3)
    np.testing.assert_array_equal(FlipTransform(20, 100).apply_image(image), image[:, ::-1])
    vertical = FlipTransform(20, 100, horizontal=False).apply_image(image)
    np.testing.assert_array_equal(vertical, image[::-1])
    crop = CropTransform(x0=20, y0=10, w=15, h=8)
    assert crop.apply_image(image).shape == (8, 15, 3)
    out = transform_boxes(boxes, [crop], image_size=(8, 15))
    np.testing.assert_allclose(out, [[0, 0, 10, 5]])  # clipped to the crop


def test_absolute_range_crop_sizes():
    np.random.seed(0)
    crop = RandomCrop(crop_type="absolute_range", crop_size=(384, 600))
    for _ in range(50):
        ch, cw = crop.crop_shape(500, 900)
        assert 384 <= ch <= 500 and 384 <= cw <= 600
    assert crop.crop_shape(300, 200) == (300, 200)  # smaller images are kept whole
    with pytest.raises(ValueError, match="crop_type"):
        RandomCrop(crop_type="weird", crop_size=(1, 2))


def test_image_and_boxes_stay_consistent_through_a_random_pipeline():
    # A white box on black, off-centre on both axes: after flips/resize/crop the transformed box
    # must bound the white area.
    np.random.seed(3)
    image = np.zeros((120, 160, 3), dtype=np.uint8)
    image[20:50, 30:100] = 255
    box = np.array([[30.0, 20.0, 100.0, 50.0]])
    augs = [
        RandomFlip(prob=0.5, direction="horizontal"),
        RandomFlip(prob=0.5, direction="vertical"),
        ResizeShortestEdge(short_edge_length=(90, 150)),
        RandomCrop(crop_type="absolute", crop_size=(100, 130)),
    ]
    flipped = set()
    for _ in range(12):
        out, tfms = apply_augmentations(augs, image)
        flipped |= {t.horizontal for t in tfms if isinstance(t, FlipTransform)}
        b = transform_boxes(box, tfms, image_size=out.shape[:2])[0]
        ys, xs = np.nonzero(out[..., 0] > 127)
        if len(xs) == 0:
            assert not filter_empty_boxes(b[None])[0]
            continue
        assert abs(xs.min() - b[0]) <= 1.5 and abs(xs.max() + 1 - b[2]) <= 1.5
        assert abs(ys.min() - b[1]) <= 1.5 and abs(ys.max() + 1 - b[3]) <= 1.5
    assert flipped == {True, False}  # both flip directions were exercised


def test_filter_empty_boxes():
    boxes = np.array([[0, 0, 5, 5], [3, 3, 3, 8], [1, 1, 1 + 1e-6, 4]], dtype=np.float32)
    assert filter_empty_boxes(boxes).tolist() == [True, False, False]


def test_mapper_drops_crowd_and_keeps_original_size(tmp_path):
    Image.fromarray(np.full((40, 60, 3), 100, dtype=np.uint8)).save(tmp_path / "x.png")
    record = {
        "file_name": str(tmp_path / "x.png"),
        "height": 40,
        "width": 60,
        "image_id": 5,
        "annotations": [
            {"bbox": [10.0, 10.0, 30.0, 20.0], "category_id": 2, "iscrowd": 0},
            {"bbox": [0.0, 0.0, 60.0, 40.0], "category_id": 1, "iscrowd": 1},
        ],
    }
    mapper = DetectionDatasetMapper(
        augmentations=[ResizeShortestEdge(short_edge_length=80, max_size=1000)], is_train=True
    )
    out = mapper(record)
    assert out["image"].shape == (3, 80, 120) and out["image"].dtype.is_floating_point is False
    assert (out["height"], out["width"], out["image_id"]) == (40, 60, 5)
    assert out["instances"]["gt_boxes"].tolist() == [[20.0, 20.0, 60.0, 40.0]]
    assert out["instances"]["gt_classes"].tolist() == [2]
    test_out = DetectionDatasetMapper(augmentations=[], is_train=False)(record)
    assert "instances" not in test_out
    with pytest.raises(ValueError, match="annotation says"):
        mapper({**record, "height": 41})
