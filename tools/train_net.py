#!/usr/bin/env python
"""The one entry point: train or evaluate any diffvision task from a config.

    python tools/train_net.py --config projects/detection/diffdet_toy.yaml
    python tools/train_net.py --config projects/detection/diffdet_r50.yaml --eval-only \
        MODEL.WEIGHTS diffdet_coco_res50.pth MODEL.DiffusionDet.SAMPLE_STEP 4
    python tools/train_net.py --config ... --resume          # continue OUTPUT_DIR's last checkpoint
    python tools/train_net.py --config ... --num-gpus 8      # or: torchrun --nproc_per_node 8 ...

``MODEL.META_ARCHITECTURE`` picks the task (DiffusionDet, DDPM, DDeP, ...).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # reach projects/

import projects  # noqa: E402,F401  (registers every task and its config keys)
from diffvision.config import ConfigError  # noqa: E402
from diffvision.engine import comm  # noqa: E402
from diffvision.engine.build import build_batch_split  # noqa: E402
from diffvision.engine.defaults import (  # noqa: E402
    default_argument_parser,
    default_setup,
    load_config,
)
from diffvision.engine.launch import launch  # noqa: E402
from diffvision.engine.run import evaluate, train  # noqa: E402
from diffvision.modeling.weight_files import WeightDownloadError  # noqa: E402


def main(args) -> dict:
    cfg = default_setup(load_config(args.config_file, args.opts), args)
    results = evaluate(cfg) if args.eval_only else train(cfg, resume=args.resume)
    if results and comm.is_main_process():
        print(json.dumps(results, indent=2, sort_keys=True))
    return results


def cli() -> int:
    args = default_argument_parser().parse_args()
    try:
        cfg = load_config(args.config_file, args.opts)  # validate before spawning workers
        build_batch_split(cfg, args.num_gpus * args.num_machines)  # ConfigError if it cannot split
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            use_cuda=str(cfg.MODEL.DEVICE).startswith("cuda"),
            args=(args,),
        )
    except (ConfigError, FileNotFoundError, FloatingPointError, WeightDownloadError) as exc:
        # Problems with the user's inputs: one clear line, no traceback.
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
