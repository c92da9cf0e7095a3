"""Bad datasets (data/): missing files, unusable annotations, stray mask labels, unknown names."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffvision.data.toy_scenes import generate_toy_scenes
from tests.tool_helpers import DET, REPO, SEG, TINY_DET, load_tool, one_line_error

pytestmark = pytest.mark.usefixtures("tool_env")


def test_missing_dataset_names_the_file(tmp_path, capsys):
    out = tmp_path / "out"
    status = load_tool("train_net").cli(
        ["--config", str(REPO / "projects/detection/diffdet_r50.yaml"), "MODEL.WEIGHTS", "",
         "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(out)]
    )  # fmt: skip
    line = one_line_error(capsys, status, "instances_train2017.json")
    assert "DIFFVISION_DATASETS" in line
    assert not out.exists()  # found before any process started


@pytest.mark.parametrize("config", ["ddep_toy_finetune_r18.yaml", "pixel_mlp_toy.yaml"])
def test_missing_segmentation_folder_is_rejected_before_spawning(tmp_path, capsys, config):
    """The segmentation tasks' check_inputs runs before any process starts."""
    out = tmp_path / "out"
    missing = tmp_path / "no_such_split"
    status = load_tool("train_net").cli(
        ["--config", str(SEG / config), "DATASETS.TRAIN", f"('{missing}',)",
         "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(out)]
    )  # fmt: skip
    line = one_line_error(capsys, status, str(missing))
    assert "not a known name or folder" in line
    assert not out.exists()


def _write_coco(tmp_path: Path, annotations: list[dict]) -> str:
    (tmp_path / "imgs").mkdir(exist_ok=True)
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "imgs" / "a.png")
    data = {
        "images": [{"id": 1, "file_name": "a.png", "height": 40, "width": 50}],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "thing"}],
    }
    (tmp_path / "d.json").write_text(json.dumps(data))
    return f"mine:{tmp_path / 'd.json'}:{tmp_path / 'imgs'}"


def test_no_usable_annotation_stops_instead_of_training_on_nothing(tmp_path, capsys):
    """An empty (or fully dropped) annotation list used to train on nothing and print AP NaN."""
    custom = _write_coco(
        tmp_path,
        [
            {"id": 1, "image_id": 5, "category_id": 1, "bbox": [1, 1, 5, 5]},  # orphan
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [60, 1, 5, 5]},  # outside
        ],
    )
    out = tmp_path / "out"
    status = load_tool("train_net").cli(
        ["--config", DET, *TINY_DET, "DATASETS.CUSTOM", f"['{custom}']",
         "DATASETS.TRAIN", "('mine',)", "DATASETS.TEST", "('mine',)",
         "MODEL.DiffusionDet.NUM_CLASSES", "1", "OUTPUT_DIR", str(out)]
    )  # fmt: skip
    line = one_line_error(capsys, status, "no usable annotation in 1 images, nothing to train on")
    assert str(tmp_path / "d.json") in line  # the file, not only the dataset's name
    assert not list(out.glob("model_*.pth"))


def test_mask_label_beyond_num_classes_names_the_file(tmp_path, capsys):
    """A mask holding class 7 with NUM_CLASSES 3 gave torch's 'Target 7 is out of bounds'
    (here: the toy scenes' 5 classes plus a stray 7)."""
    scenes = generate_toy_scenes(tmp_path / "scenes", num_images=3, image_size=32)
    masks = sorted((scenes / "masks").glob("*.png"))
    bad = np.asarray(Image.open(masks[1])).copy()
    bad[:4, :4] = 7
    Image.fromarray(bad).save(masks[1])
    out = tmp_path / "out"
    status = load_tool("train_net").cli(
        ["--config", str(SEG / "ddep_toy_finetune_r18.yaml"),
         "DATASETS.TRAIN", f"('{scenes}',)", "DATASETS.TEST", f"('{scenes}',)",
         "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "5", "SEG.LABEL_FRACTION", "full",
         "SEG.CROP_SIZE", "(32, 32)",
         "SOLVER.IMS_PER_BATCH", "3", "SOLVER.MAX_ITER", "2", "MODEL.DEVICE", "cpu",
         "MODEL.DDEP.DECODER_CHANNELS", "[16, 8, 8, 8, 8]", "MODEL.WEIGHTS", "",
         "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(out)]
    )  # fmt: skip
    line = one_line_error(capsys, status, f"mask {masks[1]} holds labels [7]")
    assert "NUM_CLASSES 5" in line


def test_ddpm_unknown_dataset_and_missing_cifar_are_one_line(tmp_path, capsys):
    """A folder given without ``image_folder:`` used to raise a ValueError with a traceback,
    a missing CIFAR-10 a builtin FileNotFoundError."""
    folder = tmp_path / "pictures"
    folder.mkdir()
    config = str(REPO / "configs/ddpm/toy_instant.yaml")
    common = ["SOLVER.MAX_ITER", "1", "TEST.EVAL_PERIOD", "0", "DATALOADER.NUM_WORKERS", "0"]
    status = load_tool("train_net").cli(
        ["--config", config, "DATASETS.TRAIN", f"('{folder}',)", *common,
         "OUTPUT_DIR", str(tmp_path / "a")]
    )  # fmt: skip
    one_line_error(capsys, status, f"for a folder of images write image_folder:{folder}")
    status = load_tool("train_net").cli(
        ["--config", config, "DATASETS.TRAIN", "('cifar10_train',)", "INPUT.IMAGE_SIZE", "32",
         *common, "OUTPUT_DIR", str(tmp_path / "b")]
    )  # fmt: skip
    one_line_error(capsys, status, "CIFAR-10 not found")
