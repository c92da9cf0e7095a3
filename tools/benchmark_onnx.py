#!/usr/bin/env python
"""onnxruntime vs eager PyTorch latency of the whole DiffusionDet, side by side on the same inputs.

For every (boxes, steps) the model is exported (projects/detection/export.py), then the exported
graph and ``model.inference`` run alternately on the same image and the same draws, so load
swings hit both columns alike; the detections are checked to match before timing.

    python tools/benchmark_onnx.py --config projects/detection/diffdet_toy.yaml \
        --boxes 100 300 --steps 1 4 MODEL.WEIGHTS output/diffdet_toy/model_final.pth

Prints one markdown table (median latency per image, ratio = onnxruntime / eager). ``--int8
static dynamic`` also times int8 copies of each file (``tools/export.py --quantize int8``; for
timing, the static ranges are calibrated on the benchmark image itself), in the same rotation.
``--clock cpu``
(default) times the process's CPU seconds: with one thread that is the latency on a dedicated core
and is robust to other jobs on a shared machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # reach projects/

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torchvision.ops import box_iou  # noqa: E402

import projects  # noqa: E402,F401  (registers every task and its config keys)
from diffvision.engine.defaults import load_config  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", "--config-file", dest="config", required=True)
    parser.add_argument("--boxes", type=int, nargs="+", default=[100, 300])
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="image size (default: MIN_SIZE_TEST x 4/3 of it)")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=10, help="timed runs of each")
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                        help="cpu: process CPU time (robust to other jobs)")  # fmt: skip
    parser.add_argument("--int8", nargs="*", choices=("static", "dynamic"), default=[],
                        help="also time int8 copies quantized this way")  # fmt: skip
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    import onnxruntime as ort

    from projects.detection.build import build_inference_model
    from projects.detection.export import export_onnx, quantize_onnx

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.opts)
    model = build_inference_model(cfg)
    h, w = args.size or (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST * 4 // 3)
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    print(f"config {args.config}, image {h}x{w}, {args.threads} thread(s), {args.clock} clock, "
          f"median of {args.repeats} alternating runs, torch {torch.__version__}, "
          f"onnxruntime {ort.__version__}")  # fmt: skip
    int8_cols = "".join(f" int8 {m} ms | ratio |" for m in args.int8)
    print(f"| boxes | steps | eager ms | onnxruntime ms | ratio |{int8_cols} same labels: "
          "detections |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|" + "---:|---:|" * len(args.int8) + "---|")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.boxes:
            for s in args.steps:
                path = export_onnx(model, Path(tmp) / f"b{n}_s{s}.onnx", num_boxes=n, steps=s,
                                   image_hw=(h, w))  # fmt: skip
                feeds, kwargs = draws_for(model, image, n, s, g)
                files = {"onnx": path}
                for method in args.int8:
                    files[f"int8 {method}"] = quantize_onnx(
                        path, Path(tmp) / f"b{n}_s{s}_{method}.onnx", method=method,
                        calibration=[feeds],
                    )  # fmt: skip
                sessions = {
                    name: ort.InferenceSession(str(f), options, providers=["CPUExecutionProvider"])
                    for name, f in files.items()
                }
                ms, same = compare(model, sessions, feeds, kwargs, image, args.repeats, clock)
                cells = "".join(
                    f" {ms[name]:.1f} | {ms[name] / ms['eager']:.2f} |" for name in files
                )
                print(f"| {n} | {s} | {ms['eager']:.1f} |{cells} {same} |", flush=True)


def draws_for(model, image, n, s, g) -> tuple[dict, dict]:
    """Graph feeds and the matching ``model.inference`` keyword arguments (same draws)."""
    from projects.detection.export import graph_input_names

    names = graph_input_names(model, s)
    draws = {k: torch.randn(s - 1, n, 4, generator=g) for k in names[2:]}
    init = torch.randn(n, 4, generator=g)
    feeds = {"image": image.numpy(), "init_boxes": init.numpy()}
    feeds.update({k: v.numpy() for k, v in draws.items()})
    kwargs = dict(num_boxes=n, steps=s, init_boxes=init[None])
    if s > 1:
        kwargs.update(step_noise=draws["step_noise"][None],
                      renewal_boxes=draws["renewal_boxes"][None])  # fmt: skip
    return feeds, kwargs


def compare(model, sessions, feeds, kwargs, image, repeats, clock) -> tuple[dict, str]:
    """Median ms of eager and of each onnxruntime session (in rotation), and how close the
    first session's (the float32 file's) detections are to eager."""

    def eager():
        with torch.no_grad():
            return model.inference([{"image": image}], **kwargs)[0]

    def runner(session):
        return lambda: session.run(["boxes", "scores", "labels"], feeds)

    fns = {"eager": eager, **{name: runner(sess) for name, sess in sessions.items()}}
    e, o = eager(), fns["onnx"]()  # warm-up, and the equality check
    for name, fn in fns.items():
        if name not in ("eager", "onnx"):
            fn()  # warm-up
    same = "NO (labels differ)"
    if sorted(o[2].tolist()) == sorted(e["labels"].tolist()):
        # match each onnxruntime detection to the eager one of the same label with the highest
        # IoU: near-tied scores may swap ranks between the two runtimes
        iou = box_iou(torch.from_numpy(o[0]), e["boxes"])
        iou = iou * torch.from_numpy(o[2][:, None] == e["labels"].numpy()[None])
        best = iou.max(dim=1)
        d_score = np.abs(o[1] - e["scores"].numpy()[best.indices.numpy()]).max(initial=0.0)
        min_iou = float(best.values.min()) if len(o[2]) else 1.0
        same = f"{len(o[2])} dets, max Δscore {d_score:.1e}, min IoU {min_iou:.6f}"
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = clock()
            fn()
            times[name].append(clock() - start)
    return {name: statistics.median(v) * 1e3 for name, v in times.items()}, same


if __name__ == "__main__":
    main()
