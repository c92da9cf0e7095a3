"""UNet: guided-diffusion key/shape compatibility, initialisation, attention maths, features."""

from __future__ import annotations

import math

import pytest
import torch

from diffvision.modeling.nn_blocks import qkv_attention
from diffvision.modeling.time_embedding import timestep_embedding
from diffvision.modeling.unet import (
    UNet,
    load_guided_diffusion_checkpoint,
    parse_guided_diffusion_flags,
)

# ddpm-segmentation's README: the LSUN / FFHQ 256×256 guided-diffusion models of Baranchuk et al.
# (use_fp16 off here).
LSUN_FLAGS = (
    "--attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000 --image_size 256 "
    "--learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64 "
    "--num_res_blocks 2 --resblock_updown True --use_fp16 False --use_scale_shift_norm True"
)
# guided-diffusion README: ImageNet 64×64 conditional model.
IMAGENET64_FLAGS = (
    "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --dropout 0.1 "
    "--image_size 64 --learn_sigma True --noise_schedule cosine --num_channels 192 "
    "--num_head_channels 64 --num_res_blocks 3 --resblock_updown True "
    "--use_new_attention_order True --use_fp16 True --use_scale_shift_norm True"
)
# improved-diffusion README: CIFAR-10 (defaults: attention 16,8, 4 heads, scale-shift norm).
CIFAR_FLAGS = (
    "--image_size 32 --num_channels 128 --num_res_blocks 3 --learn_sigma True --dropout 0.3"
)


def expected_shapes(
    *,
    ch: int,
    mult: tuple[int, ...],
    nres: int,
    attn_ds: set[int],
    out_ch: int,
    num_classes: int | None,
    scale_shift: bool,
    updown: bool,
) -> dict[str, tuple[int, ...]]:
    """Key → shape of guided-diffusion's ``UNetModel``, written from the published description.

    Encoder: stem conv; per level ``nres`` ResBlocks (+ attention where the downsampling factor is
    in ``attn_ds``) and a downsampler between levels; each pushes its output on a skip stack.
    Middle: Res-Attn-Res. Decoder: per level ``nres + 1`` ResBlocks on [h, skip] (+ attention),
    the last one of every level but the top one followed by an upsampler.
    """
    emb = 4 * ch
    shapes: dict[str, tuple[int, ...]] = {
        "time_embed.0.weight": (emb, ch),
        "time_embed.0.bias": (emb,),
        "time_embed.2.weight": (emb, emb),
        "time_embed.2.bias": (emb,),
    }
    if num_classes:
        shapes["label_emb.weight"] = (num_classes, emb)

    def norm(p, c):
        shapes[f"{p}.weight"] = (c,)
        shapes[f"{p}.bias"] = (c,)

    def conv(p, cin, cout, k):
        shapes[f"{p}.weight"] = (cout, cin, k, k) if k else (cout, cin, 1)
        shapes[f"{p}.bias"] = (cout,)

    def res(p, cin, cout):
        norm(f"{p}.in_layers.0", cin)
        conv(f"{p}.in_layers.2", cin, cout, 3)
        shapes[f"{p}.emb_layers.1.weight"] = ((2 if scale_shift else 1) * cout, emb)
        shapes[f"{p}.emb_layers.1.bias"] = ((2 if scale_shift else 1) * cout,)
        norm(f"{p}.out_layers.0", cout)
        conv(f"{p}.out_layers.3", cout, cout, 3)
        if cin != cout:
            conv(f"{p}.skip_connection", cin, cout, 1)

    def attn(p, c):
        norm(f"{p}.norm", c)
        conv(f"{p}.qkv", c, 3 * c, 0)
        conv(f"{p}.proj_out", c, c, 0)

    conv("input_blocks.0.0", 3, ch * mult[0], 3)
    skips, cur, ds, i = [ch * mult[0]], ch * mult[0], 1, 1
    for level, m in enumerate(mult):
        for _ in range(nres):
            res(f"input_blocks.{i}.0", cur, ch * m)
            cur = ch * m
            if ds in attn_ds:
                attn(f"input_blocks.{i}.1", cur)
            skips.append(cur)
            i += 1
        if level < len(mult) - 1:
            if updown:
                res(f"input_blocks.{i}.0", cur, cur)
            else:
                conv(f"input_blocks.{i}.0.op", cur, cur, 3)
            skips.append(cur)
            i += 1
            ds *= 2
    res("middle_block.0", cur, cur)
    attn("middle_block.1", cur)
    res("middle_block.2", cur, cur)
    i = 0
    for level in reversed(range(len(mult))):
        for j in range(nres + 1):
            res(f"output_blocks.{i}.0", cur + skips.pop(), ch * mult[level])
            cur = ch * mult[level]
            k = 1
            if ds in attn_ds:
                attn(f"output_blocks.{i}.1", cur)
                k = 2
            if level and j == nres:
                if updown:
                    res(f"output_blocks.{i}.{k}", cur, cur)
                else:
                    conv(f"output_blocks.{i}.{k}.conv", cur, cur, 3)
                ds //= 2
            i += 1
    norm("out.0", cur)
    conv("out.2", ch * mult[0], out_ch, 3)
    return shapes


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """One intra-op thread for these small-tensor tests (restored afterwards): on a busy 2-core
    machine, spinning OpenMP threads made them many times slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _meta_unet(flags: str) -> UNet:
    with torch.device("meta"):
        return UNet.from_guided_diffusion_flags(**parse_guided_diffusion_flags(flags))


@pytest.fixture(scope="module")
def lsun_unet() -> UNet:
    return _meta_unet(LSUN_FLAGS)


def _shapes(unet: UNet) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in unet.state_dict().items()}


def test_lsun_256_keys_and_shapes(lsun_unet):
    expected = expected_shapes(
        ch=256, mult=(1, 1, 2, 2, 4, 4), nres=2, attn_ds={8, 16, 32}, out_ch=6,
        num_classes=None, scale_shift=True, updown=True,
    )  # fmt: skip
    assert _shapes(lsun_unet) == expected
    assert len(expected) == 566
    # Spot checks written out by hand.
    assert expected["output_blocks.5.0.in_layers.2.weight"] == (1024, 1536, 3, 3)
    assert expected["input_blocks.10.1.qkv.weight"] == (1536, 512, 1)
    assert expected["middle_block.1.qkv.weight"] == (3072, 1024, 1)
    assert expected["input_blocks.3.0.emb_layers.1.weight"] == (512, 1024)
    # ADM (Dhariwal & Nichol 2021) reports 554M parameters for the class-conditional 256 model:
    # ours is the unconditional one, i.e. without the 1000 × 1024 label embedding.
    n = sum(p.numel() for p in lsun_unet.parameters())
    assert n == 552_814_086
    assert round((n + 1000 * 1024) / 1e6) == 554


def test_lsun_256_decoder_blocks_match_baranchuk_table(lsun_unet):
    """ddpm-segmentation's ``src/feature_extractors.py``: blocks 5,6,7,8,12 give
    1024/512/512/512/256 ch at 32/32/32/64/128."""
    x = torch.empty(1, 3, 256, 256, device="meta")
    feats = lsun_unet.extract_features(
        x, torch.zeros(1, dtype=torch.long, device="meta"), [5, 6, 7, 8, 12]
    )
    assert [tuple(f.shape) for f in feats] == [
        (1, 1024, 32, 32), (1, 512, 32, 32), (1, 512, 32, 32), (1, 512, 64, 64), (1, 256, 128, 128),
    ]  # fmt: skip
    assert sum(f.shape[1] for f in feats) * 3 == 8448  # their MLP input width for 3 timesteps


def test_imagenet64_keys_and_shapes():
    unet = _meta_unet(IMAGENET64_FLAGS)
    expected = expected_shapes(
        ch=192, mult=(1, 2, 3, 4), nres=3, attn_ds={2, 4, 8}, out_ch=6,
        num_classes=1000, scale_shift=True, updown=True,
    )  # fmt: skip
    assert _shapes(unet) == expected
    assert unet.input_blocks[5][1].order == "new"
    assert unet.input_blocks[5][1].num_heads == 384 // 64
    assert round(sum(p.numel() for p in unet.parameters()) / 1e6) == 296  # ADM: 296M


def test_improved_diffusion_cifar_keys_and_shapes():
    unet = _meta_unet(CIFAR_FLAGS)
    expected = expected_shapes(
        ch=128, mult=(1, 2, 2, 2), nres=3, attn_ds={2, 4}, out_ch=6,
        num_classes=None, scale_shift=True, updown=False,
    )  # fmt: skip
    assert _shapes(unet) == expected
    assert unet.input_blocks[5][1].order == "legacy" and unet.input_blocks[5][1].num_heads == 4
    # num_heads_upsample = -1 means num_heads
    assert unet.output_blocks[4][1].num_heads == 4


def test_flag_parsing_and_errors():
    assert parse_guided_diffusion_flags("--image_size 64 --class_cond True --dropout 0.1") == {
        "image_size": 64,
        "class_cond": True,
        "dropout": 0.1,
    }
    with pytest.raises(ValueError, match="num_chanels"):
        UNet.from_guided_diffusion_flags(num_chanels=64)
    with pytest.raises(ValueError, match="image_size 48"):
        UNet.from_guided_diffusion_flags(image_size=48)


def small_flags(**over):
    flags = dict(
        image_size=8, num_channels=32, num_res_blocks=1, channel_mult="1,2",
        attention_resolutions="4", num_head_channels=16, learn_sigma=True,
        resblock_updown=True, use_scale_shift_norm=True,
    )  # fmt: skip
    flags.update(over)
    return flags


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def test_initial_output_is_exactly_zero():
    torch.manual_seed(0)
    unet = UNet.from_guided_diffusion_flags(**small_flags())
    out = unet(torch.randn(2, 3, 8, 8), torch.tensor([0, 999]))
    assert out.shape == (2, 6, 8, 8)
    assert torch.count_nonzero(out) == 0


def test_batch_permutation_equivariance():
    unet = UNet.from_guided_diffusion_flags(**small_flags(class_cond=True, num_classes=5)).eval()
    _randomise(unet)
    x, t, y = torch.randn(4, 3, 8, 8), torch.tensor([1, 50, 300, 999]), torch.tensor([0, 1, 2, 4])
    perm = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        out = unet(x, t, y)
        out_p = unet(x[perm], t[perm], y[perm])
    torch.testing.assert_close(out_p, out[perm], rtol=1e-4, atol=1e-5)


def test_strict_checkpoint_round_trip_and_mismatch(tmp_path):
    src = UNet.from_guided_diffusion_flags(**small_flags())
    _randomise(src)
    path = tmp_path / "ckpt.pt"
    torch.save(src.state_dict(), path)
    loaded = load_guided_diffusion_checkpoint(path, **small_flags())
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([3, 700])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t), src.eval()(x, t))
    bad = dict(src.state_dict())
    bad.pop("out.2.bias")
    with pytest.raises(ValueError, match="out.2.bias"):
        load_guided_diffusion_checkpoint(bad, **small_flags())
    with pytest.raises(ValueError, match="shape mismatches"):
        load_guided_diffusion_checkpoint(path, **small_flags(learn_sigma=False))


def test_timestep_embedding_closed_form():
    emb = timestep_embedding(torch.tensor([0, 10]), 8)
    torch.testing.assert_close(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    freqs = torch.exp(-math.log(10000) * torch.arange(4) / 4)
    torch.testing.assert_close(emb[1], torch.cat([torch.cos(10 * freqs), torch.sin(10 * freqs)]))


@pytest.mark.parametrize("order", ["legacy", "new"])
def test_qkv_attention_matches_explicit_softmax(order):
    b, heads, d, length = 2, 2, 4, 5
    qkv = torch.randn(b, 3 * heads * d, length)
    out = qkv_attention(qkv, heads, order=order)
    if order == "legacy":  # per head: [q_h, k_h, v_h] consecutive
        q, k, v = qkv.reshape(b, heads, 3, d, length).unbind(2)
    else:  # [q (all heads), k, v]
        q, k, v = qkv.reshape(b, 3, heads, d, length).unbind(1)
    w = torch.softmax(torch.einsum("bhct,bhcs->bhts", q, k) / math.sqrt(d), dim=-1)
    ref = torch.einsum("bhts,bhcs->bhct", w, v).reshape(b, heads * d, length)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_extract_features_matches_manual_hooks():
    unet = UNet.from_guided_diffusion_flags(**small_flags()).eval()
    _randomise(unet)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([50, 150])
    seen = {}
    handles = [
        unet.output_blocks[i].register_forward_hook(lambda m, a, o, i=i: seen.__setitem__(i, o))
        for i in range(len(unet.output_blocks))
    ]
    with torch.no_grad():
        unet(x, t)
        feats = unet.extract_features(x, t, [3, 0, -1])
    for h in handles:
        h.remove()
    assert [tuple(f.shape) for f in feats] == [(2, 32, 8, 8), (2, 64, 4, 4), (2, 32, 8, 8)]
    for f, i in zip(feats, [3, 0, 3]):
        torch.testing.assert_close(f, seen[i])
    assert not unet.output_blocks[0]._forward_hooks  # hooks removed after early stop
    with pytest.raises(ValueError, match="block index 7"):
        unet.extract_features(x, t, [7])


def test_class_conditioning_with_null_class():
    unet = UNet(
        image_size=8, model_channels=32, channel_mult=(1, 2), num_classes=3, null_class=True
    )
    _randomise(unet)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([5, 5])
    with torch.no_grad():
        torch.testing.assert_close(unet(x, t), unet(x, t, torch.tensor([3, 3])))
        assert not torch.allclose(unet(x, t), unet(x, t, torch.tensor([0, 1])))
    with pytest.raises(ValueError, match="needs labels"):
        UNet(image_size=8, model_channels=32, channel_mult=(1, 2), num_classes=3)(x, t)


def test_fp16_torso_close_to_fp32():
    unet = UNet.from_guided_diffusion_flags(**small_flags()).eval()
    _randomise(unet)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([10, 500])
    with torch.no_grad():
        ref = unet(x, t)
        unet.convert_to_fp16()
        assert unet.dtype == torch.float16 and unet.time_embed[0].weight.dtype == torch.float32
        out = unet(x, t)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=0.05, atol=0.05 * ref.abs().max().item())
