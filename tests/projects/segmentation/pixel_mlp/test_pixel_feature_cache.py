"""PixelMLP's training feature store: extracted once, cached on disk under a key of (DDPM
checkpoint, blocks, timesteps, dataset, ...), reused by later runs, and never built by
``--eval-only``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import projects  # noqa: F401  (registers the tasks)
from diffvision.data.toy_scenes import generate_toy_scenes
from diffvision.engine.defaults import load_config
from diffvision.engine.run import evaluate, train
from projects.segmentation.pixel_mlp import data as pixel_mlp_data

REPO = Path(__file__).resolve().parents[4]
FLAGS = (
    "--attention_resolutions 4 --class_cond False --diffusion_steps 1000 --image_size 16 "
    "--learn_sigma False --noise_schedule linear --num_channels 32 --num_res_blocks 1 "
    "--channel_mult 1,2 --use_fp16 False"
)


@pytest.fixture()
def setup(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFVISION_CACHE", str(tmp_path / "cache"))
    train_dir = generate_toy_scenes(tmp_path / "train", num_images=3, image_size=16)
    val_dir = generate_toy_scenes(tmp_path / "val", num_images=2, image_size=16, seed=1)
    calls = []
    original = pixel_mlp_data.collect_training_pixels

    def counting(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(pixel_mlp_data, "collect_training_pixels", counting)

    def cfg(out, *extra):
        return load_config(
            str(REPO / "tests" / "configs" / "pixel_mlp_tiny.yaml"),
            [
                "MODEL.PIXEL_MLP.FEATURES", "ddpm", "MODEL.PIXEL_MLP.RANDOM_UNET", "True",
                "MODEL.PIXEL_MLP.GUIDED_DIFFUSION_FLAGS", FLAGS,
                "MODEL.PIXEL_MLP.STEPS", "[10, 50]", "MODEL.PIXEL_MLP.BLOCKS", "[0, 1]",
                "DATASETS.TRAIN", f"('{train_dir}',)", "DATASETS.TEST", f"('{val_dir}',)",
                "SEG.LABEL_COUNT", "3", "SOLVER.MAX_ITER", "2", "SEED", "0",
                "OUTPUT_DIR", str(tmp_path / out), *extra,
            ],
        )  # fmt: skip

    return cfg, calls, tmp_path


def test_store_is_cached_and_keyed(setup):
    cfg, calls, tmp_path = setup
    features, labels = pixel_mlp_data.training_pixel_store(cfg("a"))
    assert len(calls) == 1 and features.shape[0] == labels.shape[0] > 0
    again, again_labels = pixel_mlp_data.training_pixel_store(
        cfg("b", "MODEL.PIXEL_MLP.NUM_MODELS", "3")
    )
    assert len(calls) == 1  # a new run with another ensemble reads the cache
    assert torch.equal(again, features) and torch.equal(again_labels, labels)
    cached = list((tmp_path / "cache" / "pixel_features").glob("*.pt"))
    assert len(cached) == 1
    # Other timesteps or blocks are other features: extracted again, stored beside.
    other_steps, _ = pixel_mlp_data.training_pixel_store(cfg("c", "MODEL.PIXEL_MLP.STEPS", "[10]"))
    pixel_mlp_data.training_pixel_store(cfg("d", "MODEL.PIXEL_MLP.BLOCKS", "[1]"))
    assert len(calls) == 3 and other_steps.shape[1] < features.shape[1]
    assert len(list((tmp_path / "cache" / "pixel_features").glob("*.pt"))) == 3


def test_eval_only_extracts_no_training_feature(setup):
    cfg, calls, tmp_path = setup
    trained = train(cfg("run"))
    assert len(calls) == 1 and "sem_seg/mIoU" in trained
    weights = str(tmp_path / "run" / "model_final.pth")
    evaluated = evaluate(cfg("eval", "MODEL.WEIGHTS", weights))
    assert len(calls) == 1  # --eval-only built the model, not the training store
    assert evaluated["sem_seg/mIoU"] == pytest.approx(trained["sem_seg/mIoU"])
    assert (tmp_path / "eval" / "predictions").is_dir()
