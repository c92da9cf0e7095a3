"""The output policy (engine/outputs.py): finished work is kept, outputs checked before the work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from diffvision.engine.cli import run_main
from diffvision.engine.outputs import check_output_path
from diffvision.errors import CLIError, ConfigError
from tests.tool_helpers import DET, TINY_DET, finished_run, load_tool, one_line_error, snapshot

pytestmark = pytest.mark.usefixtures("tool_env")


def test_finished_output_dir_is_not_overwritten(tmp_path, capsys):
    """A 60-iteration model_final.pth used to be replaced by a 20-iteration one."""
    out = tmp_path / "out"
    before = finished_run(out)
    status = load_tool("train_net").cli(["--config", DET, "OUTPUT_DIR", str(out)])
    line = one_line_error(capsys, status, "already holds checkpoints")
    assert "--resume" in line and "--overwrite" in line and "new OUTPUT_DIR" in line
    assert snapshot(out) == before


def test_overwrite_replaces_the_finished_run(toy_det, capsys):
    out = toy_det / "out"
    before = finished_run(out)
    status = load_tool("train_net").cli(
        ["--config", DET, "--overwrite", *TINY_DET, "SOLVER.MAX_ITER", "1", "DATASETS.TEST", "()",
         "OUTPUT_DIR", str(out)]
    )  # fmt: skip
    assert status == 0, capsys.readouterr().err
    after = snapshot(out)
    assert after["model_final.pth"] != before["model_final.pth"]
    assert "model_0000009.pth" not in after  # the old run's checkpoints cannot be resumed
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(r["iteration"] < 1 for r in rows)  # the old run's row 19 is gone


def test_output_dir_that_is_a_file(tmp_path, capsys):
    (tmp_path / "out").write_text("keep me")
    status = load_tool("train_net").cli(["--config", DET, "OUTPUT_DIR", str(tmp_path / "out")])
    one_line_error(capsys, status, "is a file; expected a folder")
    assert (tmp_path / "out").read_text() == "keep me"


def test_eval_only_never_replaces_a_runs_files(tmp_path, capsys):
    """``--eval-only`` into a training run's OUTPUT_DIR used to replace its config.yaml and
    coco_instances_results.json; it now writes to OUTPUT_DIR/eval_000, then eval_001."""
    out = tmp_path / "out"
    finished_run(out)
    (out / "config.yaml").write_text("the training run's config\n")
    (out / "coco_instances_results.json").write_text("[]")
    before = snapshot(out)
    argv = ["--config", DET, "--eval-only", *TINY_DET, "OUTPUT_DIR", str(out)]
    for expected in ("eval_000", "eval_001"):
        assert load_tool("train_net").cli(argv) == 0, capsys.readouterr().err
        after = snapshot(out)
        assert {k: v for k, v in after.items() if k in before} == before
        assert {"config.yaml", "coco_instances_results.json"} <= {
            Path(k).name for k in after if k.startswith(expected + "/")
        }
    fresh = tmp_path / "fresh"  # a new (or empty) folder is used as it is
    assert load_tool("train_net").cli([*argv[:-1], str(fresh)]) == 0
    assert (fresh / "config.yaml").is_file() and not (fresh / "eval_000").exists()


def _tool_with_existing_output(tool: str, root: Path) -> tuple[list[str], Path]:
    """argv for ``tool`` whose output file already exists (holding 'finished'), and that file."""
    image = root / "datasets/toy_detection/val/000001.png"
    if tool == "export":
        existing = root / "model.onnx"
        argv = ["--config", DET, "--output", str(existing), *TINY_DET]
    elif tool == "sample":
        existing = root / "s" / "samples.npz"
        argv = ["--checkpoint", str(root / "m.pth"), "--output", str(root / "s")]
    elif tool == "sweep_boxes_steps":
        existing = root / "sw" / "sweep.json"
        argv = ["--config", DET, "--output-dir", str(root / "sw"), *TINY_DET]
    else:
        existing = root / "out" / "000001.jpg"
        argv = ["--config", DET, "--input", str(image), "--output", str(root / "out"), *TINY_DET]
    existing.parent.mkdir(parents=True, exist_ok=True)
    existing.write_text("finished")
    return argv, existing


@pytest.mark.parametrize("tool", ["export", "sample", "sweep_boxes_steps", "demo"])
def test_tools_refuse_to_replace_their_outputs(toy_det, capsys, tool):
    argv, existing = _tool_with_existing_output(tool, toy_det)
    status = run_main(load_tool(tool).main, argv)
    line = one_line_error(capsys, status, f"{existing} already exists")
    assert "--overwrite" in line
    assert existing.read_text() == "finished"


def test_demo_overwrite_replaces_and_same_named_inputs_are_refused(toy_det, capsys):
    argv, existing = _tool_with_existing_output("demo", toy_det)
    assert (
        run_main(load_tool("demo").main, [*argv[: -len(TINY_DET)], "--overwrite", *TINY_DET]) == 0
    )
    assert existing.read_bytes()[:2] == b"\xff\xd8"  # now a JPEG drawing
    twin = toy_det / "twin" / "000001.png"  # another image with the same name
    twin.parent.mkdir()
    twin.write_bytes((toy_det / "datasets/toy_detection/val/000001.png").read_bytes())
    status = run_main(
        load_tool("demo").main,
        [
            "--config",
            DET,
            "--input",
            argv[3],
            str(twin),
            "--output",
            str(toy_det / "o2"),
            *TINY_DET,
        ],
    )
    one_line_error(capsys, status, "two outputs of this run would both be written to")


# ------------------------------------------------ the one output-path check, before the work
def test_output_path_kinds_and_extensions(tmp_path):
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_folder").mkdir()
    with pytest.raises(CLIError, match="a_file is a file; expected a folder"):
        check_output_path(tmp_path / "a_file", "--output", kind="folder")
    with pytest.raises(CLIError, match="a_folder is a folder; expected a file name"):
        check_output_path(tmp_path / "a_folder", "--output", kind="file")
    with pytest.raises(CLIError, match=r"out.png: expected a file ending in .mp4 or .avi"):
        check_output_path(tmp_path / "out.png", "--output", kind="file", suffixes=(".mp4", ".avi"))
    new = tmp_path / "new" / "deeper" / "clip.MP4"  # folders to create, upper-case suffix
    assert check_output_path(new, "--output", kind="file", suffixes=(".mp4",)) == new
    assert not (tmp_path / "new").exists()  # nothing is created by the check


def test_output_path_below_a_file_names_the_file(tmp_path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(CLIError, match="lies below .*a_file, which is a file"):
        check_output_path(tmp_path / "a_file" / "sub" / "m.onnx", "--output", kind="file")
    with pytest.raises(ConfigError, match="OUTPUT_DIR .*lies below"):
        check_output_path(tmp_path / "a_file" / "run", "OUTPUT_DIR", kind="folder")


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_output_path_in_an_unwritable_place(tmp_path):
    """Root passes os.access on /proc; creating a file there is the test that holds."""
    with pytest.raises(ConfigError, match="OUTPUT_DIR /proc/diffvision_run: cannot write in /proc"):
        check_output_path("/proc/diffvision_run", "OUTPUT_DIR", kind="folder")


def test_train_net_output_dir_below_a_file_or_in_proc_is_one_line(tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    for out in (tmp_path / "a_file" / "run", Path("/proc/diffvision_run")):
        status = load_tool("train_net").cli(["--config", DET, "OUTPUT_DIR", str(out)])
        one_line_error(capsys, status, f"OUTPUT_DIR {out}")


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--output", "{tmp}/a_folder"], "a_folder is a folder; expected a file name"),
        (["--output", "{tmp}/a_file/m.onnx"], "which is a file, not a folder"),
        (["--output", "{tmp}/model.pt"], "expected a file ending in .onnx"),
    ],
)
def test_export_checks_its_output_before_exporting(tmp_path, capsys, argv, expected):
    """These used to fail with IsADirectoryError / FileExistsError after the whole export."""
    (tmp_path / "a_folder").mkdir()
    (tmp_path / "a_file").write_text("x")
    argv = [a.format(tmp=tmp_path) for a in argv]
    status = run_main(load_tool("export").main, ["--config", DET, *argv, *TINY_DET])
    one_line_error(capsys, status, expected)


def test_demo_video_to_an_image_name_is_refused(tmp_path, capsys):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\x00")
    status = run_main(
        load_tool("demo").main,
        ["--config", DET, "--video-input", str(video), "--output", str(tmp_path / "out.png")],
    )
    one_line_error(capsys, status, "expected a file ending in .mp4 or .avi")
    assert not (tmp_path / "out.png").exists()
