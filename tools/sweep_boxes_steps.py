#!/usr/bin/env python
"""Evaluate one DiffusionDet checkpoint over a grid of box counts x sampling steps.

The paper's "dynamic boxes" and "progressive refinement" tables in one command:

    python tools/sweep_boxes_steps.py --config projects/detection/diffdet_r50.yaml \
        --boxes 100 300 500 --steps 1 4 8 MODEL.WEIGHTS diffdet_coco_res50.pth
    python tools/sweep_boxes_steps.py --config projects/detection/diffdet_r50.yaml \
        --boxes 100,300,500 --steps 1,4,8 MODEL.WEIGHTS diffdet_coco_res50.pth

``--boxes``/``--steps`` take numbers separated by spaces or commas; the first token that is not
a number starts the trailing ``KEY VALUE`` config overrides. The per-image box seeds come from
``--seed`` (overriding the config file's ``SEED``, which the log and ``sweep.md`` say) or else the
config's ``SEED`` (0 when it is negative, i.e. random); ``--seed`` and a ``SEED`` override on the
same command line must agree.

For every (``NUM_PROPOSALS``, ``SAMPLE_STEP``) pair the test set (``DATASETS.TEST[0]`` or
``--dataset``) is evaluated with the same per-image seeds, and the model's inference time per
image (batch ``TEST.IMS_PER_BATCH``; data loading excluded) is measured, in wall-clock time or,
with ``--clock cpu``, in CPU time of this process (robust on a shared machine). Written to
``--output-dir`` (default ``OUTPUT_DIR/sweep``): ``sweep.md`` (table), ``sweep.json`` (all
metrics) and ``sweep.png`` (AP and latency against steps, one line per box count).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # reach projects/

import torch  # noqa: E402

import projects  # noqa: E402,F401  (registers every task and its config keys)
from diffvision.engine.cli import add_debug_flag, run_main  # noqa: E402
from diffvision.engine.defaults import load_config, setup_logging  # noqa: E402
from diffvision.engine.outputs import OVERWRITE_HELP, refuse_to_replace  # noqa: E402
from diffvision.errors import CLIError  # noqa: E402
from diffvision.utils.seeding import eval_image_seed  # noqa: E402
from projects.detection.build import build_inference_model  # noqa: E402
from projects.detection.data import (  # noqa: E402
    build_detection_evaluator,
    build_detection_test_loader,
)

logger = logging.getLogger("sweep_boxes_steps")


@torch.no_grad()
def evaluate_point(
    model, cfg, dataset, *, boxes, steps, seed, max_images, output_dir, clock=time.perf_counter
) -> dict:
    """AP metrics and mean inference ms/image (measured with ``clock``) for one point."""
    loader = build_detection_test_loader(cfg, dataset)
    evaluator = build_detection_evaluator(cfg, dataset, str(output_dir / f"b{boxes}_s{steps}"))
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


def write_table(rows: list[dict], path: Path, header_note: str) -> str:
    lines = [
        header_note,
        "",
        "| boxes | steps | AP | AP50 | AP75 | ms/image | FPS |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        m = r["metrics"]
        lines.append(
            f"| {r['boxes']} | {r['steps']} | {m.get('bbox/AP', float('nan')):.1f} | "
            f"{m.get('bbox/AP50', float('nan')):.1f} | {m.get('bbox/AP75', float('nan')):.1f} | "
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
        ax_ap.plot(steps, [r["metrics"].get("bbox/AP", float("nan")) for _, r in pts], "o-",
                   label=f"{boxes} boxes")  # fmt: skip
        ax_ms.plot(steps, [r["ms_per_image"] for _, r in pts], "o-", label=f"{boxes} boxes")
    ax_ap.set(xlabel="sampling steps", ylabel="box AP", title="AP vs steps")
    ax_ms.set(xlabel="sampling steps", ylabel="ms / image", title="latency vs steps")
    for ax in (ax_ap, ax_ms):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def split_number_lists(
    args: argparse.Namespace, names: tuple[str, ...]
) -> tuple[dict[str, list[int]], list[str]]:
    """Numbers of the list flags ``names`` and the config overrides they swallowed.

    argparse gives a ``nargs="+"`` flag every token up to the next flag, so in ``--steps 1 4 8
    MODEL.WEIGHTS w.pth`` the overrides land in ``--steps``. Each flag keeps its leading tokens
    that are numbers or comma lists of numbers; from the first other token on, the rest is moved
    to the front of the overrides.

    Returns:
        ({name: [int, ...]}, overrides)

    Raises:
        CLIError: a flag with no number, or a number < 1.
    """
    numbers: dict[str, list[int]] = {}
    moved: list[str] = []
    for name in names:
        tokens = getattr(args, name)
        values = []
        for i, token in enumerate(tokens):
            parts = token.split(",")
            if not all(p.strip().isdigit() for p in parts if p.strip()) or not token.strip(","):
                moved += tokens[i:]
                break
            values += [int(p) for p in parts if p.strip()]
        flag = "--" + name.replace("_", "-")
        if not values:
            raise CLIError(f"{flag} needs numbers (e.g. {flag} 1,4,8), got {' '.join(tokens)!r}")
        if min(values) < 1:
            raise CLIError(f"{flag} values must be >= 1, got {values}")
        numbers[name] = values
    return numbers, moved + list(args.opts or [])


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


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", "--config-file", dest="config", required=True)
    parser.add_argument("--boxes", nargs="+", default=["100,300,500"], help="e.g. 100,300,500")
    parser.add_argument("--steps", nargs="+", default=["1,4,8"], help="e.g. 1,4,8")
    parser.add_argument("--dataset", help="test dataset (default DATASETS.TEST[0])")
    parser.add_argument("--output-dir", help="default OUTPUT_DIR/sweep")
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    parser.add_argument("--max-images", type=int, default=0, help="evaluate the first N images")
    parser.add_argument(
        "--seed", type=int, default=None, help="per-image box seeds (default: the config's SEED)"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: process CPU time (robust when other jobs share the CPU; CPU devices only)",
    )
    add_debug_flag(parser)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    lists, opts = split_number_lists(args, ("boxes", "steps"))
    args.boxes, args.steps, args.opts = lists["boxes"], lists["steps"], opts
    if args.max_images < 0:
        raise CLIError(f"--max-images must be >= 0, got {args.max_images}")

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.opts)
    args.seed, seed_note = resolve_seed(args.seed, cfg.SEED, args.opts)
    device = torch.device(cfg.MODEL.DEVICE)
    use_cpu_clock = args.clock == "cpu" and device.type == "cpu"
    clock = time.process_time if use_cpu_clock else time.perf_counter
    output_dir = Path(args.output_dir or Path(cfg.OUTPUT_DIR) / "sweep")
    finished = [output_dir / f"sweep.{ext}" for ext in ("md", "json", "png")]
    points = [output_dir / f"b{b}_s{s}" for b in args.boxes for s in args.steps]
    refuse_to_replace([*finished, *points], overwrite=args.overwrite, flag="--output-dir")
    output_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(output_dir)
    logger.info("Per-image box seed: %s", seed_note)
    dataset = args.dataset or cfg.DATASETS.TEST[0]
    model = build_inference_model(cfg)

    rows = []
    for boxes in args.boxes:
        for steps in args.steps:
            row = evaluate_point(
                model, cfg, dataset, boxes=boxes, steps=steps, seed=args.seed,
                max_images=args.max_images, output_dir=output_dir, clock=clock,
            )  # fmt: skip
            logger.info(
                "boxes %d steps %d: AP %.2f, %.1f ms/image",
                boxes,
                steps,
                row["metrics"].get("bbox/AP", float("nan")),
                row["ms_per_image"],
            )
            rows.append(row)

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
