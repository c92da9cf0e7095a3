"""Swin Transformer backbone for dense prediction (Liu et al., 2021, arXiv:2103.14030).

Reproduces the detection variant of Swin used by DiffusionDet (``diffusiondet/swintransformer.py``,
itself Swin-Transformer-Object-Detection's backbone): windowed attention with padding inside each
block,
shifted windows masked with -100, patch embedding padded to a multiple of 4, patch merging padded to
even sizes, and one LayerNorm ``norm{i}`` per returned stage. State_dict keys equal the official
``backbone.bottom_up.*`` Swin keys without the prefix (``diffdet_coco_swinbase.pth``):
``patch_embed.proj.*``, ``patch_embed.norm.*``, ``layers.{L}.blocks.{j}.{norm1, attn.qkv, attn.proj,
attn.relative_position_bias_table, attn.relative_position_index, norm2, mlp.fc1, mlp.fc2}``,
``layers.{L}.downsample.{reduction, norm}`` and ``norm{i}``. No timm dependency.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from torchvision.ops import stochastic_depth

__all__ = ["SwinTransformer", "swin_config", "SWIN_SIZES"]

# SWIN.SIZE -> architecture (DiffusionDet ``build_swintransformer_backbone``).
SWIN_SIZES: dict[str, dict] = {
    "T": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.2),
    "S": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.2),
    "B": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), drop_path_rate=0.3),
    "B-22k": dict(
        embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), drop_path_rate=0.3
    ),
}


def swin_config(size: str) -> dict:
    """Constructor kwargs for a ``MODEL.SWIN.SIZE`` name (``T``, ``S``, ``B``, ``B-22k``)."""
    if size not in SWIN_SIZES:
        raise ValueError(f"Swin size {size!r} is not one of {sorted(SWIN_SIZES)}")
    return dict(SWIN_SIZES[size])


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * H/w * W/w, w, w, C)."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c)


def window_reverse(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """(B * H/w * W/w, w, w, C) -> (B, H, W, C)."""
    b = windows.shape[0] // ((h // window) * (w // window))
    x = windows.view(b, h // window, w // window, window, window, -1)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, -1)


class Mlp(nn.Module):
    def __init__(self, *, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside a window with a learned relative position bias."""

    def __init__(
        self,
        *,
        dim: int,
        window: int,
        num_heads: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.window = window
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window - 1) ** 2, num_heads)
        )
        grid = torch.arange(window)
        coords = torch.stack(torch.meshgrid(grid, grid, indexing="ij"))
        coords = coords.flatten(1)  # (2, w*w)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
        index = rel[..., 0] * (2 * window - 1) + rel[..., 1]  # (w*w, w*w)
        self.register_buffer("relative_position_index", index)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B_, N, C) with N = window²; mask (nW, N, N) of 0 / -100 or None."""
        b_, n, c = x.shape
        qkv = self.qkv(x).reshape(b_, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B_, nH, N, d)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attn = attn + bias.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(b_ // nw, nw, self.num_heads, n, n) + mask[None, :, None]
            attn = attn.view(-1, self.num_heads, n, n)
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(b_, n, c)
        return self.proj_drop(self.proj(x))


class SwinTransformerBlock(nn.Module):
    """(Shifted-)window attention + MLP, pre-norm, with stochastic depth."""

    def __init__(
        self,
        *,
        dim: int,
        num_heads: int,
        window: int,
        shift: int,
        mlp_ratio: float,
        qkv_bias: bool,
        drop: float,
        attn_drop: float,
        drop_path: float,
    ) -> None:
        super().__init__()
        self.window = window
        self.shift = shift
        self.drop_path = drop_path
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(
            dim=dim,
            window=window,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            attn_drop=attn_drop,
            proj_drop=drop,
        )
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim=dim, hidden=int(dim * mlp_ratio), drop=drop)

    def _drop_path(self, x: torch.Tensor) -> torch.Tensor:
        return stochastic_depth(x, self.drop_path, "row", self.training)

    def forward(self, x: torch.Tensor, h: int, w: int, mask: torch.Tensor) -> torch.Tensor:
        """x (B, H*W, C) -> (B, H*W, C)."""
        b, _, c = x.shape
        shortcut = x
        x = self.norm1(x).view(b, h, w, c)
        pad_r = (self.window - w % self.window) % self.window
        pad_b = (self.window - h % self.window) % self.window
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        hp, wp = h + pad_b, w + pad_r
        if self.shift > 0:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        windows = window_partition(x, self.window).view(-1, self.window**2, c)
        windows = self.attn(windows, mask=mask if self.shift > 0 else None)
        x = window_reverse(windows.view(-1, self.window, self.window, c), self.window, hp, wp)
        if self.shift > 0:
            x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x[:, :h, :w, :].reshape(b, h * w, c)
        x = shortcut + self._drop_path(x)
        return x + self._drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 neighbourhood concat -> LayerNorm(4C) -> Linear(4C, 2C); odd sizes padded."""

    def __init__(self, *, dim: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, _, c = x.shape
        x = x.view(b, h, w, c)
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat(
            [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1
        )
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))


class BasicLayer(nn.Module):
    """One Swin stage: ``depth`` blocks alternating plain / shifted windows, then merging."""

    def __init__(
        self,
        *,
        dim: int,
        depth: int,
        num_heads: int,
        window: int,
        mlp_ratio: float,
        qkv_bias: bool,
        drop: float,
        attn_drop: float,
        drop_path: list[float],
        downsample: bool,
        use_checkpoint: bool,
    ) -> None:
        super().__init__()
        self.window = window
        self.shift = window // 2
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(
                dim=dim,
                num_heads=num_heads,
                window=window,
                shift=0 if i % 2 == 0 else window // 2,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                drop=drop,
                attn_drop=attn_drop,
                drop_path=drop_path[i],
            )
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim=dim) if downsample else None

    def _shift_mask(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        """(nW, w², w²) additive mask: 0 within a shifted region, -100 across regions."""
        ws, s = self.window, self.shift
        hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
        img = torch.zeros(1, hp, wp, 1, device=device)
        regions = (slice(0, -ws), slice(-ws, -s), slice(-s, None))
        cnt = 0
        for hs in regions:
            for wsl in regions:
                img[:, hs, wsl, :] = cnt
                cnt += 1
        windows = window_partition(img, ws).view(-1, ws * ws)
        mask = windows[:, None, :] - windows[:, :, None]
        return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)

    def forward(self, x: torch.Tensor, h: int, w: int):
        mask = self._shift_mask(h, w, x.device)
        for blk in self.blocks:
            if self.use_checkpoint and self.training:
                x = checkpoint(blk, x, h, w, mask, use_reentrant=False)
            else:
                x = blk(x, h, w, mask)
        if self.downsample is None:
            return x, h, w, x, h, w
        return x, h, w, self.downsample(x, h, w), (h + 1) // 2, (w + 1) // 2


class PatchEmbed(nn.Module):
    """4x4/4 conv patch embedding (+ LayerNorm), padding the input to a multiple of 4."""

    def __init__(self, *, patch: int = 4, in_channels: int = 3, dim: int = 96) -> None:
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch, stride=patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        x = F.pad(x, (0, (-w) % self.patch, 0, (-h) % self.patch))
        x = self.proj(x)  # (B, C, Wh, Ww)
        b, c, wh, ww = x.shape
        x = self.norm(x.flatten(2).transpose(1, 2))
        return x.transpose(1, 2).view(b, c, wh, ww)


class SwinTransformer(nn.Module):
    """Swin backbone returning ``swin{i}`` features (B, C·2^i, H/2^(i+2), W/2^(i+2)).

    Args:
        embed_dim: C of stage 0 (128 for Swin-B).
        depths, num_heads: per-stage block count and heads.
        window: window size (7).
        mlp_ratio, qkv_bias: as in the paper (4, True).
        drop_path_rate: stochastic depth, linearly increasing over all blocks.
        out_indices: stages returned, each through its own LayerNorm ``norm{i}``.
        use_checkpoint: gradient checkpointing in training.

    Nothing is frozen (DiffusionDet's ``frozen_stages = -1``).
    """

    def __init__(
        self,
        *,
        embed_dim: int = 128,
        depths: tuple[int, ...] = (2, 2, 18, 2),
        num_heads: tuple[int, ...] = (4, 8, 16, 32),
        window: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.3,
        out_indices: tuple[int, ...] = (0, 1, 2, 3),
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError(f"depths {depths} and num_heads {num_heads} differ in length")
        for i in out_indices:
            if not 0 <= i < len(depths):
                raise ValueError(f"Swin out index {i!r} not in [0, {len(depths)})")
        self.out_indices = tuple(out_indices)
        self.patch_embed = PatchEmbed(patch=4, in_channels=3, dim=embed_dim)
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.layers = nn.ModuleList()
        for i, depth in enumerate(depths):
            start = sum(depths[:i])
            self.layers.append(
                BasicLayer(
                    dim=embed_dim * 2**i,
                    depth=depth,
                    num_heads=num_heads[i],
                    window=window,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    drop=drop_rate,
                    attn_drop=attn_drop_rate,
                    drop_path=dpr[start : start + depth],
                    downsample=i < len(depths) - 1,
                    use_checkpoint=use_checkpoint,
                )
            )
        self.num_features = [embed_dim * 2**i for i in range(len(depths))]
        for i in self.out_indices:
            self.add_module(f"norm{i}", nn.LayerNorm(self.num_features[i]))
        self.out_features = tuple(f"swin{i}" for i in self.out_indices)
        self.out_channels = {f"swin{i}": self.num_features[i] for i in self.out_indices}
        self.out_strides = {f"swin{i}": 2 ** (i + 2) for i in self.out_indices}
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.patch_embed(x)
        wh, ww = x.shape[2], x.shape[3]
        x = self.pos_drop(x.flatten(2).transpose(1, 2))
        outs = {}
        for i, layer in enumerate(self.layers):
            x_out, h, w, x, wh, ww = layer(x, wh, ww)
            if i in self.out_indices:
                x_out = getattr(self, f"norm{i}")(x_out)
                outs[f"swin{i}"] = x_out.view(-1, h, w, self.num_features[i]).permute(0, 3, 1, 2)
            if len(outs) == len(self.out_indices):
                break
        return {k: v.contiguous() for k, v in outs.items()}
