"""tools/demo.py: inputs it cannot read are skipped with a warning; nothing readable is one line."""

from __future__ import annotations

import pytest

from diffvision.engine.cli import run_main
from tests.tool_helpers import DET, REPO, TINY_DET, load_tool, one_line_error

pytestmark = pytest.mark.usefixtures("tool_env")


def test_demo_reads_a_folder_and_skips_unreadable_files(toy_det, capsys):
    folder = toy_det / "photos"
    folder.mkdir()
    src = toy_det / "datasets/toy_detection/val"
    for name in ("000001.png", "000002.png"):
        (folder / name).write_bytes((src / name).read_bytes())
    (folder / "broken.png").write_bytes(b"not a png")
    out = toy_det / "out"
    status = run_main(
        load_tool("demo").main,
        ["--config", DET, "--input", str(folder), "--output", str(out), *TINY_DET],
    )
    err = capsys.readouterr().err
    assert status == 0, err
    assert f"warning: skipped {folder / 'broken.png'}" in err
    assert sorted(p.name for p in out.iterdir()) == ["000001.jpg", "000002.jpg"]


def test_demo_without_any_image_is_one_line(tmp_path, capsys):
    status = run_main(
        load_tool("demo").main, ["--config", DET, "--input", str(tmp_path / "x*.jpg")]
    )
    one_line_error(capsys, status, "no image files found")


def test_demo_with_every_input_unreadable_is_one_line(tmp_path, capsys):
    """It used to exit 0 having drawn nothing."""
    for name in ("a.png", "b.jpg"):
        (tmp_path / name).write_bytes(b"not an image")
    status = run_main(
        load_tool("demo").main,
        ["--config", DET, "--input", str(tmp_path / "a.png"), str(tmp_path / "b.jpg"), *TINY_DET],
    )
    line = one_line_error(capsys, status, "--input: none of the 2 images could be read")
    assert "warning" in line


def test_demo_skips_a_decompression_bomb_and_goes_on(toy_det, capsys, monkeypatch):
    """A 20000x20000 PNG ended the whole batch (PIL's DecompressionBombError); here the limit
    is lowered so that a small image plays the bomb."""
    from PIL import Image

    folder = toy_det / "photos"
    folder.mkdir()
    (folder / "a.png").write_bytes((toy_det / "datasets/toy_detection/val/000001.png").read_bytes())
    Image.new("RGB", (300, 300)).save(folder / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50_000)  # the toy images are 128x128 or less
    status = run_main(
        load_tool("demo").main,
        ["--config", DET, "--input", str(folder), "--output", str(toy_det / "out"), *TINY_DET],
    )
    err = capsys.readouterr().err
    assert status == 0, err
    assert f"warning: skipped {folder / 'bomb.png'}" in err and "decompression bomb" in err
    assert sorted(p.name for p in (toy_det / "out").iterdir()) == ["a.jpg"]


def test_demo_warns_that_it_draws_without_test_time_augmentation(toy_det, capsys):
    image = toy_det / "datasets/toy_detection/val/000001.png"
    status = run_main(
        load_tool("demo").main,
        ["--config", DET, "--input", str(image), "--output", str(toy_det / "out"), *TINY_DET,
         "TEST.AUG.ENABLED", "True"],
    )  # fmt: skip
    err = capsys.readouterr().err
    assert status == 0, err
    warnings = [line for line in err.splitlines() if "TEST.AUG.ENABLED" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: TEST.AUG.ENABLED True is")


@pytest.mark.parametrize("tool", ["demo", "export", "sweep_boxes_steps", "benchmark_onnx"])
def test_detection_tools_refuse_another_tasks_config(tmp_path, capsys, tool):
    """benchmark_onnx used to benchmark a DDPM config as a DiffusionDet built from defaults."""
    config = str(REPO / "configs/ddpm/toy_instant.yaml")
    argv = ["--config", config]
    if tool == "demo":
        image = tmp_path / "a.png"
        image.write_bytes(b"x")
        argv += ["--input", str(image)]
    status = run_main(load_tool(tool).main, argv)
    one_line_error(capsys, status, "MODEL.META_ARCHITECTURE is 'DDPM'")
