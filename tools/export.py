#!/usr/bin/env python
"""Export a DiffusionDet or DiffusionInst config + weights to one ONNX file (the whole detector,
see projects/detection/export.py) and check it with onnx.checker.

    python tools/export.py --config projects/detection/diffdet_toy.yaml \
        MODEL.WEIGHTS output/diffdet_toy/model_final.pth          # -> model.onnx
    python tools/export.py --config projects/detection/diffdet_r50.yaml --output r50.onnx \
        --boxes 300 --steps 4 MODEL.WEIGHTS diffdet_coco_res50.pth
    python tools/demo.py --onnx model.onnx --input photo.jpg --output out/

``--boxes`` and ``--steps`` default to the config's NUM_PROPOSALS and SAMPLE_STEP (of
``MODEL.DiffusionDet``, or ``MODEL.DiffusionInst`` for a DiffusionInst config); both are fixed in
the file. A DiffusionInst file has a fourth output, ``mask_probs`` (the kept detections' mask
probabilities on the stride-4 grid), and says so in its metadata (``meta_architecture``,
``masks``); ``tools/demo.py --onnx`` draws and writes its masks. Needs ``pip install -e .[export]``.

``--quantize int8`` writes an int8 file instead (onnxruntime quantization, ``tools/demo.py
--onnx`` runs it like the float32 one): ``--quantize-method static`` (the default) calibrates the
activation ranges on the first ``--calibration-images`` images of ``DATASETS.TEST[0]`` with their
evaluation seeds, ``dynamic`` needs no data (see projects/detection/SPEED.md for both)::

    python tools/export.py --config projects/detection/diffdet_toy.yaml --quantize int8 \
        --output model_int8.onnx MODEL.WEIGHTS output/diffdet_toy/model_final.pth
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
from diffvision.errors import CLIError, ConfigError  # noqa: E402
from projects.detection.config import DETECTOR_ARCHITECTURES, detector_section  # noqa: E402

TOOL = "tools/export.py"
IGNORED_KEYS = {
    "TEST.AUG.ENABLED": (
        False,
        "the file holds the plain detector (test-time augmentation runs only in evaluation)",
    )
}

#: --quantize formats refused, and the measured reason (projects/detection/SPEED.md)
REFUSED_FORMATS = {
    "fp16": "onnxruntime's CPU kernels ran the float16 file 1.05-1.06x the float32 file's time "
    "(toy and R50-FPN, 300 boxes)",
    "bf16": "onnxruntime has no bfloat16 Conv (the ONNX operator does not take it) and no CPU "
    "bfloat16 MatMul kernel",
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
    parser.add_argument("--quantize", choices=["int8", *REFUSED_FORMATS], default=None,
                        help="int8: write an int8 file (onnxruntime quantization); fp16 and bf16 "
                        "are refused (no faster in onnxruntime on a CPU)")  # fmt: skip
    parser.add_argument(
        "--quantize-method",
        choices=["static", "dynamic"],
        default="static",
        help="static: calibrated on test images (default); dynamic: no data",
    )
    parser.add_argument(
        "--calibration-images",
        type=Int(1, 100_000),
        default=32,
        help="static: images of DATASETS.TEST[0] to calibrate on (default 32)",
    )
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    parser.add_argument("opts", nargs="*", help="config overrides KEY VALUE ...")
    return parser


def export(args) -> Path:
    from projects.detection.build import build_inference_model
    from projects.detection.export import (
        check_box_memory,
        export_onnx,
        quantize_onnx,
        write_metadata,
    )
    from tools.demo import class_names

    if args.quantize in REFUSED_FORMATS:
        raise CLIError(
            f"--quantize {args.quantize} is refused: {REFUSED_FORMATS[args.quantize]}; use "
            "--quantize int8, or TEST.PRECISION bf16 in PyTorch"
        )
    out = check_output_path(args.output, "--output", kind="file", suffixes=(".onnx",))
    refuse_to_replace([out], overwrite=args.overwrite)
    cfg = load_tool_config(
        args.config, args.opts, tool=TOOL, architectures=DETECTOR_ARCHITECTURES,
        ignored=IGNORED_KEYS,
    )  # fmt: skip
    keys = detector_section(cfg)[1]
    boxes = args.boxes if args.boxes is not None else keys.NUM_PROPOSALS
    steps = args.steps if args.steps is not None else keys.SAMPLE_STEP
    check_box_memory(cfg, boxes)
    if args.quantize == "int8" and args.quantize_method == "static" and not cfg.DATASETS.TEST:
        raise ConfigError("--quantize-method static calibrates on DATASETS.TEST[0]; it is empty")
    start = time.perf_counter()
    model = build_inference_model(cfg)
    size = (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST)
    stages = 4 if args.quantize else 3
    print(
        f"[1/{stages}] model built ({time.perf_counter() - start:.1f}s); exporting {boxes} boxes x "
        f"{steps} steps at {size[0]}x{size[1]} (one graph trace, the longest stage)",
        flush=True,
    )
    float_path = out.with_name(out.stem + ".float32.tmp.onnx") if args.quantize else out
    path = export_onnx(model, float_path, num_boxes=boxes, steps=steps, image_hw=size,
                       opset=args.opset)  # fmt: skip
    print(f"[2/{stages}] exported ({time.perf_counter() - start:.1f}s); writing metadata",
          flush=True)  # fmt: skip
    write_metadata(path, {"class_names": class_names(cfg), "config": os.fspath(args.config)})
    if args.quantize:
        print(f"[3/{stages}] quantizing to int8 ({args.quantize_method})", flush=True)
        try:
            feeds = []
            if args.quantize_method == "static":
                feeds = calibration_feeds(
                    cfg, model, boxes=boxes, steps=steps, count=args.calibration_images
                )
            path = quantize_onnx(float_path, out, method=args.quantize_method,
                                 calibration=feeds)  # fmt: skip
        finally:
            float_path.unlink(missing_ok=True)
    kind = f"int8 {args.quantize_method}" if args.quantize else "float32"
    print(
        f"[{stages}/{stages}] wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, {kind}): "
        f"{boxes} boxes, {steps} steps in {time.perf_counter() - start:.1f}s"
    )
    return path


def calibration_feeds(
    cfg, model, *, steps: int, count: int, boxes: int | None = None
) -> list[dict]:
    """Graph inputs of the first ``count`` images of ``DATASETS.TEST[0]`` (at network
    resolution) with the draws of their evaluation seeds (``SEED``, image id) for a graph of
    ``boxes`` boxes (default: the config's NUM_PROPOSALS) and ``steps`` steps."""
    from projects.detection.data import build_detection_test_loader
    from projects.detection.export import graph_input_names, seeded_draws

    loader = build_detection_test_loader(cfg, cfg.DATASETS.TEST[0], batch_size=1)
    names = graph_input_names(model, steps)
    if boxes is None:
        boxes = detector_section(cfg)[1].NUM_PROPOSALS
    feeds = []
    for i, (item,) in enumerate(loader):
        seed = item.get("seed", i)  # the evaluation seed (absent when SEED < 0)
        draws = seeded_draws(seed, num_boxes=boxes, steps=steps, names=names)
        feeds.append({"image": item["image"].numpy(), **draws})
        if len(feeds) == count:
            break
    return feeds


def main(argv: list[str] | None = None) -> int:
    export(argument_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
