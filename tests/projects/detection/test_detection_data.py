"""Config-driven detection loaders and evaluators (projects/detection/data.py)."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from diffvision.config import get_cfg
from diffvision.data.toy_detection import ensure_toy_detection
from diffvision.evaluation.coco_evaluation import COCOEvaluator
from diffvision.evaluation.lvis_evaluation import LVISEvaluator
from projects.detection.config import add_diffusiondet_config
from projects.detection.data import (
    build_detection_evaluator,
    build_detection_test_loader,
    build_detection_train_loader,
    build_fed_loss_cls_weights,
    get_detection_metadata,
)


@pytest.fixture()
def toy_root(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFVISION_DATASETS", str(tmp_path))
    return ensure_toy_detection(tmp_path / "toy_detection", sizes={"train": 24, "val": 10})


def make_cfg(*overrides):
    cfg = get_cfg()
    add_diffusiondet_config(cfg)  # idempotent: get_cfg() has added the keys already
    cfg.merge_from_list(
        [
            "DATASETS.TRAIN", "('toy_detection_train',)",
            "DATASETS.TEST", "('toy_detection_val',)",
            "SOLVER.IMS_PER_BATCH", "4",
            "INPUT.MIN_SIZE_TRAIN", "(96, 128)",
            "INPUT.MAX_SIZE_TRAIN", "200",
            "INPUT.MIN_SIZE_TEST", "112",
            "INPUT.MAX_SIZE_TEST", "200",
            "DATALOADER.NUM_WORKERS", "0",
            "DATALOADER.FILTER_EMPTY_ANNOTATIONS", "False",
            "SEED", "0",
            *overrides,
        ]
    )  # fmt: skip
    return cfg


def test_train_loader_batches(toy_root):
    batches = list(itertools.islice(build_detection_train_loader(make_cfg()), 5))
    # A loader started at iteration 2 (a resumed run) continues with the same images,
    # augmentations and diffusion seeds.
    resumed = list(itertools.islice(build_detection_train_loader(make_cfg(), start_iter=2), 3))
    for a, b in zip(resumed, batches[2:], strict=True):
        assert [x["seed"] for x in a] == [x["seed"] for x in b]
        assert all(torch.equal(x["image"], y["image"]) for x, y in zip(a, b, strict=True))
    assert len({d["seed"] for batch in batches for d in batch}) == 20
    for batch in batches:
        assert len(batch) == 4
        for d in batch:
            assert d["image"].dtype == torch.uint8 and d["image"].shape[0] == 3
            assert min(d["image"].shape[1:]) in (96, 128) or max(d["image"].shape[1:]) == 200
            boxes, classes = d["instances"]["gt_boxes"], d["instances"]["gt_classes"]
            assert boxes.dtype == torch.float32 and classes.dtype == torch.int64
            assert len(boxes) == len(classes)
            h, w = d["image"].shape[1:]
            if len(boxes):
                assert (boxes[:, 2:] > boxes[:, :2]).all()
                assert (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
            assert 128 <= d["height"] <= 192 and 128 <= d["width"] <= 192  # original size


def test_workers_preserve_the_sampler_order(toy_root):
    def ids(workers):
        cfg = make_cfg(
            "DATALOADER.NUM_WORKERS", str(workers), "DATALOADER.ASPECT_RATIO_GROUPING", "False"
        )
        batches = itertools.islice(build_detection_train_loader(cfg), 6)
        return [
            (d["image_id"], d["image"].shape, int(d["image"].sum())) for b in batches for d in b
        ]

    assert ids(0) == ids(2)  # same images, same random resizes and flips
    assert len({i for i, _, _ in ids(0)}) == 24  # one epoch of 24 images then the next


def test_crop_branch_and_empty_filter(toy_root):
    cfg = make_cfg(
        "INPUT.CROP.ENABLED", "True",
        "INPUT.CROP.TYPE", "absolute_range",
        "INPUT.CROP.SIZE", "(48, 80)",
        "INPUT.CROP.PRE_RESIZE_MIN_SIZES", "(100,)",
        "DATALOADER.FILTER_EMPTY_ANNOTATIONS", "True",
        "DATALOADER.ASPECT_RATIO_GROUPING", "False",
    )  # fmt: skip
    data = json.loads((toy_root / "annotations/instances_train.json").read_text())
    annotated = {a["image_id"] for a in data["annotations"]}
    seen = [d for b in itertools.islice(build_detection_train_loader(cfg), 10) for d in b]
    assert {d["image_id"] for d in seen} <= annotated
    # the crop branch changes aspect ratios: some outputs differ from the original's
    ratios = [
        abs(d["image"].shape[2] / d["image"].shape[1] - d["width"] / d["height"]) for d in seen
    ]
    assert max(ratios) > 0.05


def test_repeat_factor_sampler_and_bad_names(toy_root):
    cfg = make_cfg(
        "DATALOADER.SAMPLER_TRAIN", "RepeatFactorTrainingSampler",
        "DATALOADER.REPEAT_THRESHOLD", "0.5",
    )  # fmt: skip
    assert len(next(iter(build_detection_train_loader(cfg)))) == 4
    with pytest.raises(ValueError, match="SAMPLER_TRAIN"):
        build_detection_train_loader(make_cfg("DATALOADER.SAMPLER_TRAIN", "Nope"))
    with pytest.raises(ValueError, match="RGB"):
        build_detection_train_loader(make_cfg("INPUT.FORMAT", "BGR"))
    with pytest.raises(KeyError, match="toy_detection_val"):
        build_detection_test_loader(make_cfg(), "toy_detection_vall")


def test_test_loader_covers_dataset_and_resizes(toy_root):
    loader = build_detection_test_loader(make_cfg("TEST.IMS_PER_BATCH", "3"), "toy_detection_val")
    batches = list(loader)
    assert [len(b) for b in batches] == [3, 3, 3, 1]
    items = [d for b in batches for d in b]
    assert sorted(d["image_id"] for d in items) == list(range(1, 11))
    data = json.loads((toy_root / "annotations/instances_val.json").read_text())
    sizes = {im["id"]: (im["height"], im["width"]) for im in data["images"]}
    for d in items:
        assert "instances" not in d
        h, w = d["image"].shape[1:]
        assert min(h, w) == 112 or max(h, w) == 200
        assert (d["height"], d["width"]) == sizes[d["image_id"]]  # original size


def test_custom_dataset_from_config_and_evaluator_choice(toy_root, tmp_path):
    ann, images = toy_root / "annotations/instances_val.json", toy_root / "val"
    cfg = make_cfg(
        "DATASETS.CUSTOM", f"['my_shapes:{ann}:{images}', 'my_lvis_shapes:{ann}:{images}']",
        "DATASETS.TRAIN", "('my_shapes',)",
    )  # fmt: skip
    assert len(next(iter(build_detection_train_loader(cfg)))) == 4
    assert get_detection_metadata(cfg).thing_classes == [
        "rectangle",
        "ellipse",
        "triangle",
        "cross",
    ]
    assert type(build_detection_evaluator(cfg, "my_shapes", str(tmp_path))) is COCOEvaluator
    assert isinstance(build_detection_evaluator(cfg, "my_lvis_shapes"), LVISEvaluator)
    weights = build_fed_loss_cls_weights(cfg)
    assert weights.shape == (4,) and (weights > 0).all()
    from diffvision.config import CN

    cfg.MODEL.DiffusionDet = CN()  # as added by the DiffusionDet task
    cfg.MODEL.DiffusionDet.NUM_CLASSES = 3
    with pytest.raises(ValueError, match="NUM_CLASSES 4"):
        build_detection_train_loader(cfg)
    bad = make_cfg("DATASETS.CUSTOM", "['only_a_name']")
    with pytest.raises(ValueError, match="name:json_file:image_root"):
        build_detection_train_loader(bad)
