#!/usr/bin/env python
"""The one entry point: train or evaluate any diffvision task from a config.

    python tools/train_net.py --config projects/detection/diffdet_toy.yaml
    python tools/train_net.py --config projects/detection/diffdet_r50.yaml --eval-only \
        MODEL.WEIGHTS diffdet_coco_res50.pth MODEL.DiffusionDet.SAMPLE_STEP 4
    python tools/train_net.py --config ... --resume          # continue OUTPUT_DIR's last checkpoint
    python tools/train_net.py --config ... --num-gpus 8      # or: torchrun --nproc_per_node 8 ...
    python tools/train_net.py --config ... --overwrite       # replace OUTPUT_DIR's checkpoints

Bad input (config, data, weights, flags) ends with one line ``error: ...`` and exit status 2; a
diverged run with the trainer's ``FloatingPointError`` line and status 1 (``--debug`` or
``DIFFVISION_DEBUG=1``: with the traceback). An OUTPUT_DIR that holds checkpoints is never
written over without ``--resume`` or ``--overwrite``; ``--eval-only`` into a folder that holds
files writes to a new ``OUTPUT_DIR/eval_NNN``.

``MODEL.META_ARCHITECTURE`` picks the task (DiffusionDet, DDPM, DDeP, ...).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # reach projects/

import torch  # noqa: E402

import projects  # noqa: E402,F401  (registers every task and its config keys)
from diffvision.engine.build import build_batch_split  # noqa: E402
from diffvision.engine.checkpoint import (  # noqa: E402
    check_output_dir,
    clear_checkpoints,
    eval_output_dir,
)
from diffvision.engine.cli import add_debug_flag, debug_enabled, run_main, worker_entry  # noqa: E402
from diffvision.engine.defaults import (  # noqa: E402
    default_argument_parser,
    default_setup,
    load_config,
)
from diffvision.engine.hooks import json_safe  # noqa: E402
from diffvision.engine.launch import launch  # noqa: E402
from diffvision.engine.run import evaluate, train  # noqa: E402
from diffvision.engine.tasks import get_task  # noqa: E402
from diffvision.errors import CLIError, ConfigError, InputFileNotFoundError  # noqa: E402
from diffvision.modeling.weight_files import is_remote_weight  # noqa: E402
from diffvision.utils import comm  # noqa: E402


def main(args) -> dict:
    """The per-process job: train (or evaluate) the config of ``args``."""
    cfg = default_setup(load_config(args.config_file, args.opts), args)
    if getattr(args, "eval_redirected_from", None):
        logging.getLogger(__name__).info(
            "--eval-only: OUTPUT_DIR %s already holds files; this evaluation writes to %s",
            args.eval_redirected_from,
            cfg.OUTPUT_DIR,
        )
    results = evaluate(cfg) if args.eval_only else train(cfg, resume=args.resume)
    if results and comm.is_main_process():
        print(json.dumps(json_safe(results), indent=2, sort_keys=True, allow_nan=False))
    return results


def argument_parser():
    parser = default_argument_parser()
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="train in an OUTPUT_DIR that already holds checkpoints, replacing them",
    )
    add_debug_flag(parser)
    return parser


def validate(cfg, args) -> None:
    """Checks that need no worker, done once before any process is spawned.

    Raises:
        CLIError: bad process counts, --resume together with --overwrite, more CUDA processes
            than devices, or (check_output_dir) an OUTPUT_DIR holding checkpoints without
            --resume or --overwrite.
        ConfigError: SOLVER.IMS_PER_BATCH not divisible by the number of processes, unknown
            task, a MODEL.DEVICE that is no device or a CUDA device without a GPU, OUTPUT_DIR
            that is a file (values out of their range, e.g. a negative MAX_ITER, stop earlier, in
            load_config).
        InputFileNotFoundError: MODEL.WEIGHTS does not exist.
        UserInputError (from the task's check_inputs): its input files are missing.
        WeightsError (from check_output_dir): --resume finds checkpoints, none of them intact.
    """
    if args.num_gpus < 1 or args.num_machines < 1:
        raise CLIError(
            f"--num-gpus and --num-machines must be >= 1, got {args.num_gpus} and "
            f"{args.num_machines}"
        )
    if args.resume and args.overwrite:
        raise CLIError("--resume and --overwrite contradict each other; pass one of them")
    world = args.num_gpus * args.num_machines
    if "WORLD_SIZE" in os.environ:  # torchrun
        world = int(os.environ["WORLD_SIZE"])
    if not args.eval_only:
        build_batch_split(cfg, world)  # ConfigError when the global batch cannot be split
    task = get_task(cfg.MODEL.META_ARCHITECTURE)  # unknown task: ConfigError listing the known
    device = str(cfg.MODEL.DEVICE)
    try:
        torch.device(device)
    except RuntimeError:
        raise ConfigError(
            f"MODEL.DEVICE {device!r} is not a device; expected cpu, cuda or cuda:N"
        ) from None
    if device.startswith("cuda"):
        available = torch.cuda.device_count()
        if available == 0:
            raise ConfigError(
                f"MODEL.DEVICE is {device!r} but no CUDA device is available; append "
                "MODEL.DEVICE cpu (with --num-gpus N for N CPU processes)"
            )
        if args.num_gpus > available:
            raise CLIError(f"--num-gpus {args.num_gpus} but only {available} CUDA devices exist")
    output_dir = Path(cfg.OUTPUT_DIR)
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError(f"OUTPUT_DIR {output_dir} is a file, expected a folder")
    if task.check_inputs is not None:
        task.check_inputs(cfg)  # e.g. the dataset files
    weights = str(cfg.MODEL.WEIGHTS)
    if weights and not is_remote_weight(weights) and not Path(weights).expanduser().is_file():
        kind = "folder, not a file" if Path(weights).expanduser().is_dir() else "does not exist"
        raise InputFileNotFoundError(f"MODEL.WEIGHTS {weights!r}: {kind}")
    if not args.eval_only:
        check_output_dir(cfg.OUTPUT_DIR, resume=args.resume, overwrite=args.overwrite)


def cli(argv: list[str] | None = None) -> int:
    """Parse, validate, then run ``main`` in 1 or ``--num-gpus`` processes; the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    return run_main(lambda rest: _cli(rest, debug=debug_enabled(argv)), argv)


def _cli(argv: list[str], *, debug: bool) -> int:
    args = argument_parser().parse_args(argv)
    cfg = load_config(args.config_file, args.opts)
    validate(cfg, args)
    if args.overwrite and not args.eval_only:
        clear_checkpoints(cfg.OUTPUT_DIR)
    if args.eval_only:  # never replace a training run's config.yaml or results
        target = eval_output_dir(cfg.OUTPUT_DIR)
        if target != Path(cfg.OUTPUT_DIR):
            args.eval_redirected_from = str(cfg.OUTPUT_DIR)
            args.opts = [*args.opts, "OUTPUT_DIR", str(target)]
    # a worker's input error is printed by the worker; the launcher's "Terminating process"
    # notice about the other workers would only add lines
    logging.getLogger("torch.multiprocessing.spawn").setLevel(logging.ERROR)
    launch(
        worker_entry(main, debug),
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        use_cuda=str(cfg.MODEL.DEVICE).startswith("cuda"),
        args=(args,),
    )
    return 0


if __name__ == "__main__":
    sys.exit(cli())
