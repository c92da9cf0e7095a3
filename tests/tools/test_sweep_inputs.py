"""tools/sweep_boxes_steps.py: documented commands, seeds."""

from __future__ import annotations

import pytest
import torch

from diffvision.engine.cli import run_main
from tests.tool_helpers import DET, TINY_DET, load_tool, one_line_error

pytestmark = pytest.mark.usefixtures("tool_env")


@pytest.fixture()
def det_weights(toy_det):
    import projects  # noqa: F401
    from diffvision.engine.defaults import load_config
    from projects.detection.build import build_model

    torch.manual_seed(0)
    model = build_model(load_config(DET, TINY_DET), with_criterion=False)
    path = toy_det / "model.pth"
    torch.save({"model": model.state_dict()}, path)
    return str(path)


def test_sweep_docstring_example_runs(toy_det, det_weights):
    """The documented command (space-separated lists, then KEY VALUE overrides) used to fail:
    --steps swallowed MODEL.WEIGHTS."""
    sweep = load_tool("sweep_boxes_steps")
    commands = []
    lines = iter(sweep.__doc__.splitlines())
    for line in lines:
        if line.strip().startswith("python tools/sweep_boxes_steps.py"):
            text = line.strip().rstrip("\\")
            while line.rstrip().endswith("\\"):
                line = next(lines)
                text += " " + line.strip().rstrip("\\")
            commands.append(text.split()[2:])
    assert len(commands) == 2  # space-separated and comma lists
    for i, argv in enumerate(commands):
        argv[argv.index("--config") + 1] = DET
        argv[argv.index("MODEL.WEIGHTS") + 1] = det_weights
        argv[argv.index("--boxes") + 1 : argv.index("--steps")] = (
            ["3,5"] if "," in argv[argv.index("--boxes") + 1] else ["3", "5"]
        )
        out = toy_det / f"sweep{i}"
        rows = sweep.main(["--max-images", "1", "--output-dir", str(out), *argv, *TINY_DET])
        assert [(r["boxes"], r["steps"]) for r in rows] == [
            (b, s) for b in (3, 5) for s in (1, 4, 8)
        ]


def test_sweep_seed_and_config_seed_must_agree(toy_det, capsys):
    status = run_main(
        load_tool("sweep_boxes_steps").main,
        ["--config", DET, "--seed", "3", "--output-dir", str(toy_det / "s"), "SEED", "5"],
    )
    one_line_error(capsys, status, "--seed 3 disagrees with SEED 5 from the override")
    assert not (toy_det / "s").exists()


def test_sweep_seed_resolution_is_always_said():
    resolve = load_tool("sweep_boxes_steps").resolve_seed
    assert resolve(None, 5, []) == (5, "the config's SEED 5")
    assert resolve(None, -1, [])[0] == 0 and "random" in resolve(None, -1, [])[1]
    assert resolve(3, 0, []) == (3, "--seed 3 (overrides the config's SEED 0)")
    assert resolve(3, 3, ["SEED", "3"]) == (3, "--seed 3")


def test_sweep_without_a_test_dataset_is_one_line(toy_det, capsys):
    """An empty DATASETS.TEST and no --dataset gave IndexError."""
    status = run_main(
        load_tool("sweep_boxes_steps").main,
        ["--config", DET, "--output-dir", str(toy_det / "s"), "DATASETS.TEST", "()"],
    )
    one_line_error(capsys, status, "DATASETS.TEST is empty; pass --dataset NAME")
    assert not (toy_det / "s").exists()
