"""Helpers for tests that call the ``tools/`` scripts in-process.

The bad-input tests (``test_*_inputs.py`` next to the module whose input they check) hold the
promise of the error path: every user mistake ends with exit status 2 and ONE line
``error: ...`` on stderr (:func:`one_line_error`), and the outputs stay as they were
(:func:`snapshot`).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def load_tool(name: str) -> ModuleType:
    """Import ``tools/<name>.py`` as a module (the tools are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def drop_tool_log_handlers() -> None:
    """Detach the log handlers a tool's ``setup_logging`` added (they write to the stdout that
    pytest captured for one test, closed afterwards)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_diffvision", False):
            root.removeHandler(handler)
            handler.close()


@contextlib.contextmanager
def datasets_under(tmp: Path) -> Iterator[Path]:
    """``DIFFVISION_DATASETS`` set to ``tmp/datasets`` for the block, restored after: the
    generated sets of a module-scoped fixture (``monkeypatch`` is per test). Yields ``tmp``."""
    old = os.environ.get("DIFFVISION_DATASETS")
    os.environ["DIFFVISION_DATASETS"] = str(tmp / "datasets")
    try:
        yield tmp
    finally:
        if old is None:
            os.environ.pop("DIFFVISION_DATASETS", None)
        else:
            os.environ["DIFFVISION_DATASETS"] = old


def export_through_tool(model, tmp: Path, config: str, opts: list[str], *, boxes: int) -> Path:
    """Save ``model``'s weights to ``tmp/model.pth`` and export them with ``tools/export.py`` (1
    step, ``boxes`` boxes) to ``tmp/model.onnx``, so the file carries the tool's metadata (class
    names, config); returns its path."""
    import torch

    torch.save({"model": model.state_dict()}, tmp / "model.pth")
    onnx = tmp / "model.onnx"
    export = ["--config", config, "--output", str(onnx), "--boxes", str(boxes), "--steps", "1"]
    load_tool("export").main([*export, *opts, "MODEL.WEIGHTS", str(tmp / "model.pth")])
    return onnx


DET = str(REPO / "projects/detection/diffdet_toy.yaml")
SEG = REPO / "projects" / "segmentation" / "configs"
TINY_DET = [
    "MODEL.DiffusionDet.NUM_PROPOSALS", "8", "MODEL.DiffusionDet.NUM_HEADS", "1",
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "96", "INPUT.MIN_SIZE_TEST", "64",
    "INPUT.MAX_SIZE_TEST", "96", "SOLVER.IMS_PER_BATCH", "2", "TEST.IMS_PER_BATCH", "2",
    "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0",
]  # fmt: skip
"""Overrides that make the toy detector tiny: seconds per tool call on a CPU."""


def snapshot(folder: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under ``folder`` (empty if it does not exist)."""
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def one_line_error(capsys, status: int, expected: str, *, code: int = 2) -> str:
    """Assert exit ``code``, exactly one ``error:`` line containing ``expected``, no traceback."""
    err = capsys.readouterr().err
    assert status == code, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert expected in lines[0], lines[0]
    return lines[0]


def finished_run(folder: Path) -> dict[str, str]:
    """A folder as a finished run leaves it: checkpoints, marker, metrics."""
    import torch

    from diffvision.engine.checkpoint import Checkpointer

    model = torch.nn.Linear(2, 2)
    ckpt = Checkpointer(model, folder, config_text="x: 1\n")
    ckpt.save("model_0000009", iteration=9)
    ckpt.save("model_final", iteration=19)
    (folder / "metrics.jsonl").write_text('{"iteration": 19, "loss": 0.5}\n')
    return snapshot(folder)
