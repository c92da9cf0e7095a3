from __future__ import annotations

import numpy as np
import pytest
from cityscapesscripts.helpers.labels import labels as cs_labels
from PIL import Image

from diffvision.data.cityscapes import (
    CITYSCAPES_CLASSES,
    cityscapes_label_to_train_id_lut,
    get_cityscapes_sem_seg_records,
    load_cityscapes_semantic,
)
from diffvision.data.seg_folder import SemSegDataset


def _make_fake_cityscapes(root, *, with_train_ids: bool):
    """One train image in aachen/: its labelIds hold every official id 0..33 plus -1-free pixels."""
    image_dir = root / "cityscapes" / "leftImg8bit" / "train" / "aachen"
    gt_dir = root / "cityscapes" / "gtFine" / "train" / "aachen"
    image_dir.mkdir(parents=True)
    gt_dir.mkdir(parents=True)
    stem = "aachen_000000_000019"
    Image.fromarray(np.zeros((4, 10, 3), np.uint8)).save(image_dir / f"{stem}_leftImg8bit.png")
    ids = np.arange(40, dtype=np.uint8).reshape(4, 10)  # 34..39 are not official ids
    Image.fromarray(ids, mode="L").save(gt_dir / f"{stem}_gtFine_labelIds.png")
    if with_train_ids:
        Image.fromarray(np.full((4, 10), 7, np.uint8), mode="L").save(
            gt_dir / f"{stem}_gtFine_labelTrainIds.png"
        )
    return ids


def test_lut_matches_official_table():
    lut = cityscapes_label_to_train_id_lut()
    assert lut.shape == (256,)
    for lab in cs_labels:
        if lab.id < 0:
            continue
        expected = lab.trainId if lab.trainId not in (255, -1) else 255
        assert lut[lab.id] == expected, lab.name
    # A few hand-checked entries of cityscapesscripts' ``helpers/labels.py``.
    assert (lut[7], lut[26], lut[33], lut[0], lut[6], lut[34]) == (0, 13, 18, 255, 255, 255)
    assert len(CITYSCAPES_CLASSES) == 19
    assert CITYSCAPES_CLASSES[0] == "road" and CITYSCAPES_CLASSES[18] == "bicycle"


def test_label_ids_converted_on_the_fly(tmp_path):
    ids = _make_fake_cityscapes(tmp_path, with_train_ids=False)
    records = get_cityscapes_sem_seg_records("cityscapes_fine_sem_seg_train", root=tmp_path)
    assert len(records) == 1 and records[0]["label_lut"] is not None
    item = SemSegDataset(records)[0]
    expected = cityscapes_label_to_train_id_lut()[ids]
    np.testing.assert_array_equal(item["sem_seg"].numpy(), expected)
    assert set(np.unique(expected)) == set(range(19)) | {255}


def test_label_train_ids_preferred(tmp_path):
    _make_fake_cityscapes(tmp_path, with_train_ids=True)
    records = get_cityscapes_sem_seg_records("cityscapes_fine_sem_seg_train", root=tmp_path)
    assert records[0]["label_lut"] is None
    assert records[0]["sem_seg_file_name"].endswith("_gtFine_labelTrainIds.png")
    assert (SemSegDataset(records)[0]["sem_seg"] == 7).all()


def test_missing_folder_names_env_var(tmp_path):
    with pytest.raises(FileNotFoundError, match="DIFFVISION_DATASETS"):
        load_cityscapes_semantic(tmp_path / "nope", tmp_path / "nope2")
    with pytest.raises(ValueError, match="unknown Cityscapes split"):
        get_cityscapes_sem_seg_records("cityscapes_fine_sem_seg_trian", root=tmp_path)
