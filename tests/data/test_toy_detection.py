"""The generated toy detection dataset."""

from __future__ import annotations

import json

from diffvision.data.catalog import get_detection_dataset, load_detection_dataset
from diffvision.data.toy_detection import TOY_CLASSES, ensure_toy_detection

SIZES = {"train": 6, "val": 4}


def test_layout_determinism_and_content(tmp_path):
    a = ensure_toy_detection(tmp_path / "a" / "toy_detection", seed=1, sizes=SIZES)
    b = ensure_toy_detection(tmp_path / "b" / "toy_detection", seed=1, sizes=SIZES)
    for split, n in SIZES.items():
        ja = json.loads((a / "annotations" / f"instances_{split}.json").read_text())
        jb = json.loads((b / "annotations" / f"instances_{split}.json").read_text())
        assert ja == jb
        assert len(ja["images"]) == n
        assert [c["name"] for c in ja["categories"]] == list(TOY_CLASSES)
        for image in ja["images"]:
            assert 128 <= image["width"] <= 192 and 128 <= image["height"] <= 192
            assert (a / split / image["file_name"]).read_bytes() == (
                b / split / image["file_name"]
            ).read_bytes()
        for ann in ja["annotations"]:
            x, y, w, h = ann["bbox"]
            image = ja["images"][ann["image_id"] - 1]
            assert 16 <= w <= 64 and 16 <= h <= 64
            assert x >= 0 and y >= 0 and x + w <= image["width"] and y + h <= image["height"]
    other = ensure_toy_detection(tmp_path / "c" / "toy_detection", seed=2, sizes=SIZES)
    assert (other / "annotations/instances_train.json").read_text() != (
        a / "annotations/instances_train.json"
    ).read_text()
    # no temporary folders left behind
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["toy_detection"]


def test_some_images_are_empty(tmp_path):
    root = ensure_toy_detection(tmp_path / "toy_detection", sizes={"train": 40})
    data = json.loads((root / "annotations/instances_train.json").read_text())
    with_objects = {a["image_id"] for a in data["annotations"]}
    assert 0 < len(data["images"]) - len(with_objects) < 20


def test_registered_names_generate_when_missing(tmp_path, monkeypatch):
    from diffvision.data import toy_detection

    monkeypatch.setattr(toy_detection, "_DEFAULT_SIZES", {"train": 4, "val": 3})  # fast
    monkeypatch.setenv("DIFFVISION_DATASETS", str(tmp_path))
    ensure_toy_detection(tmp_path / "toy_detection", sizes=SIZES)  # small pre-made copy
    info = get_detection_dataset("toy_detection_val")
    assert info.image_root == tmp_path / "toy_detection" / "val"
    dicts, meta = load_detection_dataset("toy_detection_train")
    assert len(dicts) == 6 and meta.thing_classes == list(TOY_CLASSES)
    monkeypatch.setenv("DIFFVISION_DATASETS", str(tmp_path / "fresh"))
    info = get_detection_dataset("toy_detection_val")  # generated now, with the default sizes
    assert len(json.loads(info.json_file.read_text())["images"]) == 3


def test_concurrent_creation_yields_one_complete_dataset(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    target = tmp_path / "toy_detection"
    with ThreadPoolExecutor(3) as pool:
        roots = list(pool.map(lambda s: ensure_toy_detection(target, sizes={"val": 3}), range(3)))
    assert roots == [target] * 3
    assert len(list((target / "val").glob("*.png"))) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy_detection"]
