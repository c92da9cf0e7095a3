from __future__ import annotations

import numpy as np
from PIL import Image

from diffvision.data.seg_folder import load_seg_folder, read_classes_json
from diffvision.data.toy_scenes import TOY_SCENE_CLASSES, ensure_toy_scenes


def test_generated_once_deterministic_and_in_folder_format(tmp_path):
    folder = ensure_toy_scenes("val", root=tmp_path, num_images=4, image_size=32)
    records = load_seg_folder(folder, require_masks=True)
    assert len(records) == 4
    assert read_classes_json(folder / "classes.json")["classes"] == list(TOY_SCENE_CLASSES)
    masks = [np.asarray(Image.open(r["sem_seg_file_name"])) for r in records]
    image = np.asarray(Image.open(records[0]["file_name"]))
    assert image.shape == (32, 32, 3) and masks[0].shape == (32, 32)
    assert np.concatenate([m.ravel() for m in masks]).max() < len(TOY_SCENE_CLASSES)
    assert len(np.unique(np.concatenate([m.ravel() for m in masks]))) >= 3  # several classes
    mtime = (folder / "images" / "00000.png").stat().st_mtime_ns
    assert ensure_toy_scenes("val", root=tmp_path, num_images=4, image_size=32) == folder
    assert (folder / "images" / "00000.png").stat().st_mtime_ns == mtime  # not regenerated
    again = ensure_toy_scenes("val", root=tmp_path / "other", num_images=4, image_size=32)
    assert (again / "masks" / "00003.png").read_bytes() == (
        folder / "masks" / "00003.png"
    ).read_bytes()
