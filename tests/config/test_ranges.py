"""Numeric config keys out of range stop at load time with one ConfigError naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

import projects  # noqa: F401  (registers every task's keys and ranges)
from diffvision.config.ranges import _RANGES, check_ranges, register_ranges
from diffvision.engine.defaults import load_config
from diffvision.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
DET = str(REPO / "projects/detection/diffdet_toy.yaml")


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("MODEL.DiffusionDet.NUM_PROPOSALS", "0", "NUM_PROPOSALS must be >= 1, got 0"),
        ("MODEL.DiffusionDet.SAMPLE_STEP", "-2", "SAMPLE_STEP must be >= 1, got -2"),
        ("INPUT.MIN_SIZE_TEST", "-5", "INPUT.MIN_SIZE_TEST must be >= 1, got -5"),
        ("INPUT.MIN_SIZE_TRAIN", "(0, 64)", "MIN_SIZE_TRAIN (each element) must be >= 1"),
        ("SOLVER.MOMENTUM", "1.0", "SOLVER.MOMENTUM must be in [0, 1), got 1.0"),
        ("SOLVER.BASE_LR", "0.0", "SOLVER.BASE_LR must be > 0, got 0.0"),
        ("MODEL.DiffusionDet.PRIOR_PROB", "1.0", "PRIOR_PROB must be in (0, 1), got 1.0"),
    ],
)
def test_out_of_range_values_name_the_key(key, value, message):
    with pytest.raises(ConfigError) as info:
        load_config(DET, [key, value])
    assert message in str(info.value)


def test_non_finite_float_in_a_file_names_the_key(tmp_path):
    config = tmp_path / "nan.yaml"
    config.write_text(f"_BASE_: {DET}\nSOLVER:\n  BASE_LR: .nan\n")
    with pytest.raises(ConfigError, match=r"SOLVER.BASE_LR must be a finite number, got nan"):
        load_config(str(config))


def test_every_shipped_config_is_in_range():
    configs = sorted(REPO.glob("projects/**/*.yaml")) + sorted(REPO.glob("configs/**/*.yaml"))
    assert len(configs) > 10
    for path in configs:
        load_config(str(path))  # raises on the first key out of range


def test_boundaries_and_registered_keys_exist():
    register_ranges({"TEST.IMS_PER_BATCH": ">=1"})  # re-registering keeps one entry
    cfg = load_config(
        DET, ["SOLVER.MOMENTUM", "0.0", "MODEL.DiffusionDet.RENEWAL_THRESHOLD", "1.0"]
    )
    check_ranges(cfg)  # closed ends are allowed
    missing = [key for key in _RANGES if _lookup_path(cfg, key) is None]
    # keys of the other tasks' sections exist in the full default tree too
    assert missing == [], missing
    with pytest.raises(ValueError, match="not a range"):
        register_ranges({"SOLVER.GAMMA": "positive"})


def _lookup_path(cfg, key):
    node = cfg
    for part in key.split("."):
        if part not in node:
            return None
        node = node[part]
    return node


def test_scalar_for_a_section_and_a_bad_base_are_one_short_line(tmp_path):
    section = tmp_path / "section.yaml"
    section.write_text(f"_BASE_: {DET}\nSOLVER: 5\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(section))
    message = str(info.value)
    assert "'SOLVER'" in message and "is a section of keys" in message and len(message) < 300
    base = tmp_path / "base.yaml"
    base.write_text("_BASE_: 5\n")
    with pytest.raises(ConfigError, match="_BASE_ in .* must be a path or a list of paths"):
        load_config(str(base))
