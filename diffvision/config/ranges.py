"""Allowed ranges of numeric config keys, checked once when a config is loaded.

Without them a zero or negative count reached a library constructor (``num_proposals must be >=
1``) or torchvision (``height and width must be > 0``) as a traceback. Each task registers the
ranges of its own keys next to its defaults; :func:`check_ranges` (called by
:func:`diffvision.engine.defaults.load_config`) stops at the first key out of range with a
:class:`~diffvision.errors.ConfigError` naming it::

    register_ranges({"MODEL.DiffusionDet.NUM_PROPOSALS": ">=1", "SOLVER.MOMENTUM": "[0,1)"})

A range is ``>0``, ``>=0``, ``>=1`` or an interval ``[a,b]`` / ``(a,b)`` / ``[a,b)`` / ``(a,b]``;
a list or tuple value is checked element by element, and a float must be finite.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from diffvision.errors import ConfigError

__all__ = ["check_ranges", "ranges_under", "register_ranges"]

_RANGES: dict[str, str] = {}
_INTERVAL = re.compile(r"([\[(])\s*(-?[\d.]+)\s*,\s*(-?[\d.]+)\s*([\])])")


def _contains(spec: str, x: float) -> bool:
    if spec.startswith(">="):
        return x >= float(spec[2:])
    if spec.startswith(">"):
        return x > float(spec[1:])
    match = _INTERVAL.fullmatch(spec)
    if match is None:
        raise ValueError(f"not a range: {spec!r}")
    left, lo, hi, right = match.groups()
    lo_ok = x >= float(lo) if left == "[" else x > float(lo)
    hi_ok = x <= float(hi) if right == "]" else x < float(hi)
    return lo_ok and hi_ok


def _describe(spec: str) -> str:
    """``">=1"`` -> ``">= 1"``, ``"[0,1)"`` -> ``"in [0, 1)"``."""
    if spec.startswith(">"):
        op = ">=" if spec.startswith(">=") else ">"
        return f"{op} {spec[len(op) :]}"
    return "in " + spec.replace(",", ", ")


def register_ranges(ranges: Mapping[str, str], *, prefix: str = "") -> None:
    """Add ``{key: range}``, each key under ``prefix`` (``"MODEL.DDPM."``: ``"NUM_TIMESTEPS"``
    is ``MODEL.DDPM.NUM_TIMESTEPS``); a key registered again gets the new range."""
    for key, spec in ranges.items():
        _contains(spec, 0.0)  # ValueError now for a malformed range, not at load time
        _RANGES[prefix + key] = spec


def _lookup(cfg, key: str):
    node = cfg
    for part in key.split("."):
        if not hasattr(node, "keys") or part not in node:
            return None
        node = node[part]
    return node


def check_ranges(cfg) -> None:
    """Check every registered key that ``cfg`` has.

    Raises:
        ConfigError: ``<KEY> must be <range>, got <value>`` for the first key out of range.
    """
    for key, spec in _RANGES.items():
        value = _lookup(cfg, key)
        if value is None or isinstance(value, (str, bool)):
            continue
        items = value if isinstance(value, (list, tuple)) else [value]
        for item in items:
            if isinstance(item, bool) or not isinstance(item, (int, float)):
                continue
            if isinstance(item, float) and not math.isfinite(item):
                raise ConfigError(f"{key} must be a finite number, got {value!r}")
            if not _contains(spec, item):
                each = " (each element)" if isinstance(value, (list, tuple)) else ""
                raise ConfigError(f"{key}{each} must be {_describe(spec)}, got {value!r}")


register_ranges(
    {
        # engine
        "SOLVER.MAX_ITER": ">=0",
        "SOLVER.BASE_LR": ">0",
        "SOLVER.BASE_LR_END": ">=0",
        "SOLVER.MOMENTUM": "[0,1)",
        "SOLVER.BETAS": "[0,1)",
        "SOLVER.WEIGHT_DECAY": ">=0",
        "SOLVER.WEIGHT_DECAY_NORM": ">=0",
        "SOLVER.BIAS_LR_FACTOR": ">=0",
        "SOLVER.BACKBONE_MULTIPLIER": ">=0",
        "SOLVER.GAMMA": ">0",
        "SOLVER.STEPS": ">=0",
        "SOLVER.POLY_LR_POWER": ">=0",
        "SOLVER.WARMUP_FACTOR": "[0,1]",
        "SOLVER.WARMUP_ITERS": ">=0",
        "SOLVER.CHECKPOINT_PERIOD": ">=0",
        "SOLVER.IMS_PER_BATCH": ">=1",
        "SOLVER.CLIP_GRADIENTS.CLIP_VALUE": ">0",
        "SOLVER.CLIP_GRADIENTS.NORM_TYPE": ">0",
        "TEST.EVAL_PERIOD": ">=0",
        "TEST.IMS_PER_BATCH": ">=1",
        "LOG_PERIOD": ">=1",
        "DATALOADER.NUM_WORKERS": ">=0",
        "DATALOADER.REPEAT_THRESHOLD": ">=0",
        "MODEL_EMA.DECAY": "[0,1]",
        "MODEL_EMA.START_ITER": ">=0",
        "MODEL.PIXEL_STD": ">0",
        "INPUT.MIN_SIZE_TRAIN": ">=1",
        "INPUT.MAX_SIZE_TRAIN": ">=1",
        "INPUT.MIN_SIZE_TEST": ">=1",
        "INPUT.MAX_SIZE_TEST": ">=1",
        "TEST.AUG.MIN_SIZES": ">=1",
        "TEST.AUG.MAX_SIZE": ">=1",
    }
)


def ranges_under(prefix: str) -> dict[str, str]:
    """The registered ranges of the keys under ``prefix``, keyed without it (for a task whose
    section mirrors another's, e.g. ``MODEL.DiffusionInst.`` mirroring ``MODEL.DiffusionDet.``)."""
    return {k[len(prefix) :]: v for k, v in _RANGES.items() if k.startswith(prefix)}
