#!/usr/bin/env python
"""From-scratch ResNet-18 vs ImageNet-pretrained EfficientNet-Lite0, on both toy detection sets.

For every (recipe, dataset, seed) this trains with ``tools/train_net.py`` (no evaluation during
training), then evaluates the final weights with ``tools/sweep_boxes_steps.py`` at ``--boxes`` x
``--steps`` (per-image boxes seeded by the run's seed), and prints a markdown table of box AP,
mean ± std over the seeds, with the training wall time of each recipe.

- ``r18``: ``projects/detection/diffdet_toy.yaml`` (half-width ResNet-18-FPN, random init);
- ``lite0``: ``projects/detection/diffdet_effnetlite0_toy.yaml`` (Lite0-FPN, ImageNet weights).

Datasets: ``toy`` (coloured shapes, 4 classes, ``toy_detection_*``) and ``glyphs`` (Hershey digits,
10 classes that differ only by shape, ``toy_glyphs_*``). Only ``DATASETS.*``, ``NUM_CLASSES``,
``SEED``, ``SOLVER.MAX_ITER`` and ``OUTPUT_DIR`` are overridden.

    python projects/detection/experiments/backbone_comparison.py --seeds 0,1 --iters 600

Results go to ``--output`` (``results.json``: ``{recipe: {dataset: {"boxes-steps": [AP per
seed]}}}`` plus wall times).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from diffvision.evaluation.reports import mean_std  # noqa: E402

RECIPES = {
    "r18": "projects/detection/diffdet_toy.yaml",
    "lite0": "projects/detection/diffdet_effnetlite0_toy.yaml",
}
DATASETS = {
    "toy": ("toy_detection_train", "toy_detection_val", 4),
    "glyphs": ("toy_glyphs_train", "toy_glyphs_val", 10),
}


def _run(cmd: list[str], log: Path) -> float:
    start = time.time()
    with open(log, "w") as f:
        subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, check=True)
    return time.time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipes", default="r18,lite0")
    parser.add_argument("--datasets", default="toy,glyphs")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--iters", type=int, default=600)
    parser.add_argument("--boxes", default="100,300")
    parser.add_argument("--steps", default="1,4")
    parser.add_argument("--output", default="output/exp_detection_backbones")
    args = parser.parse_args()
    out = Path(args.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    boxes, steps = args.boxes.split(","), args.steps.split(",")
    for recipe in args.recipes.split(","):
        for dataset in args.datasets.split(","):
            train_set, val_set, num_classes = DATASETS[dataset]
            for seed in args.seeds.split(","):
                run_dir = out / f"{recipe}_{dataset}_s{seed}"
                entry = results.setdefault(recipe, {}).setdefault(dataset, {})
                if seed in entry.get("seeds", []):
                    continue  # done in an earlier invocation
                run_dir.mkdir(parents=True, exist_ok=True)
                common = [
                    "--config", RECIPES[recipe], "DATASETS.TRAIN", f"('{train_set}',)",
                    "MODEL.DiffusionDet.NUM_CLASSES", str(num_classes), "SEED", seed,
                ]  # fmt: skip
                train_s = _run(
                    [sys.executable, "tools/train_net.py", *common, "DATASETS.TEST", "()",
                     "SOLVER.MAX_ITER", str(args.iters), "OUTPUT_DIR", str(run_dir)],
                    run_dir / "train.log",
                )  # fmt: skip
                sweep_s = _run(
                    [sys.executable, "tools/sweep_boxes_steps.py", *common[:2], "--dataset",
                     val_set, "--boxes", *boxes, "--steps", *steps, "--output-dir",
                     str(run_dir / "sweep"), "--seed", seed, *common[2:],
                     "DATASETS.TEST", f"('{val_set}',)", "MODEL.WEIGHTS",
                     str(run_dir / "model_final.pth"), "OUTPUT_DIR", str(run_dir)],
                    run_dir / "sweep.log",
                )  # fmt: skip
                sweep = json.loads((run_dir / "sweep" / "sweep.json").read_text())
                for row in sweep["rows"]:
                    key = f"{row['boxes']}-{row['steps']}"
                    entry.setdefault(key, []).append(row["metrics"]["bbox/AP"])
                entry.setdefault("seeds", []).append(seed)
                entry.setdefault("train_s", []).append(round(train_s, 1))
                entry.setdefault("eval_s", []).append(round(sweep_s, 1))
                results_file.write_text(json.dumps(results, indent=1))
                print(f"{recipe} {dataset} seed {seed}: train {train_s:.0f}s", flush=True)
    keys = [f"{b}-{s}" for b in boxes for s in steps]
    print(f"\nbox AP on the val sets, mean ± std over seeds; {args.iters} iterations, batch 4")
    print("| recipe | dataset | seeds | " + " | ".join(
        f"AP {b} boxes, {s} step{'s' if s != '1' else ''}" for b in boxes for s in steps
    ) + " | train wall s |")  # fmt: skip
    print("|---" * (4 + len(keys)) + "|")
    for recipe, per_set in results.items():
        for dataset, entry in per_set.items():
            cells = [mean_std(entry[k]) if k in entry else "-" for k in keys]
            print(f"| {recipe} | {dataset} | {','.join(entry['seeds'])} | " + " | ".join(cells)
                  + f" | {mean_std(entry['train_s'], 0)} |")  # fmt: skip


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
