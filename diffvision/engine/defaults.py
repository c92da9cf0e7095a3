"""Command-line conventions and run set-up shared by every ``tools/`` script (detectron2-style)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from diffvision.config import CfgNode, get_cfg
from diffvision.config.ranges import check_ranges
from diffvision.utils import comm
from diffvision.utils.seeding import random_seed, seed_process_rngs

__all__ = [
    "default_argument_parser",
    "default_setup",
    "load_config",
    "setup_logging",
]

logger = logging.getLogger(__name__)


def default_argument_parser(description: str = "diffvision training") -> argparse.ArgumentParser:
    """``--config/--config-file``, ``--eval-only``, ``--resume``, distributed flags and trailing
    ``KEY VALUE`` overrides."""
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "Examples:\n"
            "  python tools/train_net.py --config projects/detection/diffdet_toy.yaml\n"
            "  python tools/train_net.py --config projects/detection/diffdet_r50.yaml --eval-only "
            "MODEL.WEIGHTS diffdet_coco_res50.pth MODEL.DiffusionDet.SAMPLE_STEP 4\n"
            "  torchrun --nproc_per_node 8 tools/train_net.py --config ... (or --num-gpus 8)"
        ),
    )
    parser.add_argument(
        "--config",
        "--config-file",
        dest="config_file",
        default="",
        metavar="FILE",
        help="path to the YAML config",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUTPUT_DIR/last_checkpoint if it exists",
    )
    parser.add_argument("--eval-only", action="store_true", help="evaluate MODEL.WEIGHTS only")
    parser.add_argument(
        "--num-gpus",
        type=int,
        default=1,
        help="processes per machine (CPU processes with gloo on MODEL.DEVICE cpu)",
    )
    parser.add_argument("--num-machines", type=int, default=1)
    parser.add_argument("--machine-rank", type=int, default=0, help="rank of this machine")
    parser.add_argument(
        "--dist-url", default="auto", help="tcp://HOST:PORT of machine 0 for multi-machine jobs"
    )
    parser.add_argument(
        "opts",
        default=None,
        nargs=argparse.REMAINDER,
        help="KEY VALUE pairs overriding the config, e.g. SOLVER.BASE_LR 0.1",
    )
    return parser


def load_config(config_file: str, opts: list[str] | None = None) -> CfgNode:
    """Defaults ← file (with ``_BASE_``) ← overrides, numeric keys checked against their
    registered ranges (:mod:`diffvision.config.ranges`). No side effects."""
    cfg = get_cfg()
    if config_file:
        cfg.merge_from_file(config_file)
    if opts:
        cfg.merge_from_list(opts)
    check_ranges(cfg)
    return cfg


def setup_logging(output_dir: str | Path | None = None, *, rank: int = 0) -> None:
    """Log INFO to stdout on the main process (WARNING elsewhere) and to ``OUTPUT_DIR/log.txt``."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_diffvision", False):
            root.removeHandler(handler)
    root.setLevel(logging.INFO)
    fmt = logging.Formatter("[%(asctime)s %(name)s] %(message)s", datefmt="%m/%d %H:%M:%S")
    stream = logging.StreamHandler(sys.stdout)
    stream.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    stream.setFormatter(fmt)
    stream._diffvision = True
    root.addHandler(stream)
    if output_dir is not None:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        name = "log.txt" if rank == 0 else f"log.txt.rank{rank}"
        file_handler = logging.FileHandler(Path(output_dir) / name)
        file_handler.setFormatter(fmt)
        file_handler._diffvision = True
        root.addHandler(file_handler)


def _config_file(output_dir: Path, text: str, *, resume: bool) -> Path:
    """Where the run's config goes: ``config.yaml``, except that a resumed run whose config
    differs from the one the run started with keeps that file (the record of how the
    checkpoints were made) and writes ``config.resume<N>.yaml`` instead."""
    first = output_dir / "config.yaml"
    if not resume or not first.is_file() or first.read_text() == text:
        return first
    index = 1
    while (output_dir / f"config.resume{index}.yaml").exists():
        index += 1
    logger.info("config.yaml keeps the config the run started with; this one differs")
    return output_dir / f"config.resume{index}.yaml"


def default_setup(cfg: CfgNode, args: argparse.Namespace | None = None) -> CfgNode:
    """Create ``OUTPUT_DIR``, set up logging, seed, save ``config.yaml`` (a ``--resume`` with a
    changed config saves ``config.resume<N>.yaml`` and leaves ``config.yaml`` as it was).

    Every rank seeds its process RNGs with the same ``SEED`` (a negative SEED becomes one random
    seed shared by all ranks), so models are initialised identically whatever the process count;
    the training loop reseeds per step (the ``STEP`` stream of :mod:`diffvision.utils.seeding`).
    The SEED actually used is written back into ``cfg`` so that the saved config reproduces the
    run. Returns the frozen config.
    """
    rank = comm.get_rank()
    output_dir = Path(cfg.OUTPUT_DIR)
    if comm.is_main_process():
        output_dir.mkdir(parents=True, exist_ok=True)
    comm.synchronize()
    setup_logging(output_dir, rank=rank)
    seed = cfg.SEED
    if seed < 0:
        seed = comm.all_gather(random_seed())[0]
    seed_process_rngs(seed)
    cfg.SEED = seed
    logger.info("Rank %d of %d, seed %d", rank, comm.get_world_size(), seed)
    if args is not None:
        logger.info("Command line: %s", " ".join(sys.argv))
    if comm.is_main_process():
        text = cfg.dump()
        config_file = _config_file(output_dir, text, resume=bool(getattr(args, "resume", False)))
        config_file.write_text(text)
        logger.info("Full config saved to %s", config_file)
    if cfg.CUDNN_BENCHMARK:
        torch.backends.cudnn.benchmark = True
    cfg.freeze()
    return cfg
