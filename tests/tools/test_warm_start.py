"""Fine-tuning from a checkpoint of another class count through ``tools/train_net.py``.

An 80-class checkpoint of the toy DiffusionDet's architecture initialises the 4-class toy
detector: every tensor but the class tensors equals the checkpoint's at iteration 0, the class
tensors equal a freshly built model's, one log line names them and both counts. ``--eval-only``
refuses the same checkpoint in one line; another architecture stays an error naming the keys.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch

from diffvision.data.toy_detection import ensure_toy_detection
from diffvision.engine.trainer import Trainer
from diffvision.errors import WeightsError
from tests.tool_helpers import REPO, drop_tool_log_handlers, load_tool

CONFIG = str(REPO / "projects/detection/diffdet_toy.yaml")
CLASS_KEYS = [
    f"head.head_series.{i}.class_logits.{p}" for i in range(3) for p in ("weight", "bias")
]


@pytest.fixture()
def toy_env(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFVISION_DATASETS", str(tmp_path / "datasets"))
    ensure_toy_detection(tmp_path / "datasets" / "toy_detection", sizes={"train": 4, "val": 2})
    return tmp_path


def _checkpoint(path, num_classes: int, extra=()) -> dict[str, torch.Tensor]:
    import projects  # noqa: F401
    from diffvision.engine.defaults import load_config
    from projects.detection.build import build_model

    torch.manual_seed(123)  # not the engine's seed: every tensor differs from a fresh model's
    cfg = load_config(CONFIG, ["MODEL.DiffusionDet.NUM_CLASSES", str(num_classes), *extra])
    state = build_model(cfg).state_dict()
    torch.save({"model": state}, path)
    return state


def _model_at_iteration_0(monkeypatch, args) -> dict[str, torch.Tensor]:
    """Run train_net with ``args`` and return the model's state when training would start."""
    captured = {}

    def capture(self):
        model = getattr(self.model, "module", self.model)
        captured.update({k: v.detach().clone() for k, v in model.state_dict().items()})

    monkeypatch.setattr(Trainer, "train", capture)
    try:
        assert load_tool("train_net").cli(args) == 0
    finally:
        drop_tool_log_handlers()
    return captured


def _args(toy_env, out, *extra):
    return ["--config", CONFIG, "MODEL.DEVICE", "cpu", "DATASETS.TEST", "()",
            "OUTPUT_DIR", str(toy_env / out), *extra]  # fmt: skip


def test_80_class_checkpoint_fine_tunes_the_4_class_toy_detector(toy_env, monkeypatch, caplog):
    state = _checkpoint(toy_env / "coco80.pth", 80)
    with caplog.at_level(logging.INFO, logger="diffvision.engine.weights"):
        tuned = _model_at_iteration_0(
            monkeypatch, _args(toy_env, "tuned", "MODEL.WEIGHTS", str(toy_env / "coco80.pth"))
        )
    fresh = _model_at_iteration_0(monkeypatch, _args(toy_env, "fresh"))
    (line,) = [r.getMessage() for r in caplog.records if "re-initialised" in r.getMessage()]
    assert "80 -> 4" in line and all(k in line for k in CLASS_KEYS)
    assert set(tuned) == set(state)
    for key, value in tuned.items():
        if key in CLASS_KEYS:
            assert value.shape[0] == 4
            assert torch.equal(value, fresh[key]), key  # as a freshly built model
        else:
            assert torch.equal(value, state[key]), key  # the checkpoint's


def test_class_map_keeps_the_rows_of_shared_class_names(toy_env, monkeypatch):
    ann = json.loads(
        (toy_env / "datasets/toy_detection/annotations/instances_train.json").read_text()
    )
    names = [c["name"] for c in sorted(ann["categories"], key=lambda c: c["id"])]
    # the checkpoint knows 6 classes; two of them (at rows 4 and 1) are toy classes 2 and 0
    ckpt_names = ["a", names[0], "b", "c", names[2], "d"]
    state = _checkpoint(toy_env / "six.pth", 6)
    tuned = _model_at_iteration_0(
        monkeypatch,
        _args(toy_env, "mapped", "MODEL.WEIGHTS", str(toy_env / "six.pth"),
              "MODEL.WEIGHTS_CLASS_MAP", json.dumps(ckpt_names).replace('"', "'")),
    )  # fmt: skip
    fresh = _model_at_iteration_0(monkeypatch, _args(toy_env, "fresh"))
    for key in CLASS_KEYS:
        assert torch.equal(tuned[key][0], state[key][1])
        assert torch.equal(tuned[key][2], state[key][4])
        assert torch.equal(tuned[key][[1, 3]], fresh[key][[1, 3]])


def _run_cli(args, capsys) -> tuple[int, str]:
    try:
        status = load_tool("train_net").cli(args)
    finally:
        drop_tool_log_handlers()
    return status, capsys.readouterr().err


def test_eval_only_with_another_class_count_is_one_line(toy_env, capsys):
    _checkpoint(toy_env / "coco80.pth", 80)
    status, err = _run_cli(
        ["--config", CONFIG, "--eval-only", "MODEL.DEVICE", "cpu", "OUTPUT_DIR",
         str(toy_env / "ev"), "MODEL.WEIGHTS", str(toy_env / "coco80.pth")],
        capsys,
    )  # fmt: skip
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert status == 2 and "Traceback" not in err and len(lines) == 1
    assert "80 classes" in lines[0] and "has 4" in lines[0]


def test_other_mismatches_and_unknown_class_names_stay_errors(toy_env, capsys):
    # another head width: not a class-count change, every mis-shaped key is an error
    _checkpoint(toy_env / "wide.pth", 80, ["MODEL.DiffusionDet.DIM_FEEDFORWARD", "128"])
    status, err = _run_cli(
        _args(toy_env, "wide", "MODEL.WEIGHTS", str(toy_env / "wide.pth")), capsys
    )
    assert status == 2 and "Traceback" not in err
    assert "shape mismatches" in err and "linear1.weight" in err
    _checkpoint(toy_env / "six.pth", 6)
    status, err = _run_cli(
        _args(toy_env, "unknown", "MODEL.WEIGHTS", str(toy_env / "six.pth"),
              "MODEL.WEIGHTS_CLASS_MAP", "['u', 'v', 'w', 'x', 'y', 'z']"),
        capsys,
    )  # fmt: skip
    assert status == 2 and "names no class of the training set" in err
    status, err = _run_cli(
        _args(toy_env, "count", "MODEL.WEIGHTS", str(toy_env / "six.pth"),
              "MODEL.WEIGHTS_CLASS_MAP", "['u', 'v']"),
        capsys,
    )  # fmt: skip
    assert status == 2 and "names 2 classes" in err and "has 6" in err


@pytest.mark.parametrize("layout", ["official_pth", "detectron2_pkl"])
def test_official_and_detectron2_files_fine_tune_too(toy_env, layout):
    import pickle

    import projects  # noqa: F401
    from diffvision.engine.defaults import load_config
    from diffvision.engine.weights import load_weights
    from projects.detection.build import build_model

    state = _checkpoint(toy_env / "coco80.pth", 80)
    if layout == "official_pth":  # the official release: a bare state dict
        path = toy_env / "bare.pth"
        torch.save(state, path)
    else:  # detectron2's .pkl: numpy arrays under "model"
        path = toy_env / "model.pkl"
        with open(path, "wb") as f:
            pickle.dump({"model": {k: v.numpy() for k, v in state.items()}}, f)
    torch.manual_seed(0)
    model = build_model(load_config(CONFIG, ["MODEL.DEVICE", "cpu"]))
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WeightsError, match="trained for 80 classes but the model has 4"):
        load_weights(model, path)
    info = load_weights(model, path, allow_class_change=True)
    assert sorted(info["reinitialized"]) == sorted(CLASS_KEYS) and info["num_classes"] == (80, 4)
    for key, value in model.state_dict().items():
        assert torch.equal(value, fresh[key] if key in CLASS_KEYS else state[key]), key
