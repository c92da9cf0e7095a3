"""Instant end-to-end runs of both segmentation tasks through the engine (CPU, seconds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import projects  # noqa: F401  (registers the tasks)
from diffvision.config import get_cfg
from diffvision.data.toy_scenes import generate_toy_scenes
from diffvision.engine.run import train
from diffvision.modeling.weight_files import safe_torch_load
from projects.segmentation.ddep.build import build_ddep_model

CONFIGS = Path(__file__).resolve().parents[4] / "projects" / "segmentation" / "configs"


@pytest.fixture()
def toy(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFVISION_DATASETS", str(tmp_path / "datasets"))
    train_dir = generate_toy_scenes(tmp_path / "train", num_images=6, image_size=32)
    val_dir = generate_toy_scenes(tmp_path / "val", num_images=2, image_size=32, seed=1)
    return tmp_path, str(train_dir), str(val_dir)


def _miou_and_pacc(preds: list[np.ndarray], masks: list[np.ndarray], num_classes: int):
    """mIoU and pixel accuracy ×100 written out directly: per class |P ∩ G| / |P ∪ G| over all
    pixels of all images (label 255 ignored), averaged over classes present in either."""
    pred = np.concatenate([p.ravel() for p in preds]).astype(np.int64)
    gt = np.concatenate([m.ravel() for m in masks]).astype(np.int64)
    pred, gt = pred[gt != 255], gt[gt != 255]
    ious = []
    for c in range(num_classes):
        union = np.sum((pred == c) | (gt == c))
        if union:
            ious.append(np.sum((pred == c) & (gt == c)) / union)
    return 100 * float(np.mean(ious)), 100 * float(np.mean(pred == gt))


def _masks(val_dir: str) -> list[np.ndarray]:
    return [np.asarray(Image.open(p)) for p in sorted(Path(val_dir, "masks").glob("*.png"))]


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
    # the reported numbers are those of the saved final weights on the validation masks
    fine_cfg = _cfg("ddep_toy_finetune_r18.yaml", tmp / "fine", [*common, "MODEL.WEIGHTS", ""])
    model = build_ddep_model(fine_cfg).eval()
    state = safe_torch_load(tmp / "fine" / "model_final.pth")
    model.load_state_dict(state["model"])
    preds = []
    with torch.no_grad():
        for path in sorted(Path(val_dir, "images").glob("*.png")):
            image = torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy())
            x = image.permute(2, 0, 1)[None].float() / 127.5 - 1.0
            preds.append(model.segment_logits(x)[0].argmax(0).numpy())
    miou, pacc = _miou_and_pacc(preds, _masks(val_dir), num_classes=5)
    assert fine["sem_seg/mIoU"] == pytest.approx(miou, abs=1e-6)
    assert fine["sem_seg/pACC"] == pytest.approx(pacc, abs=1e-6)
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
    names = sorted(p.name for p in (out / "predictions" / "val").iterdir())
    assert names == ["00000.png", "00000_uncertainty.png", "00001.png", "00001_uncertainty.png"]
    # the reported metrics are those of the written predictions against the validation masks
    preds = [np.asarray(Image.open(out / "predictions" / "val" / n)) for n in names[::2]]
    miou, pacc = _miou_and_pacc(preds, _masks(val_dir), num_classes=5)
    assert metrics["sem_seg/mIoU"] == pytest.approx(miou, abs=1e-6)
    assert metrics["sem_seg/pACC"] == pytest.approx(pacc, abs=1e-6)


def test_fine_tuning_batches_carry_the_labeled_sets_class_weights(toy):
    """With CLASS_WEIGHT_POWER > 0 every fine-tuning batch holds the weights of the *labeled*
    subset's masks; pretraining batches and power 0 hold none."""
    from projects.segmentation.data import class_loss_weights, train_records
    from projects.segmentation.ddep.data import build_train_loader

    tmp, train_dir, val_dir = toy
    opts = ["DATASETS.TRAIN", f"('{train_dir}',)", "DATASETS.TEST", f"('{val_dir}',)",
            "SEG.CROP_SIZE", "(32, 32)", "SEG.LABEL_COUNT", "2", "SOLVER.IMS_PER_BATCH", "2",
            "MODEL.SEM_SEG_HEAD.CLASS_WEIGHT_POWER", "0.5"]  # fmt: skip
    cfg = _cfg("ddep_toy_finetune_r18.yaml", tmp / "ft", opts)
    expected = class_loss_weights(train_records(cfg), num_classes=5, ignore_label=255, power=0.5)
    everything = class_loss_weights(
        train_records(cfg, labeled=False), num_classes=5, ignore_label=255, power=0.5
    )
    assert not torch.equal(expected, everything)  # 2 labeled images of 6: other shares
    batch = next(iter(build_train_loader(cfg)))
    assert torch.equal(batch["class_weights"], expected)
    plain = _cfg("ddep_toy_finetune_r18.yaml", tmp / "ft0", opts[:-2])
    assert "class_weights" not in next(iter(build_train_loader(plain)))
    pretrain = _cfg("ddep_toy_pretrain_r18.yaml", tmp / "pre", opts)
    assert "class_weights" not in next(iter(build_train_loader(pretrain)))
