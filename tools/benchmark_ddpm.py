#!/usr/bin/env python
"""Benchmark the DDPM UNet on CPU: training throughput, sampling time per step, peak memory.

    python tools/benchmark_ddpm.py                      # two UNet sizes × 32² and 64², batch 8
    python tools/benchmark_ddpm.py --sizes 32 --models small --batch-size 16 --threads 2

Each configuration runs in its own subprocess so that its peak resident memory (``ru_maxrss``
minus the RSS after imports) is its own. Training = one forward/backward/AdamW step of
:class:`~diffvision.generation.model.DDPMModel` (ε-prediction, L_simple); sampling = one UNet
forward plus one DDIM step at the same batch size, under ``torch.no_grad``. Prints a Markdown
table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffvision.engine.cli import Int, ToolParser, check_allocation, run_main  # noqa: E402
from diffvision.errors import CLIError  # noqa: E402

# ----------------------------------------------------------------------------- configurations
MODELS = {
    # 6.1M parameters: a small UNet (1 res block per level).
    "small": dict(model_channels=64, channel_mult=(1, 2, 2, 2), num_res_blocks=1,
                  attention_resolutions=(16,), num_heads=1),
    # 35.7M parameters: Ho et al. 2020's CIFAR-10 UNet.
    "ddpm-cifar": dict(model_channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
                       attention_resolutions=(16,), num_heads=1, dropout=0.1),
}  # fmt: skip


def _rss_mib() -> float:
    """Current peak RSS of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_single(model_name: str, size: int, batch: int, iters: int, steps: int) -> dict:
    import torch

    from diffvision.diffusion import DDIMSampler, get_schedule
    from diffvision.generation.model import DDPMModel
    from diffvision.modeling.unet import UNet

    torch.manual_seed(0)
    base_rss = _rss_mib()
    unet = UNet(image_size=size, **MODELS[model_name])
    model = DDPMModel(unet=unet, schedule=get_schedule("linear", 1000))
    params = sum(p.numel() for p in unet.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    data = {"image": torch.rand(batch, 3, size, size) * 2 - 1, "label": torch.zeros(batch)}

    def train_step() -> None:
        loss = sum(model(data).values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    train_step()  # warm-up (allocator, oneDNN kernels)
    start = time.perf_counter()
    for _ in range(iters):
        train_step()
    train_s = (time.perf_counter() - start) / iters

    model.eval()
    sampler = DDIMSampler(model.schedule, num_steps=steps)
    x = torch.randn(batch, 3, size, size)
    with torch.no_grad():
        t0 = sampler.timesteps[0].expand(batch)
        unet(x, t0)  # warm-up
        start = time.perf_counter()
        for i in range(steps):
            t = sampler.timesteps[i].expand(batch)
            x, _ = sampler.step(unet(x, t), i, x)
        step_s = (time.perf_counter() - start) / steps
    return {
        "model": model_name,
        "params_M": params / 1e6,
        "size": size,
        "batch": batch,
        "train_img_s": batch / train_s,
        "train_s_it": train_s,
        "sample_ms_step": 1000 * step_s,
        "peak_mib": _rss_mib() - base_rss,
    }


SIZE_MULTIPLE = 8  # the UNets halve the resolution three times (channel_mult of length 4)


def argument_parser() -> ToolParser:
    p = ToolParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--sizes", nargs="+", type=Int(SIZE_MULTIPLE, 1024), default=[32, 64],
                   help=f"image sides, multiples of {SIZE_MULTIPLE}")  # fmt: skip
    p.add_argument("--batch-size", type=Int(1, 4096), default=8)
    p.add_argument("--iters", type=Int(1, 10_000), default=3, help="timed training iterations")
    p.add_argument("--steps", type=Int(1, 10_000), default=5, help="timed sampling steps")
    p.add_argument("--threads", type=Int(0, 1024, special={0: "torch default"}), default=0,
                   help="torch threads (0 = torch default)")  # fmt: skip
    p.add_argument("--single", nargs=2, metavar=("MODEL", "SIZE"), help=argparse.SUPPRESS)
    return p


def main(argv=None) -> int:
    args = argument_parser().parse_args(argv)
    bad = [s for s in args.sizes if s % SIZE_MULTIPLE]
    if bad:
        raise CLIError(f"--sizes {bad}: expected multiples of {SIZE_MULTIPLE}")
    activations = max(args.sizes) ** 2 * 3 * 4 * 2048  # float32, ~2048 live values per input
    check_allocation("--batch-size", args.batch_size * activations, "the training batch")

    if args.single:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        result = run_single(
            args.single[0], int(args.single[1]), args.batch_size, args.iters, args.steps
        )
        print(json.dumps(result))
        return 0

    import torch

    threads = args.threads or torch.get_num_threads()
    print(
        f"# CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {threads} threads, batch {args.batch_size}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print("| UNet | params | res | train img/s | train s/it | sample ms/step | peak MiB |")
    print("|---|---|---|---|---|---|---|")
    for model_name in args.models:
        for size in args.sizes:
            cmd = [
                sys.executable, __file__, "--single", model_name, str(size),
                "--batch-size", str(args.batch_size), "--iters", str(args.iters),
                "--steps", str(args.steps), "--threads", str(threads),
            ]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            print(
                f"| {r['model']} | {r['params_M']:.1f}M | {r['size']}² | {r['train_img_s']:.2f} "
                f"| {r['train_s_it']:.2f} | {r['sample_ms_step']:.0f} | {r['peak_mib']:.0f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
