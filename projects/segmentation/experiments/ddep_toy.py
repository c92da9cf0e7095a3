#!/usr/bin/env python
"""Experiment 1: does denoising pretraining of the decoder help label-efficient fine-tuning?

On the generated toy scenes (64x64, 5 classes; 200 training / 50 validation images), a
ResNet-18 UNet is fine-tuned on 1/30 of the labels (7 images) and on all 200, starting from

- ``random``: no pretraining (encoder and decoder randomly initialised);
- ``DDeP``: the decoder pretrained as a one-step denoiser (sigma = 0.22, predict eps, L2) on the
  200 training images *without labels*, with the encoder frozen in eval mode;
- ``DeP`` (with ``--dep``): the same denoising pretraining of encoder *and* decoder (the
  workshop paper's DeP).

No ImageNet weights can be downloaded here, so the encoder is randomly initialised in every
row: DDeP's decoder learns to denoise from a frozen *random* encoder, not a supervised one.

    python projects/segmentation/experiments/ddep_toy.py --pretrain-iters 200 --finetune-iters 120

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

CONFIGS = ROOT / "projects" / "segmentation" / "configs"


def run(config: str, opts: list[str]) -> dict:
    cfg = get_cfg()
    cfg.merge_from_file(str(CONFIGS / config))
    cfg.merge_from_list(opts)
    Path(cfg.OUTPUT_DIR).mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.SEED)
    return train(cfg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pretrain-iters", type=int, default=200)
    parser.add_argument("--finetune-iters", type=int, default=120)
    parser.add_argument("--dep", action="store_true", help="also pretrain the encoder (DeP)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--output", default="output/exp_ddep_toy")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    out = Path(args.output)
    common = ["SOLVER.IMS_PER_BATCH", str(args.batch), "LOG_PERIOD", "20"]
    start = time.time()

    pretrained = {"random": ""}
    for name, freeze in (("DDeP", "True"), ("DeP", "False"))[: 2 if args.dep else 1]:
        run(
            "ddep_toy_pretrain_r18.yaml",
            [*common, "SOLVER.MAX_ITER", str(args.pretrain_iters),
             "MODEL.DDEP.FREEZE_ENCODER", freeze, "DATASETS.TEST", "()",
             "OUTPUT_DIR", str(out / f"pretrain_{name}")],
        )  # fmt: skip
        pretrained[name] = str(out / f"pretrain_{name}" / "model_final.pth")
        print(f"pretrained {name} in {time.time() - start:.0f}s", flush=True)

    rows = []
    for init, weights in pretrained.items():
        row = [init]
        for fraction in ("1/30", "full"):
            tag = fraction.replace("/", "-")
            metrics = run(
                "ddep_toy_finetune_r18.yaml",
                [*common, "SOLVER.MAX_ITER", str(args.finetune_iters),
                 "MODEL.WEIGHTS", weights, "SEG.LABEL_FRACTION", fraction,
                 "OUTPUT_DIR", str(out / f"finetune_{init}_{tag}")],
            )  # fmt: skip
            row += [metrics["sem_seg/mIoU"], metrics["sem_seg/pACC"]]
            print(f"{init} {fraction}: mIoU {metrics['sem_seg/mIoU']:.2f}", flush=True)
        rows.append(row)

    print(
        f"\nToy scenes 64x64, ResNet-18 UNet (random encoder), pretrain {args.pretrain_iters} it, "
        f"fine-tune {args.finetune_iters} it, batch {args.batch}; val mIoU / pACC (%), 50 images"
    )
    print("| decoder init | mIoU 1/30 (7 img) | pACC 1/30 | mIoU full (200 img) | pACC full |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]:.2f} | {r[2]:.2f} | {r[3]:.2f} | {r[4]:.2f} |")
    print(f"\nwall time: {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
