"""Every command of ``docs/custom_data.md``, run as written on generated data.

The commands are read from the guide's ``bash`` blocks, so the guide cannot drift from what works.
Only the scale changes: each ``--config`` command gets trailing overrides for a tiny model and
tiny images, training runs 2 iterations, and ``detector.pth`` (the trained detector the guide
starts from) is a 10-class model of that tiny architecture.

Exporting the EfficientNet-Lite0 model to ONNX takes minutes of CPU time (tracing the timm
encoder), so the two ONNX commands run only with ``DIFFVISION_SLOW_TESTS=1``; the ``--onnx`` demo
and its ``--json`` output are tested on a ResNet model in ``tests/tools/test_demo_json.py``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import cv2
import torch

from diffvision.data.toy_detection import ensure_toy_detection
from tests.tool_helpers import REPO

GUIDE = REPO / "docs" / "custom_data.md"
TINY = ["MODEL.DEVICE", "cpu", "MODEL.DiffusionDet.NUM_HEADS", "1",
        "MODEL.DiffusionDet.NUM_PROPOSALS", "8", "INPUT.MIN_SIZE_TRAIN", "(64,)",
        "INPUT.MAX_SIZE_TRAIN", "96", "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96",
        "TEST.IMS_PER_BATCH", "2"]  # fmt: skip
TRAIN = ["SOLVER.MAX_ITER", "2", "SOLVER.STEPS", "(1,)", "SOLVER.WARMUP_ITERS", "1",
         "SOLVER.IMS_PER_BATCH", "2"]  # fmt: skip


def guide_commands() -> list[list[str]]:
    """The ``python ...`` commands of the guide's bash blocks (continuations joined)."""
    blocks = re.findall(r"```bash\n(.*?)```", GUIDE.read_text(), flags=re.S)
    text = "\n".join(blocks).replace("\\\n", " ")
    return [shlex.split(line) for line in text.splitlines() if line.strip().startswith("python")]


def _my_data(tmp) -> None:
    """A 3-class COCO-format set: the toy shapes without their fourth class."""
    toy = ensure_toy_detection(tmp / "gen", sizes={"train": 4, "val": 3})
    for split in ("train", "val"):
        data = json.loads((toy / "annotations" / f"instances_{split}.json").read_text())
        data["categories"] = [c for c in data["categories"] if c["id"] <= 3]
        data["annotations"] = [a for a in data["annotations"] if a["category_id"] <= 3]
        (tmp / "my_data").mkdir(exist_ok=True)
        (tmp / "my_data" / f"{split}.json").write_text(json.dumps(data))
        shutil.copytree(toy / split, tmp / "my_data" / split)


def _detector(path) -> None:
    import projects  # noqa: F401
    from diffvision.engine.defaults import load_config
    from projects.detection.build import build_model

    config = REPO / "projects/detection/diffdet_effnetlite0_finetune.yaml"
    cfg = load_config(str(config), [*TINY, "MODEL.DiffusionDet.NUM_CLASSES", "10"])
    torch.manual_seed(0)
    torch.save({"model": build_model(cfg).state_dict()}, path)


def test_every_command_of_the_guide_runs(tmp_path):
    _my_data(tmp_path)
    _detector(tmp_path / "detector.pth")
    env = {**os.environ, "PYTHONPATH": str(REPO), "DIFFVISION_DATASETS": str(tmp_path / "ds")}
    commands = guide_commands()
    assert len(commands) == 7
    slow = os.environ.get("DIFFVISION_SLOW_TESTS") == "1"
    onnx = [c for c in commands if "tools/export.py" in c or "--onnx" in c]
    assert len(onnx) == 2
    for cmd in commands if slow else [c for c in commands if c not in onnx]:
        cmd = [sys.executable, *(str(REPO / a) if a.startswith(("tools/", "projects/")) else a
                                 for a in cmd[1:])]  # fmt: skip
        if "--config" in cmd:
            cmd += TINY
            if "train_net.py" in cmd[1] and "--eval-only" not in cmd:
                cmd += TRAIN
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600)  # fmt: skip
        assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        if "train_net.py" in cmd[1] and "--eval-only" not in cmd:
            log = (tmp_path / "output/my_detector/log.txt").read_text()
            assert "class count 10 -> 3: re-initialised" in log
    out = tmp_path / "output" / "my_detector"
    names = ["rectangle", "ellipse", "triangle"]
    table = (out / "my_val_per_class.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in table[1:]] == names
    assert cv2.imread(str(out / "my_val_pr_curves.png")) is not None
    assert any(p.name.startswith("eval_") for p in out.iterdir())  # --eval-only kept the run
    for name in ("detections.json", "detections_onnx.json") if slow else ("detections.json",):
        records = json.loads((out / name).read_text())["images"]
        assert len(records) == 3 and all("detections" in r for r in records)
        assert [c["name"] for c in json.loads((out / name).read_text())["categories"]] == names
    coco = json.loads((out / "coco_results.json").read_text())
    assert all(r["category_id"] in (1, 2, 3) for r in coco)
    assert cv2.imread(str(out / "denoising.png")) is not None and (out / "denoising.gif").is_file()
    assert (out / "model.onnx").is_file() == slow
