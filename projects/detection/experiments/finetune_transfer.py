#!/usr/bin/env python
"""Fine-tuning from a trained detector vs from the ImageNet encoder only, at equal iterations.

Both starts use ``projects/detection/diffdet_effnetlite0_finetune.yaml`` (EfficientNet-Lite0-FPN,
ImageNet encoder frozen) and fine-tune on the generated toy shapes (4 classes, given as a
COCO-format ``DATASETS.CUSTOM`` dataset) for ``--iters`` iterations per seed:

- ``imagenet``: ``MODEL.WEIGHTS`` empty, the encoder's ImageNet weights only (FPN and head random);
- ``glyphs``: ``MODEL.WEIGHTS`` a detector trained first for ``--pretrain-iters`` iterations on
  ``toy_glyphs_train`` (10 digit classes, seed 0); its 10-class layers are re-initialised for
  the 4 shape classes, everything else is loaded.

Box AP on the toy val set comes from ``tools/train_net.py``'s final evaluation (the evaluation's
box draws seeded by ``SEED``). The markdown table gives mean ± std (sample std) over the seeds.

    python projects/detection/experiments/finetune_transfer.py --seeds 0,1 --iters 200 \
        --pretrain-iters 400

Results go to ``--output`` (``results.json``: ``{start: {"seeds": [...], "AP": [...],
"AP50": [...]}}``); finished runs are kept and skipped when the script runs again.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from diffvision.data.toy_detection import ensure_toy_detection  # noqa: E402
from diffvision.evaluation.reports import mean_std  # noqa: E402
from projects.detection.experiments.backbone_comparison import _run  # noqa: E402

CONFIG = "projects/detection/diffdet_effnetlite0_finetune.yaml"
PRETRAIN_CONFIG = "projects/detection/diffdet_effnetlite0_toy.yaml"


def _final_metrics(run_dir: Path) -> dict[str, float]:
    """The last evaluation row of ``metrics.jsonl`` (keys ``.../bbox/AP`` etc.)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if any(k.endswith("bbox/AP") for k in r)]
    row = evals[-1]
    return {k.rsplit("/", 1)[-1]: v for k, v in row.items() if "/bbox/" in f"/{k}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--iters", type=int, default=200, help="fine-tuning iterations")
    parser.add_argument("--pretrain-iters", type=int, default=400, help="on toy_glyphs")
    parser.add_argument("--output", default="output/exp_detection_finetune")
    args = parser.parse_args()
    out = Path(args.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    toy = ensure_toy_detection()
    custom = json.dumps(
        [f"finetune_{s}:{toy}/annotations/instances_{s}.json:{toy}/{s}" for s in ("train", "val")]
    )
    pretrain_dir = out / "pretrain_glyphs"
    if not (pretrain_dir / "model_final.pth").is_file():
        pretrain_dir.mkdir(parents=True, exist_ok=True)
        seconds = _run(
            [sys.executable, "tools/train_net.py", "--config", PRETRAIN_CONFIG, "--overwrite",
             "DATASETS.TEST", "()", "SOLVER.MAX_ITER", str(args.pretrain_iters),
             "SOLVER.STEPS", f"({int(args.pretrain_iters * 0.8)},)", "SEED", "0",
             "OUTPUT_DIR", str(pretrain_dir)],
            pretrain_dir / "train.log",
        )  # fmt: skip
        print(f"pretrained on toy_glyphs: {seconds:.0f}s", flush=True)
    starts = {"imagenet": "", "glyphs": str(pretrain_dir / "model_final.pth")}
    for seed in args.seeds.split(","):
        for start, weights in starts.items():
            entry = results.setdefault(start, {"seeds": [], "AP": [], "AP50": [], "train_s": []})
            if seed in entry["seeds"]:
                continue  # done in an earlier invocation
            run_dir = out / f"{start}_s{seed}"
            run_dir.mkdir(parents=True, exist_ok=True)
            seconds = _run(
                [sys.executable, "tools/train_net.py", "--config", CONFIG, "--overwrite",
                 "DATASETS.CUSTOM", custom, "MODEL.WEIGHTS", weights, "SEED", seed,
                 "SOLVER.MAX_ITER", str(args.iters),
                 "SOLVER.STEPS", f"({int(args.iters * 0.8)},)", "OUTPUT_DIR", str(run_dir)],
                run_dir / "train.log",
            )  # fmt: skip
            metrics = _final_metrics(run_dir)
            entry["seeds"].append(seed)
            entry["AP"].append(metrics["AP"])
            entry["AP50"].append(metrics["AP50"])
            entry["train_s"].append(round(seconds, 1))
            results_file.write_text(json.dumps(results, indent=1))
            print(f"{start} seed {seed}: AP {metrics['AP']:.1f} ({seconds:.0f}s)", flush=True)
    print(
        f"\nbox AP on toy_detection_val after {args.iters} fine-tuning iterations (batch 4), "
        f"mean ± std over seeds; glyph detector pretrained {args.pretrain_iters} iterations"
    )
    print("| start | seeds | AP | AP50 |\n|---|---|---|---|")
    for start, entry in results.items():
        print(
            f"| {start} | {','.join(entry['seeds'])} | {mean_std(entry['AP'], 1)} | "
            f"{mean_std(entry['AP50'], 1)} |"
        )


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
