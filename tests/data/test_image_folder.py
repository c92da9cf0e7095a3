"""Image folders (recursive, mixed formats) and CIFAR-10 from torchvision's on-disk layout."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from diffvision.data.cifar import Cifar10Dataset
from diffvision.data.image_folder import ImageFolderDataset, list_images


def _write(path, size, color, fmt):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=fmt)


def test_recursive_folder_with_labels_and_range(tmp_path):
    _write(tmp_path / "cats" / "a.png", (40, 20), (255, 0, 0), "PNG")
    _write(tmp_path / "cats" / "deep" / "er" / "b.JPG", (20, 20), (0, 255, 0), "JPEG")
    _write(tmp_path / "dogs" / "c.bmp", (64, 64), (0, 0, 255), "BMP")
    (tmp_path / "notes.txt").write_text("not an image")
    assert len(list_images(tmp_path)) == 3
    ds = ImageFolderDataset(tmp_path, image_size=8, random_flip=False, class_from_dir=True)
    assert ds.classes == ["cats", "dogs"] and ds.labels == [0, 0, 1]
    img, label = ds[0]
    assert img.shape == (3, 8, 8) and label == 0
    torch.testing.assert_close(img[:, 4, 4], torch.tensor([1.0, -1.0, -1.0]))
    assert float(ds[2][0].min()) >= -1 and float(ds[2][0].max()) <= 1


def test_missing_or_empty_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolderDataset(tmp_path / "nope", image_size=8)
    with pytest.raises(FileNotFoundError, match="no images"):
        ImageFolderDataset(tmp_path, image_size=8)


def test_cifar10_on_disk_layout(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": [1, 2, 3, 9]}, f)
    train = Cifar10Dataset(tmp_path, train=True, random_flip=False)
    test = Cifar10Dataset(tmp_path, train=False, random_flip=False)
    assert len(train) == 20 and len(test) == 4
    img, label = test[3]
    assert img.shape == (3, 32, 32) and label == 9
    with open(folder / "test_batch", "rb") as f:
        raw = pickle.load(f)[b"data"][3].reshape(3, 32, 32)
    torch.testing.assert_close(img, torch.from_numpy(raw).float() / 127.5 - 1)


def test_cifar10_missing_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py/data_batch_1"):
        Cifar10Dataset(tmp_path)
