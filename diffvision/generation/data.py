"""Data of the DDPM task: dataset names → datasets, the infinite train loader, the sampling
requests that stand in for a test set (the evaluation "dataset" ``ddpm_samples``: a fixed-seed
grid of ``EVAL.NUM_GRID_SAMPLES`` images on the main process and ``EVAL.FID_NUM_SAMPLES`` images
shared by the ranks), and the evaluator that saves the grid
(``OUTPUT_DIR/ddpm_samples/grid_{k:03d}.png`` and ``grid_latest.png``) and computes FID/KID.

Dataset names (``DATASETS.TRAIN``), resolved under :func:`~diffvision.data.paths.datasets_root`:

====================  ==============================================================================
``toy_shapes``        generated 32×32 coloured shapes (``<root>/toy_shapes``, created when missing)
``cifar10_train``     CIFAR-10 training split (50k), torchvision layout under ``<root>/cifar10`` or
``cifar10_test``      ``<root>`` (``cifar-10-batches-py/``); nothing is downloaded
``image_folder:PATH`` every image below PATH (absolute, or relative to ``<root>``), any depth
====================  ==============================================================================
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from diffvision.config import CfgNode
from diffvision.data.cifar import Cifar10Dataset
from diffvision.data.image_folder import ImageFolderDataset
from diffvision.data.paths import datasets_root
from diffvision.data.samplers import GlobalBatchLoader
from diffvision.data.toy_shapes import ToyShapesDataset
from diffvision.engine.build import build_seed
from diffvision.errors import ConfigError, InputFileNotFoundError
from diffvision.evaluation.fid import (
    compute_features,
    fid_from_features,
    kernel_inception_distance,
    load_feature_extractor,
)
from diffvision.generation.images import save_grid
from diffvision.utils import comm
from diffvision.utils.seeding import Stream, derive_seed

__all__ = [
    "DDPM_DATASETS",
    "DDPMSampleEvaluator",
    "build_ddpm_dataset",
    "build_ddpm_train_loader",
    "build_evaluator",
    "build_test_loader",
    "build_train_loader",
    "collate_ddpm",
    "dataset_num_classes",
    "ddpm_sample_requests",
    "test_dataset_names",
]

logger = logging.getLogger(__name__)

EVAL_NAME = "ddpm_samples"

DDPM_DATASETS = ("toy_shapes", "cifar10_train", "cifar10_test", "image_folder:<path>")


def _cifar_root() -> Path:
    root = datasets_root()
    for candidate in (root / "cifar10", root):
        if (candidate / "cifar-10-batches-py").is_dir():
            return candidate
    raise InputFileNotFoundError(
        f"CIFAR-10 not found: expected {root / 'cifar10' / 'cifar-10-batches-py'} or "
        f"{root / 'cifar-10-batches-py'} (torchvision's layout; nothing is downloaded)"
    )


def build_ddpm_dataset(name: str, *, image_size: int, random_flip: bool = True) -> Dataset:
    """Build one named dataset of ``(image (3, S, S) in [-1, 1], label)`` pairs.

    Raises:
        ConfigError: for an unknown name (listing the known ones).
        InputFileNotFoundError: when the data is not on disk (except the generated toy set).
    """
    if name == "toy_shapes":
        return ToyShapesDataset(image_size=image_size, random_flip=random_flip)
    if name in ("cifar10_train", "cifar10_test"):
        if image_size != 32:
            raise ConfigError(f"CIFAR-10 images are 32×32; INPUT.IMAGE_SIZE is {image_size}")
        return Cifar10Dataset(_cifar_root(), train=name.endswith("train"), random_flip=random_flip)
    if name.startswith("image_folder:"):
        path = Path(name.split(":", 1)[1]).expanduser()
        if not path.is_absolute() and not path.is_dir():
            path = datasets_root() / path
        return ImageFolderDataset(path, image_size=image_size, random_flip=random_flip)
    hint = (
        f"; for a folder of images write image_folder:{name}"
        if Path(name).expanduser().is_dir()
        else ""
    )
    raise ConfigError(f"unknown DDPM dataset {name!r}; known: {list(DDPM_DATASETS)}{hint}")


def dataset_num_classes(dataset: Dataset) -> int:
    """Number of classes of a (concatenation of) DDPM dataset(s)."""
    if isinstance(dataset, ConcatDataset):
        return max(dataset_num_classes(d) for d in dataset.datasets)
    return int(getattr(dataset, "num_classes", 1))


def collate_ddpm(
    items: list[tuple[torch.Tensor, int]], seeds: list[int]
) -> dict[str, torch.Tensor]:
    """``{"image": (B, 3, S, S), "label": (B,), "seed": (B,) int64}``; ``seed[i]`` seeds every
    diffusion draw of sample i (its timestep, noise and label dropout)."""
    return {
        "image": torch.stack([image for image, _ in items]),
        "label": torch.as_tensor([int(label) for _, label in items]),
        "seed": torch.as_tensor(seeds, dtype=torch.int64),
    }


def build_ddpm_train_loader(
    names: Sequence[str],
    *,
    image_size: int,
    random_flip: bool,
    global_batch_size: int,
    seed: int,
    start_iter: int = 0,
    num_workers: int = 0,
) -> GlobalBatchLoader:
    """Infinite loader of this rank's part of every global batch (see
    :class:`~diffvision.data.samplers.GlobalBatchLoader`), from global batch ``start_iter`` on.

    Args:
        names: dataset names (concatenated).
        image_size: image side ``S``.
        random_flip: horizontal flips (drawn per sample from ``(seed, iteration, position)``).
        global_batch_size: images per iteration summed over ranks.
        seed: the run's SEED.
        start_iter: first global batch (the resumed iteration).
        num_workers: data-loading processes (the batches do not depend on it).
    """
    if not names:
        raise ConfigError("DATASETS.TRAIN is empty")
    datasets = [
        build_ddpm_dataset(n, image_size=image_size, random_flip=random_flip) for n in names
    ]
    dataset = datasets[0] if len(datasets) == 1 else ConcatDataset(datasets)
    return GlobalBatchLoader(
        dataset,
        seed=seed,
        global_batch_size=global_batch_size,
        start_iter=start_iter,
        collate=collate_ddpm,
        num_workers=num_workers,
    )


def build_train_loader(cfg: CfgNode, *, start_iter: int = 0):
    return build_ddpm_train_loader(
        list(cfg.DATASETS.TRAIN),
        image_size=cfg.INPUT.IMAGE_SIZE,
        random_flip=cfg.INPUT.RANDOM_FLIP == "horizontal",
        global_batch_size=cfg.SOLVER.IMS_PER_BATCH,
        seed=build_seed(cfg),
        start_iter=start_iter,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )


def ddpm_sample_requests(
    *, num_grid_samples: int, fid_num_samples: int, fid_batch_size: int, seed: int
) -> list[dict[str, Any]]:
    """This rank's sampling requests ``{"kind": "grid" | "fid", "num", "seed"}``.

    The grid is one request on the main process seeded by the ``EVAL_GRID`` stream of ``seed``
    (successive evaluations compare like with like); the FID batches are dealt round-robin over
    the ranks, batch b seeded by the ``EVAL_BATCH`` stream at ``b``, so the sample set does not
    depend on the process count.
    """
    requests = []
    if comm.is_main_process() and num_grid_samples > 0:
        requests.append(
            {"kind": "grid", "num": num_grid_samples, "seed": derive_seed(seed, Stream.EVAL_GRID)}
        )
    rank, world = comm.get_rank(), comm.get_world_size()
    starts = range(0, fid_num_samples, fid_batch_size)
    for b, lo in enumerate(starts):
        if b % world == rank:
            n = min(fid_batch_size, fid_num_samples - lo)
            requests.append(
                {"kind": "fid", "num": n, "seed": derive_seed(seed, Stream.EVAL_BATCH, b)}
            )
    return requests


def build_test_loader(cfg: CfgNode, dataset_name: str) -> list[dict[str, Any]]:
    e = cfg.MODEL.DDPM.EVAL
    return ddpm_sample_requests(
        num_grid_samples=e.NUM_GRID_SAMPLES,
        fid_num_samples=e.FID_NUM_SAMPLES,
        fid_batch_size=e.FID_BATCH_SIZE,
        seed=e.SEED,
    )


class DDPMSampleEvaluator:
    """Saves the sample grid and computes FID/KID of the sampled images (detectron2's evaluator
    shape). FID here uses :func:`~diffvision.evaluation.fid.load_feature_extractor`: not
    comparable with published FIDs unless the feature network is the TF-Inception one.

    Args:
        output_dir: run folder; grids go to ``output_dir/ddpm_samples``, cached reference
            features to ``output_dir/fid_reference_<hash>.npy``.
        fid_num_samples, fid_num_real, fid_batch_size, fid_feature_extractor: FID/KID against
            the first ``fid_num_real`` images of ``dataset_names`` (0 samples: off).
        dataset_names, image_size: the training data (for the FID reference).
        device: where the feature network runs.
    """

    def __init__(
        self,
        *,
        output_dir: Path,
        fid_num_samples: int = 0,
        fid_num_real: int = 5000,
        fid_batch_size: int = 50,
        fid_feature_extractor: Any = "fid_helper",
        dataset_names: tuple[str, ...] = (),
        image_size: int = 32,
        device: str = "cpu",
    ):
        self.output_dir = Path(output_dir)
        self.fid_num_samples = fid_num_samples
        self.fid_num_real = fid_num_real
        self.fid_batch_size = fid_batch_size
        self.fid_feature_extractor = fid_feature_extractor
        self.dataset_names = tuple(dataset_names)
        self.image_size = image_size
        self.device = device
        self._extractor = None
        self.reset()

    def reset(self) -> None:
        self._grid: torch.Tensor | None = None
        self._fid_features: list[np.ndarray] = []

    def _features(self, images: torch.Tensor) -> np.ndarray:
        if self._extractor is None:
            self._extractor = load_feature_extractor(self.fid_feature_extractor, device=self.device)
        return compute_features(self._extractor, [images], device=self.device)

    def process(self, inputs: dict[str, Any], outputs: torch.Tensor) -> None:
        if inputs["kind"] == "grid":
            self._grid = outputs.cpu()
        else:
            self._fid_features.append(self._features(outputs))

    def evaluate(self) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if self._grid is not None:
            folder = self.output_dir / EVAL_NAME
            k = len([p for p in folder.glob("grid_[0-9]*.png")]) if folder.is_dir() else 0
            path = save_grid(self._grid, folder / f"grid_{k:03d}.png")
            shutil.copyfile(path, folder / "grid_latest.png")
            metrics["ddpm/sample_mean"] = float(self._grid.mean())
            metrics["ddpm/sample_std"] = float(self._grid.std())
            logger.info("saved sample grid %s", path)
        if self.fid_num_samples > 0:
            mine = np.concatenate(self._fid_features) if self._fid_features else None
            gathered = [f for f in comm.all_gather(mine) if f is not None]
            if comm.is_main_process():
                fake = np.concatenate(gathered)[: self.fid_num_samples]
                real = self._reference_features()
                kid, _ = kernel_inception_distance(real, fake, subset_size=min(1000, len(fake)))
                metrics.update({"ddpm/fid": fid_from_features(real, fake), "ddpm/kid": kid})
        return metrics if comm.is_main_process() else {}

    def _reference_features(self) -> np.ndarray:
        key = (
            f"{sorted(self.dataset_names)}|{self.image_size}|{self.fid_num_real}|"
            f"{self.fid_feature_extractor}"
        )
        path = self.output_dir / f"fid_reference_{hashlib.sha1(key.encode()).hexdigest()[:12]}.npy"
        if path.is_file():
            return np.load(path)
        datasets = [
            build_ddpm_dataset(n, image_size=self.image_size, random_flip=False)
            for n in self.dataset_names
        ]
        data = datasets[0] if len(datasets) == 1 else ConcatDataset(datasets)
        subset = torch.utils.data.Subset(data, range(min(self.fid_num_real, len(data))))
        loader = DataLoader(subset, batch_size=self.fid_batch_size, shuffle=False)
        if self._extractor is None:
            self._extractor = load_feature_extractor(self.fid_feature_extractor, device=self.device)
        feats = compute_features(self._extractor, (x for x, _ in loader), device=self.device)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        np.save(path, feats)
        return feats


def build_evaluator(cfg: CfgNode, dataset_name: str) -> DDPMSampleEvaluator:
    e = cfg.MODEL.DDPM.EVAL
    return DDPMSampleEvaluator(
        output_dir=Path(cfg.OUTPUT_DIR),
        fid_num_samples=e.FID_NUM_SAMPLES,
        fid_num_real=e.FID_NUM_REAL,
        fid_batch_size=e.FID_BATCH_SIZE,
        fid_feature_extractor=e.FID_FEATURE_EXTRACTOR,
        dataset_names=tuple(cfg.DATASETS.TRAIN),
        image_size=cfg.INPUT.IMAGE_SIZE,
        device=str(cfg.MODEL.DEVICE),
    )


def test_dataset_names(cfg: CfgNode) -> list[str]:
    """``["ddpm_samples"]`` when the evaluation samples anything, else none."""
    e = cfg.MODEL.DDPM.EVAL
    return [EVAL_NAME] if e.NUM_GRID_SAMPLES > 0 or e.FID_NUM_SAMPLES > 0 else []
