"""No dead config keys: every key of the defaults tree is read by some code; the few kept only so
official files load are declared compatibility keys and warn when set to a value not honoured.

"Read" is found statically: every attribute chain, ``node["KEY"]``, ``node.get("KEY")`` and
``getattr(node, "KEY")`` in diffvision/, projects/ and tools/ (stores excluded) is resolved to a
dotted key, following simple aliases (``p = cfg.MODEL.PIXEL_MLP`` makes ``p.STEPS`` read
``MODEL.PIXEL_MLP.STEPS``). A chain rooted at something else (a function parameter holding a
section) counts for every key ending with it. Reading a section does not read its keys.
"""

from __future__ import annotations

import ast
import inspect
import logging
from functools import cache
from pathlib import Path

import pytest
from yacs.config import CfgNode as _YacsCfgNode

import projects  # noqa: F401  (registers every task and its config keys)
from diffvision.config import COMPAT_KEYS
from diffvision.config import config as config_module
from diffvision.config.defaults import build_default_config

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("diffvision", "projects", "tools")

# Keys that another branch of this round starts reading (the lead merges them together); each is
# read by that branch's code, so nothing here is dead after the merge. Remove an entry once the
# reader is on main.
PENDING: set[str] = set()  # the TEST.AUG.* / NMS_THRESH_TEST readers (tta.py) are here


def get_cfg():
    """The shipped tree: the defaults plus every task extension defined in the sources (test
    tasks such as tests/engine/toy_task.py register their own keys in the same process)."""
    cfg = build_default_config()
    for extend in config_module._CONFIG_EXTENSIONS:
        path = Path(inspect.getsourcefile(extend)).resolve()
        if any(path.is_relative_to(ROOT / source) for source in SOURCES):
            extend(cfg)
    return cfg


def _key_paths(node: _YacsCfgNode, prefix: str = "") -> list[str]:
    out = []
    for key, value in node.items():
        out.append(prefix + key)
        if isinstance(value, _YacsCfgNode):
            out += _key_paths(value, prefix + key + ".")
    return out


def _chain(node: ast.AST) -> list:
    """``cfg.MODEL["X"].get("Y")`` → ["cfg", "MODEL", "X", "Y"]; a non-name root is None."""
    if isinstance(node, ast.Attribute):
        return _chain(node.value) + [node.attr]
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, ast.Subscript):
        if isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
            return _chain(node.value) + [node.slice.value]
    if isinstance(node, ast.Call) and len(node.args) >= 1:
        func, args = node.func, node.args
        first_str = isinstance(args[0], ast.Constant) and isinstance(args[0].value, str)
        if isinstance(func, ast.Attribute) and func.attr == "get" and first_str:
            return _chain(func.value) + [args[0].value]
        second_str = len(args) >= 2 and isinstance(args[1], ast.Constant)
        if isinstance(func, ast.Name) and func.id == "getattr" and second_str:
            if isinstance(args[1].value, str):
                return _chain(args[0]) + [args[1].value]
    return [None]


@cache
def _reads() -> tuple[frozenset[str], frozenset[str]]:
    """(absolute dotted keys read, dotted key suffixes read from an unknown section)."""
    cfg = get_cfg()
    names = {part for key in _key_paths(cfg) for part in key.split(".")}
    top = set(cfg.keys())
    absolute, suffixes = set(), set()
    for source in SOURCES:
        for path in sorted((ROOT / source).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            aliases: dict[str, set[str]] = {}
            for node in ast.walk(tree):
                if isinstance(node, ast.Assign) and len(node.targets) == 1:
                    target, chain = node.targets[0], _chain(node.value)
                    keys = chain[1:]
                    if (
                        isinstance(target, ast.Name)
                        and keys
                        and keys[0] in top
                        and all(k in names for k in keys)
                    ):
                        aliases.setdefault(target.id, set()).add(".".join(keys))
            for node in ast.walk(tree):
                if not isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
                    continue
                if isinstance(getattr(node, "ctx", None), (ast.Store, ast.Del)):
                    continue
                chain = _chain(node)
                keys: list[str] = []
                for part in reversed(chain[1:]):
                    if part not in names:
                        break
                    keys.insert(0, part)
                if not keys:
                    continue
                dotted = ".".join(keys)
                if len(keys) == len(chain) - 1 and chain[0] in aliases:
                    absolute.update(f"{prefix}.{dotted}" for prefix in aliases[chain[0]])
                elif keys[0] in top:
                    absolute.add(dotted)
                else:
                    suffixes.add(dotted)
    return frozenset(absolute), frozenset(suffixes)


def is_read(key: str) -> bool:
    absolute, suffixes = _reads()
    if key in absolute:
        return True
    return any(key == s or key.endswith("." + s) for s in suffixes)


def test_every_default_key_is_read():
    keys = _key_paths(get_cfg())
    unread = [k for k in keys if not is_read(k) and k not in COMPAT_KEYS and k not in PENDING]
    assert not unread, (
        f"{len(unread)} config keys are never read by diffvision/, projects/ or tools/: "
        f"{unread}. Delete them, or, if official files set them, declare them with "
        "add_compat_key (a warning when set to a value diffvision ignores)."
    )


def test_allow_lists_are_not_stale():
    keys = set(_key_paths(get_cfg()))
    assert not (set(COMPAT_KEYS) | PENDING) - keys, "allow-listed keys missing from the tree"
    # only explicit reads count here: a chain rooted at a section passed as an argument (a
    # builder shared by tasks with the same keys, e.g. d.NUM_CLASSES) reads that section's key,
    # not every key with the same last name
    read_compat = [k for k in COMPAT_KEYS if k in _reads()[0]]
    assert not read_compat, (
        f"compatibility keys that code reads (honour them instead): {read_compat}"
    )


def test_the_analysis_sees_reads_and_misses():
    """The detector of reads itself: direct chains, aliases, and a key nobody reads."""
    assert is_read("MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION")  # cfg.MODEL.ROI_BOX_HEAD.X chains
    assert is_read("MODEL.PIXEL_MLP.STEPS")  # p = cfg.MODEL.PIXEL_MLP; p.STEPS
    assert is_read("SOLVER.BASE_LR")
    assert not is_read("MODEL.ROI_BOX_HEAD.NOT_A_KEY")
    assert not is_read("VERSION")  # a compatibility key: nothing reads it


def test_diffusiondet_sections_hold_diffusiondet_values():
    """A config that never names them gets the official Base-DiffusionDet.yaml values."""
    plain = get_cfg()
    official = get_cfg()
    official.merge_from_file(str(ROOT / "projects" / "detection" / "Base-DiffusionDet.yaml"))
    for section in ("FPN", "ROI_HEADS", "ROI_BOX_HEAD", "BACKBONE"):
        for key, value in plain.MODEL[section].items():
            assert official.MODEL[section][key] == value, f"MODEL.{section}.{key}"
    assert plain.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION == 7
    assert plain.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO == 2
    assert list(plain.MODEL.ROI_HEADS.IN_FEATURES) == ["p2", "p3", "p4", "p5"]


def _official_configs() -> list[Path]:
    return sorted(
        [*(ROOT / "projects").rglob("*.yaml"), *(ROOT / "configs").rglob("*.yaml")],
        key=str,
    )


@pytest.mark.parametrize("path", _official_configs(), ids=lambda p: p.name)
def test_shipped_configs_load_without_compat_warnings(path, caplog):
    cfg = get_cfg()
    with caplog.at_level(logging.WARNING, logger="diffvision.config.config"):
        cfg.merge_from_file(str(path))
    assert not caplog.records, [r.getMessage() for r in caplog.records]


def test_unhonoured_compat_values_warn_once_naming_the_key(tmp_path, caplog):
    yaml_file = tmp_path / "old.yaml"
    yaml_file.write_text("VERSION: 1\nMODEL:\n  ROI_HEADS:\n    NUM_CLASSES: 1203\n")
    cfg = get_cfg()
    with caplog.at_level(logging.WARNING, logger="diffvision.config.config"):
        cfg.merge_from_file(str(yaml_file))
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert "'VERSION' = 1" in messages[0] and "as if it were 2" in messages[0]
    assert "'MODEL.ROI_HEADS.NUM_CLASSES' = 1203" in messages[1]  # DiffusionDet.NUM_CLASSES: 80
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="diffvision.config.config"):
        cfg.merge_from_list(["MODEL.DiffusionDet.NUM_CLASSES", "1203", "VERSION", "2"])
        cfg.merge_from_list(["MODEL.ROI_HEADS.NUM_CLASSES", "1203"])  # now consistent
        cfg.merge_from_dict({"MODEL": {"DiffusionDet": {"NO_OBJECT_WEIGHT": 0.2}}})
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "'MODEL.DiffusionDet.NO_OBJECT_WEIGHT' = 0.2" in messages[0]
