"""What the README promises about resuming and process counts, checked for every shipped task on
a tiny config (tests/configs/*_tiny.yaml) through ``tools/train_net.py`` in subprocesses:

- ``kill -9`` after a checkpoint, then ``--resume`` with ``DATALOADER.NUM_WORKERS 2`` instead of
  0: final weights and EMA bit-identical to an uninterrupted run, and the losses logged after the
  resume equal the uninterrupted run's (so neither the interruption nor the worker count matters;
  one test for both saves two process launches per task);
- ``--num-gpus 2`` (two gloo processes on CPU) with the same ``SOLVER.IMS_PER_BATCH`` gives the
  1-process weights up to float summation order.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from diffvision.modeling.weight_files import safe_torch_load

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "tests" / "configs"
TASKS = ["ddpm", "ddep", "pixel_mlp", "diffdet", "diffinst"]
MAX_ITER, CHECKPOINT_AT = 6, 3  # checkpoint after iteration index 2, killed during index 4


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    env["PYTHONPATH"] = str(REPO)
    return env


def _opts(out: Path, *extra: str) -> list[str]:
    return [
        "OUTPUT_DIR", str(out),
        "SOLVER.MAX_ITER", str(MAX_ITER),
        "SOLVER.CHECKPOINT_PERIOD", str(CHECKPOINT_AT),
        "LOG_PERIOD", "1",
        *extra,
    ]  # fmt: skip


def _train(task: str, out: Path, *extra: str, flags: tuple[str, ...] = ()) -> None:
    cmd = [sys.executable, str(REPO / "tools" / "train_net.py"), "--config"]
    cmd += [str(CONFIGS / f"{task}_tiny.yaml"), *flags, *_opts(out, *extra)]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


def _checkpoint(out: Path) -> dict:
    return safe_torch_load(out / "model_final.pth")


def _losses(out: Path) -> dict[int, dict[str, float]]:
    """The last logged losses of every iteration (a resumed run appends)."""
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {
        r["iteration"]: {k: v for k, v in r.items() if k.startswith("loss")}
        for r in records
        if any(k.startswith("loss") for k in r)
    }


def _assert_equal_states(a: dict, b: dict, *, exact: bool, what: str) -> None:
    assert a.keys() == b.keys(), what
    for key in a:
        if exact:
            assert torch.equal(a[key], b[key]), f"{what}: {key} differs"
        elif a[key].dtype.is_floating_point:
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=f"{what}: {key}")
        else:
            assert torch.equal(a[key], b[key]), f"{what}: {key} differs"


_STRAIGHT: dict[str, Path] = {}


def _ensure_tiny_square_detection(root: Path) -> None:
    """8 images of 64x64 with 1-3 boxes of 2 classes (COCO json, each square's polygon as its
    segmentation): equal sizes, so a batch split over processes is padded exactly like the whole
    batch."""
    if (root / "train.json").is_file():
        return
    from PIL import Image, ImageDraw

    g = torch.Generator().manual_seed(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(8):
        img = Image.new("RGB", (64, 64), (90, 110, 130))
        draw = ImageDraw.Draw(img)
        for _ in range(1 + i % 3):
            x, y = (int(v) for v in torch.randint(0, 40, (2,), generator=g))
            w, h = (int(v) for v in torch.randint(8, 24, (2,), generator=g))
            cls = int(torch.randint(0, 2, (1,), generator=g))
            draw.rectangle([x, y, x + w, y + h], fill=((230, 40, 40), (40, 200, 60))[cls])
            annotations.append(
                {"id": len(annotations) + 1, "image_id": i + 1, "category_id": cls + 1,
                 "bbox": [x, y, w + 1, h + 1], "area": (w + 1) * (h + 1), "iscrowd": 0,
                 "segmentation": [[x, y, x + w + 1, y, x + w + 1, y + h + 1, x, y + h + 1]]}
            )  # fmt: skip
        img.save(root / "images" / f"{i:02d}.png")
        images.append({"id": i + 1, "file_name": f"{i:02d}.png", "width": 64, "height": 64})
    categories = [{"id": 1, "name": "red"}, {"id": 2, "name": "green"}]
    tmp = root / "train.json.tmp"
    tmp.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    tmp.replace(root / "train.json")


_ensure_tiny_square_detection(REPO / "datasets" / "tiny_square_detection")
_ensure_tiny_square_detection(REPO / "datasets" / "tiny_square_instances")


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    def run(task: str) -> Path:
        if task not in _STRAIGHT:
            out = tmp_path_factory.mktemp(f"{task}_straight")
            _train(task, out)
            _STRAIGHT[task] = out
        return _STRAIGHT[task]

    return run


@pytest.mark.parametrize("task", TASKS)
def test_kill_9_then_resume_with_workers_is_bit_identical(task, straight, tmp_path):
    reference = straight(task)
    out = tmp_path / "killed"
    frozen = tmp_path / "frozen"
    env = dict(_env(), DIFFVISION_TEST_FREEZE_AT="4", DIFFVISION_TEST_FROZEN=str(frozen))
    cmd = [sys.executable, str(REPO / "tests" / "engine" / "train_until.py"), "--config"]
    cmd += [str(CONFIGS / f"{task}_tiny.yaml"), *_opts(out)]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 240
    while not frozen.exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-5000:]
        assert time.monotonic() < deadline, "the run never reached the freeze point"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert (out / "last_checkpoint").read_text().strip() == f"model_{CHECKPOINT_AT - 1:07d}.pth"
    assert not (out / "model_final.pth").exists()

    _train(task, out, "DATALOADER.NUM_WORKERS", "2", flags=("--resume",))
    a, b = _checkpoint(reference), _checkpoint(out)
    _assert_equal_states(a["model"], b["model"], exact=True, what="weights")
    assert ("ema" in a) == ("ema" in b)
    if "ema" in a:
        _assert_equal_states(a["ema"], b["ema"], exact=True, what="EMA weights")
    straight_losses, resumed_losses = _losses(reference), _losses(out)
    after = [it for it in straight_losses if it >= CHECKPOINT_AT]
    assert after and all(resumed_losses[it] == straight_losses[it] for it in after)


@pytest.mark.parametrize("task", TASKS)
def test_two_processes_equal_one_process(task, straight, tmp_path):
    reference = straight(task)
    _train(task, tmp_path, flags=("--num-gpus", "2"))
    a, b = _checkpoint(reference), _checkpoint(tmp_path)
    _assert_equal_states(a["model"], b["model"], exact=False, what="2 processes")
    # Every logged loss (the mean over the global batch) agrees to float precision, and the
    # losses move (a run that learns nothing would compare equal trivially).
    one, two = _losses(reference), _losses(tmp_path)
    assert one.keys() == two.keys() == set(range(MAX_ITER))
    for it in one:
        assert one[it].keys() == two[it].keys()
        for k in one[it]:
            assert two[it][k] == pytest.approx(one[it][k], rel=1e-4, abs=1e-6), (it, k)
    assert one[0] != one[MAX_ITER - 1]
