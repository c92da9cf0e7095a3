#!/usr/bin/env python
"""The DiffusionInst claim in miniature: mask (and box) AP of the toy model at 1 and 4 sampling
steps and 100 / 300 boxes, mean ± std over training seeds.

For every seed the toy config (``projects/detection/diffinst_toy.yaml``, 32 boxes in training) is
trained with ``SEED`` = seed (skipped when ``OUTPUT/seed<s>/model_final.pth`` exists), then its
final weights are evaluated on ``toy_instances_val`` for every (boxes, steps) pair with the same
per-image sampling seeds (``SEED`` = seed); points already evaluated are kept, so seeds can run
in parallel processes and a last call prints the table over all of them. Prints a markdown
table and writes ``OUTPUT/results.json`` (``{"b<boxes>_s<steps>": {"segm/AP": [...], ...}}``,
one value per seed) and ``OUTPUT/seed<s>/final_metrics.json`` (the training's own evaluation at the
config's 32 boxes and 1 step).

    python projects/detection/diffusioninst/experiments/toy_steps_boxes.py \
        --seeds 0,1 --boxes 100,300 --steps 1,4 --output output/diffinst_toy_claim
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(REPO))

import projects  # noqa: E402,F401  (registers the tasks)
from diffvision.engine.defaults import load_config, setup_logging  # noqa: E402
from diffvision.engine.run import evaluate, train  # noqa: E402

CONFIG = REPO / "projects" / "detection" / "diffinst_toy.yaml"
METRICS = ("segm/AP", "segm/AP50", "bbox/AP")


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=_ints, default=[0, 1])
    parser.add_argument("--boxes", type=_ints, default=[100, 300])
    parser.add_argument("--steps", type=_ints, default=[1, 4])
    parser.add_argument("--output", type=Path, default=Path("output/diffinst_toy_claim"))
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args()
    for seed in args.seeds:
        run_dir = args.output / f"seed{seed}"
        weights = run_dir / "model_final.pth"
        if not weights.is_file():
            cfg = load_config(
                str(CONFIG),
                [
                    "SEED",
                    str(seed),
                    "OUTPUT_DIR",
                    str(run_dir),
                    "TEST.EVAL_PERIOD",
                    "0",
                    *args.opts,
                ],
            )
            setup_logging(run_dir)
            final = train(cfg)  # the toy config's own evaluation: 32 boxes, 1 step
            (run_dir / "final_metrics.json").write_text(json.dumps(final, indent=1))
        for boxes in args.boxes:
            for steps in args.steps:
                point = f"b{boxes}_s{steps}"
                cfg = load_config(
                    str(CONFIG),
                    ["SEED", str(seed), "MODEL.WEIGHTS", str(weights),
                     "OUTPUT_DIR", str(run_dir / point),
                     "MODEL.DiffusionInst.NUM_PROPOSALS", str(boxes),
                     "MODEL.DiffusionInst.SAMPLE_STEP", str(steps), *args.opts],
                )  # fmt: skip
                point_file = run_dir / point / "metrics.json"
                if not point_file.is_file():  # evaluated points are kept: reruns fill gaps
                    metrics = evaluate(cfg)
                    point_file.write_text(json.dumps({k: metrics[k] for k in METRICS}))
    # every seed's points found under OUTPUT (seeds may have run in separate processes)
    results: dict[str, dict[str, list[float]]] = {}
    for seed_dir in sorted(args.output.glob("seed*")):
        for point_file in sorted(seed_dir.glob("b*_s*/metrics.json")):
            values = json.loads(point_file.read_text())
            for key in METRICS:
                results.setdefault(point_file.parent.name, {}).setdefault(key, []).append(
                    values[key]
                )
    results_file = args.output / "results.json"
    results_file.write_text(json.dumps(results, indent=1))
    print(f"| boxes | steps | {' | '.join(METRICS)} |")
    print("|---|---|" + "---|" * len(METRICS))
    for point, values in results.items():
        boxes, steps = point[1:].split("_s")
        cells = []
        for key in METRICS:
            v = values[key]
            std = statistics.stdev(v) if len(v) > 1 else 0.0
            cells.append(f"{statistics.mean(v):.1f} ± {std:.1f}")
        print(f"| {boxes} | {steps} | {' | '.join(cells)} |")
    seeds = sorted(p.name for p in args.output.glob("seed*"))
    print(f"{', '.join(seeds)}; per-seed values in {results_file}")


if __name__ == "__main__":
    main()
