"""Config loading: _BASE_ inheritance, strict keys with suggestions, typed overrides."""

from __future__ import annotations

import pytest

from diffvision.config import ConfigError, get_cfg


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_base_files_merge_in_order_relative_to_the_child(tmp_path):
    _write(tmp_path / "bases" / "Base.yaml", "SOLVER:\n  BASE_LR: 0.5\n  MAX_ITER: 10\n")
    child = _write(
        tmp_path / "exp" / "child.yaml",
        "_BASE_: ../bases/Base.yaml\nSOLVER:\n  MAX_ITER: 20\n"
        "INPUT:\n  MIN_SIZE_TRAIN: [480, 512]\n",
    )
    cfg = get_cfg()
    cfg.merge_from_file(child)
    assert cfg.SOLVER.BASE_LR == 0.5
    assert cfg.SOLVER.MAX_ITER == 20
    assert cfg.INPUT.MIN_SIZE_TRAIN == (480, 512)  # list in YAML, tuple like the default


def test_unknown_key_names_key_file_and_close_matches(tmp_path):
    bad = _write(tmp_path / "bad.yaml", "SOLVER:\n  BASE_RL: 0.1\n")
    with pytest.raises(ConfigError) as info:
        get_cfg().merge_from_file(bad)
    message = str(info.value)
    assert "SOLVER.BASE_RL" in message and "bad.yaml" in message and "SOLVER.BASE_LR" in message


def test_key_in_wrong_section_suggests_the_right_one():
    with pytest.raises(ConfigError, match="Did you mean: SOLVER.MAX_ITER"):
        get_cfg().merge_from_list(["MAX_ITER", "5"])


def test_wrong_type_fails_naming_the_key_and_expected_type(tmp_path):
    bad = _write(tmp_path / "t.yaml", "SOLVER:\n  MAX_ITER: ten\n")
    with pytest.raises(ConfigError, match=r"SOLVER.MAX_ITER.*t.yaml.*int"):
        get_cfg().merge_from_file(bad)


def test_command_line_overrides_are_parsed_and_type_checked():
    cfg = get_cfg()
    cfg.merge_from_list(
        ["SOLVER.BASE_LR", "1", "SOLVER.STEPS", "(5, 7)", "MODEL.WEIGHTS", "a/b.pth",
         "SOLVER.AMP.ENABLED", "True", "DATASETS.TRAIN", "('coco_2017_train',)"]
    )  # fmt: skip
    assert cfg.SOLVER.BASE_LR == 1.0 and isinstance(cfg.SOLVER.BASE_LR, float)
    assert cfg.SOLVER.STEPS == (5, 7)
    assert cfg.MODEL.WEIGHTS == "a/b.pth"
    assert cfg.SOLVER.AMP.ENABLED is True
    assert cfg.DATASETS.TRAIN == ("coco_2017_train",)
    with pytest.raises(ConfigError, match="KEY VALUE pairs"):
        cfg.merge_from_list(["SOLVER.BASE_LR"])
    with pytest.raises(ConfigError, match="bool"):
        cfg.merge_from_list(["SOLVER.AMP.ENABLED", "3"])


def test_circular_and_missing_base_files_are_reported(tmp_path):
    _write(tmp_path / "a.yaml", "_BASE_: b.yaml\n")
    _write(tmp_path / "b.yaml", "_BASE_: a.yaml\n")
    with pytest.raises(ConfigError, match="Circular"):
        get_cfg().merge_from_file(tmp_path / "a.yaml")
    _write(tmp_path / "c.yaml", "_BASE_: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="not found: .*nowhere.yaml"):
        get_cfg().merge_from_file(tmp_path / "c.yaml")


def test_detectron2_solver_keys_of_official_configs_merge(tmp_path):
    official = _write(
        tmp_path / "Base.yaml",
        "SOLVER:\n  IMS_PER_BATCH: 16\n  BASE_LR: 0.000025\n  STEPS: (210000, 250000)\n"
        "  WARMUP_FACTOR: 0.01\n  OPTIMIZER: ADAMW\n  BACKBONE_MULTIPLIER: 1.0\n"
        "  CLIP_GRADIENTS:\n    ENABLED: True\n    CLIP_TYPE: full_model\n    CLIP_VALUE: 1.0\n"
        "    NORM_TYPE: 2.0\nSEED: 40244023\nINPUT:\n  CROP:\n    ENABLED: False\n"
        "    TYPE: absolute_range\n    SIZE: (384, 600)\n  FORMAT: RGB\n"
        "TEST:\n  EVAL_PERIOD: 7330\nDATALOADER:\n  FILTER_EMPTY_ANNOTATIONS: False\n"
        "  NUM_WORKERS: 4\nVERSION: 2\n",
    )
    cfg = get_cfg()
    cfg.merge_from_file(official)
    assert cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE == "full_model"
    assert cfg.SOLVER.STEPS == (210000, 250000)  # a Python tuple literal in the YAML
    assert cfg.INPUT.CROP.SIZE == [384, 600]


def test_dump_round_trips(tmp_path):
    cfg = get_cfg()
    cfg.merge_from_list(["SOLVER.BASE_LR", "0.3"])
    dumped = _write(tmp_path / "dump.yaml", cfg.dump())
    again = get_cfg()
    again.merge_from_file(dumped)
    assert again == cfg
