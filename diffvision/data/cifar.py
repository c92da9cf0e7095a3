"""CIFAR-10 read from torchvision's on-disk layout, without downloading.

Expected files (what ``torchvision.datasets.CIFAR10(root, download=True)`` leaves behind, or the
extracted ``cifar-10-python.tar.gz`` from https://www.cs.toronto.edu/~kriz/cifar.html)::

    <root>/cifar-10-batches-py/data_batch_{1..5}, test_batch, batches.meta

Each batch is a pickle holding ``b"data"`` (N, 3072) uint8 in CHW order and ``b"labels"``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from diffvision.errors import InputFileNotFoundError
from diffvision.utils.safe_files import load_restricted_pickle

__all__ = ["CIFAR10_CLASSES", "Cifar10Dataset", "load_cifar10_arrays"]

logger = logging.getLogger(__name__)

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
_FOLDER = "cifar-10-batches-py"


def load_cifar10_arrays(root: str | Path, *, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """Read the CIFAR-10 split as arrays.

    Args:
        root: the folder that contains ``cifar-10-batches-py``.
        train: the 50k training batches, else the 10k ``test_batch``.

    Returns:
        ``images`` (N, 32, 32, 3) uint8 HWC RGB and ``labels`` (N,) int64.

    Raises:
        FileNotFoundError: naming the missing file and the expected layout.
    """
    folder = Path(root) / _FOLDER
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    images, labels = [], []
    for name in names:
        path = folder / name
        if not path.is_file():
            raise InputFileNotFoundError(
                f"CIFAR-10 file {path} is missing: expected torchvision's layout "
                f"<root>/{_FOLDER}/{{data_batch_1..5,test_batch}} (extract cifar-10-python.tar.gz "
                "there; nothing is downloaded)"
            )
        entry = load_restricted_pickle(path, what="CIFAR-10 file")  # plain data only
        data = entry[b"data"] if b"data" in entry else entry["data"]
        lab = entry.get(b"labels", entry.get("labels"))
        images.append(np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(lab, dtype=np.int64))
    return np.concatenate(images).transpose(0, 2, 3, 1), np.concatenate(labels)


class Cifar10Dataset(Dataset):
    """CIFAR-10 as ``(image (3, 32, 32) in [-1, 1], label int)`` pairs.

    Args:
        root: the folder containing ``cifar-10-batches-py``.
        train: training split (50 000 images) or test split (10 000).
        random_flip: horizontal flip with probability 0.5.
    """

    num_classes = len(CIFAR10_CLASSES)

    def __init__(self, root: str | Path, *, train: bool = True, random_flip: bool = True):
        images, labels = load_cifar10_arrays(root, train=train)
        self.images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # (N, 3, 32, 32)
        self.labels = labels.tolist()
        self.random_flip = random_flip
        logger.info("CIFAR-10 %s: %d images", "train" if train else "test", len(self.labels))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = self.images[index].float().div(127.5).sub(1.0)
        if self.random_flip and torch.rand(()) < 0.5:
            img = img.flip(-1)
        return img, self.labels[index]
