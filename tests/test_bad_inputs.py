"""Bad inputs to the four tools, one case per item of issue 10 and per case of its *Why*.

Every user mistake must end with exit status 2 and ONE line ``error: ...`` on stderr (no
traceback) and leave the output folder exactly as it was; fix-ups that are not errors (resume
fallbacks, dropped annotations) must be said in the log. The tools' ``main`` functions are
called in-process (seconds); a subprocess is used only where a crash of the interpreter
itself is what is being ruled out.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffvision.data.toy_detection import ensure_toy_detection
from diffvision.data.toy_scenes import generate_toy_scenes
from diffvision.engine.checkpoint import Checkpointer
from diffvision.engine.cli import run_main
from diffvision.engine.hooks import MetricsWriter
from diffvision.errors import ConfigError, DataError, WeightsError
from diffvision.modeling.weight_files import read_state_dict
from tests.tool_helpers import REPO, drop_tool_log_handlers, load_tool

DET = str(REPO / "projects/detection/diffdet_toy.yaml")
SEG = REPO / "projects" / "segmentation" / "configs"
TINY_DET = [
    "MODEL.DiffusionDet.NUM_PROPOSALS", "8", "MODEL.DiffusionDet.NUM_HEADS", "1",
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "96", "INPUT.MIN_SIZE_TEST", "64",
    "INPUT.MAX_SIZE_TEST", "96", "SOLVER.IMS_PER_BATCH", "2", "TEST.IMS_PER_BATCH", "2",
    "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0",
]  # fmt: skip


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


@pytest.fixture(autouse=True)
def clean_env(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFVISION_DATASETS", str(tmp_path / "datasets"))
    monkeypatch.delenv("DIFFVISION_DEBUG", raising=False)
    yield
    drop_tool_log_handlers()


@pytest.fixture()
def toy_det(tmp_path):
    ensure_toy_detection(tmp_path / "datasets" / "toy_detection", sizes={"train": 4, "val": 2})
    return tmp_path


def finished_run(folder: Path) -> dict[str, str]:
    """A folder as a finished run leaves it: checkpoints, marker, metrics."""
    model = torch.nn.Linear(2, 2)
    ckpt = Checkpointer(model, folder, config_text="x: 1\n")
    ckpt.save("model_0000009", iteration=9)
    ckpt.save("model_final", iteration=19)
    (folder / "metrics.jsonl").write_text('{"iteration": 19, "loss": 0.5}\n')
    return snapshot(folder)


# ---------------------------------------------------------------- item 1: one error path
def test_run_main_one_line_exit_2_and_debug_traceback(capsys, monkeypatch):
    def bad(argv):
        raise ConfigError("SOLVER.BASE_LR must be > 0,\n got -1")

    one_line_error(capsys, run_main(bad, []), "SOLVER.BASE_LR must be > 0, got -1")
    assert run_main(bad, ["--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("error:")
    monkeypatch.setenv("DIFFVISION_DEBUG", "1")
    assert run_main(bad, []) == 2
    assert "Traceback" in capsys.readouterr().err


class _BadImages(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        raise DataError(f"cannot read image photo_{i}.jpg: truncated")


def test_error_from_a_dataloader_worker_is_still_one_line(capsys):
    """DataLoader workers re-raise with the worker's traceback inside the message."""

    def main(argv):
        loader = torch.utils.data.DataLoader(_BadImages(), num_workers=1, batch_size=None)
        next(iter(loader))

    one_line_error(capsys, run_main(main, []), "error: cannot read image photo_0.jpg: truncated")


def test_unexpected_exceptions_keep_their_traceback():
    def buggy(argv):
        raise ZeroDivisionError("a bug")

    with pytest.raises(ZeroDivisionError):
        run_main(buggy, [])


def test_unknown_key_and_bad_flags(tmp_path, capsys):
    train_net = load_tool("train_net")
    out = tmp_path / "out"
    status = train_net.cli(["--config", DET, "SOLVER.BASE_LRR", "1", "OUTPUT_DIR", str(out)])
    one_line_error(capsys, status, "Unknown config key 'SOLVER.BASE_LRR'")
    status = train_net.cli(["--config", DET, "--resume", "--overwrite", "OUTPUT_DIR", str(out)])
    one_line_error(capsys, status, "--resume and --overwrite contradict")
    assert not out.exists()


def test_batch_not_divisible_is_rejected_before_spawning(tmp_path, capsys):
    """IMS_PER_BATCH 3 over --num-gpus 2 used to fail only after both processes started."""
    out = tmp_path / "out"
    status = load_tool("train_net").cli(
        ["--config", DET, "--num-gpus", "2", "SOLVER.IMS_PER_BATCH", "3", "OUTPUT_DIR", str(out)]
    )
    one_line_error(capsys, status, "SOLVER.IMS_PER_BATCH (3) is the global batch")
    assert not out.exists()


def test_error_inside_two_workers_is_one_line(tmp_path):
    """An input error found only inside the --num-gpus workers (here an unknown dataset name,
    raised by every rank) is printed once, exit status 2, without the launcher's traceback.
    A subprocess: the spawned workers must import tools/train_net.py as __main__."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools/train_net.py"), "--config", DET, "--num-gpus", "2",
         *TINY_DET, "DATASETS.TRAIN", "('nope',)", "OUTPUT_DIR", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "DIFFVISION_DATASETS": str(tmp_path)},
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "unknown detection dataset 'nope'" in errors[0], proc.stderr


def test_missing_weight_file_is_rejected_before_spawning(tmp_path, capsys):
    out = tmp_path / "out"
    status = load_tool("train_net").cli(
        ["--config", DET, "MODEL.WEIGHTS", str(tmp_path / "nope.pth"), "OUTPUT_DIR", str(out)]
    )
    line = one_line_error(capsys, status, "MODEL.WEIGHTS")
    assert "nope.pth" in line and "does not exist" in line
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


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_device_without_gpu_is_one_line(tmp_path, capsys):
    status = load_tool("train_net").cli(
        ["--config", DET, "MODEL.DEVICE", "cuda", "OUTPUT_DIR", str(tmp_path / "out")]
    )
    one_line_error(capsys, status, "no CUDA device is available; append MODEL.DEVICE cpu")


def test_output_dir_that_is_a_file(tmp_path, capsys):
    (tmp_path / "out").write_text("keep me")
    status = load_tool("train_net").cli(["--config", DET, "OUTPUT_DIR", str(tmp_path / "out")])
    one_line_error(capsys, status, "is a file, expected a folder")
    assert (tmp_path / "out").read_text() == "keep me"


def test_missing_dataset_names_the_file(tmp_path, capsys):
    out = tmp_path / "out"
    status = load_tool("train_net").cli(
        ["--config", str(REPO / "projects/detection/diffdet_r50.yaml"), "MODEL.WEIGHTS", "",
         "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(out)]
    )  # fmt: skip
    line = one_line_error(capsys, status, "instances_train2017.json")
    assert "DIFFVISION_DATASETS" in line
    assert not out.exists()  # found before any process started


@pytest.mark.parametrize("config", ["ddep_toy_finetune_r18.yaml", "pixel_mlp_toy.yaml"])
def test_missing_segmentation_folder_is_rejected_before_spawning(tmp_path, capsys, config):
    """The segmentation tasks' check_inputs runs before any process starts."""
    out = tmp_path / "out"
    missing = tmp_path / "no_such_split"
    status = load_tool("train_net").cli(
        ["--config", str(SEG / config), "DATASETS.TRAIN", f"('{missing}',)",
         "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(out)]
    )  # fmt: skip
    line = one_line_error(capsys, status, str(missing))
    assert "not a known name or folder" in line
    assert not out.exists()


# ------------------------------------------------- item 2: data checked at registration
def _write_coco(tmp_path: Path, annotations: list[dict]) -> str:
    (tmp_path / "imgs").mkdir(exist_ok=True)
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "imgs" / "a.png")
    data = {
        "images": [{"id": 1, "file_name": "a.png", "height": 40, "width": 50}],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "thing"}],
    }
    (tmp_path / "d.json").write_text(json.dumps(data))
    return f"mine:{tmp_path / 'd.json'}:{tmp_path / 'imgs'}"


def test_no_usable_annotation_stops_instead_of_training_on_nothing(tmp_path, capsys):
    """An empty (or fully dropped) annotation list used to train on nothing and print AP NaN."""
    custom = _write_coco(
        tmp_path,
        [
            {"id": 1, "image_id": 5, "category_id": 1, "bbox": [1, 1, 5, 5]},  # orphan
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [60, 1, 5, 5]},  # outside
        ],
    )
    out = tmp_path / "out"
    status = load_tool("train_net").cli(
        ["--config", DET, *TINY_DET, "DATASETS.CUSTOM", f"['{custom}']",
         "DATASETS.TRAIN", "('mine',)", "DATASETS.TEST", "('mine',)",
         "MODEL.DiffusionDet.NUM_CLASSES", "1", "OUTPUT_DIR", str(out)]
    )  # fmt: skip
    one_line_error(capsys, status, "no usable annotation in 1 images, nothing to train on")
    assert not list(out.glob("model_*.pth"))


def test_mask_label_beyond_num_classes_names_the_file(tmp_path, capsys):
    """A mask holding class 7 with NUM_CLASSES 3 gave torch's 'Target 7 is out of bounds'
    (here: the toy scenes' 5 classes plus a stray 7)."""
    scenes = generate_toy_scenes(tmp_path / "scenes", num_images=3, image_size=32)
    masks = sorted((scenes / "masks").glob("*.png"))
    bad = np.asarray(Image.open(masks[1])).copy()
    bad[:4, :4] = 7
    Image.fromarray(bad).save(masks[1])
    out = tmp_path / "out"
    status = load_tool("train_net").cli(
        ["--config", str(SEG / "ddep_toy_finetune_r18.yaml"),
         "DATASETS.TRAIN", f"('{scenes}',)", "DATASETS.TEST", f"('{scenes}',)",
         "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "5", "SEG.LABEL_FRACTION", "full",
         "SEG.CROP_SIZE", "(32, 32)",
         "SOLVER.IMS_PER_BATCH", "3", "SOLVER.MAX_ITER", "2", "MODEL.DEVICE", "cpu",
         "MODEL.DDEP.DECODER_CHANNELS", "[16, 8, 8, 8, 8]", "MODEL.WEIGHTS", "",
         "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(out)]
    )  # fmt: skip
    line = one_line_error(capsys, status, f"mask {masks[1]} holds labels [7]")
    assert "NUM_CLASSES 5" in line


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


# ------------------------------------------------------- item 3: finished work is kept
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


def test_resume_with_no_intact_checkpoint_stops(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model_0000009.pth").write_bytes(b"\x80\x02R." + bytes(range(256)))
    (out / "last_checkpoint").write_text("")
    before = snapshot(out)
    status = load_tool("train_net").cli(["--config", DET, "--resume", "OUTPUT_DIR", str(out)])
    one_line_error(capsys, status, "--resume: no intact checkpoint in")
    assert snapshot(out) == before


@pytest.mark.parametrize("marker", ["missing", "empty", "dangling", "truncated"])
def test_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path, caplog, marker):
    out = tmp_path / "out"
    finished_run(out)
    final = out / "model_final.pth"
    if marker == "missing":
        (out / "last_checkpoint").unlink()
        final.unlink()
    elif marker == "empty":
        (out / "last_checkpoint").write_text("")
        final.unlink()
    elif marker == "dangling":
        (out / "last_checkpoint").write_text("model_0000099.pth")
        final.unlink()
    else:  # newest checkpoint cut in half: used to fail with a bare PytorchStreamReader error
        final.write_bytes(final.read_bytes()[: final.stat().st_size // 2])
    with caplog.at_level(logging.INFO):
        start = Checkpointer(torch.nn.Linear(2, 2), out).resume()
    assert start == 10  # model_0000009 holds iteration 9
    assert "falling back to" in caplog.text and "model_0000009.pth" in caplog.text


def test_checkpoints_get_the_mode_of_other_outputs(tmp_path):
    out = tmp_path / "out"
    finished_run(out)
    (out / "plain.txt").write_text("x")
    mode = (out / "plain.txt").stat().st_mode & 0o777
    assert (out / "model_final.pth").stat().st_mode & 0o777 == mode
    assert (out / "last_checkpoint").stat().st_mode & 0o777 == mode


def test_metrics_jsonl_is_strict_json_and_truncated_on_resume(tmp_path):
    writer = MetricsWriter(tmp_path, use_tensorboard=False)
    for it in range(5):
        writer.write(it, {"loss": float("nan") if it == 3 else 1.0, "lr": float("inf")})
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[3] == {"iteration": 3, "loss": "nan", "lr": "inf"}  # json.loads is strict enough
    MetricsWriter(tmp_path, use_tensorboard=False, start_iter=2).write(
        2, {"loss": np.float32(0.5), "ap": torch.tensor(float("nan"))}
    )
    text = (tmp_path / "metrics.jsonl").read_text()
    rows = [json.loads(r) for r in text.splitlines()]
    assert [r["iteration"] for r in rows] == [0, 1, 2] and rows[2] == {
        "iteration": 2,
        "loss": 0.5,
        "ap": "nan",
    }
    assert "NaN" not in text and "Infinity" not in text


# ------------------------------------------------- item 4: weight files never run code
class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_weight_files_that_would_run_code_are_refused(tmp_path, capsys):
    marker = tmp_path / "code_ran"
    evil_pth, evil_pkl = tmp_path / "evil.pth", tmp_path / "evil.pkl"
    torch.save({"model": {"w": torch.ones(1)}, "x": _RunsCode(marker)}, evil_pth)
    evil_pkl.write_bytes(pickle.dumps({"model": {"w": np.ones(1)}, "x": _RunsCode(marker)}, 2))
    with pytest.raises(WeightsError, match="evil.pth holds Python objects .*posix.system"):
        read_state_dict(evil_pth)
    with pytest.raises(WeightsError, match="evil.pkl cannot be read as plain data"):
        read_state_dict(evil_pkl)
    out = tmp_path / "out"
    status = load_tool("train_net").cli(
        ["--config", DET, "--eval-only", *TINY_DET, "MODEL.WEIGHTS", str(evil_pth),
         "OUTPUT_DIR", str(out)]
    )  # fmt: skip
    line = one_line_error(capsys, status, "it is not loaded because unpickling them could run code")
    assert "convert it once" in line
    assert not marker.exists()


def test_plain_detectron2_pickle_still_loads(tmp_path):
    path = tmp_path / "d2.pkl"
    arrays = {"stem.conv1.weight": np.ones((2, 3), np.float32), "res2.0.x": np.arange(3)}
    path.write_bytes(pickle.dumps({"model": arrays, "__author__": "me", "k": np.float32(2)}, 2))
    state = read_state_dict(path)
    assert set(state) == set(arrays) and state["res2.0.x"].dtype == torch.int64


def test_random_bytes_as_weights_is_one_line(tmp_path, capsys):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x80\x02R." + bytes(range(256)) * 8)  # CI once drew such bytes by chance
    status = load_tool("train_net").cli(
        ["--config", DET, "--eval-only", *TINY_DET, "MODEL.WEIGHTS", str(junk),
         "OUTPUT_DIR", str(tmp_path / "out")]
    )  # fmt: skip
    one_line_error(capsys, status, f"weight file {junk} is not a PyTorch file")


# item 5 (an absurd learning rate on every toy config, the detector's former segfault) is
# tests/test_divergence.py; item 6 (the pooler keeps empty FPN levels in the graph) is
# tests/projects/detection/test_pooler.py.


# ------------------------------------------------------------ sample.py (item 1, Why)
def test_sample_negative_count_is_one_line(tmp_path, capsys):
    """--num-samples -3 gave torch.cat(): expected a non-empty list."""
    status = run_main(
        load_tool("sample").main,
        ["--checkpoint", str(tmp_path / "m.pth"), "--num-samples", "-3",
         "--output", str(tmp_path / "s")],
    )  # fmt: skip
    one_line_error(capsys, status, "--num-samples must be >= 1, got -3")
    assert not (tmp_path / "s").exists()


def test_sample_output_that_is_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "s").write_text("keep")
    status = run_main(
        load_tool("sample").main,
        ["--checkpoint", str(tmp_path / "m.pth"), "--output", str(tmp_path / "s")],
    )
    one_line_error(capsys, status, "is a file; samples are written into a folder")
    assert (tmp_path / "s").read_text() == "keep"


def test_sample_missing_checkpoint_is_one_line(tmp_path, capsys):
    status = run_main(
        load_tool("sample").main, ["--checkpoint", str(tmp_path / "m.pth"), "--output", "x"]
    )
    one_line_error(capsys, status, "m.pth does not exist")


@pytest.fixture()
def ddpm_checkpoint(tmp_path):
    """A random tiny DDPM saved the way the engine saves it (model + config)."""
    from diffvision.engine.defaults import load_config
    from diffvision.generation.build import build_ddpm_model

    cfg = load_config(
        str(REPO / "configs/ddpm/toy_instant.yaml"),
        ["INPUT.IMAGE_SIZE", "8", "MODEL.DDPM.UNET.CHANNEL_MULT", "[1, 2]",
         "MODEL.DDPM.UNET.ATTENTION_RESOLUTIONS", "[]"],
    )  # fmt: skip
    torch.manual_seed(0)
    path = tmp_path / "ddpm.pth"
    torch.save({"model": build_ddpm_model(cfg).state_dict(), "config": cfg.dump()}, path)
    return path


def test_sample_reports_progress_and_keeps_the_single_call_result(
    tmp_path, ddpm_checkpoint, capsys
):
    """Batch by batch with an estimate of the time left, and the same images as one
    generate() call over all samples (the batches draw from one generator in order)."""
    from diffvision.generation.checkpoint import load_ddpm_model
    from diffvision.generation.sampling import generate

    sample = load_tool("sample")
    argv = ["--checkpoint", str(ddpm_checkpoint), "--output", str(tmp_path / "s"),
            "--sampler", "ddim", "--steps", "2", "--num-samples", "3", "--batch-size", "2",
            "--device", "cpu", "--seed", "7"]  # fmt: skip
    assert run_main(sample.main, argv) == 0
    out = capsys.readouterr().out
    assert "3 samples in 2 batches" in out and "[2/3]" in out and "[3/3]" in out
    assert "s left" in out
    model, _ = load_ddpm_model(str(ddpm_checkpoint), use_ema=True, device="cpu")
    expected = generate(model, num_samples=3, sampler="ddim", num_steps=2, batch_size=2,
                        generator=torch.Generator().manual_seed(7))  # fmt: skip
    expected = ((expected + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    got = torch.from_numpy(np.load(tmp_path / "s" / "samples.npz")["arr_0"]).permute(0, 3, 1, 2)
    assert (got.int() - expected.int()).abs().max() <= 1  # uint8 rounding only


def test_sample_interrupted_writes_what_is_finished(tmp_path, ddpm_checkpoint, monkeypatch):
    sample = load_tool("sample")
    real, calls = sample.generate, []

    def interrupted_after_one_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(sample, "generate", interrupted_after_one_batch)
    argv = ["--checkpoint", str(ddpm_checkpoint), "--output", str(tmp_path / "s"), "--steps",
            "2", "--num-samples", "6", "--batch-size", "2", "--device", "cpu"]  # fmt: skip
    assert run_main(sample.main, argv) == 0
    assert np.load(tmp_path / "s" / "samples.npz")["arr_0"].shape[0] == 2


# ---------------------------------------------------------- item 7: sweep_boxes_steps
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


# ------------------------------------------------ --eval-only next to a finished run
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


def test_binary_config_file_is_one_line(tmp_path, capsys):
    config = tmp_path / "model.yaml"
    config.write_bytes(b"\x9f\x00\xff" + bytes(range(256)))
    status = load_tool("train_net").cli(["--config", str(config)])
    one_line_error(capsys, status, f"Config file '{config}' is not UTF-8 text")


# ------------------------------- the tools' outputs: refused when present, --overwrite replaces
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


# ------------------------------------------------------------- DDPM dataset names
def test_ddpm_unknown_dataset_and_missing_cifar_are_one_line(tmp_path, capsys):
    """A folder given without ``image_folder:`` used to raise a ValueError with a traceback,
    a missing CIFAR-10 a builtin FileNotFoundError."""
    folder = tmp_path / "pictures"
    folder.mkdir()
    config = str(REPO / "configs/ddpm/toy_instant.yaml")
    common = ["SOLVER.MAX_ITER", "1", "TEST.EVAL_PERIOD", "0", "DATALOADER.NUM_WORKERS", "0"]
    status = load_tool("train_net").cli(
        ["--config", config, "DATASETS.TRAIN", f"('{folder}',)", *common,
         "OUTPUT_DIR", str(tmp_path / "a")]
    )  # fmt: skip
    one_line_error(capsys, status, f"for a folder of images write image_folder:{folder}")
    status = load_tool("train_net").cli(
        ["--config", config, "DATASETS.TRAIN", "('cifar10_train',)", "INPUT.IMAGE_SIZE", "32",
         *common, "OUTPUT_DIR", str(tmp_path / "b")]
    )  # fmt: skip
    one_line_error(capsys, status, "CIFAR-10 not found")


# ------------------------------------- library ValueErrors while building = bad config values
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


# ------------------------------------------------ --resume with another config
def test_resume_with_another_model_or_optimizer_is_one_line(toy_det, capsys):
    """A changed HIDDEN_DIM failed in load_state_dict with a traceback; a changed optimizer
    loaded AdamW's state into SGD and failed at the first step (KeyError 'momentum'). The run's
    config.yaml, the record of how its checkpoints were made, is kept in both cases."""
    out = toy_det / "out"
    base = ["--config", DET, *TINY_DET, "SOLVER.MAX_ITER", "1", "TEST.EVAL_PERIOD", "0",
            "DATASETS.TEST", "()", "OUTPUT_DIR", str(out)]  # fmt: skip
    assert load_tool("train_net").cli(base) == 0, capsys.readouterr().err
    capsys.readouterr()
    started_with = (out / "config.yaml").read_text()
    resume = ["--resume", *base, "SOLVER.MAX_ITER", "2"]
    status = load_tool("train_net").cli([*resume, "MODEL.DiffusionDet.HIDDEN_DIM", "32"])
    one_line_error(capsys, status, "does not fit the model this config builds")
    status = load_tool("train_net").cli([*resume, "SOLVER.OPTIMIZER", "SGD"])
    line = one_line_error(capsys, status, "the optimizer state in")
    assert "does not fit this config's SGD" in line and "momentum" in line
    assert (out / "config.yaml").read_text() == started_with
    assert load_tool("train_net").cli(resume) == 0  # the same model and optimizer resume
    assert (out / "config.yaml").read_text() == started_with
    assert "MAX_ITER: 2" in (out / "config.resume3.yaml").read_text()
