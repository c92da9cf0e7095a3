from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from diffvision.data.seg_folder import (
    SemSegDataset,
    load_seg_folder,
    read_classes_json,
    write_classes_json,
)
from diffvision.data.seg_transforms import SegAugmentation, random_crop, resize
from diffvision.errors import DataError


def _make_folder(root, *, n=3, masked=2):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        Image.fromarray(np.full((6, 8, 3), 10 * i, np.uint8)).save(root / "images" / f"im{i}.png")
        if i < masked:
            mask = np.zeros((6, 8), np.uint8)
            mask[:, 4:] = 1
            mask[0, 0] = 255
            Image.fromarray(mask, mode="L").save(root / "masks" / f"im{i}.png")
    write_classes_json(root / "classes.json", classes=["bg", "fg"], palette=[[0, 0, 0], [1, 2, 3]])


def test_folder_records_and_items(tmp_path):
    _make_folder(tmp_path)
    records = load_seg_folder(tmp_path)
    assert [r["image_id"] for r in records] == ["im0", "im1", "im2"]
    assert records[2]["sem_seg_file_name"] is None  # unlabeled image kept for pretraining
    item = SemSegDataset(records)[0]
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 6, 8)
    assert item["sem_seg"].dtype == torch.int64
    assert item["sem_seg"][0, 0] == 255 and item["sem_seg"][1, 5] == 1
    assert "sem_seg" not in SemSegDataset(records)[2]
    meta = read_classes_json(tmp_path / "classes.json")
    assert meta["classes"] == ["bg", "fg"] and meta["ignore_label"] == 255
    with pytest.raises(FileNotFoundError, match="im2"):
        load_seg_folder(tmp_path, require_masks=True)


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="images"):
        load_seg_folder(tmp_path)
    (tmp_path / "classes.json").write_text('{"classes": []}')
    with pytest.raises(ValueError, match="classes"):
        read_classes_json(tmp_path / "classes.json")
    (tmp_path / "classes.json").write_text('{"classes": ["a", ')  # cut short
    with pytest.raises(DataError, match="classes.json is not valid JSON"):
        read_classes_json(tmp_path / "classes.json")
    (tmp_path / "classes.json").unlink()
    with pytest.raises(FileNotFoundError, match='names its classes there: {"classes"'):
        read_classes_json(tmp_path / "classes.json")


def test_transforms_keep_alignment_and_pad_with_ignore():
    image = torch.arange(3 * 4 * 6, dtype=torch.uint8).reshape(3, 4, 6)
    mask = torch.arange(4 * 6).reshape(4, 6) % 3
    img2, mask2 = resize(image, mask, size=(8, 12))
    assert img2.shape == (3, 8, 12) and set(mask2.unique().tolist()) <= {0, 1, 2}
    img3, mask3 = random_crop(image, mask, size=(6, 6), generator=torch.Generator().manual_seed(0))
    assert img3.shape == (3, 6, 6) and (mask3[4:] == 255).all() and (img3[:, 4:] == 0).all()
    aug = SegAugmentation(
        crop_size=(4, 4),
        scale_range=(0.5, 2.0),
        flip_prob=1.0,
        generator=torch.Generator().manual_seed(1),
    )
    img4, mask4 = aug(image, mask)
    assert img4.shape == (3, 4, 4) and mask4.shape == (4, 4)
    # A flip only: image and mask move together.
    flip = SegAugmentation(flip_prob=1.0)
    img5, mask5 = flip(image, mask)
    assert torch.equal(img5, image.flip(-1)) and torch.equal(mask5, mask.flip(-1))
    with pytest.raises(ValueError, match="scale_range"):
        SegAugmentation(scale_range=(2.0, 1.0))


def test_mask_labels_checked_against_num_classes_ignore_label_allowed(tmp_path):
    _make_folder(tmp_path)  # labels 0, 1 and the ignore label 255
    records = load_seg_folder(tmp_path)
    assert SemSegDataset(records, num_classes=2, ignore_label=255)[0]["sem_seg"].max() == 255
    with pytest.raises(DataError, match=r"im0.png holds labels \[1\] >= .*NUM_CLASSES 1"):
        SemSegDataset(records, num_classes=1, ignore_label=255)[0]
    with pytest.raises(DataError, match=r"holds labels \[255\]"):  # 255 is a label here
        SemSegDataset(records, num_classes=2, ignore_label=0)[0]


def test_unreadable_image_or_mask_names_the_file(tmp_path):
    _make_folder(tmp_path)
    (tmp_path / "masks" / "im1.png").write_bytes(b"not a png")
    records = load_seg_folder(tmp_path)
    with pytest.raises(DataError, match="cannot read mask .*im1.png"):
        SemSegDataset(records)[1]
