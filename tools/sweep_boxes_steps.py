#!/usr/bin/env python
"""Evaluate one DiffusionDet or DiffusionInst checkpoint over a grid of box counts x sampling steps.

The paper's "dynamic boxes" and "progressive refinement" tables in one command:

    python tools/sweep_boxes_steps.py --config projects/detection/diffdet_r50.yaml \
        --boxes 100 300 500 --steps 1 4 8 MODEL.WEIGHTS diffdet_coco_res50.pth
    python tools/sweep_boxes_steps.py --config projects/detection/diffdet_r50.yaml \
        --boxes 100,300,500 --steps 1,4,8 MODEL.WEIGHTS diffdet_coco_res50.pth

``--boxes``/``--steps`` take numbers separated by spaces or commas; the first config key starts
the trailing ``KEY VALUE`` config overrides. The per-image box seeds come from
``--seed`` (overriding the config file's ``SEED``, which the log and ``sweep.md`` say) or else the
config's ``SEED`` (0 when it is negative, i.e. random); ``--seed`` and a ``SEED`` override on the
same command line must agree.

For every (``NUM_PROPOSALS``, ``SAMPLE_STEP``) pair the test set (``DATASETS.TEST[0]`` or
``--dataset``) is evaluated with the same per-image seeds, and the model's inference time per
image (batch ``TEST.IMS_PER_BATCH``; data loading excluded) is measured, in wall-clock time or,
with ``--clock cpu``, in CPU time of this process (robust on a shared machine). Written to
``--output-dir`` (default ``OUTPUT_DIR/sweep``): ``sweep.md`` (table), ``sweep.json`` (all
metrics) and ``sweep.png`` (AP and latency against steps, one line per box count). A
DiffusionInst config is scored by its task's evaluator, boxes and masks: the table adds mask AP
columns and the plot dashed mask AP lines.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # reach projects/

import torch  # noqa: E402

import projects  # noqa: E402,F401  (registers every task and its config keys)
from diffvision.engine.cli import (  # noqa: E402
    Int,
    IntList,
    Seed,
    ToolParser,
    run_main,
)
from diffvision.engine.defaults import load_tool_config, setup_logging  # noqa: E402
from diffvision.engine.outputs import (  # noqa: E402
    OVERWRITE_HELP,
    check_output_path,
    refuse_to_replace,
)
from diffvision.engine.progress import Progress  # noqa: E402
from diffvision.engine.tasks import build_task  # noqa: E402
from diffvision.errors import CLIError, ConfigError  # noqa: E402
from diffvision.utils.seeding import eval_image_seed  # noqa: E402
from projects.detection.build import build_inference_model  # noqa: E402
from projects.detection.config import DETECTOR_ARCHITECTURES  # noqa: E402
from projects.detection.data import build_detection_test_loader  # noqa: E402

logger = logging.getLogger("sweep_boxes_steps")
TOOL = "tools/sweep_boxes_steps.py"
IGNORED_KEYS = {
    "TEST.AUG.ENABLED": (False, "each point is the plain model's AP at that box count and step")
}


@torch.no_grad()
def evaluate_point(
    model, cfg, dataset, *, boxes, steps, seed, max_images, output_dir, clock=time.perf_counter
) -> dict:
    """AP metrics and mean inference ms/image (measured with ``clock``) for one point, scored
    by the task's evaluator (box AP; DiffusionInst: box and mask AP)."""
    loader = build_detection_test_loader(cfg, dataset)
    point_cfg = cfg.clone()
    point_cfg.defrost()
    point_cfg.OUTPUT_DIR = str(output_dir / f"b{boxes}_s{steps}")  # the evaluator's results
    evaluator = build_task(cfg).build_evaluator(point_cfg, dataset)
    evaluator.reset()
    device = torch.device(cfg.MODEL.DEVICE)
    seconds, num_images = 0.0, 0
    for batch in loader:
        if max_images:
            if num_images >= max_images:
                break
            batch = batch[: max_images - num_images]
        seeds = [eval_image_seed(seed, x["image_id"]) for x in batch]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = clock()
        outputs = model.inference(batch, num_boxes=boxes, steps=steps, seeds=seeds)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds += clock() - start
        num_images += len(batch)
        evaluator.process(batch, outputs)
    metrics = evaluator.evaluate()
    ms = 1000 * seconds / max(num_images, 1)
    return {"boxes": boxes, "steps": steps, "images": num_images, "ms_per_image": ms,
            "fps": 1000 / ms if ms else float("nan"), "metrics": metrics}  # fmt: skip


def _has_masks(rows: list[dict]) -> bool:
    return any("segm/AP" in r["metrics"] for r in rows)


def write_table(rows: list[dict], path: Path, header_note: str) -> str:
    """The markdown table: box AP, AP50, AP75 (and mask AP, AP50, AP75 for a mask model)."""
    iou_types = ("bbox", "segm") if _has_masks(rows) else ("bbox",)
    names = {"bbox": "", "segm": "mask "}
    columns = [f"{names[t]}{k}" for t in iou_types for k in ("AP", "AP50", "AP75")]
    lines = [
        header_note,
        "",
        f"| boxes | steps | {' | '.join(columns)} | ms/image | FPS |",
        "|---:|---:|" + "---:|" * len(columns) + "---:|---:|",
    ]
    nan = float("nan")
    for r in rows:
        m = r["metrics"]
        aps = [m.get(f"{t}/{k}", nan) for t in iou_types for k in ("AP", "AP50", "AP75")]
        lines.append(
            f"| {r['boxes']} | {r['steps']} | {' | '.join(f'{v:.1f}' for v in aps)} | "
            f"{r['ms_per_image']:.1f} | {r['fps']:.2f} |"
        )
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def write_plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_ap, ax_ms) = plt.subplots(1, 2, figsize=(10, 4))
    for boxes in sorted({r["boxes"] for r in rows}):
        pts = sorted((r["steps"], r) for r in rows if r["boxes"] == boxes)
        steps = [s for s, _ in pts]
        line = ax_ap.plot(steps, [r["metrics"].get("bbox/AP", float("nan")) for _, r in pts],
                          "o-", label=f"{boxes} boxes")[0]  # fmt: skip
        if _has_masks(rows):
            ax_ap.plot(steps, [r["metrics"].get("segm/AP", float("nan")) for _, r in pts], "s--",
                       color=line.get_color(), label=f"{boxes} boxes, masks")  # fmt: skip
        ax_ms.plot(steps, [r["ms_per_image"] for _, r in pts], "o-", label=f"{boxes} boxes")
    ax_ap.set(xlabel="sampling steps", ylabel="box AP (masks dashed)" if _has_masks(rows)
              else "box AP", title="AP vs steps")  # fmt: skip
    ax_ms.set(xlabel="sampling steps", ylabel="ms / image", title="latency vs steps")
    for ax in (ax_ap, ax_ms):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def resolve_seed(seed_flag: int | None, cfg_seed: int, opts: list[str]) -> tuple[int, str]:
    """The per-image box seed and where it came from (logged and written into ``sweep.md``).

    ``--seed`` wins over the config file's ``SEED`` (said in the returned note); the config's
    ``SEED`` is used without ``--seed`` (0 when it is negative, i.e. random).

    Raises:
        CLIError: ``--seed`` and a ``SEED`` override on the same command line differ.
    """
    if seed_flag is not None:
        if "SEED" in opts[::2] and cfg_seed != seed_flag:
            raise CLIError(
                f"--seed {seed_flag} disagrees with SEED {cfg_seed} from the override; pass only "
                "one of them (or the same value)"
            )
        if cfg_seed >= 0 and cfg_seed != seed_flag:
            return seed_flag, f"--seed {seed_flag} (overrides the config's SEED {cfg_seed})"
        return seed_flag, f"--seed {seed_flag}"
    if cfg_seed < 0:
        return 0, f"0 (the config's SEED is {cfg_seed}, random; pass --seed to choose)"
    return cfg_seed, f"the config's SEED {cfg_seed}"


def argument_parser() -> ToolParser:
    parser = ToolParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", "--config-file", dest="config", required=True)
    parser.add_argument("--boxes", type=IntList(1, 100_000), nargs="+", default=[100, 300, 500],
                        help="e.g. 100,300,500 or 100 300 500")  # fmt: skip
    parser.add_argument("--steps", type=IntList(1, 1000), nargs="+", default=[1, 4, 8],
                        help="e.g. 1,4,8 or 1 4 8")  # fmt: skip
    parser.add_argument("--dataset", help="test dataset (default DATASETS.TEST[0])")
    parser.add_argument("--output-dir", help="default OUTPUT_DIR/sweep")
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    parser.add_argument("--max-images", type=Int(0, special={0: "all"}), default=0,
                        help="evaluate the first N images")  # fmt: skip
    parser.add_argument(
        "--seed", type=Seed(), default=None, help="per-image box seeds (default: the config's SEED)"
    )
    parser.add_argument("--threads", type=Int(0, 1024, special={0: "torch default"}), default=0,
                        help="torch CPU threads (0: default)")  # fmt: skip
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: process CPU time (robust when other jobs share the CPU; CPU devices only)",
    )
    parser.add_argument("opts", nargs="*", help="config overrides KEY VALUE ...")
    return parser


def main(argv: list[str] | None = None) -> list[dict]:
    args = argument_parser().parse_args(argv)
    cfg = load_tool_config(
        args.config, args.opts, tool=TOOL, architectures=DETECTOR_ARCHITECTURES,
        ignored=IGNORED_KEYS,
    )  # fmt: skip
    dataset = args.dataset or (cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else None)
    if dataset is None:
        raise ConfigError(
            f"{args.config}: DATASETS.TEST is empty; pass --dataset NAME or set DATASETS.TEST"
        )
    args.seed, seed_note = resolve_seed(args.seed, cfg.SEED, args.opts)
    device = torch.device(cfg.MODEL.DEVICE)
    use_cpu_clock = args.clock == "cpu" and device.type == "cpu"
    clock = time.process_time if use_cpu_clock else time.perf_counter
    output_dir = Path(args.output_dir or Path(cfg.OUTPUT_DIR) / "sweep")
    check_output_path(output_dir, "--output-dir", kind="folder")
    finished = [output_dir / f"sweep.{ext}" for ext in ("md", "json", "png")]
    points = [output_dir / f"b{b}_s{s}" for b in args.boxes for s in args.steps]
    refuse_to_replace([*finished, *points], overwrite=args.overwrite, flag="--output-dir")
    if args.threads:
        torch.set_num_threads(args.threads)
    output_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(output_dir)
    logger.info("Per-image box seed: %s", seed_note)
    model = build_inference_model(cfg)
    progress = Progress(len(points), "sweep points", interval=0.0,
                        sizes=[b * s for b in args.boxes for s in args.steps])  # fmt: skip

    rows = []
    for boxes in args.boxes:
        for steps in args.steps:
            row = evaluate_point(
                model, cfg, dataset, boxes=boxes, steps=steps, seed=args.seed,
                max_images=args.max_images, output_dir=output_dir, clock=clock,
            )  # fmt: skip
            mask_ap = row["metrics"].get("segm/AP")
            logger.info(
                "boxes %d steps %d: AP %.2f%s, %.1f ms/image",
                boxes,
                steps,
                row["metrics"].get("bbox/AP", float("nan")),
                "" if mask_ap is None else f", mask AP {mask_ap:.2f}",
                row["ms_per_image"],
            )
            rows.append(row)
            progress.update()

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    note = (
        f"`{args.config}` weights `{cfg.MODEL.WEIGHTS or '(random)'}` on {dataset} "
        f"({rows[0]['images']} images), {where}, {torch.get_num_threads()} threads, "
        f"{'CPU' if use_cpu_clock else 'wall'}-clock ms, batch {cfg.TEST.IMS_PER_BATCH}, "
        f"seed {seed_note}"
    )
    print(write_table(rows, output_dir / "sweep.md", note))
    (output_dir / "sweep.json").write_text(json.dumps({"note": note, "rows": rows}, indent=2))
    write_plot(rows, output_dir / "sweep.png")
    print(f"wrote {output_dir / 'sweep.md'}, sweep.json and sweep.png")
    return rows


if __name__ == "__main__":
    sys.exit(run_main(main))
