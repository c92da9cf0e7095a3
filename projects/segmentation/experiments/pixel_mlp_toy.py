#!/usr/bin/env python
"""Experiment 2: pixel MLPs on DDPM features vs raw pixels vs an untrained UNet's features.

On the toy scenes (64x64, 5 classes; 50 validation images), an ensemble of 10 pixel MLPs is
trained on 5 or 20 labeled images with, per pixel,

- ``DDPM``: decoder activations (blocks 2-6, steps 50/150/250, one shared noise) of the toy DDPM
  trained by ``configs/ddpm_toy_scenes.yaml`` (its checkpoint is ``--ddpm``);
- ``untrained UNet``: the same architecture, steps and blocks, random weights;
- ``raw pixels``: the pixel's RGB value.

    python projects/segmentation/experiments/pixel_mlp_toy.py \
        --ddpm output/ddpm_toy_scenes/model_final.pth

Prints a markdown table of validation mIoU / pixel accuracy.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

import projects  # noqa: E402,F401  (registers the tasks)
from diffvision.config import get_cfg  # noqa: E402
from diffvision.engine.defaults import seed_everything  # noqa: E402
from diffvision.engine.run import train  # noqa: E402

CONFIG = ROOT / "projects" / "segmentation" / "configs" / "pixel_mlp_toy.yaml"


def run(opts: list[str]) -> dict:
    cfg = get_cfg()
    cfg.merge_from_file(str(CONFIG))
    cfg.merge_from_list(opts)
    Path(cfg.OUTPUT_DIR).mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.SEED)
    return train(cfg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ddpm", default="output/ddpm_toy_scenes/model_final.pth")
    parser.add_argument("--iters", type=int, default=1500)
    parser.add_argument("--output", default="output/exp_pixel_mlp_toy")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    start = time.time()
    variants = {
        "DDPM (trained)": ["MODEL.PIXEL_MLP.DDPM_CHECKPOINT", args.ddpm],
        "untrained UNet": ["MODEL.PIXEL_MLP.DDPM_CHECKPOINT", args.ddpm,
                           "MODEL.PIXEL_MLP.RANDOM_UNET", "True"],
        "raw pixels (RGB)": ["MODEL.PIXEL_MLP.FEATURES", "raw"],
    }  # fmt: skip
    rows = []
    for name, opts in variants.items():
        row = [name]
        for count in (5, 20):
            tag = name.split()[0].lower()
            metrics = run(
                [*opts, "SEG.LABEL_COUNT", str(count), "SOLVER.MAX_ITER", str(args.iters),
                 "LOG_PERIOD", "1000", "OUTPUT_DIR", f"{args.output}/{tag}_{count}"]
            )  # fmt: skip
            row += [metrics["sem_seg/mIoU"], metrics["sem_seg/pACC"]]
            print(f"{name} {count} images: mIoU {metrics['sem_seg/mIoU']:.2f}", flush=True)
        rows.append(row)
    print(
        f"\nToy scenes 64x64, 10 pixel MLPs, {args.iters} iterations x 64 pixels; "
        "val mIoU / pACC (%), 50 images"
    )
    print("| pixel features | mIoU 5 img | pACC 5 img | mIoU 20 img | pACC 20 img |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]:.2f} | {r[2]:.2f} | {r[3]:.2f} | {r[4]:.2f} |")
    print(f"\nwall time: {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
