"""The ``DDPM`` task: an image diffusion model trained by the engine.

``MODEL.META_ARCHITECTURE: DDPM`` builds a :class:`~diffvision.generation.model.DDPMModel` from
``MODEL.DDPM`` (see :mod:`diffvision.generation.build`), the infinite train loader of
``DATASETS.TRAIN`` and an evaluator that, every ``TEST.EVAL_PERIOD`` iterations, samples a
fixed-seed grid (``OUTPUT_DIR/ddpm_samples/``) and optionally computes FID/KID. The engine hands
the EMA model to the evaluator when ``MODEL_EMA.ENABLED``.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader

from diffvision.config import CfgNode
from diffvision.engine import comm
from diffvision.engine.tasks import Task, register_task
from diffvision.errors import ConfigError
from diffvision.evaluation.fid import (
    compute_features,
    fid_from_features,
    kernel_inception_distance,
    load_feature_extractor,
)
from diffvision.generation.build import add_ddpm_config, build_ddpm_model
from diffvision.generation.checkpoint import load_model_weights
from diffvision.generation.data import (
    build_ddpm_dataset,
    build_ddpm_train_loader,
    dataset_num_classes,
)
from diffvision.generation.images import save_grid
from diffvision.generation.model import DDPMModel
from diffvision.generation.sampling import generate

__all__ = ["build_ddpm_task", "make_ddpm_evaluator"]

logger = logging.getLogger(__name__)


@register_task("DDPM", add_config=add_ddpm_config)
def build_ddpm_task(cfg: CfgNode) -> Task:
    """Build the DDPM task from ``cfg`` (the only function here that reads it)."""
    d = cfg.MODEL.DDPM
    image_size = cfg.INPUT.IMAGE_SIZE
    random_flip = cfg.INPUT.RANDOM_FLIP == "horizontal"
    names = list(cfg.DATASETS.TRAIN)
    num_classes = None
    if d.CLASS_COND:
        datasets = [build_ddpm_dataset(n, image_size=image_size) for n in names]
        num_classes = dataset_num_classes(
            datasets[0] if len(datasets) == 1 else ConcatDataset(datasets)
        )
    model = build_ddpm_model(cfg, num_classes=num_classes)
    if cfg.MODEL.WEIGHTS:
        load_model_weights(model, cfg.MODEL.WEIGHTS)
    model.to(cfg.MODEL.DEVICE)

    world = comm.get_world_size()
    if cfg.SOLVER.IMS_PER_BATCH % world:
        raise ConfigError(
            f"SOLVER.IMS_PER_BATCH {cfg.SOLVER.IMS_PER_BATCH} is not divisible by the world size "
            f"{world}"
        )

    def build_train_loader():
        return build_ddpm_train_loader(
            names,
            image_size=image_size,
            random_flip=random_flip,
            batch_size=cfg.SOLVER.IMS_PER_BATCH // world,
            num_workers=cfg.DATALOADER.NUM_WORKERS,
            seed=cfg.SEED if cfg.SEED >= 0 else None,
        )

    evaluate = make_ddpm_evaluator(
        output_dir=Path(cfg.OUTPUT_DIR),
        sampler_kwargs=dict(
            sampler=d.SAMPLER.NAME,
            num_steps=d.SAMPLER.NUM_STEPS,
            eta=d.SAMPLER.ETA,
            order=d.SAMPLER.ORDER,
            guidance_scale=d.SAMPLER.GUIDANCE_SCALE,
            clip_denoised=d.SAMPLER.CLIP_DENOISED,
        ),
        num_grid_samples=d.EVAL.NUM_GRID_SAMPLES,
        seed=d.EVAL.SEED,
        fid_num_samples=d.EVAL.FID_NUM_SAMPLES,
        fid_num_real=d.EVAL.FID_NUM_REAL,
        fid_batch_size=d.EVAL.FID_BATCH_SIZE,
        fid_feature_extractor=d.EVAL.FID_FEATURE_EXTRACTOR,
        dataset_names=names,
        image_size=image_size,
    )
    return Task(model=model, build_train_loader=build_train_loader, evaluate=evaluate)


def _grid_labels(model: DDPMModel, n: int) -> torch.Tensor | None:
    k = model.unet.num_classes
    return None if k is None else torch.arange(n) % k


def make_ddpm_evaluator(
    *,
    output_dir: Path,
    sampler_kwargs: dict[str, Any],
    num_grid_samples: int,
    seed: int,
    fid_num_samples: int = 0,
    fid_num_real: int = 5000,
    fid_batch_size: int = 50,
    fid_feature_extractor: Any = "fid_helper",
    dataset_names: Sequence[str] = (),
    image_size: int = 32,
) -> Callable[[DDPMModel], dict[str, float]]:
    """Build ``evaluate(model) -> metrics``.

    Every call samples ``num_grid_samples`` images from the same seed (so grids of successive
    evaluations are comparable) into ``output_dir/ddpm_samples/grid_{k:03d}.png`` (and
    ``grid_latest.png``), and reports their pixel mean/std. With ``fid_num_samples > 0``, the
    ranks share the sampling of that many images and the main process computes FID and KID
    against the first ``fid_num_real`` training images (features cached in ``output_dir``).
    FID here uses :func:`~diffvision.evaluation.fid.load_feature_extractor`: not comparable with
    published FIDs unless the feature network is the TF-Inception one.
    """
    calls = itertools.count()
    state: dict[str, Any] = {}

    def evaluate(model: DDPMModel) -> dict[str, float]:
        k = next(calls)
        metrics: dict[str, float] = {}
        if comm.is_main_process() and num_grid_samples > 0:
            g = torch.Generator().manual_seed(seed)
            images = generate(
                model,
                num_samples=num_grid_samples,
                labels=_grid_labels(model, num_grid_samples),
                generator=g,
                **sampler_kwargs,
            )
            folder = output_dir / "ddpm_samples"
            path = save_grid(images, folder / f"grid_{k:03d}.png")
            shutil.copyfile(path, folder / "grid_latest.png")
            metrics["ddpm/sample_mean"] = float(images.mean())
            metrics["ddpm/sample_std"] = float(images.std())
            logger.info("saved sample grid %s", path)
        if fid_num_samples > 0:
            metrics.update(_fid_kid(model, state))
        return metrics if comm.is_main_process() else {}

    def _fid_kid(model: DDPMModel, state: dict[str, Any]) -> dict[str, float]:
        device = model.device
        if "extractor" not in state:
            state["extractor"] = load_feature_extractor(fid_feature_extractor, device=device)
        extractor = state["extractor"]
        rank, world = comm.get_rank(), comm.get_world_size()
        share = math.ceil(fid_num_samples / world)
        g = torch.Generator().manual_seed(seed + 1 + rank)
        feats = []
        for lo in range(0, share, fid_batch_size):
            n = min(fid_batch_size, share - lo)
            labels = None
            if model.unet.num_classes is not None:
                labels = torch.randint(0, model.unet.num_classes, (n,), generator=g)
            images = generate(model, num_samples=n, labels=labels, generator=g, **sampler_kwargs)
            feats.append(compute_features(extractor, [images], device=device))
        gathered = comm.all_gather(np.concatenate(feats))
        if not comm.is_main_process():
            return {}
        fake = np.concatenate(gathered)[:fid_num_samples]
        real = _reference_features(extractor, device)
        kid_mean, _ = kernel_inception_distance(real, fake, subset_size=min(1000, len(fake)))
        return {"ddpm/fid": fid_from_features(real, fake), "ddpm/kid": kid_mean}

    def _reference_features(extractor, device) -> np.ndarray:
        key = f"{sorted(dataset_names)}|{image_size}|{fid_num_real}|{fid_feature_extractor}"
        digest = hashlib.sha1(key.encode()).hexdigest()[:12]
        path = output_dir / f"fid_reference_{digest}.npy"
        if path.is_file():
            return np.load(path)
        datasets = [
            build_ddpm_dataset(n, image_size=image_size, random_flip=False) for n in dataset_names
        ]
        data = datasets[0] if len(datasets) == 1 else ConcatDataset(datasets)
        subset = torch.utils.data.Subset(data, range(min(fid_num_real, len(data))))
        loader = DataLoader(subset, batch_size=fid_batch_size, shuffle=False)
        feats = compute_features(extractor, (images for images, _ in loader), device=device)
        output_dir.mkdir(parents=True, exist_ok=True)
        np.save(path, feats)
        return feats

    return evaluate
