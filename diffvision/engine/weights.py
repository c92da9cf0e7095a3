"""The one weight loader: ``load_weights(model, path)`` for every task, dispatched by content.

Reading bytes is :func:`diffvision.modeling.weight_files.read_state_dict`'s job (local path,
``http(s)://`` URL or ``detectron2://`` name; detectron2 ``.pkl``; the ``"model"`` entry of a
wrapped checkpoint). This module decides *where* the tensors go:

1. the whole model, when the file's names are the model's own: diffvision checkpoints,
   official DiffusionDet / detectron2 checkpoints (``{"model": ...}`` or bare), DDPM runs;
2. a submodule whose names match (e.g. a guided-diffusion UNet file into ``DDPMModel.unet``);
3. a renamed ImageNet backbone: every registered converter (detectron2 ``R-50.pkl`` names,
   torchvision ResNet ``.pth``, Swin files, and any a project adds with
   :func:`register_weight_converter`) is tried and the one matching most keys of some
   submodule wins (``backbone.bottom_up`` of DiffusionDet, ``network.backbone`` of DDeP).

Strict by default: a missing, unexpected or mis-shaped key raises
:class:`~diffvision.errors.WeightsError` listing them. A model may declare
``weights_optional_keys`` (names that may be absent or extra, e.g. LVIS's
``criterion.fed_loss_cls_weights``) and ``weights_reinit_on_mismatch`` (name prefixes whose shape
may differ and then keep their initialisation, e.g. a segmentation head for another class count).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from diffvision.errors import WeightsError
from diffvision.modeling.weight_files import backbone_state_dict, read_state_dict
from diffvision.utils.safe_files import safe_torch_load

__all__ = ["load_weights", "read_weights", "register_weight_converter", "state_dict_differences"]

logger = logging.getLogger(__name__)

# Buffers a module rebuilds itself (constants) or that ImageNet files may lack (counters).
_REGENERATED = ("relative_position_index", "num_batches_tracked")

Converter = Callable[[Mapping[str, torch.Tensor]], "tuple[str, dict[str, torch.Tensor]] | None"]


def _detectron2_style_backbone(state: Mapping[str, torch.Tensor]):
    try:
        return backbone_state_dict(state)
    except ValueError:
        return None


_CONVERTERS: list[Converter] = [_detectron2_style_backbone]


def register_weight_converter(converter: Converter) -> Converter:
    """Add ``converter(state) -> (format_name, renamed_state) | None`` to the renamings tried
    when a file's names match no part of the model. Returns it (usable as a decorator)."""
    if converter not in _CONVERTERS:
        _CONVERTERS.append(converter)
    return converter


def read_weights(path_or_url: str | os.PathLike, *, use_ema: bool = False) -> dict[str, Any]:
    """``{name: tensor}`` of a weight file; with ``use_ema`` the ``"ema"`` entry of a diffvision
    checkpoint when it has one (else its ``"model"`` entry)."""
    if use_ema and os.path.isfile(path_or_url):
        # weights_only, admitting the NumPy RNG states engine checkpoints hold; never full pickle
        data = safe_torch_load(path_or_url, what="weight file")
        if isinstance(data, Mapping) and isinstance(data.get("ema"), Mapping):
            logger.info("Using the EMA weights of %s", path_or_url)
            return dict(data["ema"])
    return read_state_dict(path_or_url)


def _summary(keys: list[str], limit: int = 10) -> str:
    shown = ", ".join(keys[:limit])
    return f"{len(keys)} ({shown}{', ...' if len(keys) > limit else ''})"


def _best_placement(
    model: nn.Module, state: Mapping[str, torch.Tensor]
) -> tuple[str, str, dict[str, torch.Tensor], int]:
    """``(format, submodule prefix, state, number of matching keys)`` of the best placement:
    the (renaming, submodule) pair under which most of the file's names exist in the model;
    the whole model and the file's own names win ties."""
    all_keys = list(model.state_dict())
    prefixes = [""] + [name for name, _ in model.named_modules() if name]
    candidates = [("full", dict(state))]
    for converter in _CONVERTERS:
        converted = converter(state)
        if converted is not None:
            candidates.append((converted[0], dict(converted[1])))
    best: tuple[str, str, dict[str, torch.Tensor], int] = ("", "", {}, 0)
    for fmt, cand in candidates:
        for prefix in prefixes:
            head = prefix + "." if prefix else ""
            names = {k[len(head) :] for k in all_keys if k.startswith(head)}
            n = sum(1 for k in cand if k in names)
            # More names placed wins; at equal count, the renaming that leaves fewer names out
            # (e.g. one that drops a classifier) wins.
            if n > best[3] or (n == best[3] and n > 0 and len(cand) < len(best[2])):
                best = (fmt, prefix, cand, n)
        if best[3] == len(best[2]):
            break  # every name placed: a renaming cannot do better
    return best


def state_dict_differences(
    target: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]
) -> dict[str, list[str]]:
    """What keeps ``state`` from loading strictly into a module whose state dict is ``target``:
    ``{"missing": [key], "unexpected": [key], "mismatched": ["key (file shape) vs (model
    shape)"]}``, each empty when it fits."""
    return {
        "missing": [k for k in target if k not in state],
        "unexpected": [k for k in state if k not in target],
        "mismatched": [
            f"{k} {tuple(state[k].shape)} vs {tuple(target[k].shape)}"
            for k in state
            if k in target and tuple(state[k].shape) != tuple(target[k].shape)
        ],
    }


def _load_checked(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    strict: bool,
    source: str,
    optional: tuple[str, ...],
    reinit: tuple[str, ...],
) -> dict[str, list[str]]:
    target = module.state_dict()
    differences = state_dict_differences(target, state)
    missing = [k for k in differences["missing"] if not k.endswith(_REGENERATED)]
    unexpected, mismatched = differences["unexpected"], differences["mismatched"]
    hard_missing = [k for k in missing if k not in optional]
    hard_unexpected = [k for k in unexpected if k not in optional]
    hard_mismatched = [m for m in mismatched if not m.startswith(reinit)] if reinit else mismatched
    if strict and (hard_missing or hard_unexpected or hard_mismatched):
        parts = [f"cannot load {source} strictly:"]
        if hard_missing:
            parts.append(f"missing keys: {_summary(hard_missing)}")
        if hard_unexpected:
            parts.append(f"unexpected keys: {_summary(hard_unexpected)}")
        if hard_mismatched:
            parts.append(f"shape mismatches: {_summary(hard_mismatched)}")
        parts.append("(pass strict=False to load the matching part, e.g. for another NUM_CLASSES)")
        raise WeightsError(" ".join(parts))
    bad = {m.split(" ")[0] for m in mismatched}
    loadable = {k: v for k, v in state.items() if k in target and k not in bad}
    module.load_state_dict(loadable, strict=False)
    report = {"missing": missing, "unexpected": unexpected, "mismatched": mismatched}
    for name, keys in report.items():
        if keys:
            logger.warning("%s: %s keys not loaded: %s", source, name, _summary(keys))
    return report


def load_weights(
    model: nn.Module,
    path_or_url: str | os.PathLike,
    *,
    strict: bool = True,
    use_ema: bool = False,
) -> dict[str, Any]:
    """Load a weight file into ``model`` (or the submodule its names fit), strictly by default.

    Args:
        model: any task's model (a DDP wrapper is unwrapped).
        path_or_url: local path, ``http(s)://`` URL or ``detectron2://`` name.
        strict: raise on missing, unexpected or mis-shaped keys (the model's
            ``weights_optional_keys`` / ``weights_reinit_on_mismatch`` excepted); with False,
            load what matches and log the rest.
        use_ema: take a diffvision checkpoint's EMA weights when it has them.

    Returns:
        ``{"format": "full" or the converter's name, "target": submodule name ("" = whole
        model), "missing": [...], "unexpected": [...], "mismatched": [...]}``.

    Raises:
        WeightsError: with ``strict``, listing the missing/unexpected/mismatched keys; or a file
            none of whose names fits the model under any known naming.
        FileNotFoundError: a path that does not exist.
    """
    model = getattr(model, "module", model)
    source = os.fspath(path_or_url)
    state = read_weights(path_or_url, use_ema=use_ema)
    fmt, prefix, placed, matched = _best_placement(model, state)
    if matched == 0:
        sample = sorted(state)[:5]
        raise WeightsError(
            f"{source}: no tensor name fits {type(model).__name__} under any known naming "
            f"(keys like {sample}); expected this model's own names, detectron2 ResNet names "
            "(stem.conv1.weight, res2.0.conv1.norm.weight, ...), torchvision ResNet names "
            "(conv1.weight, layer1.0.conv1.weight, ...) or Swin names (patch_embed.*)"
        )
    target = model.get_submodule(prefix) if prefix else model
    cut = len(prefix) + 1 if prefix else 0
    optional = tuple(
        k[cut:] for k in getattr(model, "weights_optional_keys", ()) if k.startswith(prefix)
    )
    reinit = tuple(
        k[cut:] for k in getattr(model, "weights_reinit_on_mismatch", ()) if k.startswith(prefix)
    )
    where = f" ({fmt} into {prefix})" if prefix else ""
    info = _load_checked(
        target, placed, strict=strict, source=source + where, optional=optional, reinit=reinit
    )
    logger.info("Loaded %s%s", source, where)
    return {"format": fmt, "target": prefix, **info}
