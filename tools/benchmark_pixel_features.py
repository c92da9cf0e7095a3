#!/usr/bin/env python
"""Peak-RSS benchmark of few-shot pixel-feature training (Baranchuk et al. setting).

The reference keeps every pixel's 8448-d float32 feature in RAM: 2.06 GiB per 256x256 image,
~110 GB for 50 images (~210 GB peak with its reshape copy). Ours keeps only the low-resolution
decoder maps of the current image and a float16 store of ``--pixels-per-image`` labeled pixels
per image. This script measures the peak resident set size of that pipeline for
``--num-images`` training images of the real 256x256 guided-diffusion UNet (random weights:
the values do not change the memory) with the default steps (50, 150, 250) and blocks
(5, 6, 7, 8, 12):

1. extract the first of ``--measure-images`` images with the real UNet, which fixes D;
2. allocate the store for all ``--num-images`` images and fill the rows of the images not run
   through the UNet with copies of measured rows, so the full store is resident (CPU time is
   the only thing skipped: a 256x256 ADM forward takes tens of seconds on 2 CPU cores);
3. extract the remaining measured images with the real UNet, the store fully resident;
4. train the 10-MLP ensemble for ``--mlp-iters`` iterations over the full store;
5. predict one 256x256 image in pixel chunks (inference).

The peak of a real run over all 50 images equals the peak of step 3 onwards, since extraction
memory per image is constant. Prints the peak RSS (``ru_maxrss``) after each stage.

    python tools/benchmark_pixel_features.py --num-images 50 --measure-images 2
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from diffvision.diffusion.schedule import get_schedule  # noqa: E402
from diffvision.modeling.unet import UNet  # noqa: E402
from projects.segmentation.pixel_mlp.build import predict_image  # noqa: E402
from projects.segmentation.pixel_mlp.features import (  # noqa: E402
    DDPMFeatureExtractor,
    gather_pixel_features,
)
from projects.segmentation.pixel_mlp.model import PixelBatches, PixelMLPEnsemble  # noqa: E402

GUIDED_256 = dict(
    attention_resolutions="32,16,8",
    class_cond=False,
    diffusion_steps=1000,
    dropout=0.1,
    image_size=256,
    learn_sigma=True,
    noise_schedule="linear",
    num_channels=256,
    num_head_channels=64,
    num_res_blocks=2,
    resblock_updown=True,
    use_fp16=False,  # fp16 convolutions are a GPU feature; fp32 needs *more* memory
    use_scale_shift_norm=True,
)


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def current_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def report(stage: str, start: float) -> None:
    print(
        f"{stage:<48} peak RSS {peak_gib():6.2f} GiB   current {current_gib():6.2f} GiB   "
        f"t={time.time() - start:6.0f}s",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-images", type=int, default=50)
    parser.add_argument("--measure-images", type=int, default=2)
    parser.add_argument("--pixels-per-image", type=int, default=4096)
    parser.add_argument("--num-classes", type=int, default=30)
    parser.add_argument("--mlp-iters", type=int, default=200)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.time()
    report("start (python + torch)", start)

    torch.manual_seed(0)
    unet = UNet.from_guided_diffusion_flags(**GUIDED_256)
    n_params = sum(p.numel() for p in unet.parameters())
    extractor = DDPMFeatureExtractor(
        unet=unet, schedule=get_schedule("linear"), steps=(50, 150, 250), blocks=(5, 6, 7, 8, 12)
    )
    report(f"UNet built ({n_params / 1e6:.0f}M params, fp32)", start)

    size = (256, 256)
    k = args.pixels_per_image
    generator = torch.Generator().manual_seed(0)
    images = [torch.rand(3, *size, generator=generator) * 2 - 1 for _ in range(args.measure_images)]

    def extract(image: torch.Tensor) -> torch.Tensor:
        maps = extractor(image[None])
        flat = torch.randperm(size[0] * size[1], generator=generator)[:k]
        coords = torch.stack([flat // size[1], flat % size[1]], dim=1)
        return gather_pixel_features(maps, coords, size=size).half()

    t0 = time.time()
    first = extract(images[0])
    per_image_s = time.time() - t0
    dim = first.shape[1]
    report(f"image 1 extracted (D = {dim}, {per_image_s:.0f}s)", start)

    store = torch.empty((args.num_images * k, dim), dtype=torch.float16)
    labels = torch.randint(0, args.num_classes, (args.num_images * k,), generator=generator)
    store[:k] = first
    for i in range(args.measure_images, args.num_images):
        store[i * k : (i + 1) * k] = first  # touch every page: the store is fully resident
    gib = store.numel() * 2 / 2**30
    report(f"store allocated + filled ({args.num_images} x {k} px, {gib:.2f} GiB fp16)", start)
    for i in range(1, args.measure_images):
        t0 = time.time()
        store[i * k : (i + 1) * k] = extract(images[i])
        report(f"image {i + 1} extracted, full store resident ({time.time() - t0:.0f}s)", start)

    ensemble = PixelMLPEnsemble(in_features=dim, num_classes=args.num_classes, num_models=10)
    optimizer = torch.optim.Adam(ensemble.parameters(), lr=1e-3)
    batches = iter(PixelBatches(store, labels, num_models=10, batch_pixels=64))
    ensemble.train()
    for _ in range(args.mlp_iters):
        loss = ensemble(next(batches))["loss_ce"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    report(f"10 MLPs trained {args.mlp_iters} iterations (64 px each)", start)

    ensemble.eval()
    pred, unc = predict_image(extractor, ensemble, images[0], chunk_pixels=8192)
    report(f"one 256x256 image predicted ({tuple(pred.shape)})", start)

    ref = args.num_images * 8448 * size[0] * size[1] * 4 / 2**30
    print(
        f"\nRESULT: peak RSS {peak_gib():.2f} GiB for {args.num_images} images x 256x256, "
        f"steps 50/150/250, blocks 5/6/7/8/12 (D = {dim}), {k} px/image in float16 "
        f"(store {gib:.2f} GiB); reference all-pixel float32 features: {ref:.1f} GiB. "
        f"UNet forward (3 steps to block 12) {per_image_s:.0f}s per image on this CPU."
    )


if __name__ == "__main__":
    main()
