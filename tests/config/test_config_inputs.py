"""Bad config files and overrides (config/), found before any process starts."""

from __future__ import annotations

import pytest

from tests.tool_helpers import DET, REPO, TINY_DET, load_tool, one_line_error

pytestmark = pytest.mark.usefixtures("tool_env")


def test_unknown_key_and_bad_flags(tmp_path, capsys):
    train_net = load_tool("train_net")
    out = tmp_path / "out"
    status = train_net.cli(["--config", DET, "SOLVER.BASE_LRR", "1", "OUTPUT_DIR", str(out)])
    one_line_error(capsys, status, "Unknown config key 'SOLVER.BASE_LRR'")
    status = train_net.cli(["--config", DET, "--resume", "--overwrite", "OUTPUT_DIR", str(out)])
    one_line_error(capsys, status, "--resume and --overwrite contradict")
    assert not out.exists()


@pytest.mark.parametrize(
    "opts, expected",
    [
        (["MODEL.META_ARCHITECTURE", "Foo"], "Unknown MODEL.META_ARCHITECTURE 'Foo'"),
        (["SOLVER.MAX_ITER", "-5"], "SOLVER.MAX_ITER must be >= 0"),
        (["DATASETS.CUSTOM", "['a:b.json']"], "must be 'name:json_file:image_root'"),
        (["DATASETS.CUSTOM", "['a:nope.json:imgs']"], "annotation file nope.json does not exist"),
    ],
)
def test_config_problems_found_before_spawning(tmp_path, capsys, opts, expected):
    out = tmp_path / "out"
    status = load_tool("train_net").cli(["--config", DET, *opts, "OUTPUT_DIR", str(out)])
    one_line_error(capsys, status, expected)
    assert not out.exists()


def test_binary_config_file_is_one_line(tmp_path, capsys):
    config = tmp_path / "model.yaml"
    config.write_bytes(b"\x9f\x00\xff" + bytes(range(256)))
    status = load_tool("train_net").cli(["--config", str(config)])
    one_line_error(capsys, status, f"Config file '{config}' is not UTF-8 text")


@pytest.mark.parametrize(
    "override, expected",
    [
        (["MODEL.RESNETS.NORM", "foo"], "cannot build the DiffusionDet model from the config: "
                                        "ResNet norm 'foo' is not one of"),
        (["SOLVER.WARMUP_METHOD", "foo"], "cannot build the optimizer or LR schedule from the "
                                          "config: Unknown warmup method 'foo'"),
        (["INPUT.MIN_SIZE_TRAIN_SAMPLING", "foo"], "cannot build the training data from the "
                                                   "config: sample_style must be"),
        (["MODEL.DEVICE", "foo"], "MODEL.DEVICE 'foo' is not a device"),
    ],
)  # fmt: skip
def test_bad_values_that_libraries_reject_are_one_line(toy_det, capsys, override, expected):
    status = load_tool("train_net").cli(
        ["--config", DET, *TINY_DET, *override, "SOLVER.MAX_ITER", "1", "TEST.EVAL_PERIOD", "0",
         "OUTPUT_DIR", str(toy_det / "out")]
    )  # fmt: skip
    one_line_error(capsys, status, expected)


def test_unknown_ddpm_sampler_stops_before_training(tmp_path, capsys):
    """Sampling first runs at evaluation, so an unknown sampler used to fail after training."""
    status = load_tool("train_net").cli(
        ["--config", str(REPO / "configs/ddpm/toy_instant.yaml"), "MODEL.DDPM.SAMPLER.NAME",
         "foo", "OUTPUT_DIR", str(tmp_path / "out")]
    )  # fmt: skip
    one_line_error(capsys, status, "MODEL.DDPM.SAMPLER.NAME must be one of")
    assert not list((tmp_path / "out").glob("model_*.pth"))


def test_yaml_alias_bomb_is_refused_before_it_expands(tmp_path, capsys):
    """Eight levels of nine aliases inside a valid key: 9**8 floats once expanded (without
    the check the merge grew past 1.4 GB in 30 s); refused from the node graph at once."""
    levels = ["&l0 [" + ", ".join(["1.0"] * 9) + "]"]
    for i in range(1, 8):
        levels.append(f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    config = tmp_path / "bomb.yaml"
    config.write_text("MODEL:\n  PIXEL_MEAN: [" + ", ".join(levels) + "]\n")
    status = load_tool("train_net").cli(["--config", str(config)])
    one_line_error(capsys, status, "expands to more than 100,000 values through its YAML aliases")


def test_a_config_with_a_few_aliases_still_loads(tmp_path):
    from diffvision.config.config import load_yaml

    config = tmp_path / "ok.yaml"
    config.write_text("sizes: &s [1, 2, 3]\nA: {X: *s}\nB: {Y: *s}\n")
    assert load_yaml(config)["B"]["Y"] == [1, 2, 3]


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_non_finite_floats_are_refused_in_every_key(tmp_path, capsys, value):
    """MODEL.PIXEL_MEAN has no range of its own; NaN in it ended as "loss became non-finite"."""
    config = tmp_path / "c.yaml"
    config.write_text(f"_BASE_: {DET}\nMODEL:\n  PIXEL_MEAN: [{value}, 116.28, 103.53]\n")
    status = load_tool("train_net").cli(["--config", str(config)])
    one_line_error(capsys, status, "MODEL.PIXEL_MEAN must be a finite number")


def test_seed_beyond_what_torch_accepts_is_one_line(tmp_path, capsys):
    status = load_tool("train_net").cli(
        ["--config", DET, "SEED", str(2**70), "OUTPUT_DIR", str(tmp_path / "o")]
    )
    one_line_error(capsys, status, "SEED must be in [-1, 9223372036854775807]")
