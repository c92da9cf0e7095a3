"""COCO/LVIS json loading and the detection dataset catalog."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from PIL import Image

from diffvision.data.catalog import (
    get_detection_dataset,
    load_detection_dataset,
    register_coco_dataset,
)
from diffvision.data.coco import load_coco_json
from diffvision.data.image_io import read_image_rgb
from diffvision.errors import DataError


def write_json(path, data):
    path.write_text(json.dumps(data))
    return path


def coco_data():
    return {
        "images": [
            {"id": 7, "file_name": "a.png", "height": 20, "width": 30},
            {"id": 3, "file_name": "b.png", "height": 10, "width": 10},
        ],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 90, "bbox": [1, 2, 3, 4], "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 5, "bbox": [0, 0, 5, 5], "iscrowd": 1},
            {"id": 3, "image_id": 7, "category_id": 5, "bbox": [0, 0, 0, 5]},  # degenerate
        ],
        "categories": [{"id": 90, "name": "z"}, {"id": 5, "name": "a"}],
    }


def test_load_coco_json_layout_and_contiguous_ids(tmp_path, caplog):
    path = write_json(tmp_path / "ann.json", coco_data())
    with caplog.at_level(logging.WARNING):
        dicts, meta = load_coco_json(path, tmp_path)
    assert "skipped 1 annotations" in caplog.text
    assert meta.thing_classes == ["a", "z"]  # sorted by category id
    assert meta.thing_dataset_id_to_contiguous_id == {5: 0, 90: 1}
    assert [d["image_id"] for d in dicts] == [7, 3]
    first = dicts[0]
    assert first["file_name"] == str(tmp_path / "a.png")
    assert (first["height"], first["width"]) == (20, 30)
    assert first["annotations"] == [
        {"bbox": [1.0, 2.0, 4.0, 6.0], "category_id": 1, "iscrowd": 0},
        {"bbox": [0.0, 0.0, 5.0, 5.0], "category_id": 0, "iscrowd": 1},
    ]
    assert dicts[1]["annotations"] == []


def test_lvis_file_name_from_coco_url(tmp_path):
    data = {
        "images": [
            {
                "id": 1,
                "coco_url": "http://images.cocodataset.org/val2017/000000000139.jpg",
                "height": 5,
                "width": 5,
            }
        ],
        "annotations": [],
        "categories": [{"id": 1, "name": "x", "image_count": 9, "frequency": "r"}],
    }
    dicts, meta = load_coco_json(write_json(tmp_path / "lvis.json", data), tmp_path)
    assert dicts[0]["file_name"] == str(tmp_path / "val2017" / "000000000139.jpg")
    assert meta.class_image_count == [9] and meta.class_frequency == ["r"]


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="annotation file not found.*missing.json"):
        load_coco_json(tmp_path / "missing.json", tmp_path)
    path = write_json(tmp_path / "ann.json", coco_data())
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        load_coco_json(path, tmp_path / "nope")
    empty = write_json(tmp_path / "empty.json", {"images": [], "annotations": [], "categories": []})
    with pytest.raises(ValueError, match="no images or no categories"):
        load_coco_json(empty, tmp_path)


def test_builtin_names_follow_env_and_name_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFVISION_DATASETS", str(tmp_path))
    info = get_detection_dataset("coco_2017_val")
    assert info.json_file == tmp_path / "coco/annotations/instances_val2017.json"
    assert info.image_root == tmp_path / "coco/val2017"
    lvis = get_detection_dataset("lvis_v1_train")
    assert lvis.json_file == tmp_path / "lvis/lvis_v1_train.json" and lvis.evaluator_type == "lvis"
    with pytest.raises(FileNotFoundError, match="DIFFVISION_DATASETS"):
        load_detection_dataset("coco_2017_val")


def test_unknown_name_suggests_close_matches():
    with pytest.raises(KeyError, match="coco_2017_val"):
        get_detection_dataset("coco_2017_vall")


def test_register_custom_dataset(tmp_path):
    path = write_json(tmp_path / "ann.json", coco_data())
    register_coco_dataset("custom_test_ds", json_file=path, image_root=tmp_path)
    register_coco_dataset("custom_test_ds", json_file=path, image_root=tmp_path)  # no-op
    dicts, meta = load_detection_dataset("custom_test_ds")
    assert len(dicts) == 2 and get_detection_dataset("custom_test_ds").evaluator_type == "coco"
    with pytest.raises(ValueError, match="already registered"):
        register_coco_dataset("custom_test_ds", json_file=path, image_root=tmp_path / "x")
    with pytest.raises(ValueError, match="already registered"):
        register_coco_dataset("coco_2017_val", json_file=path, image_root=tmp_path)


def test_read_image_rgb_exif_and_corrupt(tmp_path):
    pixels = np.zeros((4, 6, 3), dtype=np.uint8)
    pixels[0, 0] = [255, 0, 0]
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 clockwise when displayed
    image.save(tmp_path / "rot.jpg", exif=exif, quality=100)
    out = read_image_rgb(tmp_path / "rot.jpg")
    assert out.shape == (6, 4, 3) and out.dtype == np.uint8
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(DataError, match="bad.jpg"):
        read_image_rgb(tmp_path / "bad.jpg")
    with pytest.raises(FileNotFoundError, match="gone.png"):
        read_image_rgb(tmp_path / "gone.png")
