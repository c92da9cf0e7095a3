"""tools/demo.py: inputs it cannot read are skipped with a warning; nothing readable is one line.

Every user mistake ends with exit status 2 and ONE line ``error: ...`` on stderr (no traceback)
and leaves the outputs as they were; the tools' ``main`` functions are called in-process.
"""

from __future__ import annotations

import pytest

from diffvision.engine.cli import run_main
from tests.tool_helpers import DET, TINY_DET, load_tool, one_line_error

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
