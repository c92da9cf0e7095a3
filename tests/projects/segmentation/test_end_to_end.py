"""Instant end-to-end runs of both segmentation tasks through the engine (CPU, seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest

import projects  # noqa: F401  (registers the tasks)
from diffvision.config import get_cfg
from diffvision.data.toy_scenes import generate_toy_scenes
from diffvision.engine.run import train

CONFIGS = Path(__file__).resolve().parents[3] / "projects" / "segmentation" / "configs"


@pytest.fixture()
def toy(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFVISION_DATASETS", str(tmp_path / "datasets"))
    train_dir = generate_toy_scenes(tmp_path / "train", num_images=6, image_size=32)
    val_dir = generate_toy_scenes(tmp_path / "val", num_images=2, image_size=32, seed=1)
    return tmp_path, str(train_dir), str(val_dir)


def _cfg(name, out, opts):
    cfg = get_cfg()
    cfg.merge_from_file(str(CONFIGS / name))
    cfg.merge_from_list(["OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "2", *opts])
    return cfg


def test_ddep_pretrain_then_finetune(toy):
    tmp, train_dir, val_dir = toy
    common = [
        "DATASETS.TRAIN", f"('{train_dir}',)", "DATASETS.TEST", f"('{val_dir}',)",
        "SOLVER.IMS_PER_BATCH", "2", "SEG.CROP_SIZE", "(32, 32)",
        "MODEL.DDEP.DECODER_CHANNELS", "[16, 8, 8, 8, 8]",
    ]  # fmt: skip
    pre = train(_cfg("ddep_toy_pretrain_r18.yaml", tmp / "pre", common))
    assert pre["denoise/mse"] > 0
    fine = train(
        _cfg(
            "ddep_toy_finetune_r18.yaml",
            tmp / "fine",
            [*common, "MODEL.WEIGHTS", str(tmp / "pre" / "model_final.pth"),
             "SEG.LABEL_FRACTION", "1/3"],
        )
    )  # fmt: skip
    assert 0 <= fine["sem_seg/mIoU"] <= 100
    assert len((tmp / "fine" / "labeled_split.txt").read_text().splitlines()) == 2
    assert len(list((tmp / "fine" / "vis").rglob("*.png"))) == 2


def test_pixel_mlp_on_random_unet(toy):
    tmp, train_dir, val_dir = toy
    flags = (
        "--image_size 32 --num_channels 32 --num_res_blocks 1 --channel_mult 1,2 "
        "--attention_resolutions 16 --learn_sigma False"
    )
    out = tmp / "mlp"
    cfg = _cfg(
        "pixel_mlp_toy.yaml",
        out,
        [
            "MODEL.PIXEL_MLP.DDPM_CHECKPOINT", "", "MODEL.PIXEL_MLP.RANDOM_UNET", "True",
            "MODEL.PIXEL_MLP.GUIDED_DIFFUSION_FLAGS", flags,
            "MODEL.PIXEL_MLP.BLOCKS", "[0, 2]", "MODEL.PIXEL_MLP.STEPS", "[10, 50]",
            "MODEL.PIXEL_MLP.IMAGE_SIZE", "32", "MODEL.PIXEL_MLP.NUM_MODELS", "2",
            "MODEL.PIXEL_MLP.PIXELS_PER_IMAGE", "100", "MODEL.PIXEL_MLP.CHUNK_PIXELS", "300",
            "DATASETS.TRAIN", f"('{train_dir}',)", "DATASETS.TEST", f"('{val_dir}',)",
            "SEG.LABEL_COUNT", "2",
        ],
    )  # fmt: skip
    metrics = train(cfg)
    assert 0 <= metrics["sem_seg/mIoU"] <= 100
    preds = sorted(p.name for p in (out / "predictions" / "val").iterdir())
    assert preds == ["00000.png", "00000_uncertainty.png", "00001.png", "00001_uncertainty.png"]
