"""Allowed ranges of numeric config keys, declared beside the keys and checked once when a
config is loaded.

Every key is declared once, with its default and (when numeric) its range, by
:func:`add_keys`::

    add_keys(cfg, "MODEL.DiffusionDet", {
        "NUM_PROPOSALS": Ranged(300, ">=1"),  # default 300, any value >= 1
        "ACTIVATION": "relu",                 # no range
    })

:func:`check_ranges` (called by :func:`diffvision.engine.defaults.load_config`) stops at the
first key out of range with a :class:`~diffvision.errors.ConfigError` naming it, so a value the
range admits is one the builders and constructors accept.

A range is ``>0``, ``>=0``, ``>=1`` or an interval ``[a,b]`` / ``(a,b)`` / ``[a,b)`` / ``(a,b]``,
optionally followed by ``multiple of N`` (``">=32 multiple of 32"``); a list or tuple value is
checked element by element, and a float must be finite. A rule between two keys (an attention
width divisible by its head count) is checked by the builder that reads both.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

from diffvision.config.config import CN, CfgNode
from diffvision.errors import ConfigError

__all__ = ["Ranged", "add_keys", "check_ranges", "register_ranges", "registered_ranges"]

_RANGES: dict[str, str] = {}
_INTERVAL = re.compile(r"([\[(])\s*(-?[\d.]+)\s*,\s*(-?[\d.]+)\s*([\])])")


_MULTIPLE = re.compile(r"(.*\S)\s+multiple of (\d+)")


def _contains(spec: str, x: float) -> bool:
    multiple = _MULTIPLE.fullmatch(spec)
    if multiple is not None:
        spec, step = multiple.group(1), int(multiple.group(2))
        return float(x).is_integer() and int(x) % step == 0 and _contains(spec, x)
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
    """``">=1"`` -> ``">= 1"``, ``"[0,1)"`` -> ``"in [0, 1)"``, ``">=32 multiple of 32"`` ->
    ``">= 32 and a multiple of 32"``."""
    multiple = _MULTIPLE.fullmatch(spec)
    if multiple is not None:
        return f"{_describe(multiple.group(1))} and a multiple of {multiple.group(2)}"
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


def registered_ranges() -> dict[str, str]:
    """A copy of every registered ``{full key: range}``."""
    return dict(_RANGES)


class Ranged(NamedTuple):
    """A key's default together with its valid range (see the module docstring)."""

    default: Any
    range: str


def add_keys(
    cfg: CfgNode, section: str, keys: Mapping[str, Any], *, keep_existing: bool = False
) -> CfgNode:
    """Add ``keys`` under the dotted ``section`` of ``cfg`` (created when missing) and register
    the range of every :class:`Ranged` value; return the section node.

    Args:
        section: e.g. ``"MODEL.DiffusionDet"``; ``""`` for the top level.
        keys: ``{KEY: default}`` or ``{KEY: Ranged(default, range)}``.
        keep_existing: leave keys another task added first at their value (shared sections).
    """
    node = cfg
    for part in section.split(".") if section else ():
        if part not in node:
            node[part] = CN()
        node = node[part]
    prefix = f"{section}." if section else ""
    for key, value in keys.items():
        if isinstance(value, Ranged):
            register_ranges({key: value.range}, prefix=prefix)
            value = value.default
        if not (keep_existing and key in node):
            node[key] = value
    return node
