#!/usr/bin/env python
"""What reduced precision costs in accuracy: one DiffusionDet checkpoint evaluated in every number
format, with the same per-image box draws.

    python tools/evaluate_precision.py --config projects/detection/diffdet_toy.yaml \\
        --steps 1 4 --seeds 0 1 --output-dir output/precision_toy \\
        MODEL.WEIGHTS output/toy/model_final.pth

Variants (``--variants``): ``fp32`` (eager, the reference), ``bf16`` and ``fp16`` (eager
``TEST.PRECISION``; fp16 runs on a CPU only here, for the measurement, since it is refused for
normal use there), ``onnx-fp32`` (the ``tools/export.py`` graph in onnxruntime), ``onnx-int8``
and ``onnx-int8-dynamic`` (``--quantize int8`` with static calibration on the first
``--calibration-images`` test images, or dynamic). For every number of steps and every seed
(the per-image seeds are ``eval_image_seed(seed, image_id)``, as in evaluation) each variant is
evaluated on ``DATASETS.TEST[0]``; reported: box AP and AP50 per variant (mean over the seeds),
and the share of the fp32 detections with score >= ``--score-threshold`` that the variant
reproduces (a detection of the same label with IoU >= 0.9). Writes ``precision.md`` and
``precision.json`` to ``--output-dir``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # reach projects/

import torch  # noqa: E402
from torchvision.ops import box_iou  # noqa: E402

import projects  # noqa: E402,F401  (registers every task and its config keys)
from diffvision.engine.cli import add_debug_flag, run_main  # noqa: E402
from diffvision.engine.defaults import load_config, setup_logging  # noqa: E402
from diffvision.engine.outputs import OVERWRITE_HELP, refuse_to_replace  # noqa: E402
from diffvision.errors import CLIError  # noqa: E402

VARIANTS = ("fp32", "bf16", "fp16", "onnx-fp32", "onnx-int8", "onnx-int8-dynamic")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", "--config-file", dest="config", required=True)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--calibration-images", type=int, default=32)
    parser.add_argument("--score-threshold", type=float, default=0.3,
                        help="fp32 detections counted in the reproduced share")  # fmt: skip
    parser.add_argument("--threads", type=int, default=2, help="torch and onnxruntime threads")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    add_debug_flag(parser)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    if min(args.steps) < 1 or args.calibration_images < 1 or args.threads < 1:
        raise CLIError("--steps, --calibration-images and --threads must be >= 1")
    if not 0 <= args.score_threshold <= 1:
        raise CLIError(f"--score-threshold must be in [0, 1], got {args.score_threshold}")
    return args


def reproduced(reference: dict, other: dict, threshold: float) -> tuple[int, int]:
    """(reference detections with score >= threshold, how many of them ``other`` has: same
    label, IoU >= 0.9)."""
    keep = reference["scores"] >= threshold
    boxes, labels = reference["boxes"][keep], reference["labels"][keep]
    if len(boxes) == 0 or len(other["boxes"]) == 0:
        return len(boxes), 0
    match = (box_iou(boxes, other["boxes"]) >= 0.9) & (labels[:, None] == other["labels"][None])
    return len(boxes), int(match.any(1).sum())


class OnnxRunner:
    """One exported (and maybe quantized) file per number of steps, run image by image."""

    def __init__(self, files: dict[int, Path], threads: int) -> None:
        from projects.detection.export import OnnxDetector

        self.detectors = {s: OnnxDetector(p, threads=threads) for s, p in files.items()}

    def __call__(self, batch: list[dict], *, steps: int, seeds: list[int]) -> list[dict]:
        from projects.detection.detector import DiffusionDet
        from projects.detection.export import seeded_draws

        det = self.detectors[steps]
        results = []
        for item, seed in zip(batch, seeds, strict=True):
            draws = seeded_draws(seed, num_boxes=det.num_boxes, steps=steps,
                                 names=det.input_names)  # fmt: skip
            out = det.run(item["image"].numpy(), draws)
            h, w = item["image"].shape[-2:]
            results.append(DiffusionDet._postprocess(
                *(torch.from_numpy(out[k]) for k in ("boxes", "scores", "labels")),
                (h, w), (item.get("height", h), item.get("width", w)),
            ))  # fmt: skip
        return results


def export_files(cfg, model, args, out: Path) -> dict[str, dict[int, Path]]:
    """The ONNX files each ONNX variant needs, per number of steps."""
    from projects.detection.export import export_onnx, quantize_onnx
    from tools.export import calibration_feeds

    files: dict[str, dict[int, Path]] = {}
    wanted = [v for v in args.variants if v.startswith("onnx")]
    if not wanted:
        return files
    boxes = cfg.MODEL.DiffusionDet.NUM_PROPOSALS
    size = (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST)
    for steps in args.steps:
        fp32 = export_onnx(model, out / f"s{steps}_fp32.onnx", num_boxes=boxes, steps=steps,
                           image_hw=size)  # fmt: skip
        files.setdefault("onnx-fp32", {})[steps] = fp32
        if "onnx-int8" in wanted:
            feeds = calibration_feeds(cfg, model, steps=steps, count=args.calibration_images)
            files.setdefault("onnx-int8", {})[steps] = quantize_onnx(
                fp32, out / f"s{steps}_int8_static.onnx", method="static", calibration=feeds
            )
        if "onnx-int8-dynamic" in wanted:
            files.setdefault("onnx-int8-dynamic", {})[steps] = quantize_onnx(
                fp32, out / f"s{steps}_int8_dynamic.onnx", method="dynamic"
            )
    return files


@torch.no_grad()
def evaluate(args: argparse.Namespace) -> str:
    from diffvision.utils.seeding import eval_image_seed
    from projects.detection.build import build_inference_model
    from projects.detection.data import build_detection_evaluator, build_detection_test_loader

    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.opts)
    out = Path(args.output_dir)
    refuse_to_replace([out / "precision.md", out / "precision.json"], overwrite=args.overwrite)
    out.mkdir(parents=True, exist_ok=True)
    setup_logging(str(out))
    model = build_inference_model(cfg).eval()
    dataset = cfg.DATASETS.TEST[0]
    files = export_files(cfg, model, args, out)
    runners = {name: OnnxRunner(f, args.threads) for name, f in files.items()}
    variants = ["fp32", *[v for v in args.variants if v != "fp32"]]
    rows = []
    for steps in args.steps:
        for seed in args.seeds:
            evaluators = {v: build_detection_evaluator(cfg, dataset, None) for v in variants}
            for e in evaluators.values():
                e.reset()
            counts = {v: [0, 0] for v in variants}
            seconds = {v: 0.0 for v in variants}
            for batch in build_detection_test_loader(cfg, dataset):
                seeds = [eval_image_seed(seed, x["image_id"]) for x in batch]
                reference = None
                for v in variants:
                    start = time.process_time()
                    if v in runners:
                        outputs = runners[v](batch, steps=steps, seeds=seeds)
                    else:
                        model.set_precision(v, allow_slow=True)
                        outputs = model.inference(batch, steps=steps, seeds=seeds)
                    seconds[v] += time.process_time() - start
                    evaluators[v].process(batch, outputs)
                    if reference is None:
                        reference = outputs
                    for r, o in zip(reference, outputs, strict=True):
                        total, hit = reproduced(r, o, args.score_threshold)
                        counts[v][0] += total
                        counts[v][1] += hit
            for v in variants:
                metrics = evaluators[v].evaluate()
                rows.append({"variant": v, "steps": steps, "seed": seed,
                             "AP": metrics["bbox/AP"], "AP50": metrics["bbox/AP50"],
                             "reproduced": counts[v][1] / max(counts[v][0], 1),
                             "fp32_detections": counts[v][0], "cpu_s": seconds[v]})  # fmt: skip
                print(f"steps {steps} seed {seed} {v:18s} AP {metrics['bbox/AP']:.2f} "
                      f"reproduced {rows[-1]['reproduced']:.3f}", flush=True)  # fmt: skip
    table = report(rows, variants, args)
    (out / "precision.md").write_text(table + "\n")
    (out / "precision.json").write_text(json.dumps(rows, indent=2))
    print(table)
    return table


def report(rows: list[dict], variants: list[str], args) -> str:
    lines = [
        f"`{args.config}`, seeds {args.seeds} (mean over seeds), {args.threads} threads; "
        f"reproduced = share of fp32 detections with score >= {args.score_threshold} that the "
        "variant has (same label, IoU >= 0.9); CPU s = process CPU time of the whole test set "
        "per seed.",
        "",
        "| variant | steps | AP | ΔAP vs fp32 | AP50 | reproduced | CPU s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for steps in args.steps:
        base = statistics.mean(r["AP"] for r in rows if r["steps"] == steps
                               and r["variant"] == "fp32")  # fmt: skip
        for v in variants:
            sel = [r for r in rows if r["steps"] == steps and r["variant"] == v]
            ap = statistics.mean(r["AP"] for r in sel)
            lines.append(
                f"| {v} | {steps} | {ap:.2f} | {ap - base:+.2f} | "
                f"{statistics.mean(r['AP50'] for r in sel):.2f} | "
                f"{statistics.mean(r['reproduced'] for r in sel):.3f} | "
                f"{statistics.mean(r['cpu_s'] for r in sel):.1f} |"
            )
    return "\n".join(lines)


def _main(argv: list[str]) -> int:
    evaluate(parse_args(argv))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0, or 2 with one ``error:`` line for bad input (``--debug``: traceback)."""
    return run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
