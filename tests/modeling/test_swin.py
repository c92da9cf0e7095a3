"""Swin backbone: official DiffusionDet key layout (``diffdet_coco_swinbase.pth``), shapes,
shifted-window mask."""

from __future__ import annotations

import torch

from diffvision.modeling.fpn import build_swin_fpn_backbone
from diffvision.modeling.swin import BasicLayer, SwinTransformer


def _swin_b_keys() -> dict[str, tuple[int, ...]]:
    keys = {
        "patch_embed.proj.weight": (128, 3, 4, 4),
        "patch_embed.proj.bias": (128,),
        "patch_embed.norm.weight": (128,),
        "patch_embed.norm.bias": (128,),
    }
    for layer, (dim, depth, heads) in enumerate(
        [(128, 2, 4), (256, 2, 8), (512, 18, 16), (1024, 2, 32)]
    ):
        for j in range(depth):
            p = f"layers.{layer}.blocks.{j}."
            keys.update(
                {
                    p + "norm1.weight": (dim,),
                    p + "norm1.bias": (dim,),
                    p + "attn.relative_position_bias_table": (169, heads),
                    p + "attn.relative_position_index": (49, 49),
                    p + "attn.qkv.weight": (3 * dim, dim),
                    p + "attn.qkv.bias": (3 * dim,),
                    p + "attn.proj.weight": (dim, dim),
                    p + "attn.proj.bias": (dim,),
                    p + "norm2.weight": (dim,),
                    p + "norm2.bias": (dim,),
                    p + "mlp.fc1.weight": (4 * dim, dim),
                    p + "mlp.fc1.bias": (4 * dim,),
                    p + "mlp.fc2.weight": (dim, 4 * dim),
                    p + "mlp.fc2.bias": (dim,),
                }
            )
        if layer < 3:
            p = f"layers.{layer}.downsample."
            keys[p + "reduction.weight"] = (2 * dim, 4 * dim)
            keys[p + "norm.weight"] = (4 * dim,)
            keys[p + "norm.bias"] = (4 * dim,)
        keys[f"norm{layer}.weight"] = (dim,)
        keys[f"norm{layer}.bias"] = (dim,)
    return keys


def test_swin_b_keys_match_official_layout():
    with torch.device("meta"):  # shapes only: skips allocating and initialising 88M weights
        backbone = build_swin_fpn_backbone(size="B-22k")
    sd = backbone.state_dict()
    bottom_up = {
        k.removeprefix("bottom_up."): tuple(v.shape)
        for k, v in sd.items()
        if k.startswith("bottom_up.")
    }
    assert bottom_up == _swin_b_keys()
    # 641 keys in the official checkpoint = 12 buffers + 256 head + 16 FPN + Swin
    assert len(sd) == 641 - 12 - 256
    assert sd["fpn_lateral2.weight"].shape == (256, 128, 1, 1)
    assert sd["bottom_up.layers.0.blocks.0.attn.relative_position_index"].dtype == torch.int64


def test_swin_outputs_and_odd_sizes():
    swin = SwinTransformer(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8)).eval()
    with torch.no_grad():
        out = swin(torch.randn(1, 3, 70, 90))  # padded to 72 x 92 by the patch embedding
    assert [tuple(v.shape) for v in out.values()] == [
        (1, 32, 18, 23),
        (1, 64, 9, 12),
        (1, 128, 5, 6),
        (1, 256, 3, 3),
    ]
    assert all(torch.isfinite(v).all() for v in out.values())


def test_shift_mask_separates_regions():
    layer = BasicLayer(
        dim=8,
        depth=2,
        num_heads=1,
        window=7,
        mlp_ratio=4.0,
        qkv_bias=True,
        drop=0.0,
        attn_drop=0.0,
        drop_path=[0.0, 0.0],
        downsample=False,
        use_checkpoint=False,
    )
    mask = layer._shift_mask(14, 14, torch.device("cpu"))
    assert mask.shape == (4, 49, 49)
    assert set(mask.unique().tolist()) == {0.0, -100.0}
    assert (mask[0] == 0).all()  # the top-left window is one region
    assert (mask[3] == -100).any()


def test_swin_matches_torchvision_swin_maths():
    """Same weights, same features as torchvision's Swin (where both shift every other block)."""
    from torchvision.models.swin_transformer import SwinTransformer as TorchvisionSwin

    torch.manual_seed(0)
    depths, heads = (2, 2, 2, 2), (1, 2, 2, 4)
    tv = TorchvisionSwin(
        patch_size=[4, 4],
        embed_dim=16,
        depths=list(depths),
        num_heads=list(heads),
        window_size=[7, 7],
        stochastic_depth_prob=0.0,
    ).eval()
    ours = SwinTransformer(embed_dim=16, depths=depths, num_heads=heads, drop_path_rate=0.0).eval()
    mapped = {}
    for key, value in tv.state_dict().items():
        parts = key.split(".")
        if parts[0] != "features":
            continue
        idx = int(parts[1])
        rest = ".".join(parts[2:])
        if idx == 0:
            name = {
                "0.weight": "patch_embed.proj.weight",
                "0.bias": "patch_embed.proj.bias",
                "2.weight": "patch_embed.norm.weight",
                "2.bias": "patch_embed.norm.bias",
            }[rest]
        elif idx % 2 == 1:
            rest = rest.replace("mlp.0.", "mlp.fc1.").replace("mlp.3.", "mlp.fc2.")
            name = f"layers.{idx // 2}.blocks.{rest}"
        else:
            name = f"layers.{idx // 2 - 1}.downsample.{rest}"
        if name.endswith("relative_position_index"):  # torchvision keeps it flat
            assert torch.equal(value.view(49, 49), ours.state_dict()[name])
            value = value.view(49, 49)
        mapped[name] = value
    missing, unexpected = ours.load_state_dict(mapped, strict=False)
    assert not unexpected and all(k.startswith("norm") for k in missing)
    # 256 px: every stage is at least one window wide, where torchvision also shifts
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        out = ours(x)
        y = x
        for i, stage in enumerate(tv.features):
            y = stage(y)
            if i % 2 == 1:
                level = i // 2
                expected = getattr(ours, f"norm{level}")(y).permute(0, 3, 1, 2)
                torch.testing.assert_close(out[f"swin{level}"], expected, rtol=1e-4, atol=1e-4)
