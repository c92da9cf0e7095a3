#!/usr/bin/env python
"""Export a DiffusionDet config + weights to one ONNX file (the whole detector, see
projects/detection/export.py) and check it with onnx.checker.

    python tools/export.py --config projects/detection/diffdet_toy.yaml \
        MODEL.WEIGHTS output/diffdet_toy/model_final.pth          # -> model.onnx
    python tools/export.py --config projects/detection/diffdet_r50.yaml --output r50.onnx \
        --boxes 300 --steps 4 MODEL.WEIGHTS diffdet_coco_res50.pth
    python tools/demo.py --onnx model.onnx --input photo.jpg --output out/

``--boxes`` and ``--steps`` default to the config's MODEL.DiffusionDet.NUM_PROPOSALS and
SAMPLE_STEP; both are fixed in the file. Needs ``pip install -e .[export]``.

``--quantize int8`` writes an int8 file instead (onnxruntime quantization, ``tools/demo.py
--onnx`` runs it like the float32 one): ``--quantize-method static`` (the default) calibrates the
activation ranges on the first ``--calibration-images`` images of ``DATASETS.TEST[0]`` with their
evaluation seeds, ``dynamic`` needs no data (see projects/detection/SPEED.md for both)::

    python tools/export.py --config projects/detection/diffdet_toy.yaml --quantize int8 \
        --output model_int8.onnx MODEL.WEIGHTS output/diffdet_toy/model_final.pth
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # reach projects/

import projects  # noqa: E402,F401  (registers every task and its config keys)
from diffvision.engine.cli import add_debug_flag, run_main  # noqa: E402
from diffvision.engine.defaults import load_config  # noqa: E402
from diffvision.engine.outputs import OVERWRITE_HELP, refuse_to_replace  # noqa: E402
from diffvision.errors import CLIError, ConfigError  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", "--config-file", dest="config", required=True)
    parser.add_argument("--output", default="model.onnx", help="the .onnx file to write")
    parser.add_argument("--boxes", type=int, default=None, help="N (default: NUM_PROPOSALS)")
    parser.add_argument("--steps", type=int, default=None, help="S (default: SAMPLE_STEP)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (exporter default)")
    parser.add_argument("--quantize", choices=["int8"], default=None,
                        help="write an int8 file (onnxruntime quantization)")  # fmt: skip
    parser.add_argument(
        "--quantize-method",
        choices=["static", "dynamic"],
        default="static",
        help="static: calibrated on test images (default); dynamic: no data",
    )
    parser.add_argument(
        "--calibration-images",
        type=int,
        default=32,
        help="static: images of DATASETS.TEST[0] to calibrate on (default 32)",
    )
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    add_debug_flag(parser)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return parser.parse_args(argv)


def export(args: argparse.Namespace) -> Path:
    from projects.detection.build import build_inference_model
    from projects.detection.export import export_onnx, quantize_onnx, write_metadata
    from tools.demo import class_names

    if not Path(args.config).is_file():
        raise ConfigError(f"config file {args.config!r} does not exist")
    cfg = load_config(args.config, args.opts)
    if cfg.MODEL.META_ARCHITECTURE != "DiffusionDet":
        raise ConfigError(
            f"{args.config}: MODEL.META_ARCHITECTURE is {cfg.MODEL.META_ARCHITECTURE!r}; "
            "only DiffusionDet exports to ONNX"
        )
    boxes = args.boxes if args.boxes is not None else cfg.MODEL.DiffusionDet.NUM_PROPOSALS
    steps = args.steps if args.steps is not None else cfg.MODEL.DiffusionDet.SAMPLE_STEP
    if boxes < 1 or steps < 1:
        raise CLIError(f"--boxes and --steps must be >= 1, got {boxes} and {steps}")
    if args.calibration_images < 1:
        raise CLIError(f"--calibration-images must be >= 1, got {args.calibration_images}")
    refuse_to_replace([args.output], overwrite=args.overwrite)
    model = build_inference_model(cfg)
    size = (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST)
    target = Path(args.output)
    float_path = target.with_name(target.stem + ".float32.tmp.onnx") if args.quantize else target
    path = export_onnx(model, float_path, num_boxes=boxes, steps=steps, image_hw=size,
                       opset=args.opset)  # fmt: skip
    write_metadata(path, {"class_names": class_names(cfg), "config": os.fspath(args.config)})
    if args.quantize:
        try:
            feeds = []
            if args.quantize_method == "static":
                feeds = calibration_feeds(cfg, model, steps=steps, count=args.calibration_images)
            path = quantize_onnx(float_path, target, method=args.quantize_method,
                                 calibration=feeds)  # fmt: skip
        finally:
            float_path.unlink(missing_ok=True)
    kind = f"int8 {args.quantize_method}" if args.quantize else "float32"
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, {kind}): {boxes} boxes, "
          f"{steps} steps")  # fmt: skip
    return path


def calibration_feeds(cfg, model, *, steps: int, count: int) -> list[dict]:
    """Graph inputs of the first ``count`` images of ``DATASETS.TEST[0]`` (at network
    resolution) with the draws of their evaluation seeds (``SEED``, image id)."""
    from projects.detection.data import build_detection_test_loader
    from projects.detection.export import graph_input_names, seeded_draws

    if not cfg.DATASETS.TEST:
        raise ConfigError("--quantize-method static calibrates on DATASETS.TEST[0]; it is empty")
    loader = build_detection_test_loader(cfg, cfg.DATASETS.TEST[0], batch_size=1)
    names = graph_input_names(model, steps)
    boxes = cfg.MODEL.DiffusionDet.NUM_PROPOSALS
    feeds = []
    for i, (item,) in enumerate(loader):
        seed = item.get("seed", i)  # the evaluation seed (absent when SEED < 0)
        draws = seeded_draws(seed, num_boxes=boxes, steps=steps, names=names)
        feeds.append({"image": item["image"].numpy(), **draws})
        if len(feeds) == count:
            break
    return feeds


def _main(argv: list[str]) -> int:
    export(parse_args(argv))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0, or 2 with one ``error:`` line for bad input (``--debug``: traceback)."""
    return run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
