"""DDeP: decoder denoising pretraining for semantic segmentation.

Brempong et al., "Decoder Denoising Pretraining for Semantic Segmentation", TMLR 2022
(arXiv:2205.11423).

Three stages: (1) a supervised ImageNet encoder, (2) *decoder-only* denoising pretraining
on unlabeled images with the encoder frozen, (3) fine-tuning of the whole network with a fresh
``C``-class head on a labeled subset.

Corruption, with images x ∈ [-1, 1] and ε ~ N(0, I)::

    x̃ = √γ · x + √(1 − γ) · ε,      γ = 1 / (1 + σ²)   ⇔   x̃ = (x + σ ε) / √(1 + σ²)

with one fixed σ = 0.22 by default (γ = 0.9538, the DDPM linear schedule's ᾱ at t ≈ 63). The
network predicts ε and is trained with L2. The corruption is the diffusion core's forward
process :func:`diffvision.diffusion.forward.add_noise` on a one-step schedule whose ᾱ is γ
(:func:`fixed_level_schedule`), so the formula lives in one place. The multi-level variant
(the paper's "full diffusion" ablation) draws t uniformly from a named core schedule instead; the
denoiser gets no level conditioning in either case (the paper's denoiser takes no timestep).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from diffvision.diffusion.forward import add_noise
from diffvision.diffusion.schedule import NoiseSchedule, get_schedule
from diffvision.utils.seeding import per_sample_generators

__all__ = ["DDeP", "EncoderUNet", "describe", "fixed_level_schedule"]

logger = logging.getLogger(__name__)

# torchvision ImageNet statistics, RGB in [0, 1].
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def fixed_level_schedule(sigma: float) -> NoiseSchedule:
    """A one-step schedule whose ᾱ_0 equals DDeP's γ = 1 / (1 + σ²).

    ``add_noise(fixed_level_schedule(σ), x, ε, 0)`` is ``(x + σ ε) / √(1 + σ²)``.

    Args:
        sigma: noise magnitude σ > 0 of the "simple additive" parameterisation.
    """
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    gamma = 1.0 / (1.0 + sigma**2)
    return NoiseSchedule(
        betas=torch.tensor([1.0 - gamma], dtype=torch.float64), name=f"ddep{sigma}"
    )


class _DecoderBlock(nn.Module):
    """×2 nearest upsampling, concatenation with the skip, two 3×3 conv-BN-ReLU."""

    def __init__(self, *, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(in_channels + skip_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        size = skip.shape[-2:] if skip is not None else (x.shape[-2] * 2, x.shape[-1] * 2)
        x = F.interpolate(x, size=size, mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.convs(x)


class _TransformerBottleneck(nn.Module):
    """TransUNet-style bottleneck: 1×1 patch embedding of the stride-16 map, learned position
    embeddings (bilinearly resized to the token grid), pre-norm Transformer layers."""

    def __init__(
        self, *, in_channels: int, dim: int, depth: int, heads: int, out_channels: int
    ) -> None:
        super().__init__()
        self.embed = nn.Conv2d(in_channels, dim, 1)
        self.pos = nn.Parameter(torch.zeros(1, dim, 16, 16))
        nn.init.trunc_normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(
            dim,
            heads,
            dim_feedforward=4 * dim,
            batch_first=True,
            norm_first=True,
            activation="gelu",
        )
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Sequential(
            nn.Conv2d(dim, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)  # (B, D, h, w)
        b, d, hh, ww = h.shape
        pos = F.interpolate(self.pos, size=(hh, ww), mode="bilinear", align_corners=False)
        tokens = (h + pos).flatten(2).transpose(1, 2)  # (B, h·w, D)
        tokens = self.norm(self.encoder(tokens))
        return self.out(tokens.transpose(1, 2).reshape(b, d, hh, ww))


class EncoderUNet(nn.Module):
    """UNet-style segmenter: any multi-scale backbone as encoder + convolutional decoder with
    skips.

    The encoder (a registered backbone, :mod:`diffvision.modeling.backbones`) returns maps at
    strides 2, 4, ..., 2**n, fine to coarse (torchvision ResNet-50: stem 2: 64, layer1 4: 256,
    layer2 8: 512, layer3 16: 1024, layer4 32: 2048 channels). The decoder upsamples ×2 per
    block, concatenating the skip of the matching stride, until stride 1, then a 3×3 head maps
    to ``out_channels`` (3 = ε for pretraining, ``C`` classes for fine-tuning). With
    ``transformer_layers > 0`` a TransUNet-style Transformer (Chen et al. 2021,
    arXiv:2102.04306) processes the deepest map's tokens before the decoder.

    Args:
        encoder: module with ``out_channels`` / ``out_strides`` dicts whose ``forward`` returns
            those maps.
        out_channels: head output channels.
        decoder_channels: widths of the decoder blocks, deepest first; one per encoder map.
        transformer_layers: 0 for the plain UNet.
        transformer_dim: token width of the Transformer.
        transformer_heads: attention heads.
        encoder_name: how the encoder was chosen (``MODEL.DDEP.ENCODER``), for logs.

    Attributes:
        pixel_mean, pixel_std: the RGB statistics (in [0, 1]) the encoder expects, when it names
            them (timm models), else absent (ImageNet's).

    Shapes:
        ``forward(x (B, 3, H, W) normalised) -> (B, out_channels, H, W)``; ``H, W`` multiples of
        the deepest stride keep every skip aligned, others are resized.
    """

    def __init__(
        self,
        *,
        encoder: nn.Module,
        out_channels: int = 3,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        transformer_layers: int = 0,
        transformer_dim: int = 768,
        transformer_heads: int = 12,
        encoder_name: str = "",
    ) -> None:
        super().__init__()
        strides = list(encoder.out_strides.values())
        if strides != [2**i for i in range(1, len(strides) + 1)]:
            raise ValueError(
                f"the UNet encoder {encoder_name!r} must give maps at strides 2, 4, 8, ..., "
                f"got {strides}"
            )
        if len(decoder_channels) != len(strides):
            raise ValueError(
                f"decoder_channels needs {len(strides)} entries (one per encoder map of "
                f"{encoder_name!r}), got {tuple(decoder_channels)}"
            )
        self.encoder_name = encoder_name
        self.backbone = encoder
        for key in ("pixel_mean", "pixel_std"):
            if hasattr(encoder, key):
                setattr(self, key, getattr(encoder, key))
        channels = list(encoder.out_channels.values())
        self.bottleneck: nn.Module = nn.Identity()
        if transformer_layers > 0:
            self.bottleneck = _TransformerBottleneck(
                in_channels=channels[-1],
                dim=transformer_dim,
                depth=transformer_layers,
                heads=transformer_heads,
                out_channels=channels[-1],
            )
        self.decoder, self.head = _make_decoder(
            deep_channels=channels[-1],
            skip_channels=[*channels[-2::-1], 0],
            decoder_channels=decoder_channels,
            out_channels=out_channels,
        )

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder maps, fine to coarse."""
        return list(self.backbone(x).values())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _decode(self.encode(x), self.bottleneck, self.decoder, self.head, x.shape[-2:])


def _make_decoder(
    *,
    deep_channels: int,
    skip_channels: Sequence[int],
    decoder_channels: Sequence[int],
    out_channels: int,
) -> tuple[nn.ModuleList, nn.Conv2d]:
    """Decoder blocks (deepest first) and the 3×3 head of a UNet."""
    blocks = []
    in_ch = deep_channels
    for out_ch, skip_ch in zip(decoder_channels, skip_channels):
        blocks.append(_DecoderBlock(in_channels=in_ch, skip_channels=skip_ch, out_channels=out_ch))
        in_ch = out_ch
    return nn.ModuleList(blocks), nn.Conv2d(in_ch, out_channels, 3, padding=1)


def _decode(feats, bottleneck, decoder, head, size) -> torch.Tensor:
    """Run the decoder over encoder maps ``feats`` (fine to coarse) to ``(B, C_out, *size)``."""
    feats = list(feats)
    h = bottleneck(feats.pop())
    skips = feats[::-1] + [None]  # deepest remaining first; the last block has no skip
    for block, skip in zip(decoder, skips):
        h = block(h, skip)
    out = head(h)
    if out.shape[-2:] != tuple(size):
        out = F.interpolate(out, size=tuple(size), mode="bilinear", align_corners=False)
    return out


NoiseLevels = Literal["fixed", "schedule"]
Mode = Literal["denoise", "segment"]


class DDeP(nn.Module):
    """DDeP meta-architecture: denoising pretraining or segmentation with one network.

    Args:
        network: the segmenter (an :class:`EncoderUNet`, whose ``pixel_mean`` /
            ``pixel_std``, when it has them, replace ImageNet's); its head must output 3
            channels in ``"denoise"`` mode and ``num_classes`` in ``"segment"`` mode.
        mode: ``"denoise"`` (stage 2: predict ε, L2) or ``"segment"`` (stage 3: cross-entropy).
        num_classes: ``C`` for ``"segment"``.
        ignore_label: ground-truth value excluded from the loss.
        noise_sigma: σ of the fixed level (γ = 1/(1+σ²)).
        noise_levels: ``"fixed"`` (DDeP) or ``"schedule"`` (t ~ U{0..T−1} of ``schedule``).
        schedule: core schedule for ``"schedule"`` (default: linear, T = 1000).
        freeze_encoder: in ``"denoise"`` mode, freeze the encoder *and keep it in eval mode*
            (otherwise its BN statistics drift towards noisy inputs).

    Input batch: ``{"image": uint8 (B, 3, H, W), "sem_seg": int64 (B, H, W)}`` (``sem_seg``
    only for ``"segment"``). Images are mapped to x ∈ [-1, 1] (diffusion convention), corrupted
    there, then normalised with the ImageNet statistics for the encoder.

    Returns:
        training: ``{"loss_denoise"}`` or ``{"loss_sem_seg"}``; eval: one dict per image,
        ``{"sem_seg": (C, H, W) logits}`` or ``{"noise_pred": (3, H, W)}``.
    """

    # load_weights: a denoising checkpoint (3-channel head) initialises a C-class segmenter.
    weights_reinit_on_mismatch = ("network.head.",)
    # load_weights: the segmentation head's outputs are the classes
    weights_class_keys = ("network.head.*",)

    def __init__(
        self,
        *,
        network: EncoderUNet,
        mode: Mode = "segment",
        num_classes: int = 19,
        ignore_label: int = 255,
        noise_sigma: float = 0.22,
        noise_levels: NoiseLevels = "fixed",
        schedule: NoiseSchedule | None = None,
        freeze_encoder: bool = True,
    ) -> None:
        super().__init__()
        if mode not in ("denoise", "segment"):
            raise ValueError(f"mode must be 'denoise' or 'segment', got {mode!r}")
        if noise_levels not in ("fixed", "schedule"):
            raise ValueError(f"noise_levels must be 'fixed' or 'schedule', got {noise_levels!r}")
        self.network = network
        self.mode = mode
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.noise_levels = noise_levels
        self.schedule = (
            fixed_level_schedule(noise_sigma)
            if noise_levels == "fixed"
            else (schedule or get_schedule("linear", num_timesteps=1000))
        )
        self.freeze_encoder = freeze_encoder and mode == "denoise"
        if self.freeze_encoder:
            for p in self.network.backbone.parameters():
                p.requires_grad_(False)
            self.network.backbone.eval()
        # the encoder's input statistics (torchvision ImageNet, or the timm model's own)
        mean = getattr(network, "pixel_mean", _IMAGENET_MEAN)
        std = getattr(network, "pixel_std", _IMAGENET_STD)
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, 3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, 3, 1, 1), False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def train(self, mode: bool = True) -> DDeP:
        """Like ``nn.Module.train``, but a frozen encoder stays in eval mode."""
        super().train(mode)
        if self.freeze_encoder:
            self.network.backbone.eval()
        return self

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] → ImageNet-normalised encoder input."""
        return ((x + 1.0) * 0.5 - self.pixel_mean) / self.pixel_std

    def corrupt(
        self,
        x0: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        seeds: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x̃ = √γ x0 + √(1−γ) ε through the core's ``add_noise``.

        Args:
            x0: ``(B, 3, H, W)`` clean images in [-1, 1].
            generator: optional generator for ε and t of the whole batch.
            seeds: optional ``(B,)`` per-sample seeds (the training loader's): sample i's ε and
                t come from its own CPU generator, so they do not depend on the batch split.

        Returns:
            ``(x_noisy, eps)``, both ``(B, 3, H, W)``.
        """
        b, device = x0.shape[0], x0.device
        num_t = 1 if self.noise_levels == "fixed" else self.schedule.num_timesteps
        if seeds is not None:
            gens = per_sample_generators(seeds)
            eps = torch.stack([torch.randn(x0.shape[1:], generator=g) for g in gens])
            t = torch.cat([torch.randint(0, num_t, (1,), generator=g) for g in gens])
            eps, t = eps.to(device=device, dtype=x0.dtype), t.to(device)
        else:
            eps = torch.randn(x0.shape, generator=generator, device=device, dtype=x0.dtype)
            if self.noise_levels == "fixed":
                t = torch.zeros(b, dtype=torch.long, device=device)
            else:
                t = torch.randint(0, num_t, (b,), generator=generator).to(device)
        if self.noise_levels == "fixed":
            t = torch.zeros_like(t)
        schedule = self.schedule if self.schedule.device == device else self.schedule.to(device)
        return add_noise(schedule, x0, eps, t), eps

    def segment_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, C, H, W)`` for images ``x`` in [-1, 1]."""
        return self.network(self._normalize(x))

    def forward(self, batch: dict) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        x0 = batch["image"].to(self.device).float() / 127.5 - 1.0  # (B, 3, H, W) in [-1, 1]
        if self.mode == "denoise":
            x_noisy, eps = self.corrupt(
                x0, generator=batch.get("generator"), seeds=batch.get("seed")
            )
            eps_pred = self.network(self._normalize(x_noisy))
            if not self.training:
                return [{"noise_pred": p, "noise": e} for p, e in zip(eps_pred, eps)]
            return {"loss_denoise": F.mse_loss(eps_pred, eps)}
        logits = self.segment_logits(x0)
        if not self.training:
            return [{"sem_seg": logit} for logit in logits]
        target = batch["sem_seg"].to(self.device)
        return {"loss_sem_seg": self.segmentation_loss(logits, target, batch.get("class_weights"))}

    def segmentation_loss(
        self, logits: torch.Tensor, target: torch.Tensor, class_weights: torch.Tensor | None
    ) -> torch.Tensor:
        """Cross-entropy of ``logits`` (B, C, H, W) against ``target`` (B, H, W), averaged over
        the labeled pixels, each weighted by ``class_weights[target]`` (``(C,)``, None = 1):
        ``sum_i w_{y_i} CE_i / #labeled``. The divisor is the pixel count, not the weight sum, so
        a batch's loss scale does not depend on which classes it happens to hold; 0 (with a
        gradient path) for a batch of only ignored pixels."""
        labeled = target != self.ignore_label
        if not labeled.any():
            return logits.sum() * 0.0
        if class_weights is None:
            return F.cross_entropy(logits, target, ignore_index=self.ignore_label)
        per_pixel = F.cross_entropy(
            logits, target, ignore_index=self.ignore_label, reduction="none"
        )
        weights = class_weights.to(per_pixel)[target[labeled]]
        return (per_pixel[labeled] * weights).sum() / labeled.sum()


def _num_params(module: nn.Module) -> str:
    return f"{sum(p.numel() for p in module.parameters()) / 1e6:.1f}M"


def describe(model: DDeP) -> str:
    """One-line summary for logs."""
    net = model.network
    return (
        f"DDeP(mode={model.mode}, encoder={net.encoder_name} {_num_params(net.backbone)}, "
        f"decoder {_num_params(net.decoder)}, levels={model.noise_levels}, "
        f"gamma={float(model.schedule.alphas_cumprod[0]):.4f}"
        + (
            f"..{float(model.schedule.alphas_cumprod[-1]):.4f}"
            if model.noise_levels != "fixed"
            else ""
        )
        + ")"
    )
