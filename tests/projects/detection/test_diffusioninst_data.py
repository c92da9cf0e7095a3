"""DiffusionInst data: toy masks, masks through augmentation, segmentation checks at load time,
COCO segm evaluation."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

import projects  # noqa: F401  (registers the tasks)
from diffvision.config import get_cfg
from diffvision.data.coco import decode_segmentation, load_coco_json, rle_counts
from diffvision.data.detection_transforms import (
    CropTransform,
    FlipTransform,
    ResizeTransform,
    transform_boxes,
    transform_masks,
)
from diffvision.data.toy_detection import generate_toy_detection
from diffvision.errors import DataError
from diffvision.evaluation.coco_evaluation import COCOEvaluator
from projects.detection.diffusioninst.task import DIFFUSIONINST_TASK


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return generate_toy_detection(
        tmp_path_factory.mktemp("d") / "toy", sizes={"train": 12, "val": 6}, masks=True
    )


def _mask_box(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_toy_masks_are_the_drawn_shapes(toy):
    dicts, _ = load_coco_json(toy / "annotations/instances_train.json", toy / "train", masks=True)
    image_pixels = 0
    for d in dicts:
        masks = [
            decode_segmentation(a["segmentation"], d["height"], d["width"])
            for a in d["annotations"]
        ]
        if masks:
            # visible masks of one image never overlap; each lies inside its box
            assert (np.sum(masks, axis=0) <= 1).all()
        for a, m in zip(d["annotations"], masks, strict=True):
            x1, y1, x2, y2 = a["bbox"]
            assert m.sum() > 0 and not m[:, : int(x1)].any() and not m[: int(y1)].any()
            assert not m[:, int(x2) :].any() and not m[int(y2) :].any()
            image_pixels += int(m.sum())
    assert image_pixels > 0
    # the images and boxes are those of the mask-less toy set
    plain = generate_toy_detection(toy.parent / "plain", sizes={"train": 12, "val": 6})
    a = json.loads((plain / "annotations/instances_train.json").read_text())
    b = json.loads((toy / "annotations/instances_train.json").read_text())
    assert [x["bbox"] for x in a["annotations"]] == [x["bbox"] for x in b["annotations"]]


def test_masks_follow_flip_resize_and_crop():
    mask = np.zeros((1, 40, 60), dtype=np.uint8)
    mask[0, 10:20, 5:35] = 1
    box = np.array([[5.0, 10.0, 35.0, 20.0]])
    tfms = [FlipTransform(40, 60), ResizeTransform(40, 60, 80, 120), CropTransform(10, 8, 90, 60)]
    out = transform_masks(mask, tfms)
    boxes = transform_boxes(box, tfms, image_size=out.shape[1:])
    assert out.shape == (1, 60, 90)
    np.testing.assert_allclose(_mask_box(out[0]), boxes[0])


def test_mapper_masks_match_boxes_under_augmentation(toy, monkeypatch):
    monkeypatch.setenv("DIFFVISION_DATASETS", str(toy.parent))
    cfg = get_cfg()
    cfg.merge_from_file("projects/detection/diffinst_toy.yaml")
    cfg.merge_from_list(
        ["DATASETS.CUSTOM", f"['t:{toy}/annotations/instances_train.json:{toy}/train']",
         "DATASETS.TRAIN", "('t',)", "INPUT.CROP.ENABLED", "True",
         "INPUT.CROP.PRE_RESIZE_MIN_SIZES", "(160,)", "INPUT.CROP.SIZE", "(96, 128)"]
    )  # fmt: skip
    loader = DIFFUSIONINST_TASK.build_train_loader(cfg, start_iter=0)
    ious = []
    for _, batch in zip(range(4), loader):
        for x in batch:
            inst = x["instances"]
            masks, boxes = inst["gt_masks"], inst["gt_boxes"]
            assert masks.dtype == torch.bool and masks.shape[1:] == x["image"].shape[1:]
            assert masks.shape[0] == boxes.shape[0] == inst["gt_mask_valid"].shape[0]
            for m, b, valid in zip(masks, boxes, inst["gt_mask_valid"], strict=True):
                if not valid:
                    assert not m.any()
                    continue
                # inside its box (up to resize rounding), and filling most of it (shapes fill
                # their box; a later shape may hide part of one)
                mb = np.array(_mask_box(m.numpy()), dtype=np.float32)
                b = b.numpy()
                assert (mb[:2] >= b[:2] - 2).all() and (mb[2:] <= b[2:] + 2).all()
                inter = np.prod(
                    np.clip(np.minimum(mb[2:], b[2:]) - np.maximum(mb[:2], b[:2]), 0, None)
                )
                ious.append(inter / (np.prod(mb[2:] - mb[:2]) + np.prod(b[2:] - b[:2]) - inter))
    assert len(ious) > 5 and np.median(ious) > 0.85


def _json_with(tmp_path, segmentation, *, width=20, height=10):
    data = {
        "images": [{"id": 1, "file_name": "a.png", "width": width, "height": height}],
        "annotations": [
            {
                "id": 7,
                "image_id": 1,
                "category_id": 1,
                "bbox": [2, 2, 5, 5],
                "iscrowd": 0,
                "segmentation": segmentation,
            }
        ],  # fmt: skip
        "categories": [{"id": 1, "name": "thing"}],
    }
    path = tmp_path / "a.json"
    path.write_text(json.dumps(data))
    return path


def test_rle_of_another_size_is_one_clear_error(tmp_path):
    path = _json_with(tmp_path, {"size": [12, 20], "counts": [240]})
    with pytest.raises(DataError, match=r"annotation 7 has an RLE of size \[12, 20\].*\[10, 20\]"):
        load_coco_json(path, tmp_path, masks=True, check_images=False)


def _rle_of(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def test_rle_counts_decode_like_pycocotools():
    # a second implementation: the run lengths of pycocotools' compressed strings rebuild the
    # mask (column-major runs, starting with a run of zeros)
    rng = np.random.default_rng(0)
    for _ in range(100):
        h, w = (int(v) for v in rng.integers(1, 30, 2))
        mask = rng.random((h, w)) < rng.random()
        runs = rle_counts(_rle_of(mask)["counts"])
        flat = np.concatenate([np.full(n, i % 2, bool) for i, n in enumerate(runs)])
        assert np.array_equal(flat.reshape(w, h).T, mask)
    assert rle_counts("0") == [0] and rle_counts([3, 4]) == [3, 4]
    assert rle_counts("P") is None  # ends mid-number (0x20: more characters follow)


@pytest.mark.parametrize(
    ("counts", "covered"),
    [
        ([150], "counts covering 150 pixels"),  # pycocotools would read memory it never wrote
        ([100, 150], "counts covering 250 pixels"),  # pycocotools: "Invalid RLE" traceback
        ([250, -50], "counts covering 200 pixels"),
        ("P", "unreadable counts"),
        (_rle_of(np.ones((5, 20), bool))["counts"], "counts covering 100 pixels"),  # a 5x20 RLE
    ],
)
def test_rle_whose_runs_do_not_cover_its_size_is_one_clear_error(tmp_path, counts, covered):
    path = _json_with(tmp_path, {"size": [10, 20], "counts": counts})
    with pytest.raises(DataError, match=rf"annotation 7 has an RLE .*{covered}.* = 200$"):
        load_coco_json(path, tmp_path, masks=True, check_images=False)


def test_polygon_outside_the_image_is_counted_and_trains_no_mask(tmp_path, caplog):
    from PIL import Image

    from diffvision.data.detection_mapper import DetectionDatasetMapper

    path = _json_with(tmp_path, [[30, 12, 40, 12, 40, 20]])  # right of and below the 20x10 image
    Image.new("RGB", (20, 10)).save(tmp_path / "a.png")
    with caplog.at_level(logging.WARNING):
        dicts, _ = load_coco_json(path, tmp_path, masks=True)
    assert "1 segmentations clipped to their image" in caplog.text
    out = DetectionDatasetMapper(augmentations=[], is_train=True, masks=True)(dicts[0])
    assert out["instances"]["gt_mask_valid"].tolist() == [False]  # the Dice loss skips it
    assert not out["instances"]["gt_masks"].any() and len(out["instances"]["gt_boxes"]) == 1


@pytest.mark.parametrize(
    ("segmentation", "kind"),
    [
        ([], "annotations without a segmentation"),
        ([[1, 2, 3, 4]], "polygons with fewer than 3 points dropped"),
        ([[-5, 1, 30, 1, 30, 8]], "segmentations clipped to their image"),
    ],
)
def test_bad_segmentations_are_counted_fixups(tmp_path, caplog, segmentation, kind):
    path = _json_with(tmp_path, segmentation)
    with caplog.at_level(logging.WARNING):
        dicts, _ = load_coco_json(path, tmp_path, masks=True, check_images=False)
    assert f"1 {kind}" in caplog.text
    segm = dicts[0]["annotations"][0]["segmentation"]
    if kind.startswith("segmentations clipped"):
        mask = decode_segmentation(segm, 10, 20)
        assert mask.shape == (10, 20) and mask.any()  # kept, rasterised inside the image
    else:
        assert segm is None  # no mask: the box trains, the mask loss skips it


def test_segm_evaluation_of_the_ground_truth_is_perfect(toy):
    json_file = toy / "annotations/instances_val.json"
    dicts, _ = load_coco_json(json_file, toy / "val", masks=True)
    evaluator = COCOEvaluator(json_file, iou_types=("bbox", "segm"), distributed=False)
    evaluator.reset()
    for d in dicts:
        anns = d["annotations"]
        masks = [decode_segmentation(a["segmentation"], d["height"], d["width"]) for a in anns]
        out = {
            "boxes": torch.tensor([a["bbox"] for a in anns]).reshape(-1, 4),
            "scores": torch.ones(len(anns)),
            "labels": torch.tensor([a["category_id"] for a in anns], dtype=torch.int64),
            "masks": torch.from_numpy(
                np.array(masks, dtype=bool).reshape(-1, d["height"], d["width"])
            ),
        }
        evaluator.process([{"image_id": d["image_id"]}], [out])
    metrics = evaluator.evaluate()
    assert metrics["segm/AP"] == pytest.approx(100.0)
    assert metrics["bbox/AP"] == pytest.approx(100.0)
    # a mask shifted by its own height scores zero mask AP (the mask, not the box, is scored)
    evaluator.reset()
    for d in dicts:
        anns = d["annotations"]
        masks = np.array(
            [np.roll(decode_segmentation(a["segmentation"], d["height"], d["width"]), 80, axis=0)
             for a in anns], dtype=bool,
        ).reshape(-1, d["height"], d["width"])  # fmt: skip
        out = {
            "boxes": torch.tensor([a["bbox"] for a in anns]).reshape(-1, 4),
            "scores": torch.ones(len(anns)),
            "labels": torch.tensor([a["category_id"] for a in anns], dtype=torch.int64),
            "masks": torch.from_numpy(masks),
        }
        evaluator.process([{"image_id": d["image_id"]}], [out])
    shifted = evaluator.evaluate()
    assert shifted["bbox/AP"] == pytest.approx(100.0) and shifted["segm/AP"] < 5.0


def test_test_time_augmentation_is_refused_with_one_line():
    cfg = get_cfg()
    cfg.merge_from_file("projects/detection/diffinst_toy.yaml")
    cfg.merge_from_list(["TEST.AUG.ENABLED", "True"])
    from diffvision.errors import ConfigError

    with pytest.raises(ConfigError, match="TEST.AUG.ENABLED"):
        DIFFUSIONINST_TASK.build_inference(cfg)


def test_class_count_is_checked_against_the_diffusioninst_section(toy, monkeypatch):
    from diffvision.errors import ConfigError

    cfg = get_cfg()
    cfg.merge_from_file("projects/detection/diffinst_toy.yaml")
    cfg.merge_from_list(
        ["DATASETS.CUSTOM", f"['t:{toy}/annotations/instances_train.json:{toy}/train']",
         "DATASETS.TRAIN", "('t',)", "MODEL.DiffusionInst.NUM_CLASSES", "3"]
    )  # fmt: skip
    with pytest.raises(ConfigError, match="MODEL.DiffusionInst.NUM_CLASSES 4"):
        DIFFUSIONINST_TASK.build_train_loader(cfg, start_iter=0)


def _lvis_version(toy, tmp_path):
    """The toy val set as an LVIS json (the categories present are rare, common, frequent,
    frequent in id order; the toy RLE masks as segmentations), declared as an LVIS-type custom
    dataset."""
    data = json.loads((toy / "annotations/instances_val.json").read_text())
    present = sorted({a["category_id"] for a in data["annotations"]})
    assert len(present) >= 3  # one category per frequency group at least
    for c in data["categories"]:
        group = "rcff"[present.index(c["id"])] if c["id"] in present else "f"
        c.update(frequency=group, image_count=1, synset=c["name"])
    for image in data["images"]:
        image.update(neg_category_ids=[], not_exhaustive_category_ids=[])
    path = tmp_path / "lvis_toy_val.json"
    path.write_text(json.dumps(data))
    cfg = get_cfg()
    cfg.merge_from_file("projects/detection/diffinst_toy.yaml")
    cfg.merge_from_list(["OUTPUT_DIR", str(tmp_path / "eval"),
                         "DATASETS.CUSTOM", [f"lvis_toy_val:{path}:{toy / 'val'}"]])  # fmt: skip
    return cfg, data


def _lvis_outputs(data, keep_fraction: float = 1.0):
    """Per image the ground truth as DiffusionInst outputs (exact boxes, score 1, contiguous
    labels), each mask keeping the first ``keep_fraction`` of its pixels in raster order."""
    from pycocotools import mask as mask_utils

    inputs, outputs, ious = [], [], []
    for image in data["images"]:
        anns = [a for a in data["annotations"] if a["image_id"] == image["id"]]
        h, w = image["height"], image["width"]
        masks = np.zeros((len(anns), h, w), dtype=bool)
        for i, a in enumerate(anns):
            gt = mask_utils.decode(a["segmentation"]).astype(bool)
            flat = np.flatnonzero(gt)
            kept = flat[: round(keep_fraction * len(flat))]
            masks[i].flat[kept] = True
            ious.append(len(kept) / len(flat))  # the kept mask lies inside its ground truth
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        inputs.append({"image_id": image["id"]})
        outputs.append({
            "boxes": torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1),
            "scores": torch.ones(len(anns)),
            "labels": torch.tensor([a["category_id"] - 1 for a in anns], dtype=torch.int64),
            "masks": torch.from_numpy(masks),
        })  # fmt: skip
    return inputs, outputs, ious


def test_lvis_segm_evaluation_of_diffusioninst_outputs(toy, tmp_path):
    cfg, data = _lvis_version(toy, tmp_path)
    evaluator = DIFFUSIONINST_TASK.build_evaluator(cfg, "lvis_toy_val")
    evaluator.reset()
    inputs, outputs, _ = _lvis_outputs(data)
    evaluator.process(inputs, outputs)
    perfect = evaluator.evaluate()
    for key in ("AP", "AP50", "AP75", "APr", "APc", "APf"):
        assert perfect[f"segm/{key}"] == pytest.approx(100.0), key
        assert perfect[f"bbox/{key}"] == pytest.approx(100.0), key
    # closed form: every mask keeps ~72.5% of its ground truth (IoU in (0.70, 0.75)), the boxes
    # stay exact: matched at IoU thresholds 0.50 .. 0.70, missed at 0.75 .. 0.95, so mask AP =
    # 5/10 of 100, AP50 = 100, AP75 = 0; box AP stays 100
    evaluator.reset()
    inputs, outputs, ious = _lvis_outputs(data, keep_fraction=0.725)
    assert 0.70 < min(ious) and max(ious) < 0.75
    evaluator.process(inputs, outputs)
    partial = evaluator.evaluate()
    assert partial["segm/AP"] == pytest.approx(50.0)
    assert partial["segm/AP50"] == pytest.approx(100.0) and partial["segm/AP75"] == 0.0
    assert partial["bbox/AP"] == pytest.approx(100.0)
