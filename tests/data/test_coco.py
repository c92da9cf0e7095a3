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
from diffvision.errors import DataError, UnknownNameError


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
        dicts, meta = load_coco_json(path, tmp_path, check_images=False)  # json only
    assert "1 degenerate boxes dropped" in caplog.text
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
    dicts, meta = load_coco_json(
        write_json(tmp_path / "lvis.json", data), tmp_path, check_images=False
    )
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
    with pytest.raises(UnknownNameError, match="Did you mean: coco_2017_val"):
        get_detection_dataset("coco_2017_vall")


def test_register_custom_dataset(tmp_path):
    path = write_json(tmp_path / "ann.json", coco_data())
    _image(tmp_path / "a.png", 30, 20)
    _image(tmp_path / "b.png", 10, 10)
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


def _image(path, width, height):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((height, width, 3), dtype=np.uint8)).save(path)


def test_registration_checks_drop_fix_and_report(tmp_path, caplog):
    """Each problem is counted in one warning and the records come out clean."""
    _image(tmp_path / "a.png", 30, 20)
    _image(tmp_path / "b.png", 11, 10)  # json says 10x10
    (tmp_path / "c.png").write_bytes(b"not an image")
    data = {
        "images": [
            {"id": 1, "file_name": "a.png", "height": 20, "width": 30},
            {"id": 2, "file_name": "b.png", "height": 10, "width": 10},
            {"id": 3, "file_name": "c.png", "height": 10, "width": 10},
            {"id": 4, "file_name": "gone.png", "height": 10, "width": 10},
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "bbox": [2, 3, 4, 5]},  # kept as is
            {"id": 11, "image_id": 1, "category_id": 1, "bbox": [25, -5, 10, 10]},  # clipped
            {"id": 12, "image_id": 1, "category_id": 1, "bbox": [40, 0, 5, 5]},  # outside
            {"id": 13, "image_id": 1, "category_id": 1, "bbox": [1, 1, -2, 5]},  # degenerate
            {"id": 14, "image_id": 99, "category_id": 1, "bbox": [1, 1, 2, 2]},  # orphan
            {"id": 15, "image_id": 1, "category_id": 7, "bbox": [1, 1, 2, 2]},  # unknown class
        ],
        "categories": [{"id": 1, "name": "x"}],
    }
    with caplog.at_level(logging.WARNING):
        dicts, _ = load_coco_json(write_json(tmp_path / "d.json", data), tmp_path)
    assert [d["image_id"] for d in dicts] == [1]
    assert [a["bbox"] for a in dicts[0]["annotations"]] == [[2, 3, 6, 8], [25, 0, 30, 5]]
    text = caplog.text
    for expected in (
        "1 annotations of unknown images (e.g. 14 -> image 99)",
        "1 annotations of unknown categories (e.g. 15: 7)",
        "1 boxes clipped to their image (e.g. 11)",
        "1 boxes outside their image dropped",
        "1 degenerate boxes dropped",
        "1 images whose size disagrees with the json dropped (e.g. " + str(tmp_path / "b.png"),
        "1 unreadable images dropped (e.g. " + str(tmp_path / "c.png"),
        "1 missing images dropped (e.g. " + str(tmp_path / "gone.png"),
    ):
        assert expected in text, expected


@pytest.mark.parametrize(
    "images, message",
    [
        ([{"id": 1, "file_name": "a.png", "height": 0, "width": 5}], "expected positive"),
        ([{"file_name": "a.png", "height": 5, "width": 5}], "has no 'id'"),
        ([{"id": 1, "height": 5, "width": 5}], "neither 'file_name' nor 'coco_url'"),
    ],
)
def test_malformed_image_records_are_data_errors(tmp_path, images, message):
    data = {"images": images, "annotations": [], "categories": [{"id": 1, "name": "x"}]}
    with pytest.raises(DataError, match=message):
        load_coco_json(write_json(tmp_path / "bad.json", data), tmp_path, check_images=False)


def test_bad_bbox_and_bad_json_name_the_file(tmp_path):
    data = coco_data()
    data["annotations"][0]["bbox"] = [1, 2, 3]
    with pytest.raises(DataError, match=r"ann.json: annotation 1 has bbox \[1, 2, 3\]"):
        load_coco_json(write_json(tmp_path / "ann.json", data), tmp_path, check_images=False)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(DataError, match="broken.json is not valid json"):
        load_coco_json(tmp_path / "broken.json", tmp_path)


def test_custom_lvis_without_file_name_resolves_coco_url_under_the_root(tmp_path):
    """Real LVIS v1 jsons carry no file_name: detectron2 joins the last two parts of coco_url
    to the image root; a custom LVIS-format set registered by name gets the same rule."""
    from diffvision.data.catalog import load_detection_dataset, register_coco_dataset

    _image(tmp_path / "imgs" / "train2017" / "000000000009.jpg", 8, 6)
    data = {
        "images": [
            {
                "id": 9,
                "coco_url": "http://images.cocodataset.org/train2017/000000000009.jpg",
                "height": 6,
                "width": 8,
            }
        ],
        "annotations": [{"id": 1, "image_id": 9, "category_id": 3, "bbox": [1, 1, 2, 2]}],
        "categories": [{"id": 3, "name": "cat", "image_count": 1, "frequency": "r"}],
    }
    json_file = write_json(tmp_path / "my_lvis.json", data)
    register_coco_dataset(
        "my_lvis_hardening_test", json_file=json_file, image_root=tmp_path / "imgs"
    )
    dicts, meta = load_detection_dataset("my_lvis_hardening_test")
    assert dicts[0]["file_name"] == str(tmp_path / "imgs" / "train2017" / "000000000009.jpg")
    assert len(dicts[0]["annotations"]) == 1 and meta.class_frequency == ["r"]
