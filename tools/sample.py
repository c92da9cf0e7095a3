#!/usr/bin/env python
"""Sample images from a DDPM checkpoint of ``tools/train_net.py`` (EMA weights when present).

    python tools/sample.py --checkpoint output/ddpm_toy_instant/model_final.pth \
        --sampler dpm_solver++ --steps 20 --num-samples 64 --seed 0 --output output/samples
    # SDEdit from a guide image, ILVR from a reference image:
    python tools/sample.py --checkpoint ... --init-image guide.png --strength 0.5
    python tools/sample.py --checkpoint ... --ilvr-reference ref.png --ilvr-factor 4

Writes ``<output>/samples.png`` (a grid) and ``<output>/samples.npz`` (``arr_0``: (N, H, W, 3)
uint8, ``arr_1``: labels for class-conditional models), guided-diffusion's layout.

Samples are drawn ``--batch-size`` at a time with progress and an estimate of the remaining time
after every batch; Ctrl-C writes the samples finished so far. Bad input ends with one line
``error: ...`` and exit status 2 (``--debug``: with the traceback).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from diffvision.data.image_folder import load_image, to_tensor  # noqa: E402
from diffvision.diffusion.timesteps import make_timesteps  # noqa: E402
from diffvision.engine.cli import (  # noqa: E402
    Device,
    Float,
    Int,
    Seed,
    ToolParser,
    check_allocation,
    run_main,
)
from diffvision.engine.outputs import (  # noqa: E402
    OVERWRITE_HELP,
    check_output_path,
    refuse_to_replace,
)
from diffvision.engine.progress import Progress  # noqa: E402
from diffvision.errors import CLIError, InputFileNotFoundError  # noqa: E402
from diffvision.generation.checkpoint import load_ddpm_model  # noqa: E402
from diffvision.generation.images import save_grid, save_npz  # noqa: E402
from diffvision.generation.sampling import (  # noqa: E402
    DEFAULT_SPACING,
    SAMPLER_NAMES,
    generate,
)

MAX_STEPS = 100_000
ACTIVATIONS_PER_PIXEL = 256  # a rough upper bound of the UNet's live activations per input value


def argument_parser() -> ToolParser:
    p = ToolParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="engine checkpoint (model_final.pth)")
    p.add_argument("--output", default="output/samples", help="output folder")
    p.add_argument("--sampler", default="ddim", choices=SAMPLER_NAMES)
    p.add_argument(
        "--steps",
        type=Int(1, MAX_STEPS),
        default=50,
        help="sampling steps (model evaluations; at most the model's timesteps)",
    )
    p.add_argument("--eta", type=Float(0, 1), default=0.0, help="DDIM eta in [0, 1]")
    p.add_argument("--order", type=int, default=2, choices=(1, 2, 3), help="DPM-Solver++ order")
    p.add_argument(
        "--variance", default=None, choices=["learned", "fixed_small", "fixed_large"],
        help="DDPM step variance (default: learned if the model learned it, else fixed_small)",
    )  # fmt: skip
    p.add_argument("--num-samples", type=Int(1, 10**9), default=64)
    p.add_argument("--batch-size", type=Int(1, 10**6), default=64)
    p.add_argument("--seed", type=Seed(), default=0)
    p.add_argument("--guidance-scale", type=Float(), default=1.0,
                   help="classifier-free guidance")  # fmt: skip
    p.add_argument("--labels", type=Int(0), nargs="*", help="class labels (cycled to num-samples)")
    p.add_argument("--no-ema", action="store_true", help="use the raw instead of the EMA weights")
    p.add_argument("--no-clip", action="store_true", help="do not clamp x0 predictions to [-1, 1]")
    p.add_argument("--init-image", help="SDEdit guide image")
    p.add_argument("--strength", type=Float(0, 1, lo_open=True), default=0.5,
                   help="SDEdit t0 / T in (0, 1]")  # fmt: skip
    p.add_argument("--ilvr-reference", help="ILVR reference image")
    p.add_argument("--ilvr-factor", type=Int(1, 1024), default=4,
                   help="ILVR down-sampling factor N (must divide the image size)")  # fmt: skip
    p.add_argument(
        "--device", type=Device(), default="cuda" if torch.cuda.is_available() else "cpu"
    )
    p.add_argument(
        "--upscale", type=Int(1, 64), default=1, help="nearest upscaling of the PNG grid"
    )
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    return p


def check_args(args: argparse.Namespace) -> None:
    """Checks of the files named on the command line, before the model is loaded.

    Raises:
        CLIError: ``--output`` cannot be written or holds samples (without ``--overwrite``).
        InputFileNotFoundError: a guide / reference image does not exist.
    """
    out = check_output_path(args.output, "--output", kind="folder")
    refuse_to_replace([out / "samples.png", out / "samples.npz"], overwrite=args.overwrite)
    for flag, path in (
        ("--init-image", args.init_image),
        ("--ilvr-reference", args.ilvr_reference),
    ):
        if path is not None and not Path(path).is_file():
            what = "is a folder" if Path(path).is_dir() else "does not exist"
            raise InputFileNotFoundError(f"{flag} {path}: {what}, expected an image file")


def check_model_args(args: argparse.Namespace, model) -> None:
    """Checks against the loaded UNet (steps, ILVR factor, labels, learned variance, memory).

    Raises:
        CLIError: a flag the model cannot honour, or counts whose images do not fit in memory.
    """
    unet = model.unet
    if args.steps > model.num_timesteps:
        raise CLIError(
            f"--steps {args.steps}: the model has {model.num_timesteps} diffusion timesteps; "
            "sample with at most that many steps"
        )
    size = unet.image_size
    if args.ilvr_reference is not None and size % args.ilvr_factor:
        raise CLIError(
            f"--ilvr-factor {args.ilvr_factor} must divide the model's image size {size}"
        )
    pixels = unet.in_channels * size * size
    check_allocation(
        "--num-samples", args.num_samples * pixels * 4, f"{args.num_samples} float32 samples "
        f"of {unet.in_channels}x{size}x{size}",
    )  # fmt: skip
    check_allocation(
        "--batch-size", args.batch_size * pixels * 4 * ACTIVATIONS_PER_PIXEL,
        f"a batch of {args.batch_size} through the UNet (about {ACTIVATIONS_PER_PIXEL} "
        "activations per input value)",
    )  # fmt: skip
    if args.variance == "learned" and not unet.learn_sigma:
        raise CLIError("--variance learned needs a model trained with a learned variance")
    if args.labels:
        if unet.num_classes is None:
            raise CLIError("--labels given, but the model is not class-conditional")
        bad = [y for y in args.labels if not 0 <= y < unet.num_classes]
        if bad:
            raise CLIError(f"--labels {bad} out of range: the model has {unet.num_classes} classes")


def evaluations_per_batch(args: argparse.Namespace, model, init_image) -> int:
    """UNet calls per batch: ``--steps``, fewer when SDEdit starts part-way (``--strength``)."""
    if init_image is None or args.strength >= 1.0:
        return args.steps
    grid = make_timesteps(model.num_timesteps, args.steps, DEFAULT_SPACING[args.sampler])
    return max(int((grid <= int(args.strength * model.num_timesteps) - 1).sum()), 1)


def main(argv=None) -> int:
    args = argument_parser().parse_args(argv)
    check_args(args)
    model, cfg = load_ddpm_model(args.checkpoint, use_ema=not args.no_ema, device=args.device)
    check_model_args(args, model)
    size = model.unet.image_size

    def read(path: str | None) -> torch.Tensor | None:
        return None if path is None else to_tensor(load_image(path, size))[None]

    init_image, ilvr_reference = read(args.init_image), read(args.ilvr_reference)
    labels = None
    if args.labels:
        labels = torch.tensor(args.labels).repeat(args.num_samples)[: args.num_samples]
    elif model.unet.num_classes is not None and not model.unet.null_class:
        labels = torch.arange(args.num_samples) % model.unet.num_classes
    strength = args.strength if init_image is not None else 1.0
    generator = torch.Generator().manual_seed(args.seed)  # one stream, batch after batch
    num_batches = -(-args.num_samples // args.batch_size)
    print(
        f"{args.num_samples} samples in {num_batches} batches of <= {args.batch_size}, "
        f"{args.steps} {args.sampler} steps each",
        flush=True,
    )
    # one UNet call per step and batch: progress within a batch, however long one batch takes
    progress = Progress(num_batches * evaluations_per_batch(args, model, init_image), "UNet calls")
    hook = model.unet.register_forward_hook(lambda *_: progress.update())
    chunks, done = [], 0
    start = time.perf_counter()
    try:
        for lo in range(0, args.num_samples, args.batch_size):
            n = min(args.batch_size, args.num_samples - lo)
            chunks.append(
                generate(
                    model, num_samples=n, sampler=args.sampler, num_steps=args.steps,
                    eta=args.eta, order=args.order, variance=args.variance,
                    guidance_scale=args.guidance_scale,
                    labels=None if labels is None else labels[lo : lo + n],
                    clip_denoised=not args.no_clip, generator=generator, batch_size=n,
                    init_image=init_image, strength=strength,
                    ilvr_reference=ilvr_reference, ilvr_factor=args.ilvr_factor,
                ).cpu()
            )  # fmt: skip
            done += n
            elapsed = time.perf_counter() - start
            left = elapsed / done * (args.num_samples - done)
            print(
                f"[{done}/{args.num_samples}] {elapsed:.1f}s elapsed, about {left:.0f}s left",
                flush=True,
            )
    except KeyboardInterrupt:
        if not chunks:
            raise
        print(f"interrupted: writing the {done} samples finished so far", flush=True)
    finally:
        hook.remove()
    elapsed = time.perf_counter() - start
    images = torch.cat(chunks)
    out = Path(args.output)
    grid = save_grid(images, out / "samples.png", upscale=args.upscale)
    npz = save_npz(images, out / "samples.npz", labels=None if labels is None else labels[:done])
    print(f"{done} samples ({args.sampler}, {args.steps} steps) in {elapsed:.1f}s")
    print(f"wrote {grid} and {npz}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
