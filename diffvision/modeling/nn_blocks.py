"""Building blocks of the ADM UNet (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs").

Residual blocks with timestep embedding (optionally scale-shift norm, ADM Sec. 3 "AdaGN":
``GroupNorm(h)·(1 + s) + b`` with ``(s, b) = Linear(emb)``), multi-head self-attention over spatial
positions, and nearest-upsampling / strided-conv downsampling. Module and attribute names follow
openai guided-diffusion ``guided_diffusion/unet.py`` (and improved-diffusion, its parent) so that
``state_dict`` keys are identical and their released checkpoints load strictly:

=====================  ===================================================================
module                 parameters (keys relative to the block)
=====================  ===================================================================
ResBlock               ``in_layers.{0: GroupNorm, 2: conv3x3}``, ``emb_layers.1`` (Linear),
                       ``out_layers.{0: GroupNorm, 3: conv3x3 (zero-init)}``,
                       ``skip_connection`` (conv1x1 when channels change, else Identity)
AttentionBlock         ``norm``, ``qkv`` (conv1d 1x1, C→3C), ``proj_out`` (conv1d, zero-init)
Downsample             ``op`` (conv3x3 stride 2, or parameter-free avg-pool)
Upsample               ``conv`` (conv3x3 after nearest ×2, optional)
=====================  ===================================================================

Group norms are computed in float32 whatever the activation dtype (guided-diffusion's
``GroupNorm32``), which keeps fp16 inference stable.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "AttentionBlock",
    "Downsample",
    "GroupNorm32",
    "ResBlock",
    "TimestepBlock",
    "TimestepEmbedSequential",
    "Upsample",
    "normalization",
    "qkv_attention",
    "zero_module",
]

AttentionOrder = Literal["legacy", "new"]


class GroupNorm32(nn.GroupNorm):
    """GroupNorm evaluated in float32, cast back to the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


def normalization(channels: int) -> GroupNorm32:
    """The UNet's normalisation layer: 32 groups over ``channels`` (ADM/guided-diffusion)."""
    return GroupNorm32(32, channels)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero all parameters of ``module`` in place and return it.

    Used on the last conv of every residual branch, on ``proj_out`` of attention and on the UNet's
    output conv, so that every residual block starts as the identity and the initial network
    output is exactly 0 (Ho et al. 2020 / ADM initialisation).
    """
    for p in module.parameters():
        p.detach().zero_()
    return module


class TimestepBlock(nn.Module):
    """A module whose ``forward`` takes the timestep embedding as second argument."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class TimestepEmbedSequential(nn.Sequential, TimestepBlock):
    """``nn.Sequential`` that passes ``emb`` to the children that are :class:`TimestepBlock`."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class Upsample(nn.Module):
    """Nearest-neighbour ×2 upsampling, optionally followed by a 3×3 conv (key ``conv``).

    Args:
        channels: input channels ``C``.
        use_conv: apply a 3×3 conv after upsampling.
        out_channels: output channels (default ``C``; must equal ``C`` without conv).
    """

    def __init__(self, channels: int, use_conv: bool, *, out_channels: int | None = None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, self.out_channels, 3, padding=1)
        elif self.out_channels != channels:
            raise ValueError(
                f"Upsample without conv cannot change channels {channels}→{out_channels}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")  # (B, C, 2H, 2W)
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    """×2 downsampling by a stride-2 3×3 conv or a 2×2 average pool (key ``op`` either way).

    Args:
        channels: input channels ``C``.
        use_conv: strided conv (learned) instead of average pooling.
        out_channels: output channels (default ``C``; must equal ``C`` without conv).
    """

    def __init__(self, channels: int, use_conv: bool, *, out_channels: int | None = None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        if use_conv:
            self.op = nn.Conv2d(channels, self.out_channels, 3, stride=2, padding=1)
        else:
            if self.out_channels != channels:
                raise ValueError(
                    f"Downsample without conv cannot change channels {channels}→{out_channels}"
                )
            self.op = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)  # (B, C', H/2, W/2)


class ResBlock(TimestepBlock):
    """Residual block conditioned on the timestep embedding (Ho et al. 2020; ADM Sec. 3).

    ``h = conv(SiLU(GN(x)))``; then either ``h = h + Linear(SiLU(emb))`` or, with scale-shift norm,
    ``h = GN(h)·(1 + s) + b`` with ``(s, b) = Linear(SiLU(emb))``; then
    ``h = conv0(Dropout(SiLU(·)))``; output ``skip(x) + h``. With ``up``/``down`` (ADM's
    BigGAN-style "resblock updown") both branches are resampled between the first norm and conv.

    Args:
        channels: input channels ``C``.
        emb_channels: timestep-embedding width ``E``.
        dropout: dropout probability before the last conv.
        out_channels: output channels (default ``C``).
        use_conv: with changing channels, use a 3×3 instead of a 1×1 skip conv.
        use_scale_shift_norm: FiLM-like conditioning of the second norm (ADM "AdaGN").
        up: upsample ×2 inside the block.
        down: downsample ×2 inside the block.
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        *,
        out_channels: int | None = None,
        use_conv: bool = False,
        use_scale_shift_norm: bool = False,
        up: bool = False,
        down: bool = False,
    ):
        super().__init__()
        if up and down:
            raise ValueError("ResBlock cannot both upsample and downsample")
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(
            normalization(channels),
            nn.SiLU(),
            nn.Conv2d(channels, self.out_channels, 3, padding=1),
        )
        self.updown = up or down
        if up:
            self.h_upd = Upsample(channels, False)
            self.x_upd = Upsample(channels, False)
        elif down:
            self.h_upd = Downsample(channels, False)
            self.x_upd = Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            nn.SiLU(),
            nn.Linear(
                emb_channels, 2 * self.out_channels if use_scale_shift_norm else self.out_channels
            ),
        )
        self.out_layers = nn.Sequential(
            normalization(self.out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            zero_module(nn.Conv2d(self.out_channels, self.out_channels, 3, padding=1)),
        )
        if self.out_channels == channels:
            self.skip_connection = nn.Identity()
        elif use_conv:
            self.skip_connection = nn.Conv2d(channels, self.out_channels, 3, padding=1)
        else:
            self.skip_connection = nn.Conv2d(channels, self.out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """Args: ``x`` ``(B, C, H, W)``, ``emb`` ``(B, E)``. Returns ``(B, C_out, H', W')``."""
        if self.updown:
            in_rest, in_conv = self.in_layers[:-1], self.in_layers[-1]
            h = in_conv(self.h_upd(in_rest(x)))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)  # (B, C_out, H, W)
        emb_out = self.emb_layers(emb).type(h.dtype)[:, :, None, None]  # (B, C_out or 2C_out, 1, 1)
        if self.use_scale_shift_norm:
            out_norm, out_rest = self.out_layers[0], self.out_layers[1:]
            scale, shift = emb_out.chunk(2, dim=1)
            h = out_rest(out_norm(h) * (1 + scale) + shift)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


def qkv_attention(qkv: torch.Tensor, num_heads: int, *, order: AttentionOrder) -> torch.Tensor:
    """Multi-head scaled dot-product attention over the last axis of a fused ``qkv`` tensor.

    ``softmax(qᵀk / sqrt(d)) v`` per head with head width ``d = C / num_heads``. The two channel
    layouts of guided-diffusion differ in how ``3C`` channels are split:

    - ``"legacy"`` (``QKVAttentionLegacy``, improved-diffusion): reshape to
      ``(B·heads, 3d, L)`` first, then split into q, k, v — channels are grouped head-major.
    - ``"new"`` (``QKVAttention``, ``use_new_attention_order``): split into q, k, v of ``C``
      channels first, then into heads.

    Args:
        qkv: ``(B, 3C, L)`` fused projections.
        num_heads: number of heads ``h``.
        order: channel layout, ``"legacy"`` or ``"new"``.

    Returns:
        ``(B, C, L)`` attention output, heads concatenated along channels.
    """
    bs, width, length = qkv.shape
    if width % (3 * num_heads):
        raise ValueError(f"qkv width {width} is not divisible by 3 * num_heads={3 * num_heads}")
    ch = width // (3 * num_heads)
    if order == "legacy":
        q, k, v = qkv.reshape(bs * num_heads, 3 * ch, length).split(ch, dim=1)  # (B·h, d, L) each
    elif order == "new":
        q, k, v = (t.reshape(bs * num_heads, ch, length) for t in qkv.chunk(3, dim=1))
    else:
        raise ValueError(f"attention order must be 'legacy' or 'new', got {order!r}")
    # Softmax in float32 like guided-diffusion (fp16 logits overflow); SDPA wants (N, L, d).
    dtype = qkv.dtype
    q, k, v = (t.transpose(1, 2).float() for t in (q, k, v))
    a = F.scaled_dot_product_attention(q, k, v, scale=1.0 / math.sqrt(ch))  # (B·h, L, d)
    return a.transpose(1, 2).reshape(bs, -1, length).to(dtype)


class AttentionBlock(nn.Module):
    """Spatial self-attention with a residual connection: ``x + proj_out(attn(qkv(GN(x))))``.

    Args:
        channels: channels ``C``.
        num_heads: number of heads (used when ``num_head_channels == -1``).
        num_head_channels: fixed head width; the number of heads is then ``C / num_head_channels``.
        use_new_attention_order: ``QKVAttention`` (split qkv before heads) instead of the legacy
            layout; see :func:`qkv_attention`.
    """

    def __init__(
        self,
        channels: int,
        *,
        num_heads: int = 1,
        num_head_channels: int = -1,
        use_new_attention_order: bool = False,
    ):
        super().__init__()
        self.channels = channels
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if channels % num_head_channels:
                raise ValueError(
                    f"channels {channels} is not divisible by num_head_channels {num_head_channels}"
                )
            self.num_heads = channels // num_head_channels
        if channels % self.num_heads:
            raise ValueError(f"channels {channels} is not divisible by num_heads {self.num_heads}")
        self.order: AttentionOrder = "new" if use_new_attention_order else "legacy"
        self.norm = normalization(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: ``x`` ``(B, C, H, W)``. Returns ``(B, C, H, W)``."""
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)  # (B, C, L)
        qkv = self.qkv(self.norm(x))  # (B, 3C, L)
        h = self.proj_out(qkv_attention(qkv, self.num_heads, order=self.order))
        return (x + h).reshape(b, c, *spatial)
