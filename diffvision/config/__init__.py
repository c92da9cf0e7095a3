"""Detectron2-style configs: defaults tree, ``_BASE_`` files, validated overrides."""

from diffvision.config.config import (
    CN,
    COMPAT_KEYS,
    CfgNode,
    ConfigError,
    add_compat_key,
    add_config_extension,
    load_yaml,
)
from diffvision.config.defaults import get_cfg

__all__ = [
    "CN",
    "COMPAT_KEYS",
    "CfgNode",
    "ConfigError",
    "add_compat_key",
    "add_config_extension",
    "get_cfg",
    "load_yaml",
]
