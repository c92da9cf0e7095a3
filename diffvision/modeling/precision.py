"""Reduced-precision inference: which number formats run where, and weights converted once.

A model runs its convolutions and matmuls in ``bf16`` or ``fp16`` through a *copy* of its
modules whose weights were converted once (:func:`reduced_copy`); the float32 modules stay as
they are for training, checkpoints and ``state_dict``. The caller keeps everything that must not
lose precision in float32 (box coordinates, diffusion updates, scores, NMS, returned tensors).

bfloat16 keeps float32's exponent range and 8 significant bits: enough for features, not for box
coordinates (at 512-1024 px, consecutive bf16 values are 4 px apart). float16 has 11 significant
bits but a narrow range. CPUs with AVX-512 BF16 or AMX run bf16 matmuls and convolutions natively
(about twice the float32 throughput); no x86 CPU torch supports runs float16 matmuls natively,
so float16 on a CPU is refused (:func:`check_precision`).
"""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Iterable

import torch
from torch import nn

from diffvision.errors import ConfigError
from diffvision.modeling.resnet import ConvNorm, foldable_norm, folded_conv

__all__ = [
    "PRECISIONS",
    "check_precision",
    "cpu_native_bf16",
    "describe_precision",
    "fold_sibling_norms",
    "reduced_copy",
    "weights_fingerprint",
]

logger = logging.getLogger(__name__)

#: precision name -> torch dtype of the convolutions and matmuls
PRECISIONS: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}

#: /proc/cpuinfo flags of native bfloat16 arithmetic (AVX-512 BF16, AMX-BF16)
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_native_bf16() -> tuple[str, ...]:
    """The CPU's native bf16 instruction sets (flags in ``/proc/cpuinfo``); empty when it has
    none or the file cannot be read (non-Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(f.read().split())
    except OSError:
        return ()
    return tuple(flag for flag in _BF16_FLAGS if flag in flags)


def check_precision(precision: str, device: torch.device, *, allow_slow: bool = False):
    """The dtype of ``precision`` on ``device``.

    Args:
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"``.
        device: where the model runs.
        allow_slow: accept float16 on a CPU (for measurements: it is far slower than float32).

    Raises:
        ConfigError: an unknown name, or ``fp16`` on a CPU (torch runs CPU float16 matmuls and
            convolutions without native support, measured many times slower than float32).
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"TEST.PRECISION {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and torch.device(device).type == "cpu" and not allow_slow:
        raise ConfigError(
            "TEST.PRECISION fp16 is refused on the CPU: torch has no native CPU float16 matmul or "
            "convolution, and fp16 inference measured slower than fp32 (use bf16, or fp16 on a GPU)"
        )
    return PRECISIONS[precision]


def describe_precision(precision: str, device: torch.device) -> str:
    """One log line: the precision and, on a CPU, whether it has native bf16 support."""
    text = f"inference precision {precision}"
    if torch.device(device).type == "cpu":
        native = cpu_native_bf16()
        text += f"; CPU native bf16: {'yes (' + ', '.join(native) + ')' if native else 'no'}"
        if precision == "bf16" and not native:
            text += " (bf16 is emulated and may be slower than fp32)"
    return text


def weights_fingerprint(modules: Iterable[nn.Module]) -> tuple:
    """A value that changes whenever a parameter or buffer of ``modules`` is replaced, moved or
    written in place (optimizer steps, ``load_state_dict``, ``.to``): storage address and
    version counter of every tensor."""
    key = []
    for module in modules:
        for t in (*module.parameters(), *module.buffers()):
            key.append((t.data_ptr(), t._version, t.dtype))
    return tuple(key)


def reduced_copy(
    module: nn.Module,
    dtype: torch.dtype,
    *,
    channels_last: bool = False,
    keep_float32: tuple[str, ...] = (),
) -> nn.Module:
    """An inference-only copy of ``module`` with its weights converted once to ``dtype``.

    :class:`~diffvision.modeling.resnet.ConvNorm` layers whose norm folds (FrozenBN, eval-mode
    BN), and convolutions followed by such a norm as their next sibling (timm and torchvision
    encoders, :func:`fold_sibling_norms`), get the norm folded into the convolution in float32
    first, then rounded once: one reduced-precision convolution instead of a convolution and a
    norm whose statistics and arithmetic would each be rounded to ``dtype``. The copy is in eval
    mode, has no gradients, and, with ``channels_last``, holds its 4-D weights in channels-last
    memory format (oneDNN's preferred layout for reduced-precision convolutions).

    Args:
        module: the float32 (or float64) module; not modified.
        dtype: ``torch.bfloat16`` or ``torch.float16`` (``float32`` makes a plain copy).
        channels_last: convert 4-D parameters to channels-last.
        keep_float32: names of submodules (the last part of their dotted name) that stay in
            float32, e.g. small output layers whose results must not be rounded to ``dtype``.

    Returns:
        the converted copy.
    """
    with torch.inference_mode(False), torch.no_grad():
        reduced = copy.deepcopy(module).eval()
        for m in reduced.modules():
            if isinstance(m, ConvNorm) and m._foldable():
                weight, bias = m.folded_weight_bias()
                m.weight = nn.Parameter(weight)
                m.bias = nn.Parameter(bias)
                m.norm = None
        fold_sibling_norms(reduced)
        reduced.to(dtype)
        for name, m in reduced.named_modules():
            if name.rsplit(".", 1)[-1] in keep_float32:
                m.float()
        if channels_last:
            reduced.to(memory_format=torch.channels_last)
        reduced.requires_grad_(False)
    return reduced


def _after_norm(norm: nn.Module) -> nn.Module:
    """What is left of a folded norm: timm's norm+activation layers keep their dropout and
    activation; a plain norm leaves nothing."""
    if hasattr(norm, "act") and hasattr(norm, "drop"):
        return nn.Sequential(norm.drop, norm.act)
    return nn.Identity()


def fold_sibling_norms(module: nn.Module) -> int:
    """Fold every batch norm that is a fixed affine map (see
    :func:`~diffvision.modeling.resnet.foldable_norm`) into the
    ``nn.Conv2d`` registered just before it in the same parent, in place; returns the count.

    ``conv`` then ``norm`` as consecutive children is how timm (EfficientNet ``conv_pw``/``bn1``,
    ResNet ``conv1``/``bn1``) and torchvision write a convolution followed by its norm: the conv
    becomes ``W * s``, ``(b - mean) * s + beta`` with ``s = gamma / sqrt(var + eps)``, and the norm
    is replaced by what follows it inside (timm's activation) or nothing. A pair whose channel
    counts differ is left alone. Run it on an inference copy: the modules' keys change.
    """
    folded = 0
    with torch.no_grad():
        for parent in list(module.modules()):
            names = list(parent._modules)
            for conv_name, norm_name in zip(names, names[1:]):
                conv, norm = parent._modules[conv_name], parent._modules[norm_name]
                if not isinstance(conv, nn.Conv2d) or isinstance(conv, ConvNorm):
                    continue
                if not foldable_norm(norm) or norm.weight.numel() != conv.out_channels:
                    continue
                weight, bias = folded_conv(conv.weight, conv.bias, norm)
                conv.weight = nn.Parameter(weight)
                conv.bias = nn.Parameter(bias)
                parent._modules[norm_name] = _after_norm(norm)
                folded += 1
    return folded
