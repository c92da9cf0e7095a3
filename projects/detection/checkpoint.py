"""Loading DiffusionDet weights: official checkpoints, diffvision checkpoints, ImageNet backbones.

:func:`load_weights` accepts

- a full-model checkpoint in the official key layout (reference diffusiondet.md §5.2): detectron2's
  ``{"model": state_dict, ...}`` wrapper or a bare state_dict, numpy or torch values, the 12
  float64 schedule buffers, LVIS's ``criterion.fed_loss_cls_weights``. diffvision's own
  checkpoints use the same layout;
- a backbone-only ImageNet file for ``MODEL.WEIGHTS`` at the start of training: detectron2's
  ``R-50.pkl``-style pickles (``stem.conv1.weight``, ``res2.0.conv1.norm.weight``, ...),
  torchvision ResNet ``.pth`` files (``conv1.weight``, ``layer1.0.conv1.weight``, ...) or Swin
  files (``patch_embed.*``, ``layers.*``), loaded into ``backbone.bottom_up``;

from a local path, an ``http(s)://`` URL or a ``detectron2://`` name.
"""

from __future__ import annotations

import logging
import os

import torch
from torch import nn

from diffvision.modeling.weight_files import backbone_state_dict, read_state_dict

__all__ = ["load_weights"]

logger = logging.getLogger(__name__)

# Present in LVIS checkpoints only; recomputed from the dataset when the model uses fed loss.
_OPTIONAL_KEYS = ("criterion.fed_loss_cls_weights",)
_FULL_MODEL_PREFIXES = ("backbone.", "head.", "criterion.", "betas", "alphas_cumprod")


def _summary(keys: list[str], limit: int = 10) -> str:
    shown = ", ".join(keys[:limit])
    return f"{len(keys)} ({shown}{', ...' if len(keys) > limit else ''})"


def _load_checked(
    module: nn.Module,
    state: dict[str, torch.Tensor],
    *,
    strict: bool,
    source: str,
    optional: tuple[str, ...] = (),
    regenerated: tuple[str, ...] = (),
) -> dict[str, list[str]]:
    target = module.state_dict()
    missing = [k for k in target if k not in state and not k.endswith(regenerated)]
    unexpected = [k for k in state if k not in target]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(target[k].shape)}"
        for k in state
        if k in target and state[k].shape != target[k].shape
    ]
    hard_missing = [k for k in missing if k not in optional]
    hard_unexpected = [k for k in unexpected if k not in optional]
    if strict and (hard_missing or hard_unexpected or mismatched):
        parts = [f"cannot load {source} strictly:"]
        if hard_missing:
            parts.append(f"missing keys: {_summary(hard_missing)}")
        if hard_unexpected:
            parts.append(f"unexpected keys: {_summary(hard_unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches: {_summary(mismatched)}")
        parts.append("(pass strict=False to load the matching part, e.g. for another NUM_CLASSES)")
        raise ValueError(" ".join(parts))
    bad = {m.split(" ")[0] for m in mismatched}
    loadable = {k: v for k, v in state.items() if k in target and k not in bad}
    module.load_state_dict(loadable, strict=False)
    report = {"missing": missing, "unexpected": unexpected, "mismatched": mismatched}
    for name, keys in report.items():
        if keys:
            logger.warning("%s: %s keys not loaded: %s", source, name, _summary(keys))
    return report


def load_weights(
    model: nn.Module, path_or_url: str | os.PathLike, *, strict: bool = True
) -> dict[str, object]:
    """Load a checkpoint or an ImageNet backbone file into a DiffusionDet model.

    Args:
        model: a :class:`~projects.detection.detector.DiffusionDet` (or a DDP wrapper of one).
        path_or_url: local path, ``http(s)://`` URL or ``detectron2://`` name.
        strict: raise on missing, unexpected or mis-shaped keys (the optional LVIS buffer
            ``criterion.fed_loss_cls_weights`` excepted); with False, load what matches and log
            the rest.

    Returns:
        ``{"format": "full" | "detectron2-resnet" | "torchvision-resnet" | "swin", "missing": [...],
        "unexpected": [...], "mismatched": [...]}``.

    Raises:
        ValueError: with ``strict``, listing the missing/unexpected/mismatched keys; or a file of
            unknown naming.
        FileNotFoundError, RuntimeError: a path that does not exist, a URL that cannot be fetched.
    """
    model = getattr(model, "module", model)
    state = read_state_dict(path_or_url)
    source = os.fspath(path_or_url)
    if any(k.startswith(_FULL_MODEL_PREFIXES) for k in state):
        info = _load_checked(model, state, strict=strict, source=source, optional=_OPTIONAL_KEYS)
        logger.info("Loaded DiffusionDet weights from %s", source)
        return {"format": "full", **info}
    fmt, bb_state = backbone_state_dict(state)
    bottom_up = model.backbone.bottom_up
    info = _load_checked(
        bottom_up,
        bb_state,
        strict=strict,
        source=f"{source} ({fmt} backbone)",
        # a constant rebuilt by the module; a counter that ImageNet files may lack
        regenerated=("relative_position_index", "num_batches_tracked"),
    )
    logger.info("Initialised backbone.bottom_up from %s (%s naming)", source, fmt)
    return {"format": fmt, **info}
