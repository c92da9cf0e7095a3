"""Training data of the DDPM task: dataset names → datasets, and the infinite train loader.

Dataset names (``DATASETS.TRAIN``), resolved under :func:`~diffvision.data.paths.datasets_root`:

====================  ==============================================================================
``toy_shapes``        generated 32×32 coloured shapes (``<root>/toy_shapes``, created when missing)
``cifar10_train``     CIFAR-10 training split (50k), torchvision layout under ``<root>/cifar10`` or
``cifar10_test``      ``<root>`` (``cifar-10-batches-py/``); nothing is downloaded
``image_folder:PATH`` every image below PATH (absolute, or relative to ``<root>``), any depth
====================  ==============================================================================
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import ConcatDataset, Dataset

from diffvision.data.cifar import Cifar10Dataset
from diffvision.data.image_folder import ImageFolderDataset
from diffvision.data.paths import datasets_root
from diffvision.data.samplers import GlobalBatchLoader
from diffvision.data.toy_shapes import ToyShapesDataset
from diffvision.errors import ConfigError, InputFileNotFoundError

__all__ = [
    "DDPM_DATASETS",
    "build_ddpm_dataset",
    "build_ddpm_train_loader",
    "collate_ddpm",
    "dataset_num_classes",
]

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
