"""The task template of ``docs/internals.md`` is complete: its four files, written into a fresh
folder and imported, register a task that the engine trains and evaluates, and the loss falls."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "internals.md"


def _template_files() -> dict[str, str]:
    """``{"config.py": source, ...}`` from the doc's block of ``# my_task/<file>.py`` parts."""
    text = DOC.read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "# my_task/" in b)
    parts = re.split(r"^# my_task/(\w+\.py)\n", block, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_the_documented_template_is_a_working_task(tmp_path, monkeypatch):
    files = _template_files()
    assert sorted(files) == ["build.py", "config.py", "data.py", "task.py"]
    package = tmp_path / "my_task"
    package.mkdir()
    for name, source in files.items():
        (package / name).write_text(source)
    (package / "__init__.py").write_text("from . import task  # noqa: F401\n")  # the import line
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_task", raising=False)
    __import__("my_task")

    from diffvision.engine.defaults import default_setup, load_config
    from diffvision.engine.run import train

    opts = ["MODEL.META_ARCHITECTURE", "MyTask", "MODEL.DEVICE", "cpu",
            "OUTPUT_DIR", str(tmp_path / "out"), "SEED", "0", "SOLVER.IMS_PER_BATCH", "8",
            "SOLVER.MAX_ITER", "40", "SOLVER.BASE_LR", "0.05", "SOLVER.WARMUP_ITERS", "0",
            "SOLVER.STEPS", "()", "DATALOADER.NUM_WORKERS", "0", "DATASETS.TEST", "('points',)",
            "LOG_PERIOD", "1"]  # fmt: skip
    results = train(default_setup(load_config("", opts)))
    records = (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()
    losses = [r["loss_mse"] for r in map(json.loads, records) if "loss_mse" in r]
    assert losses[-1] < 0.5 * losses[0]
    assert results["mse"] < losses[0]
