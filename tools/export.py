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
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # reach projects/

import projects  # noqa: E402,F401  (registers every task and its config keys)
from diffvision.engine.cli import (  # noqa: E402
    Int,
    ToolParser,
    run_main,
)
from diffvision.engine.defaults import load_tool_config  # noqa: E402
from diffvision.engine.outputs import (  # noqa: E402
    OVERWRITE_HELP,
    check_output_path,
    refuse_to_replace,
)

TOOL = "tools/export.py"
DETECTION_ARCHITECTURES = ("DiffusionDet",)
IGNORED_KEYS = {
    "TEST.AUG.ENABLED": (
        False,
        "the file holds the plain detector (test-time augmentation runs only in evaluation)",
    )
}


def argument_parser() -> ToolParser:
    parser = ToolParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", "--config-file", dest="config", required=True)
    parser.add_argument("--output", default="model.onnx", help="the .onnx file to write")
    parser.add_argument("--boxes", type=Int(1, 2**31 - 1), default=None,
                        help="N (default: NUM_PROPOSALS)")  # fmt: skip
    parser.add_argument("--steps", type=Int(1, 1000), default=None,
                        help="S (default: SAMPLE_STEP)")  # fmt: skip
    parser.add_argument("--opset", type=Int(1, 100), default=None,
                        help="ONNX opset (exporter default)")  # fmt: skip
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    parser.add_argument("opts", nargs="*", help="config overrides KEY VALUE ...")
    return parser


def export(args) -> Path:
    from projects.detection.build import build_inference_model
    from projects.detection.export import check_box_memory, export_onnx, write_metadata
    from tools.demo import class_names

    out = check_output_path(args.output, "--output", kind="file", suffixes=(".onnx",))
    refuse_to_replace([out], overwrite=args.overwrite)
    cfg = load_tool_config(
        args.config, args.opts, tool=TOOL, architectures=DETECTION_ARCHITECTURES,
        ignored=IGNORED_KEYS,
    )  # fmt: skip
    boxes = args.boxes if args.boxes is not None else cfg.MODEL.DiffusionDet.NUM_PROPOSALS
    steps = args.steps if args.steps is not None else cfg.MODEL.DiffusionDet.SAMPLE_STEP
    check_box_memory(cfg, boxes)
    start = time.perf_counter()
    model = build_inference_model(cfg)
    size = (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST)
    print(
        f"[1/3] model built ({time.perf_counter() - start:.1f}s); exporting {boxes} boxes x "
        f"{steps} steps at {size[0]}x{size[1]} (one graph trace, the longest stage)",
        flush=True,
    )
    path = export_onnx(model, out, num_boxes=boxes, steps=steps, image_hw=size,
                       opset=args.opset)  # fmt: skip
    print(f"[2/3] exported ({time.perf_counter() - start:.1f}s); writing metadata", flush=True)
    write_metadata(path, {"class_names": class_names(cfg), "config": os.fspath(args.config)})
    print(
        f"[3/3] wrote {path} ({path.stat().st_size / 2**20:.1f} MiB): {boxes} boxes, {steps} "
        f"steps in {time.perf_counter() - start:.1f}s"
    )
    return path


def main(argv: list[str] | None = None) -> int:
    export(argument_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
