"""Checkpoint compatibility: the official key layout loads strictly; ImageNet backbone files."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import torchvision
from official_keys import official_head_keys

from diffvision.config import get_cfg
from diffvision.engine import weights
from diffvision.errors import WeightsError
from diffvision.modeling.resnet import convert_torchvision_resnet
from diffvision.modeling.weight_files import read_state_dict, resolve_weight_path
from projects.detection import build_model, load_weights
from projects.detection.detector import SCHEDULE_BUFFERS


def _official_r50_state_dict() -> dict[str, torch.Tensor]:
    """A ``diffdet_coco_res50.pth`` lookalike: the 549 keys of the released file, random values."""
    g = torch.Generator().manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, generator=g) * 0.01

    sd = {name: torch.rand(1000, generator=g, dtype=torch.float64) for name in SCHEDULE_BUFFERS}
    norm = ("weight", "bias", "running_mean", "running_var")

    def conv(prefix, c_out, c_in, k):
        sd[f"{prefix}.weight"] = rnd(c_out, c_in, k, k)
        for n in norm:
            sd[f"{prefix}.norm.{n}"] = rnd(c_out).abs() + (1.0 if n == "running_var" else 0.0)

    bu = "backbone.bottom_up"
    conv(f"{bu}.stem.conv1", 64, 3, 7)
    c_in = 64
    for s, blocks, b, c_out in [
        (2, 3, 64, 256),
        (3, 4, 128, 512),
        (4, 6, 256, 1024),
        (5, 3, 512, 2048),
    ]:
        for i in range(blocks):
            p = f"{bu}.res{s}.{i}"
            if i == 0:
                conv(f"{p}.shortcut", c_out, c_in, 1)
            conv(f"{p}.conv1", b, c_in if i == 0 else c_out, 1)
            conv(f"{p}.conv2", b, b, 3)
            conv(f"{p}.conv3", c_out, b, 1)
        c_in = c_out
    for lv, c in zip((2, 3, 4, 5), (256, 512, 1024, 2048), strict=True):
        sd[f"backbone.fpn_lateral{lv}.weight"] = rnd(256, c, 1, 1)
        sd[f"backbone.fpn_lateral{lv}.bias"] = rnd(256)
        sd[f"backbone.fpn_output{lv}.weight"] = rnd(256, 256, 3, 3)
        sd[f"backbone.fpn_output{lv}.bias"] = rnd(256)
    sd.update({f"head.{k}": rnd(*shape) for k, shape in official_head_keys().items()})
    return sd


@pytest.fixture(scope="module")
def r50_model():
    cfg = get_cfg()
    cfg.merge_from_file("projects/detection/diffdet_r50.yaml")
    cfg.MODEL.DEVICE = "cpu"
    return build_model(cfg)


@pytest.fixture(scope="module")
def official():
    return _official_r50_state_dict()


def test_official_r50_checkpoint_loads_strictly(r50_model, official, tmp_path):
    assert len(official) == 549
    assert set(official) == set(r50_model.state_dict())
    path = tmp_path / "diffdet_coco_res50.pth"
    torch.save({"model": official, "iteration": 449999}, path)  # detectron2's wrapper
    info = load_weights(r50_model, path)
    assert info["format"] == "full"
    assert not any(info[k] for k in ("missing", "unexpected", "mismatched"))
    loaded = r50_model.state_dict()
    for key, value in official.items():
        assert loaded[key].dtype == value.dtype, key
        assert torch.equal(loaded[key], value), key


def test_pickled_numpy_weights_keep_float64(tmp_path):
    sd = {"betas": np.linspace(0, 1, 5), "head.x": np.ones(2, dtype=np.float32)}
    path = tmp_path / "model.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": sd, "__author__": "someone"}, f)
    state = read_state_dict(path)
    assert state["betas"].dtype == torch.float64 and state["head.x"].dtype == torch.float32


def test_lvis_fed_loss_buffer_is_optional(r50_model, official, monkeypatch):
    sd = dict(official)
    sd["criterion.fed_loss_cls_weights"] = torch.ones(1203)  # LVIS-only key
    monkeypatch.setattr(weights, "read_state_dict", lambda path: sd)
    info = load_weights(r50_model, "diffdet_lvis_res50.pth")
    assert info["unexpected"] == ["criterion.fed_loss_cls_weights"]


def test_incompatible_checkpoint_lists_the_keys(r50_model, official, monkeypatch):
    sd = dict(official)
    del sd["head.head_series.3.linear1.bias"]
    sd["head.extra.weight"] = torch.zeros(1)
    sd["head.head_series.0.class_logits.weight"] = torch.zeros(4, 256)
    monkeypatch.setattr(weights, "read_state_dict", lambda path: sd)
    with pytest.raises(WeightsError) as err:
        load_weights(r50_model, "bad.pth")
    msg = str(err.value)
    assert "head.head_series.3.linear1.bias" in msg and "head.extra.weight" in msg
    assert "class_logits.weight (4, 256) vs (80, 256)" in msg
    info = load_weights(r50_model, "bad.pth", strict=False)  # e.g. fine-tuning to another K
    assert info["missing"] == ["head.head_series.3.linear1.bias"]


@pytest.fixture(scope="module")
def r18_model():
    cfg = get_cfg()
    cfg.merge_from_file("projects/detection/diffdet_toy.yaml")
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.RESNETS.STEM_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.NORM = "FrozenBN"  # as with any ImageNet initialisation
    return build_model(cfg, with_criterion=False)


def test_torchvision_resnet_pth_initialises_the_backbone(r18_model, tmp_path):
    tv = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(tv.state_dict(), path)
    info = load_weights(r18_model, path)
    assert info["format"] == "torchvision-resnet"
    ours = r18_model.backbone.bottom_up.state_dict()
    for k, v in convert_torchvision_resnet(tv.state_dict()).items():
        assert torch.equal(ours[k], v), k


def test_detectron2_pkl_initialises_the_backbone(r18_model, tmp_path):
    tv = torchvision.models.resnet18(weights=None)
    d2 = {k: v.numpy() for k, v in convert_torchvision_resnet(tv.state_dict()).items()}
    d2["stem.fc.weight"] = np.zeros(
        (1000, 512), dtype=np.float32
    )  # what convert-torchvision-to-d2 leaves
    path = tmp_path / "R-18.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": d2, "__author__": "torchvision", "matching_heuristics": True}, f)
    info = load_weights(r18_model, path)
    assert info["format"] == "detectron2-resnet"
    got = r18_model.backbone.bottom_up.state_dict()["res3.0.shortcut.norm.running_var"]
    assert torch.equal(got, torch.from_numpy(d2["res3.0.shortcut.norm.running_var"]))


def test_unknown_files_and_urls_fail_clearly(r18_model, tmp_path, monkeypatch):
    path = tmp_path / "weird.pth"
    torch.save({"foo.weight": torch.zeros(1)}, path)
    with pytest.raises(WeightsError, match="no tensor name fits DiffusionDet"):
        load_weights(r18_model, path)
    with pytest.raises(FileNotFoundError):
        load_weights(r18_model, tmp_path / "missing.pth")
    urls = []

    def offline(url, dst, **kwargs):
        urls.append(url)
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(RuntimeError, match="could not download"):
        resolve_weight_path("detectron2://ImageNetPretrained/torchvision/R-50.pkl")
    assert urls == [
        "https://dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/torchvision/R-50.pkl"
    ]
