#!/usr/bin/env python
"""DiffusionDet speed: inference latency split, training step time, matcher time.

    # toy model at its own test size, the issue's full grid
    python tools/benchmark_detection.py --config projects/detection/diffdet_toy.yaml
    # R50 at 800x1333 (random weights: speed does not depend on them)
    python tools/benchmark_detection.py --config projects/detection/diffdet_r50.yaml \
        --size 800 1333 --boxes 100 300 500 1000 --steps 1 4 8
    python tools/benchmark_detection.py --config ... --quick      # a smaller grid, 1 repeat
    # fp32 vs bf16 (and fp16 on CUDA) inference: toy and R50 at 480x640, 100/300/500 x 1/4
    python tools/benchmark_detection.py --compare-precision --threads 2

Inference (batch 1, one synthetic image of ``--size``; default: the config's test size):

- ``backbone``: preprocessing + ResNet/Swin-FPN features.
- ``head/step``: one pass of the 6-stage (``NUM_HEADS``) dynamic head over N boxes.
- ``rest``: end-to-end minus backbone minus S head passes: DDIM updates, box renewal, top-k,
  class-aware NMS, rescaling.
- ``total``: end-to-end ``model.inference`` (S steps, N boxes); FPS = 1000 / total.
- ``peak MiB``: CUDA: ``max_memory_allocated`` per configuration. CPU: the process's maximum
  resident set size so far (monotone; configurations run in increasing N), an upper bound.

Training: one forward+backward+AdamW step on ``--train-batch`` synthetic images carrying
``--train-gts`` boxes each, at ``NUM_PROPOSALS`` boxes. Matcher: one dynamic-k matching of
``NUM_PROPOSALS`` random predictions per image, for several ground-truth counts.
Each time is the median over ``--repeats`` runs after ``--warmup`` untimed ones, in wall-clock
milliseconds, or with ``--clock cpu`` in CPU milliseconds of this process (all its threads): on a
shared machine wall time measures the neighbours as much as the model, CPU time does not.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # reach projects/

import torch  # noqa: E402

import projects  # noqa: E402,F401  (registers every task and its config keys)
from diffvision.data.detection_transforms import resized_shape  # noqa: E402
from diffvision.engine.cli import (  # noqa: E402
    Int,
    IntList,
    ToolParser,
    run_main,
)
from diffvision.engine.defaults import load_config, load_tool_config  # noqa: E402
from diffvision.engine.outputs import (  # noqa: E402
    OVERWRITE_HELP,
    check_output_path,
    refuse_to_replace,
)
from diffvision.errors import CLIError  # noqa: E402
from projects.detection.box_diffusion import diffusion_to_boxes  # noqa: E402
from projects.detection.build import build_model  # noqa: E402
from projects.detection.export import check_box_memory  # noqa: E402

# --------------------------------------------------------------------------------------------
# Timing helpers
# --------------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


WARMUP = 1  # untimed calls before measuring (--warmup)
CLOCK = time.perf_counter  # --clock cpu: time.process_time (CPU seconds of all our threads)


def timed(fn, *, repeats: int, device: torch.device) -> float:
    """Median wall time of ``fn()`` in milliseconds, after ``WARMUP`` untimed calls."""
    for _ in range(WARMUP):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = CLOCK()
        fn()
        sync(device)
        times.append((CLOCK() - start) * 1000)
    return statistics.median(times)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def synthetic_image(h: int, w: int, generator: torch.Generator) -> dict:
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator)
    return {"image": image, "height": h, "width": w}


def random_gt_boxes(n: int, h: int, w: int, generator: torch.Generator) -> torch.Tensor:
    wh = torch.rand(n, 2, generator=generator) * torch.tensor([w, h]) * 0.3 + 8
    xy = torch.rand(n, 2, generator=generator) * (torch.tensor([w, h]) - wh)
    return torch.cat([xy, xy + wh], 1)


# --------------------------------------------------------------------------------------------
# Benchmarks
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def bench_inference(model, *, size, boxes, steps, repeats, device) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    batch = [synthetic_image(*size, g)]
    rows = []
    model.eval()
    for n in sorted(boxes):
        reset_peak(device)
        images, whwh = model.preprocess_image(batch)
        features = model.extract_features(images)
        backbone_ms = timed(
            lambda: model.extract_features(model.preprocess_image(batch)[0]),
            repeats=repeats,
            device=device,
        )
        x_t = torch.randn(1, n, 4, generator=g).to(device)
        boxes_in = diffusion_to_boxes(x_t, whwh, scale=model.snr_scale)
        t = torch.full((1,), 999, dtype=torch.long, device=device)
        head_ms = timed(
            lambda: model.head(features, boxes_in, t),  # noqa: B023  (called right here)
            repeats=repeats,
            device=device,
        )
        for s in sorted(steps):
            total_ms = timed(
                lambda: model.inference(batch, num_boxes=n, steps=s, seeds=[0]),  # noqa: B023
                repeats=repeats,
                device=device,
            )
            rows.append(
                {
                    "boxes": n,
                    "steps": s,
                    "backbone_ms": backbone_ms,
                    "head_ms_per_step": head_ms,
                    "rest_ms": total_ms - backbone_ms - s * head_ms,
                    "total_ms": total_ms,
                    "fps": 1000 / total_ms,
                    "peak_mib": peak_mib(device),
                }
            )
            print(f"  boxes {n:5d} steps {s}: total {total_ms:9.1f} ms", flush=True)
    return rows


def bench_train_step(model, *, size, batch_size, num_gts, repeats, device) -> dict:
    g = torch.Generator().manual_seed(1)
    batch = []
    for _ in range(batch_size):
        item = synthetic_image(*size, g)
        item["instances"] = {
            "gt_boxes": random_gt_boxes(num_gts, *size, g),
            "gt_classes": torch.randint(0, model.num_classes, (num_gts,), generator=g),
        }
        batch.append(item)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-8)
    model.train()

    def step():
        losses = model(batch)
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()

    reset_peak(device)
    ms = timed(step, repeats=repeats, device=device)
    return {"batch": batch_size, "gts_per_image": num_gts, "ms_per_iter": ms,
            "ms_per_image": ms / batch_size, "peak_mib": peak_mib(device)}  # fmt: skip


@torch.no_grad()
def bench_matcher(model, *, size, num_gts_list, repeats, device) -> list[dict]:
    matcher = model.criterion.matcher
    n, k = model.num_proposals, model.num_classes
    h, w = size
    g = torch.Generator().manual_seed(2)
    whwh = torch.tensor([w, h, w, h], dtype=torch.float32)
    rows = []
    for num_gts in num_gts_list:
        gt = random_gt_boxes(num_gts, h, w, g)
        target = {
            "labels": torch.randint(0, k, (num_gts,), generator=g),
            "boxes_xyxy": gt,
            "image_size_xyxy": whwh,
            "image_size_xyxy_tgt": whwh.repeat(num_gts, 1),
        }
        target = {key: v.to(device) for key, v in target.items()}
        outputs = {
            "pred_logits": torch.randn(1, n, k, generator=g).to(device),
            "pred_boxes": random_gt_boxes(n, h, w, g)[None].to(device),
        }
        ms = timed(lambda: matcher(outputs, [target]), repeats=repeats, device=device)  # noqa: B023
        rows.append({"num_proposals": n, "gts": num_gts, "ms_per_image": ms})
    return rows


# --------------------------------------------------------------------------------------------
# --compare-plain: optimised vs plain path, interleaved in one process
# --------------------------------------------------------------------------------------------

PATHS = (False, True)  # plain (official order), fast


def _official_order():
    """The tests' line-by-line implementation of the official computation order (the oracle of
    ``tests/projects/detection/test_official_order.py``), the baseline of ``--compare-plain``."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "tests/projects/detection/official_order.py"
    spec = importlib.util.spec_from_file_location("official_order", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.official_order


def path_context(model, fast: bool):
    """Run ``model`` in the library's order (fast) or in the official order (plain)."""
    return contextlib.nullcontext() if fast else _official_order()(model)


def device_meta(device: torch.device) -> dict:
    """Device, its name, torch version and CPU threads, for the report header."""
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def timed_pair(fn, model, *, repeats: int, device: torch.device) -> dict[bool, float]:
    """Median ms of ``fn()`` per path, calls interleaved plain, fast, plain, fast, ...

    Interleaving spreads the load of other processes over both paths alike. Every path gets
    ``WARMUP`` untimed calls first (lazy init, allocator warm-up, compilation).
    """
    times: dict[bool, list[float]] = {fast: [] for fast in PATHS}
    for fast in PATHS:
        with path_context(model, fast):
            for _ in range(WARMUP):
                fn(fast)
    for _ in range(repeats):
        for fast in PATHS:
            with path_context(model, fast):
                sync(device)
                start = CLOCK()
                fn(fast)
                sync(device)
                times[fast].append((CLOCK() - start) * 1000)
    return {fast: statistics.median(v) for fast, v in times.items()}


def count_flops(fn) -> int:
    """FLOPs of the matmuls and convolutions ``fn()`` runs (torch's FlopCounterMode)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def mm_gflops(m: int, k: int, n: int, *, repeats: int, device: torch.device) -> float:
    """Achieved GFLOP/s of a plain ``torch.mm`` of (m, k) x (k, n) (fp32)."""
    a = torch.randn(m, k, device=device)
    b = torch.randn(k, n, device=device)
    ms = timed(lambda: torch.mm(a, b), repeats=repeats, device=device)
    return 2 * m * k * n / ms / 1e6


def compare_model(name: str, model, *, size, args, device) -> dict:
    """Every cell of one model: inference (batches x boxes x steps) and one training step."""
    g = torch.Generator().manual_seed(0)
    images = [synthetic_image(*size, g) for _ in range(max(args.batches))]
    inference, train, flops = [], [], []
    model.eval()
    setup_ms = {}
    for fast in PATHS:  # first-call set-up (allocator, oneDNN, torch.compile) outside timings
        start = time.perf_counter()
        with path_context(model, fast), torch.no_grad(), torch.inference_mode(fast):
            model.inference(images[:1], num_boxes=10, steps=1, seeds=[0])
        setup_ms[fast] = (time.perf_counter() - start) * 1000
    if model.head.use_compile:
        print(f"  {name}: first fast call (torch.compile) {setup_ms[True]:.0f} ms wall, "
              f"first plain call {setup_ms[False]:.0f} ms wall", flush=True)  # fmt: skip
    for b in args.batches:
        batch = images[:b]
        seeds = list(range(b))
        model.eval()
        with torch.inference_mode():
            pixels, whwh = model.preprocess_image(batch)
            features = model.extract_features(pixels)

            def backbone(fast, batch=batch):
                with torch.inference_mode(fast):
                    model.extract_features(model.preprocess_image(batch)[0])

            backbone_ms = timed_pair(backbone, model, repeats=args.repeats, device=device)
            backbone_flops = count_flops(lambda: model.extract_features(pixels))  # noqa: B023
        for n in args.boxes:
            with torch.inference_mode():
                x_t = torch.randn(b, n, 4, generator=g).to(device)
                boxes_in = diffusion_to_boxes(x_t, whwh, scale=model.snr_scale)
                t = torch.full((b,), 999, dtype=torch.long, device=device)

                def head(fast, features=features, boxes_in=boxes_in, t=t):
                    model.head(features, boxes_in, t)

                head_ms = timed_pair(head, model, repeats=args.repeats, device=device)
                head_flops = count_flops(lambda: head(True))  # noqa: B023
            flops.append({"model": name, "batch": b, "boxes": n,
                          "backbone_gflop": backbone_flops / 1e9, "head_gflop": head_flops / 1e9,
                          "backbone_ms": backbone_ms, "head_ms": head_ms})  # fmt: skip
            for s in args.steps:

                def run(fast, batch=batch, n=n, s=s, seeds=seeds):
                    with torch.no_grad(), torch.inference_mode(fast):
                        model.inference(batch, num_boxes=n, steps=s, seeds=seeds)

                total = timed_pair(run, model, repeats=args.repeats, device=device)
                row = {"model": name, "batch": b, "boxes": n, "steps": s}
                for fast in PATHS:
                    key = "fast" if fast else "plain"
                    row[key] = {
                        "total_ms": total[fast],
                        "backbone_ms": backbone_ms[fast],
                        "head_ms": s * head_ms[fast],
                        "rest_ms": total[fast] - backbone_ms[fast] - s * head_ms[fast],
                    }
                row["ratio"] = total[True] / total[False]
                inference.append(row)
                print(
                    f"  {name} batch {b} boxes {n:4d} steps {s}: plain {total[False]:9.1f} ms "
                    f"fast {total[True]:9.1f} ms ratio {row['ratio']:.3f}",
                    flush=True,
                )
        if args.train:
            item_g = torch.Generator().manual_seed(1)
            tbatch = []
            for img in batch:
                h, w = img["image"].shape[-2:]
                tbatch.append({**img, "instances": {
                    "gt_boxes": random_gt_boxes(args.train_gts, h, w, item_g),
                    "gt_classes": torch.randint(0, model.num_classes, (args.train_gts,),
                                                generator=item_g)}})  # fmt: skip
            model.train()

            def step(fast, tbatch=tbatch):
                torch.manual_seed(0)  # the same diffusion draws on both paths
                losses = model(tbatch)
                model.zero_grad(set_to_none=True)
                sum(losses.values()).backward()

            ms = timed_pair(step, model, repeats=args.repeats, device=device)
            train.append({"model": name, "batch": b, "proposals": model.num_proposals,
                          "plain_ms": ms[False], "fast_ms": ms[True],
                          "ratio": ms[True] / ms[False]})  # fmt: skip
            print(f"  {name} train batch {b}: ratio {ms[True] / ms[False]:.3f}", flush=True)
            model.eval()
    first = {"model": name, "plain": setup_ms[False], "fast": setup_ms[True]}
    return {"inference": inference, "train": train, "flops": flops, "first_call_ms": [first]}


def geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def compare_report(meta: dict, results: dict, mm: dict) -> str:
    inf, train, flops = results["inference"], results["train"], results["flops"]
    first = results.get("first_call_ms", [])
    ratios = [r["ratio"] for r in inf]
    parts = [
        f"Optimised (fast path) vs plain (official order), interleaved in one process: "
        f"{meta['models']}, device {meta['device']} ({meta['device_name']}), torch "
        f"{meta['torch']}, {meta['threads']} threads, {meta['clock']}-clock median of "
        f"{meta['repeats']} after {meta['warmup']} warm-up, 1-min load average at start "
        f"{meta['load_average']:.1f}. Times in ms; ratio = fast / plain (lower is better).",
        "",
        "Inference (backbone once per batch, head x steps, rest = total - backbone - head):",
        "",
        markdown(
            ["model", "batch", "boxes", "steps", "plain backbone/head/rest", "plain total",
             "fast backbone/head/rest", "fast total", "ratio"],
            [[r["model"], r["batch"], r["boxes"], r["steps"],
              "{backbone_ms:.0f} / {head_ms:.0f} / {rest_ms:.0f}".format(**r["plain"]),
              f"{r['plain']['total_ms']:.0f}",
              "{backbone_ms:.0f} / {head_ms:.0f} / {rest_ms:.0f}".format(**r["fast"]),
              f"{r['fast']['total_ms']:.0f}", f"{r['ratio']:.3f}"] for r in inf],
        ),
        "",
        f"Inference geometric mean ratio: {geomean(ratios):.3f} over {len(ratios)} cells "
        f"(max {max(ratios):.3f}, min {min(ratios):.3f}).",
    ]  # fmt: skip
    for model_name in dict.fromkeys(r["model"] for r in inf):
        sub = [r["ratio"] for r in inf if r["model"] == model_name]
        parts.append(f"- {model_name}: geomean {geomean(sub):.3f}, max {max(sub):.3f}")
    # batch-4 vs batch-1 per-image throughput, fast path
    by_cell = {(r["model"], r["batch"], r["boxes"], r["steps"]): r for r in inf}
    gains = []
    for (model_name, b, n, s), r in by_cell.items():
        one = by_cell.get((model_name, 1, n, s))
        if b > 1 and one is not None:
            fast_gain = one["fast"]["total_ms"] / (r["fast"]["total_ms"] / b)
            plain_gain = one["plain"]["total_ms"] / (r["plain"]["total_ms"] / b)
            gains.append([model_name, b, n, s, f"{fast_gain:.2f}", f"{plain_gain:.2f}"])
    if gains:
        parts += [
            "",
            "Per-image throughput of batch B relative to batch 1 (>1: batching helps):",
            "",
            markdown(["model", "batch", "boxes", "steps", "fast", "plain"], gains),
        ]
    if train:
        parts += [
            "",
            "Training step (forward + loss + backward, NUM_PROPOSALS boxes, "
            f"{meta['train_gts']} ground truths per image):",
            "",
            markdown(
                ["model", "batch", "proposals", "plain ms", "fast ms", "ratio"],
                [[r["model"], r["batch"], r["proposals"], f"{r['plain_ms']:.0f}",
                  f"{r['fast_ms']:.0f}", f"{r['ratio']:.3f}"] for r in train],
            ),
            "",
            f"Training geometric mean ratio: {geomean([r['ratio'] for r in train]):.3f}",
        ]  # fmt: skip
    rows = []
    for f in flops:
        b_ms, h_ms = f["backbone_ms"], f["head_ms"]
        rows.append([f["model"], f["batch"], f["boxes"],
                     f"{f['backbone_gflop']:.1f}", f"{f['backbone_gflop'] / b_ms[False] * 1e3:.1f}",
                     f"{f['backbone_gflop'] / b_ms[True] * 1e3:.1f}",
                     f"{f['head_gflop']:.1f}", f"{f['head_gflop'] / h_ms[False] * 1e3:.1f}",
                     f"{f['head_gflop'] / h_ms[True] * 1e3:.1f}"])  # fmt: skip
    parts += [
        "",
        "Achieved GFLOP/s (matmul + convolution FLOPs counted by FlopCounterMode, per call):",
        "",
        markdown(
            [
                "model",
                "batch",
                "boxes",
                "backbone GFLOP",
                "plain GFLOP/s",
                "fast GFLOP/s",
                "head GFLOP/step",
                "plain GFLOP/s",
                "fast GFLOP/s",
            ],
            rows,
        ),  # fmt: skip
        "",
        "Reference plain torch.mm in the same run: "
        + ", ".join(f"{k}: {v:.1f} GFLOP/s" for k, v in mm.items()),
    ]
    if meta.get("compile"):
        parts += ["", "First call (wall ms, torch.compile of the fast head included; not in the "
                  "tables above): " + ", ".join(
                      f"{r['model']} plain {r['plain']:.0f} / fast {r['fast']:.0f}"
                      for r in first)]  # fmt: skip
    return "\n".join(parts)


def run_meta(args, model_descriptions: list[str], device: torch.device) -> dict:
    """What every comparison table's header states: models, device, repeats, clock, load."""
    return {
        "models": ", ".join(model_descriptions),
        **device_meta(device),
        "repeats": args.repeats,
        "warmup": args.warmup,
        "clock": "cpu" if CLOCK is time.process_time else "wall",
        "load_average": LOAD_AT_START,
    }


def comparison_models(args, *, with_criterion: bool):
    """Set the timing globals from ``args``, then yield ``(name, description, size, model,
    device)`` for each of ``--models``, built with random weights (the work does not depend on
    them) on ``MODEL.DEVICE``."""
    global WARMUP, CLOCK
    WARMUP = args.warmup
    if args.threads:
        torch.set_num_threads(args.threads)
    configs = {
        "toy": ("projects/detection/diffdet_toy.yaml", args.toy_size),
        "R50": ("projects/detection/diffdet_r50.yaml", args.r50_size),
    }
    for name in args.models:
        config, size = configs[name]
        compile_opt = ["MODEL.DiffusionDet.COMPILE", "True"] if args.compile else []
        cfg = load_config(config, ["MODEL.WEIGHTS", "", *compile_opt, *args.opts])
        check_box_memory(cfg, max(args.boxes))
        model = build_model(cfg, with_criterion=with_criterion)  # random weights suffice
        device = torch.device(cfg.MODEL.DEVICE)
        if args.clock == "cpu" and device.type == "cpu":
            CLOCK = time.process_time
        print(f"{name} at {size[0]}x{size[1]}", flush=True)
        yield name, f"{name} (`{config}`, image {size[0]}x{size[1]})", tuple(size), model, device


def main_compare(args, parser) -> str:
    device = None
    results = {"inference": [], "train": [], "flops": [], "first_call_ms": []}
    meta_models = []
    for name, description, size, model, device in comparison_models(args, with_criterion=True):
        model.channels_last = args.channels_last == "on"
        meta_models.append(description)
        part = compare_model(name, model, size=size, args=args, device=device)
        for k in results:
            results[k] += part[k]
        del model
    mm = {}
    n = max(args.boxes) * max(args.batches)
    mm[f"head-shaped {n}x256x32768"] = mm_gflops(n, 256, 32768, repeats=args.repeats,
                                                  device=device)  # fmt: skip
    h, w = args.r50_size
    m = max(args.batches) * (h // 8) * (w // 8)
    mm[f"conv-shaped (im2col of a res3 3x3 conv) {m}x1152x128"] = mm_gflops(
        m, 1152, 128, repeats=args.repeats, device=device
    )
    mm["square 1024x1024x1024"] = mm_gflops(1024, 1024, 1024, repeats=args.repeats, device=device)
    meta = {
        **run_meta(args, meta_models, device),
        "train_gts": args.train_gts,
        "compile": args.compile,
    }
    table = compare_report(meta, results, mm)
    publish(table, {"meta": meta, "mm_gflops": mm, **results}, args.output)
    return table


# --------------------------------------------------------------------------------------------
# --compare-precision: fp32 vs bf16 / fp16 inference, interleaved in one process
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def precision_cells(name: str, model, *, size, args, device) -> list[dict]:
    """Every (batch, boxes, steps) cell of one model: median ms per precision, the precisions
    run in rotation on the same image(s) and seeds (``allow_slow``: fp16 is measured on a CPU
    too, where ``TEST.PRECISION`` refuses it)."""
    g = torch.Generator().manual_seed(0)
    images = [synthetic_image(*size, g) for _ in range(max(args.batches))]
    model.eval()
    for p in args.precisions:  # reduced copies and first-call set-up outside the timings
        model.set_precision(p, allow_slow=True)
        model.inference(images[:1], num_boxes=10, steps=1, seeds=[0])
    rows = []
    for b in args.batches:
        batch, seeds = images[:b], list(range(b))
        for n in args.boxes:
            for s in args.steps:
                times: dict[str, list[float]] = {p: [] for p in args.precisions}
                for r in range(WARMUP + args.repeats):
                    for p in args.precisions:
                        model.set_precision(p, allow_slow=True)
                        sync(device)
                        start = CLOCK()
                        model.inference(batch, num_boxes=n, steps=s, seeds=seeds)
                        sync(device)
                        if r >= WARMUP:
                            times[p].append((CLOCK() - start) * 1000)
                ms = {p: statistics.median(v) for p, v in times.items()}
                base = ms[args.precisions[0]]
                rows.append({"model": name, "batch": b, "boxes": n, "steps": s, "ms": ms,
                             "ratio": {p: v / base for p, v in ms.items()}})  # fmt: skip
                cells = ", ".join(f"{p} {v:.1f} ms ({v / base:.3f})" for p, v in ms.items())
                print(f"  {name} batch {b} boxes {n:4d} steps {s}: {cells}", flush=True)
    model.set_precision(args.precisions[0])
    return rows


def precision_report(meta: dict, rows: list[dict], precisions: list[str]) -> str:
    base, others = precisions[0], precisions[1:]
    parts = [
        f"Precision vs {base} eager, interleaved in one process on the same inputs: "
        f"{meta['models']}, device {meta['device']} ({meta['device_name']}), torch "
        f"{meta['torch']}, {meta['threads']} threads, {meta['clock']}-clock median of "
        f"{meta['repeats']} after {meta['warmup']} warm-up, 1-min load average at start "
        f"{meta['load_average']:.1f}; CPU native bf16: {meta['native_bf16'] or 'no'}. Times in "
        f"ms; ratio = precision / {base} (lower is better).",
        "",
        markdown(
            ["model", "batch", "boxes", "steps", *[f"{p} ms" for p in precisions],
             *[f"{p} ratio" for p in others]],
            [[r["model"], r["batch"], r["boxes"], r["steps"],
              *[f"{r['ms'][p]:.0f}" for p in precisions],
              *[f"{r['ratio'][p]:.3f}" for p in others]] for r in rows],
        ),
        "",
        "Geometric mean ratio (max cell) per model and batch:",
        "",
    ]  # fmt: skip
    for model_name, b in dict.fromkeys((r["model"], r["batch"]) for r in rows):
        sel = [r for r in rows if r["model"] == model_name and r["batch"] == b]
        parts.append(f"- {model_name}, batch {b}: " + ", ".join(
            f"{p} {geomean([r['ratio'][p] for r in sel]):.3f} "
            f"(max {max(r['ratio'][p] for r in sel):.3f})" for p in others))  # fmt: skip
    return "\n".join(parts)


def main_compare_precision(args) -> str:
    from diffvision.modeling.precision import cpu_native_bf16

    rows, meta_models, device = [], [], None
    for name, description, size, model, device in comparison_models(args, with_criterion=False):
        meta_models.append(description)
        rows += precision_cells(name, model, size=size, args=args, device=device)
        del model
    meta = {
        **run_meta(args, meta_models, device),
        "native_bf16": ", ".join(cpu_native_bf16()) if device.type == "cpu" else "n/a",
    }
    table = precision_report(meta, rows, args.precisions)
    publish(table, {"meta": meta, "precision": rows}, args.output)
    return table


def publish(table: str, raw: dict, output: str | None) -> None:
    """Print the tables; with ``--output`` also write them (.md) and the raw numbers (.json)."""
    print()
    print(table)
    if output:
        out = Path(output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".md").write_text(table + "\n")
        out.with_suffix(".json").write_text(json.dumps(raw, indent=2))


LOAD_AT_START = os.getloadavg()[0]


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def markdown(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def report(meta: dict, inference: list[dict], train: dict | None, matcher: list[dict]) -> str:
    parts = [
        f"DiffusionDet benchmark: `{meta['config']}`, image {meta['size'][0]}x{meta['size'][1]}, "
        f"device {meta['device']} ({meta['device_name']}), torch {meta['torch']}, "
        f"{meta['threads']} threads, {meta['clock']}-clock median of {meta['repeats']} after "
        f"{meta['warmup']} warm-up, "
        f"1-min load average at start {meta['load_average']:.1f}",
        "",
        markdown(
            ["boxes", "steps", "backbone ms", "head ms/step", "rest ms", "total ms", "FPS",
             "peak MiB"],
            [[r["boxes"], r["steps"], f"{r['backbone_ms']:.1f}", f"{r['head_ms_per_step']:.1f}",
              f"{r['rest_ms']:.1f}", f"{r['total_ms']:.1f}", f"{r['fps']:.2f}",
              f"{r['peak_mib']:.0f}"] for r in inference],
        ),
    ]  # fmt: skip
    if train is not None:
        parts += [
            "",
            markdown(
                ["train batch", "gts/image", "ms/iter", "ms/image", "peak MiB"],
                [[train["batch"], train["gts_per_image"], f"{train['ms_per_iter']:.1f}",
                  f"{train['ms_per_image']:.1f}", f"{train['peak_mib']:.0f}"]],
            ),
        ]  # fmt: skip
    if matcher:
        parts += [
            "",
            markdown(
                ["matcher: proposals", "gts", "ms/image"],
                [[r["num_proposals"], r["gts"], f"{r['ms_per_image']:.2f}"] for r in matcher],
            ),
        ]
    return "\n".join(parts)


def argument_parser() -> ToolParser:
    parser = ToolParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", "--config-file", dest="config",
                        help="model config (required unless --compare-plain)")  # fmt: skip
    parser.add_argument("--compare-plain", action="store_true",
                        help="optimised vs plain path, interleaved: --models x --batches x "
                        "--boxes x --steps, inference and one training step")  # fmt: skip
    parser.add_argument("--compare-precision", action="store_true",
                        help="--precisions against the first (fp32), interleaved: --models x "
                        "--batches x --boxes x --steps, inference")  # fmt: skip
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "bf16", "fp16"],
                        default=None, help="--compare-precision: fp32 first (default: fp32 "
                        "bf16, plus fp16 on CUDA)")  # fmt: skip
    parser.add_argument("--models", nargs="+", choices=["toy", "R50"], default=["toy", "R50"])
    parser.add_argument("--batches", type=Int(1, 1024), nargs="+", default=[1, 4])
    parser.add_argument(
        "--r50-size",
        type=Int(32, 8192),
        nargs=2,
        default=None,
        metavar=("H", "W"),
        help="default 256 320 (--compare-plain), 480 640 (--compare-precision)",
    )
    parser.add_argument("--toy-size", type=Int(32, 8192), nargs=2, default=[128, 171],
                        metavar=("H", "W"))  # fmt: skip
    parser.add_argument("--no-train", dest="train", action="store_false",
                        help="--compare-plain: skip the training step")  # fmt: skip
    parser.add_argument("--compile", action="store_true",
                        help="--compare-plain: torch.compile the fast head (COMPILE key); "
                        "the first call, compilation included, is reported apart")  # fmt: skip
    parser.add_argument("--channels-last", choices=["on", "off"], default="off",
                        help="--compare-plain: backbone memory format, fast path")  # fmt: skip
    parser.add_argument("--size", type=Int(32, 8192), nargs=2, metavar=("H", "W"),
                        help="input size after resizing (default: INPUT.MIN_SIZE_TEST on a 4:3 "
                        "image, capped by MAX_SIZE_TEST)")  # fmt: skip
    parser.add_argument("--boxes", type=IntList(1, 100_000), nargs="+",
                        default=[100, 300, 500, 1000])  # fmt: skip
    parser.add_argument("--steps", type=IntList(1, 1000), nargs="+", default=[1, 4, 8])
    parser.add_argument("--repeats", type=Int(1, 10_000), default=3)
    parser.add_argument("--train-batch", type=Int(0, 1024, special={0: "skip"}), default=2,
                        help="0 skips the training step")  # fmt: skip
    parser.add_argument("--train-gts", type=Int(1, 10_000), default=7,
                        help="boxes per training image")  # fmt: skip
    parser.add_argument("--matcher-gts", type=Int(1, 10_000), nargs="*",
                        default=[5, 20, 50, 100])  # fmt: skip
    parser.add_argument("--quick", action="store_true",
                        help="boxes 100 500, steps 1 4, 1 repeat, train batch 1")  # fmt: skip
    parser.add_argument("--warmup", type=Int(0, 10_000), default=1,
                        help="untimed calls before timing")  # fmt: skip
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: process CPU time, robust when other jobs share the CPU; with --threads 1 it "
        "approximates the latency on one dedicated core (CUDA always uses wall time)",
    )
    parser.add_argument("--threads", type=Int(0, 1024, special={0: "torch default"}), default=0,
                        help="torch CPU threads (0: default)")  # fmt: skip
    parser.add_argument("--output", help="also write the table (.md) and raw numbers (.json)")
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    parser.add_argument("opts", nargs="*", help="config overrides KEY VALUE ...")
    return parser


def check_output(output: str | None, overwrite: bool) -> None:
    """``--output``: where the .md table and the .json numbers go, writable before any timing
    and not replacing an earlier result without ``--overwrite``."""
    if output:
        out = check_output_path(output, "--output", kind="file", suffixes=(".md", ".json", ""))
        refuse_to_replace([out.with_suffix(".md"), out.with_suffix(".json")], overwrite=overwrite)


def main(argv: list[str] | None = None) -> str:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argument_parser()
    args = parser.parse_args(argv)
    check_output(args.output, args.overwrite)
    if args.r50_size is None:
        args.r50_size = [480, 640] if args.compare_precision else [256, 320]
    if args.compare_precision:
        if "--boxes" not in argv:
            args.boxes = [100, 300, 500]
        if "--steps" not in argv:
            args.steps = [1, 4]
        if "--batches" not in argv:
            args.batches = [1]
        if args.precisions is None:
            cuda = any("cuda" in o for o in args.opts)
            args.precisions = ["fp32", "bf16", "fp16"] if cuda else ["fp32", "bf16"]
        if args.precisions[0] != "fp32":
            parser.error("--precisions: the first one is the baseline and must be fp32")
        return main_compare_precision(args)
    if args.compare_plain:
        if "--boxes" not in argv:
            args.boxes = [100, 300, 500]
        if "--steps" not in argv:
            args.steps = [1, 4]
        return main_compare(args, parser)
    if args.config is None:
        raise CLIError("--config is required (or use --compare-plain)")
    if args.quick:
        args.boxes, args.steps, args.repeats = [100, 500], [1, 4], 1
        args.train_batch = min(args.train_batch, 1)
    if args.threads:
        torch.set_num_threads(args.threads)
    global WARMUP, CLOCK
    WARMUP = args.warmup

    cfg = load_tool_config(
        args.config, ["MODEL.WEIGHTS", "", *args.opts], tool="tools/benchmark_detection.py",
        architectures=("DiffusionDet",),
    )  # fmt: skip
    check_box_memory(cfg, max(args.boxes))
    model = build_model(cfg)  # random weights: the work done does not depend on them
    device = torch.device(cfg.MODEL.DEVICE)
    if args.clock == "cpu" and device.type == "cpu":
        CLOCK = time.process_time
    else:
        args.clock = "wall"
    if args.size is None:
        args.size = list(resized_shape(480, 640, cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST))
    size = tuple(args.size)
    meta = {
        "config": args.config,
        "size": size,
        **device_meta(device),
        "repeats": args.repeats,
        "warmup": args.warmup,
        "clock": args.clock,
        "load_average": os.getloadavg()[0],  # other processes competing for the CPU
    }
    print(f"inference at {size[0]}x{size[1]} on {device} ({meta['threads']} threads)", flush=True)
    inference = bench_inference(
        model, size=size, boxes=args.boxes, steps=args.steps, repeats=args.repeats, device=device
    )
    train = None
    if args.train_batch > 0:
        print("training step", flush=True)
        train = bench_train_step(
            model,
            size=size,
            batch_size=args.train_batch,
            num_gts=args.train_gts,
            repeats=args.repeats,
            device=device,
        )
    matcher = bench_matcher(
        model, size=size, num_gts_list=args.matcher_gts, repeats=max(args.repeats, 5), device=device
    )
    table = report(meta, inference, train, matcher)
    raw = {"meta": meta, "inference": inference, "train": train, "matcher": matcher}
    publish(table, raw, args.output)
    return table


if __name__ == "__main__":
    sys.exit(run_main(main))
