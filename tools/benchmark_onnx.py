#!/usr/bin/env python
"""onnxruntime vs eager PyTorch latency of the whole DiffusionDet, side by side on the same inputs.

For every (boxes, steps) the model is exported (projects/detection/export.py), then the exported
graph and ``model.inference`` run alternately on the same image and the same draws, so load
swings hit both columns alike; the detections are checked to match before timing.

    python tools/benchmark_onnx.py --config projects/detection/diffdet_toy.yaml \
        --boxes 100 300 --steps 1 4 MODEL.WEIGHTS output/diffdet_toy/model_final.pth

Bad input ends with one line ``error: ...`` and exit status 2 (``--debug``: with the traceback).

Prints one markdown table (median latency per image, ratio = onnxruntime / eager). ``--int8
static dynamic`` also times int8 copies of each file (``tools/export.py --quantize int8``; for
timing, the static ranges are calibrated on the benchmark image itself), in the same rotation;
``--float16`` a float16 copy (onnxruntime's float16 converter, inputs and outputs kept float32,
the ops onnxruntime has no float16 kernel for kept float32 behind casts).
``--clock cpu``
(default) times the process's CPU seconds: with one thread that is the latency on a dedicated core
and is robust to other jobs on a shared machine.
"""

from __future__ import annotations

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
from diffvision.engine.cli import (  # noqa: E402
    Int,
    IntList,
    ToolParser,
    run_main,
)
from diffvision.engine.defaults import load_tool_config  # noqa: E402
from diffvision.engine.progress import Progress  # noqa: E402

TOOL = "tools/benchmark_onnx.py"


def argument_parser() -> ToolParser:
    parser = ToolParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", "--config-file", dest="config", required=True)
    parser.add_argument("--boxes", type=IntList(1, 100_000), nargs="+", default=[100, 300],
                        help="box counts, e.g. 100 300 or 100,300")  # fmt: skip
    parser.add_argument("--steps", type=IntList(1, 1000), nargs="+", default=[1, 4],
                        help="sampling steps, e.g. 1 4 or 1,4")  # fmt: skip
    parser.add_argument("--size", type=Int(1, 8192), nargs=2, default=None, metavar=("H", "W"),
                        help="image size (default: MIN_SIZE_TEST x 4/3 of it)")  # fmt: skip
    parser.add_argument("--repeats", type=Int(1, 10_000), default=10, help="timed runs of each")
    parser.add_argument("--threads", type=Int(1, 1024), default=1,
                        help="torch and onnxruntime threads")  # fmt: skip
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                        help="cpu: process CPU time (robust to other jobs)")  # fmt: skip
    parser.add_argument("--int8", nargs="*", choices=("static", "dynamic"), default=[],
                        help="also time int8 copies quantized this way")  # fmt: skip
    parser.add_argument("--float16", action="store_true",
                        help="also time a float16 copy of each file")  # fmt: skip
    parser.add_argument("opts", nargs="*", help="config overrides KEY VALUE ...")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = argument_parser().parse_args(argv)
    cfg = load_tool_config(args.config, args.opts, tool=TOOL, architectures=("DiffusionDet",))
    h, w = args.size or (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST * 4 // 3)
    from projects.detection.export import check_box_memory, export_onnx

    check_box_memory(cfg, max(args.boxes))

    import onnxruntime as ort

    from projects.detection.build import build_inference_model
    from projects.detection.export import quantize_onnx

    torch.set_num_threads(args.threads)
    model = build_inference_model(cfg)
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    print(f"config {args.config}, image {h}x{w}, {args.threads} thread(s), {args.clock} clock, "
          f"median of {args.repeats} alternating runs, torch {torch.__version__}, "
          f"onnxruntime {ort.__version__}")  # fmt: skip
    work = [n * s for n in args.boxes for s in args.steps]  # each cell's cost proxy
    progress = Progress(len(work), "exports and timings", stream=sys.stderr, sizes=work)
    copies = [f"int8 {m}" for m in args.int8] + ["float16"] * args.float16
    copy_cols = "".join(f" {name} ms | ratio |" for name in copies)
    print(f"| boxes | steps | eager ms | onnxruntime ms | ratio |{copy_cols} same labels: "
          "detections |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|" + "---:|---:|" * len(copies) + "---|")
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
                if args.float16:
                    files["float16"] = float16_copy(path, Path(tmp) / f"b{n}_s{s}_fp16.onnx")
                sessions = {
                    name: ort.InferenceSession(str(f), options, providers=["CPUExecutionProvider"])
                    for name, f in files.items()
                }
                ms, same = compare(model, sessions, feeds, kwargs, image, args.repeats, clock)
                cells = "".join(
                    f" {ms[name]:.1f} | {ms[name] / ms['eager']:.2f} |" for name in files
                )
                print(f"| {n} | {s} | {ms['eager']:.1f} |{cells} {same} |", flush=True)
                progress.update()
    return 0


def float16_copy(src: Path, dst: Path) -> Path:
    """``src`` with its float32 tensors in float16 (``onnxruntime.transformers.float16``): graph
    inputs and outputs stay float32, and the ops on the converter's default block list (those
    without float16 kernels in onnxruntime, e.g. RoiAlign, TopK, NonMaxSuppression) run in
    float32 behind casts."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx.save(convert_float_to_float16(onnx.load(str(src)), keep_io_types=True), str(dst))
    return dst


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
    sys.exit(run_main(main))
