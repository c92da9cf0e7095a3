"""The image UNet of the DDPM / ADM family, checkpoint-compatible with openai guided-diffusion.

Architecture (Ho et al. 2020, arXiv:2006.11239, App. B; Nichol & Dhariwal 2021, arXiv:2102.09672;
Dhariwal & Nichol 2021 "ADM", arXiv:2105.05233, Sec. 3): a
conv stem, an encoder of ``num_res_blocks`` residual blocks per resolution level (channels
``model_channels · channel_mult[level]``) separated by ×2 downsampling, a middle block
``ResBlock → Attention → ResBlock``, a decoder of ``num_res_blocks + 1`` blocks per level, each
consuming one encoder skip activation by channel concatenation, and ``GN → SiLU → conv`` out.
Self-attention is added after the residual blocks whose feature map has one of the
``attention_resolutions``. Timesteps enter through sinusoidal embeddings and a 2-layer MLP
(width ``4 · model_channels``); class labels, if any, through an embedding added to it.

Parameter names, the module tree and the channel bookkeeping reproduce guided-diffusion's
``UNetModel`` (https://github.com/openai/guided-diffusion, ``guided_diffusion/unet.py``), itself a
superset of improved-diffusion's; hence :meth:`UNet.from_guided_diffusion_flags` takes their
``script_util.create_model`` flags and builds a module whose ``state_dict`` keys and shapes equal
theirs, and :func:`load_guided_diffusion_checkpoint` loads their released ``.pt`` files strictly.

Decoder features for few-shot segmentation (Baranchuk et al. 2022, "Label-Efficient Semantic
Segmentation with Diffusion Models") are read with :meth:`UNet.extract_features`, whose block
indices are 0-based indices into ``output_blocks`` as in their code.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from diffvision.errors import ConfigError
from diffvision.modeling.nn_blocks import (
    AttentionBlock,
    Downsample,
    ResBlock,
    TimestepEmbedSequential,
    Upsample,
    normalization,
    zero_module,
)
from diffvision.modeling.time_embedding import timestep_embedding
from diffvision.utils.safe_files import safe_torch_load

__all__ = [
    "GUIDED_DIFFUSION_DEFAULTS",
    "UNet",
    "default_channel_mult",
    "load_guided_diffusion_checkpoint",
    "parse_guided_diffusion_flags",
]

logger = logging.getLogger(__name__)

#: ``model_and_diffusion_defaults()`` of guided-diffusion, model part: the value of every flag that
#: a command line leaves out. improved-diffusion's flags are a subset with the same defaults.
GUIDED_DIFFUSION_DEFAULTS: dict[str, Any] = {
    "image_size": 64,
    "num_channels": 128,
    "num_res_blocks": 2,
    "num_heads": 4,
    "num_heads_upsample": -1,
    "num_head_channels": -1,
    "attention_resolutions": "16,8",
    "channel_mult": "",
    "dropout": 0.0,
    "class_cond": False,
    "learn_sigma": False,
    "use_checkpoint": False,
    "use_scale_shift_norm": True,
    "resblock_updown": False,
    "use_fp16": False,
    "use_new_attention_order": False,
}

# Diffusion flags that appear in the same MODEL_FLAGS/DIFFUSION_FLAGS strings; they do not shape
# the network and are accepted (and ignored) by the UNet builders.
_DIFFUSION_FLAGS = frozenset(
    {
        "diffusion_steps",
        "noise_schedule",
        "timestep_respacing",
        "use_kl",
        "predict_xstart",
        "rescale_timesteps",
        "rescale_learned_sigmas",
        "sigma_small",
    }
)
_BOOL_FLAGS = frozenset(
    {
        "class_cond",
        "learn_sigma",
        "use_checkpoint",
        "use_scale_shift_norm",
        "resblock_updown",
        "use_fp16",
        "use_new_attention_order",
        "use_kl",
        "predict_xstart",
        "rescale_timesteps",
        "rescale_learned_sigmas",
        "sigma_small",
    }
)


def default_channel_mult(image_size: int) -> tuple[float, ...]:
    """Channel multipliers that guided-/improved-diffusion pick for ``image_size`` (no flag given).

    Raises:
        ValueError: for sizes they do not define (512, 256, 128, 64, 32).
    """
    table: dict[int, tuple[float, ...]] = {
        512: (0.5, 1, 1, 2, 2, 4, 4),
        256: (1, 1, 2, 2, 4, 4),
        128: (1, 1, 2, 3, 4),
        64: (1, 2, 3, 4),
        32: (1, 2, 2, 2),  # improved-diffusion (CIFAR-10)
    }
    if image_size not in table:
        raise ValueError(
            f"no default channel_mult for image_size {image_size}; one of {list(table)}"
        )
    return table[image_size]


def _to_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in (
        "true",
        "t",
        "yes",
        "y",
        "1",
        "false",
        "f",
        "no",
        "n",
        "0",
    ):
        return value.lower() in ("true", "t", "yes", "y", "1")
    raise ValueError(f"flag {name} must be a boolean, got {value!r}")


def _int_list(name: str, value: Any) -> tuple[int, ...]:
    if isinstance(value, str):
        return tuple(int(v) for v in value.split(",") if v.strip())
    if isinstance(value, int):
        return (value,)
    if isinstance(value, Sequence):
        return tuple(int(v) for v in value)
    raise ValueError(f"flag {name} must be a comma-separated string or a list, got {value!r}")


def parse_guided_diffusion_flags(flags: str) -> dict[str, Any]:
    """Parse a guided-diffusion command-line flag string into a dict.

    Example:
        >>> parse_guided_diffusion_flags("--image_size 256 --class_cond False")
        {'image_size': 256, 'class_cond': False}

    Args:
        flags: ``"--name value --name value ..."`` as in their README's ``MODEL_FLAGS``.

    Returns:
        ``{name: value}`` with booleans and numbers converted; lists stay strings.
    """
    tokens = flags.split()
    if len(tokens) % 2:
        raise ValueError(f"flags must come as '--name value' pairs, got {flags!r}")
    out: dict[str, Any] = {}
    for name, value in zip(tokens[::2], tokens[1::2]):
        if not name.startswith("--"):
            raise ValueError(f"expected a flag name starting with '--', got {name!r}")
        key = name[2:]
        if key in _BOOL_FLAGS:
            out[key] = _to_bool(key, value)
        elif key in (
            "attention_resolutions",
            "channel_mult",
            "noise_schedule",
            "timestep_respacing",
        ):
            out[key] = value
        else:
            try:
                out[key] = int(value)
            except ValueError:
                out[key] = float(value)
    return out


class UNet(nn.Module):
    """ADM UNet for ε/x0/v prediction with optional learned variance and class conditioning.

    Args:
        image_size: input resolution ``S`` (square); only used to place attention.
        in_channels: image channels ``C`` (3 for RGB).
        model_channels: base width ``ch``; level ``l`` has ``ch · channel_mult[l]`` channels.
        num_res_blocks: residual blocks per encoder level (the decoder has one more).
        attention_resolutions: feature-map sizes (pixels) that get self-attention, e.g. ``(16, 8)``.
        dropout: dropout probability in the residual blocks.
        channel_mult: channel multiplier per level; ``len(channel_mult) - 1`` downsamplings.
        learn_sigma: output ``2C`` channels (prediction and the variance interpolation ``v``
            of Nichol & Dhariwal 2021 eq. 15) instead of ``C``.
        conv_resample: learned 3×3 convs in the resampling layers (else pooling / plain nearest).
        num_classes: number of classes for class conditioning (``None`` = unconditional).
        null_class: add a learned "no label" embedding at index ``num_classes`` for
            classifier-free guidance (Ho & Salimans 2022); ``y=None`` then means unconditional.
        num_heads: attention heads (when ``num_head_channels == -1``).
        num_head_channels: fixed channels per head (overrides ``num_heads``).
        num_heads_upsample: heads in the decoder; ``-1`` means ``num_heads``.
        use_scale_shift_norm: ADM's AdaGN conditioning in the residual blocks.
        resblock_updown: resample with residual blocks (BigGAN-style) instead of conv layers.
        use_new_attention_order: guided-diffusion's ``QKVAttention`` channel layout.
        use_fp16: run the torso (input/middle/output blocks) in float16, as guided-diffusion does.

    Shapes:
        ``forward(x (B, C, S, S), timesteps (B,), y (B,) | None) -> (B, C or 2C, S, S)``.
    """

    def __init__(
        self,
        *,
        image_size: int,
        in_channels: int = 3,
        model_channels: int = 128,
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (16,),
        dropout: float = 0.0,
        channel_mult: Sequence[float] = (1, 2, 2, 2),
        learn_sigma: bool = False,
        conv_resample: bool = True,
        num_classes: int | None = None,
        null_class: bool = False,
        num_heads: int = 1,
        num_head_channels: int = -1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = False,
        resblock_updown: bool = False,
        use_new_attention_order: bool = False,
        use_fp16: bool = False,
    ):
        super().__init__()
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads
        if image_size % 2 ** (len(channel_mult) - 1):
            raise ValueError(
                f"image_size {image_size} is not divisible by 2**{len(channel_mult) - 1} "
                f"(channel_mult={tuple(channel_mult)})"
            )
        if null_class and num_classes is None:
            raise ValueError("null_class=True needs num_classes")
        self.image_size = image_size
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = in_channels * (2 if learn_sigma else 1)
        self.learn_sigma = learn_sigma
        self.num_res_blocks = num_res_blocks
        self.attention_resolutions = tuple(int(r) for r in attention_resolutions)
        self.channel_mult = tuple(channel_mult)
        self.num_classes = num_classes
        self.null_class = null_class
        attention_ds = {image_size // r for r in self.attention_resolutions}

        time_embed_dim = model_channels * 4
        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, time_embed_dim),
            nn.SiLU(),
            nn.Linear(time_embed_dim, time_embed_dim),
        )
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes + int(null_class), time_embed_dim)

        def res_block(ch_in: int, ch_out: int, **kw: bool) -> ResBlock:
            return ResBlock(
                ch_in,
                time_embed_dim,
                dropout,
                out_channels=ch_out,
                use_scale_shift_norm=use_scale_shift_norm,
                **kw,
            )

        def attention(ch: int, heads: int) -> AttentionBlock:
            return AttentionBlock(
                ch,
                num_heads=heads,
                num_head_channels=num_head_channels,
                use_new_attention_order=use_new_attention_order,
            )

        # Encoder. `skip_chans` records the channels of every activation pushed on the skip stack.
        ch = input_ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))]
        )
        skip_chans = [ch]
        ds = 1  # current downsampling factor
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res_block(ch, int(mult * model_channels))]
                ch = int(mult * model_channels)
                if ds in attention_ds:
                    layers.append(attention(ch, num_heads))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_chans.append(ch)
            if level != len(channel_mult) - 1:
                down = (
                    res_block(ch, ch, down=True)
                    if resblock_updown
                    else Downsample(ch, conv_resample, out_channels=ch)
                )
                self.input_blocks.append(TimestepEmbedSequential(down))
                skip_chans.append(ch)
                ds *= 2

        self.middle_block = TimestepEmbedSequential(
            res_block(ch, ch), attention(ch, num_heads), res_block(ch, ch)
        )

        # Decoder: each block concatenates one skip activation (popped in reverse order).
        self.output_blocks = nn.ModuleList()
        self.output_block_channels: list[int] = []
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                skip_ch = skip_chans.pop()
                layers = [res_block(ch + skip_ch, int(model_channels * mult))]
                ch = int(model_channels * mult)
                if ds in attention_ds:
                    layers.append(attention(ch, num_heads_upsample))
                if level and i == num_res_blocks:
                    up = (
                        res_block(ch, ch, up=True)
                        if resblock_updown
                        else Upsample(ch, conv_resample, out_channels=ch)
                    )
                    layers.append(up)
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
                self.output_block_channels.append(ch)

        self.out = nn.Sequential(
            normalization(ch),
            nn.SiLU(),
            zero_module(nn.Conv2d(input_ch, self.out_channels, 3, padding=1)),
        )
        if use_fp16:
            self.convert_to_fp16()

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_guided_diffusion_flags(cls, **flags: Any) -> UNet:
        """Build the network that guided-/improved-diffusion's ``create_model`` builds.

        Accepts their flag names (``image_size, num_channels, num_res_blocks, channel_mult,
        attention_resolutions, num_heads, num_head_channels, num_heads_upsample, dropout,
        class_cond, learn_sigma, use_scale_shift_norm, resblock_updown, use_new_attention_order,
        use_fp16, use_checkpoint``), as Python values or as the strings of their command lines
        (``"32,16,8"``, ``"True"``). Missing flags take :data:`GUIDED_DIFFUSION_DEFAULTS`.
        Diffusion flags (``diffusion_steps``, ``noise_schedule``, ...) are accepted and ignored.
        ``num_classes`` (default 1000, ImageNet) may be given for class-conditional models.

        Raises:
            ValueError: on an unknown flag name or an unparseable value.
        """
        known = set(GUIDED_DIFFUSION_DEFAULTS) | _DIFFUSION_FLAGS | {"num_classes"}
        unknown = sorted(set(flags) - known)
        if unknown:
            raise ValueError(f"unknown guided-diffusion flag(s) {unknown}; known: {sorted(known)}")
        f = {**GUIDED_DIFFUSION_DEFAULTS, **flags}
        image_size = int(f["image_size"])
        channel_mult = (
            default_channel_mult(image_size)
            if f["channel_mult"] in ("", None, ())
            else tuple(
                float(m) if "." in str(m) else int(m)
                for m in (
                    f["channel_mult"].split(",")
                    if isinstance(f["channel_mult"], str)
                    else f["channel_mult"]
                )
            )
        )
        class_cond = _to_bool("class_cond", f["class_cond"])
        return cls(
            image_size=image_size,
            in_channels=3,
            model_channels=int(f["num_channels"]),
            num_res_blocks=int(f["num_res_blocks"]),
            attention_resolutions=_int_list("attention_resolutions", f["attention_resolutions"]),
            dropout=float(f["dropout"]),
            channel_mult=channel_mult,
            learn_sigma=_to_bool("learn_sigma", f["learn_sigma"]),
            num_classes=int(f.get("num_classes", 1000)) if class_cond else None,
            num_heads=int(f["num_heads"]),
            num_head_channels=int(f["num_head_channels"]),
            num_heads_upsample=int(f["num_heads_upsample"]),
            use_scale_shift_norm=_to_bool("use_scale_shift_norm", f["use_scale_shift_norm"]),
            resblock_updown=_to_bool("resblock_updown", f["resblock_updown"]),
            use_new_attention_order=_to_bool(
                "use_new_attention_order", f["use_new_attention_order"]
            ),
            use_fp16=_to_bool("use_fp16", f["use_fp16"]),
        )

    # ------------------------------------------------------------------ precision
    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the torso (float16 after :meth:`convert_to_fp16`)."""
        return self.input_blocks[0][0].weight.dtype

    def _torso_convs(self) -> list[nn.Module]:
        torso = [*self.input_blocks, self.middle_block, *self.output_blocks]
        return [
            m for block in torso for m in block.modules() if isinstance(m, nn.Conv1d | nn.Conv2d)
        ]

    def convert_to_fp16(self) -> None:
        """Cast the convolutions of the torso to float16 (guided-diffusion's ``use_fp16``)."""
        for m in self._torso_convs():
            m.half()

    # ------------------------------------------------------------------ forward
    def forward(
        self, x: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Predict the network output for noisy images.

        Args:
            x: ``(B, C, S, S)`` noisy images ``x_t``.
            timesteps: ``(B,)`` timesteps (integer indices of the schedule, or floats).
            y: ``(B,)`` int64 class labels; required for class-conditional models without a
                null class. With ``null_class``, ``None`` (or label ``num_classes``) means
                "unconditional".

        Returns:
            ``(B, C, S, S)`` prediction, or ``(B, 2C, S, S)`` with ``learn_sigma`` (the first
            ``C`` channels are the mean prediction, the last ``C`` the variance interpolation).
        """
        emb = self._embed(x, timesteps, y)  # (B, 4ch)
        skips = []
        h = x.type(self.dtype)
        for module in self.input_blocks:
            h = module(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for module in self.output_blocks:
            h = module(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h.type(x.dtype))

    def _embed(
        self, x: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor | None
    ) -> torch.Tensor:
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
        if self.num_classes is None:
            if y is not None:
                raise ValueError("y given to an unconditional UNet (num_classes=None)")
            return emb
        if y is None:
            if not self.null_class:
                raise ValueError("this class-conditional UNet needs labels y (no null class)")
            y = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
        return emb + self.label_emb(y)

    def extract_features(
        self,
        x_t: torch.Tensor,
        timesteps: torch.Tensor,
        blocks: Sequence[int],
        y: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """Decoder activations after ``output_blocks[i]`` for each ``i`` in ``blocks``.

        Baranchuk et al. (2022) use the outputs of decoder blocks ``5, 6, 7, 8, 12`` of the
        256×256 guided-diffusion model (1024, 512, 512, 512, 256 channels at 32, 32, 32, 64,
        128 pixels). Read through forward hooks; the forward pass stops after the deepest
        requested block, so the output head is not computed.

        Args:
            x_t: ``(B, C, S, S)`` noisy images.
            timesteps: ``(B,)`` timesteps (or a scalar tensor used for the whole batch).
            blocks: 0-based indices into ``output_blocks`` (``-1`` style negatives allowed).
            y: optional ``(B,)`` class labels, as for :meth:`forward`.

        Returns:
            One float32 tensor ``(B, C_i, H_i, W_i)`` per entry of ``blocks``, in that order.
        """
        n = len(self.output_blocks)
        idx = []
        for b in blocks:
            if not -n <= int(b) < n:
                raise ValueError(f"block index {b} out of range for {n} output_blocks")
            idx.append(int(b) % n)
        if not idx:
            return []
        last = max(idx)
        captured: dict[int, torch.Tensor] = {}

        def make_hook(i: int):
            def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
                captured[i] = output.float()
                if i == last:
                    raise _StopForward

            return hook

        handles = [self.output_blocks[i].register_forward_hook(make_hook(i)) for i in set(idx)]
        try:
            self(x_t, timesteps, y)
        except _StopForward:
            pass
        finally:
            for h in handles:
                h.remove()
        return [captured[i] for i in idx]


class _StopForward(Exception):
    """Raised from a hook to end a forward pass once the requested features are captured."""


def load_guided_diffusion_checkpoint(
    path_or_state_dict: str | os.PathLike | Mapping[str, torch.Tensor], **flags: Any
) -> UNet:
    """Build a :class:`UNet` from guided-diffusion flags and load their checkpoint strictly.

    Example (the LSUN/FFHQ models of Baranchuk et al.)::

        unet = load_guided_diffusion_checkpoint(
            "lsun_bedroom.pt", attention_resolutions="32,16,8", class_cond=False,
            image_size=256, learn_sigma=True, num_channels=256, num_head_channels=64,
            num_res_blocks=2, resblock_updown=True, use_scale_shift_norm=True, dropout=0.1)

    Args:
        path_or_state_dict: a ``.pt`` file holding their raw ``state_dict`` (or a mapping).
        **flags: their model flags; see :meth:`UNet.from_guided_diffusion_flags`.

    Returns:
        The UNet in eval mode, on CPU.

    Raises:
        InputFileNotFoundError, WeightsError: the file is missing, not a torch file, or holds
            more than tensors and plain data (read with ``weights_only=True``).
        ConfigError: when keys or shapes differ, listing missing/unexpected/mismatched keys.
    """
    if isinstance(path_or_state_dict, Mapping):
        state_dict = dict(path_or_state_dict)
        source = "<state_dict>"
    else:
        source = os.fspath(path_or_state_dict)
        state_dict = safe_torch_load(source, what="guided-diffusion checkpoint")
    if any(k.startswith("module.") for k in state_dict):  # saved from a DDP wrapper
        state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    unet = UNet.from_guided_diffusion_flags(**flags)
    expected = unet.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or mismatched:

        def head(items: list[str]) -> str:
            return ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")

        raise ConfigError(
            f"checkpoint {source} does not match the UNet built from flags {flags}: "
            f"missing keys [{head(missing)}]; unexpected keys [{head(unexpected)}]; "
            f"shape mismatches [{head(mismatched)}]. Check the model flags (num_channels, "
            "channel_mult, attention_resolutions, num_head_channels, learn_sigma, class_cond, "
            "resblock_updown, use_scale_shift_norm)."
        )
    unet.load_state_dict(state_dict, strict=True)
    logger.info("loaded guided-diffusion checkpoint %s (%d tensors)", source, len(state_dict))
    return unet.eval()
