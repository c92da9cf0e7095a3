"""Detectron2-style configs: defaults tree, ``_BASE_`` files, validated overrides."""

from diffvision.config.config import (
    CN,
    CfgNode,
    ConfigError,
    add_config_extension,
    get_cfg,
    load_yaml,
)

__all__ = ["CN", "CfgNode", "ConfigError", "add_config_extension", "get_cfg", "load_yaml"]
