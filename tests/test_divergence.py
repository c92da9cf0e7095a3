"""An absurd learning rate on every task's toy config ends in one clean line, never a crash.

Each run goes through ``tools/train_net.py``'s ``cli`` in-process: the trainer's
``FloatingPointError`` names the iteration and the loss terms, the tool prints it as one
``error:`` line (exit status 1, no traceback) and no checkpoint is written. Before the pooler
guard, DiffusionDet died with signal 11 inside ``roi_align``; a segfault would kill pytest here.
"""

from __future__ import annotations

import pytest

from diffvision.data.toy_detection import ensure_toy_detection
from diffvision.data.toy_scenes import generate_toy_scenes
from tests.tool_helpers import REPO, drop_tool_log_handlers, load_tool

SEG = REPO / "projects" / "segmentation" / "configs"


@pytest.fixture()
def data(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFVISION_DATASETS", str(tmp_path / "datasets"))
    monkeypatch.delenv("DIFFVISION_DEBUG", raising=False)
    ensure_toy_detection(tmp_path / "datasets" / "toy_detection", sizes={"train": 4, "val": 2})
    scenes = generate_toy_scenes(tmp_path / "scenes", num_images=4, image_size=32)
    yield tmp_path, str(scenes)
    drop_tool_log_handlers()


def _detection(scenes):
    return "projects/detection/diffdet_toy.yaml", [
        "MODEL.DiffusionDet.NUM_PROPOSALS", "8", "MODEL.DiffusionDet.NUM_HEADS", "2",
        "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "96",
        "SOLVER.IMS_PER_BATCH", "2",
    ]  # fmt: skip


def _ddpm(scenes):
    return "configs/ddpm/toy_instant.yaml", [
        "INPUT.IMAGE_SIZE", "8", "SOLVER.IMS_PER_BATCH", "4",
        "MODEL.DDPM.UNET.MODEL_CHANNELS", "32", "MODEL.DDPM.UNET.CHANNEL_MULT", "[1, 2]",
        "MODEL.DDPM.UNET.ATTENTION_RESOLUTIONS", "[]",
    ]  # fmt: skip


def _ddep(scenes):
    return str(SEG / "ddep_toy_pretrain_r18.yaml"), [
        "DATASETS.TRAIN", f"('{scenes}',)", "DATASETS.TEST", f"('{scenes}',)",
        "SOLVER.IMS_PER_BATCH", "2", "SEG.CROP_SIZE", "(32, 32)",
        "MODEL.DDEP.DECODER_CHANNELS", "[16, 8, 8, 8, 8]",
    ]  # fmt: skip


def _pixel_mlp(scenes):
    flags = (
        "--image_size 32 --num_channels 32 --num_res_blocks 1 --channel_mult 1,2 "
        "--attention_resolutions 16 --learn_sigma False"
    )
    return str(SEG / "pixel_mlp_toy.yaml"), [
        "MODEL.PIXEL_MLP.DDPM_CHECKPOINT", "", "MODEL.PIXEL_MLP.RANDOM_UNET", "True",
        "MODEL.PIXEL_MLP.GUIDED_DIFFUSION_FLAGS", flags,
        "MODEL.PIXEL_MLP.BLOCKS", "[0, 2]", "MODEL.PIXEL_MLP.STEPS", "[10]",
        "MODEL.PIXEL_MLP.IMAGE_SIZE", "32", "MODEL.PIXEL_MLP.NUM_MODELS", "1",
        "MODEL.PIXEL_MLP.PIXELS_PER_IMAGE", "100", "MODEL.PIXEL_MLP.CHUNK_PIXELS", "300",
        "DATASETS.TRAIN", f"('{scenes}',)", "DATASETS.TEST", f"('{scenes}',)",
        "SEG.LABEL_COUNT", "2",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "task", [_detection, _ddpm, _ddep, _pixel_mlp], ids=["DiffusionDet", "DDPM", "DDeP", "PixelMLP"]
)
def test_absurd_learning_rate_stops_with_one_line(task, data, capsys):
    tmp, scenes = data
    config, opts = task(scenes)
    out = tmp / "out"
    status = load_tool("train_net").cli(
        ["--config", str(REPO / config), *opts,
         "SOLVER.BASE_LR", "1e30", "SOLVER.WARMUP_ITERS", "0", "SOLVER.MAX_ITER", "6",
         "SOLVER.CLIP_GRADIENTS.ENABLED", "False", "SOLVER.CHECKPOINT_PERIOD", "1",
         "TEST.EVAL_PERIOD", "0", "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0",
         "OUTPUT_DIR", str(out)]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert status == 1, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert "Loss became non-finite at iteration" in lines[0]
    assert "=nan" in lines[0] or "=inf" in lines[0]  # the loss terms are listed with values
    assert not (out / "model_final.pth").exists()
