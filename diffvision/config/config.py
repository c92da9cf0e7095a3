"""Detectron2-style configuration nodes with strict, helpful validation.

A :class:`CfgNode` is a yacs node (UPPER_CASE keys, attribute access) that adds:

- ``_BASE_`` inheritance: a YAML file may name one base file (or a list) by a path relative to
  itself; bases are merged first, the file's own values last.
- Strict merging: an unknown key or a value of the wrong type fails at load time with
  :class:`ConfigError`, naming the key, where the value came from (file or command line) and the
  closest valid keys.
- Command-line overrides: ``merge_from_list(["SOLVER.BASE_LR", "0.1", ...])`` with the same checks.
- Compatibility keys (:func:`add_compat_key`): keys kept only so official detectron2 / DiffusionDet
  files load. A merge that sets one to a value diffvision does not honour logs one warning naming
  the key, never silently.

Tasks extend the default tree through :func:`add_config_extension` (called by
``diffvision.engine.tasks.register_task``); :func:`~diffvision.config.defaults.get_cfg` applies
every extension.
"""

from __future__ import annotations

import ast
import copy
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml
from yacs.config import CfgNode as _YacsCfgNode

from diffvision.errors import ConfigError, did_you_mean

__all__ = [
    "CN",
    "COMPAT_KEYS",
    "CfgNode",
    "ConfigError",
    "add_compat_key",
    "add_config_extension",
    "apply_config_extensions",
    "load_yaml",
]

logger = logging.getLogger(__name__)

BASE_KEY = "_BASE_"

COMPAT_KEYS: dict[str, Any] = {}
"""Full key → the value diffvision behaves as if it had, or ``fn(cfg) -> value``."""


def add_compat_key(key: str, honoured: Any) -> None:
    """Declare ``key`` as accepted only so official files load (no builder reads it).

    Args:
        key: full dotted key, e.g. ``"MODEL.ROI_HEADS.NUM_CLASSES"``.
        honoured: the value diffvision's behaviour corresponds to, or a function of the merged
            config returning it (e.g. ``lambda cfg: cfg.MODEL.DiffusionDet.NUM_CLASSES``). A merge
            that leaves the key at any other value logs one warning naming it.
    """
    COMPAT_KEYS[key] = honoured


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return a == b


def _all_key_paths(node: _YacsCfgNode, prefix: str = "") -> list[str]:
    keys = []
    for key, value in node.items():
        path = f"{prefix}{key}"
        keys.append(path)
        if isinstance(value, _YacsCfgNode):
            keys.extend(_all_key_paths(value, path + "."))
    return keys


def _coerce(value: Any, default: Any, key: str, source: str) -> Any:
    """Return ``value`` converted to the type of ``default``, or raise :class:`ConfigError`."""
    if default is None or value is None:
        return value
    if isinstance(value, str) and not isinstance(default, str):
        # YAML reads detectron2's ``STEPS: (210000, 250000)`` as a string: decode Python literals
        # like yacs does.
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            pass
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
    elif isinstance(default, (list, tuple)):
        if isinstance(value, (list, tuple)):
            return type(default)(value)
    elif isinstance(default, _YacsCfgNode):
        if isinstance(value, dict):
            return value
    else:
        return value
    if isinstance(default, _YacsCfgNode):
        raise ConfigError(
            f"Config key '{key}' (from {source}) is a section of keys "
            f"({', '.join(list(default)[:4])}{', ...' if len(default) > 4 else ''}), but got "
            f"{value!r} of type {type(value).__name__}."
        )
    raise ConfigError(
        f"Config key '{key}' (from {source}) expects a value of type "
        f"{type(default).__name__} like {default!r}, but got {value!r} "
        f"of type {type(value).__name__}."
    )


def _decode_cli_value(text: str) -> Any:
    """Parse a command-line value the way yacs does: a Python literal if possible, else a string."""
    if not isinstance(text, str):
        return text
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        lowered = text.strip().lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        if lowered in ("none", "null", "~"):
            return None
        return text


MAX_YAML_VALUES = 100_000
"""Values a config file may expand to with its aliases resolved (a real config has hundreds);
more is an alias bomb, refused before anything is expanded."""


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """Nodes of ``node`` with every alias expanded, counted on the shared graph (each distinct
    node once, so the count itself never expands anything)."""
    key = id(node)
    if key not in memo:
        memo[key] = 0  # a recursive alias counts as one
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        memo[key] = 1 + sum(_expanded_size(child, memo) for child in children)
    return memo[key]


def load_yaml(path: str | Path) -> dict:
    """Read one YAML file without resolving ``_BASE_``; missing or malformed files and alias
    bombs (more than :data:`MAX_YAML_VALUES` values once aliases are expanded) raise."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file not found: '{path}'.")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        if root is not None and _expanded_size(root, {}) > MAX_YAML_VALUES:
            raise ConfigError(
                f"Config file '{path}' expands to more than {MAX_YAML_VALUES:,} values through "
                "its YAML aliases (&name / *name); expected a config, not an alias bomb"
            )
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"Config file '{path}' is not valid YAML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"Config file '{path}' is not UTF-8 text (byte {exc.start}: {exc.reason}); expected a "
            "YAML file"
        ) from None
    except OSError as exc:
        raise ConfigError(f"Config file '{path}' cannot be read: {exc.strerror or exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"Config file '{path}' must hold a mapping at top level, got {type(data).__name__}."
        )
    return data


class CfgNode(_YacsCfgNode):
    """A yacs config node with ``_BASE_`` files and validation that names the offending key."""

    def merge_from_file(
        self,
        cfg_filename: str | Path,
        *,
        _seen: tuple[Path, ...] = (),
        _touched: dict[str, str] | None = None,
    ) -> None:
        """Merge a YAML file (and, first, its ``_BASE_`` files) into this node.

        Args:
            cfg_filename: path of the YAML file. ``_BASE_`` paths inside it are relative to it.
        """
        top = _touched is None
        touched: dict[str, str] = {} if top else _touched
        path = Path(cfg_filename).resolve()
        if path in _seen:
            chain = " -> ".join(str(p) for p in (*_seen, path))
            raise ConfigError(f"Circular _BASE_ chain: {chain}")
        data = load_yaml(path)
        bases = data.pop(BASE_KEY, None)
        if bases:
            if isinstance(bases, str):
                bases = [bases]
            if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
                raise ConfigError(
                    f"{BASE_KEY} in '{cfg_filename}' must be a path or a list of paths, got "
                    f"{bases!r}"
                )
            for base in bases:
                base_path = Path(base).expanduser()
                if not base_path.is_absolute():
                    base_path = path.parent / base_path
                self.merge_from_file(base_path, _seen=(*_seen, path), _touched=touched)
        self._merge_into(self, data, prefix="", source=f"file '{cfg_filename}'", touched=touched)
        if top:
            self._warn_unhonoured(touched)

    def merge_from_dict(self, data: dict, *, source: str = "a dict") -> None:
        """Merge a nested dict of values, validating every key and value type."""
        touched: dict[str, str] = {}
        self._merge_into(self, data, prefix="", source=source, touched=touched)
        self._warn_unhonoured(touched)

    def merge_from_list(self, cfg_list: Iterable[str]) -> None:
        """Merge ``KEY VALUE`` pairs as given on the command line (``SOLVER.BASE_LR 0.1``)."""
        items = list(cfg_list)
        if len(items) % 2 != 0:
            raise ConfigError(
                f"Overrides must come in KEY VALUE pairs, got an odd number of items: {items}"
            )
        touched: dict[str, str] = {}
        for key, raw in zip(items[0::2], items[1::2]):
            node = self
            parts = key.split(".")
            for depth, part in enumerate(parts):
                full = ".".join(parts[: depth + 1])
                if not isinstance(node, _YacsCfgNode) or part not in node:
                    self._raise_unknown(full, "the command line")
                if depth < len(parts) - 1:
                    node = node[part]
            value = _decode_cli_value(raw)
            default = node[parts[-1]]
            if isinstance(default, _YacsCfgNode):
                raise ConfigError(f"'{key}' (from the command line) is a section, not a value.")
            if self.is_frozen():
                raise ConfigError("Cannot merge overrides into a frozen config.")
            node[parts[-1]] = _coerce(value, default, key, "the command line")
            touched[key] = "the command line"
        self._warn_unhonoured(touched)

    def _warn_unhonoured(self, touched: dict[str, str]) -> None:
        """One warning per compatibility key the merge left at a value diffvision ignores."""
        for key, source in touched.items():
            if key not in COMPAT_KEYS:
                continue
            honoured = COMPAT_KEYS[key]
            if callable(honoured):
                honoured = honoured(self)
            node: Any = self
            for part in key.split("."):
                node = node[part]
            if not _same(node, honoured):
                logger.warning(
                    "Config key '%s' = %r (from %s) is accepted only so official detectron2 / "
                    "DiffusionDet files load; diffvision ignores it and behaves as if it were %r.",
                    key,
                    node,
                    source,
                    honoured,
                )

    def _merge_into(
        self,
        node: _YacsCfgNode,
        data: dict,
        *,
        prefix: str,
        source: str,
        touched: dict[str, str],
    ) -> None:
        if self.is_frozen():
            raise ConfigError("Cannot merge into a frozen config.")
        for key, value in data.items():
            full = f"{prefix}{key}"
            if key not in node:
                if node.is_new_allowed():
                    node[key] = CfgNode(value) if isinstance(value, dict) else value
                    continue
                self._raise_unknown(full, source)
            default = node[key]
            value = _coerce(value, default, full, source)
            if isinstance(default, _YacsCfgNode):
                self._merge_into(default, value, prefix=full + ".", source=source, touched=touched)
            else:
                node[key] = value
                touched[full] = source

    def _raise_unknown(self, full_key: str, source: str) -> None:
        candidates = _all_key_paths(self)
        hint = did_you_mean(full_key, candidates)
        if not hint:
            # Fall back to keys sharing the last component (e.g. a key put in the wrong section).
            leaf = full_key.rsplit(".", 1)[-1]
            same_leaf = [c for c in candidates if c.rsplit(".", 1)[-1] == leaf][:3]
            hint = f" Did you mean: {', '.join(same_leaf)}?" if same_leaf else ""
        raise ConfigError(f"Unknown config key '{full_key}' (from {source}).{hint}")

    def clone(self) -> CfgNode:
        return copy.deepcopy(self)


CN = CfgNode

_CONFIG_EXTENSIONS: list[Callable[[CfgNode], None]] = []


def add_config_extension(fn: Callable[[CfgNode], None]) -> None:
    """Register ``fn(cfg)``, which adds a task's keys to the default tree (idempotent)."""
    if fn not in _CONFIG_EXTENSIONS:
        _CONFIG_EXTENSIONS.append(fn)


def apply_config_extensions(cfg: CfgNode) -> CfgNode:
    """Add every registered task's keys to ``cfg`` (in place) and return it."""
    for extend in _CONFIG_EXTENSIONS:
        extend(cfg)
    return cfg
