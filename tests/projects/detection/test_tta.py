"""Test-time augmentation: copies mapped back to the original image, merged, seeded, batched."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_detector import _batch, _model  # noqa: E402

from diffvision.config import get_cfg  # noqa: E402
from diffvision.errors import ConfigError  # noqa: E402
from projects.detection.tta import DetectorWithTTA, build_tta  # noqa: E402


class _BrightSquareDetector:
    """A stand-in detector: one box around the bright pixels of each input, in original pixels."""

    nms_threshold = 0.5

    def __init__(self) -> None:
        self.calls: list[list[tuple[int, int]]] = []

    def inference(self, batched_inputs, *, seeds=None):
        self.calls.append([tuple(x["image"].shape[-2:]) for x in batched_inputs])
        out = []
        for x in batched_inputs:
            h, w = x["image"].shape[-2:]
            ys, xs = torch.nonzero(x["image"][0] > 127, as_tuple=True)
            box = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
            box = box * torch.tensor([x["width"] / w, x["height"] / h] * 2)
            out.append({"boxes": box[None], "scores": torch.tensor([0.9]),
                        "labels": torch.tensor([1])})  # fmt: skip
        return out


def _square_image() -> dict:
    image = torch.zeros(3, 60, 90, dtype=torch.uint8)
    image[:, 10:30, 6:36] = 255  # left half: a flip that is not undone lands on the right
    return {"image": image, "height": 60, "width": 90}


def test_copies_are_mapped_back_unflipped_and_merged_in_one_batch():
    stub = _BrightSquareDetector()
    tta = DetectorWithTTA(stub, min_sizes=(30, 60, 120), max_size=400, flip=True)
    (out,) = tta([_square_image()])
    # one inference call with all 6 copies (3 sizes x flip), each at its own size
    assert stub.calls == [[(30, 45), (30, 45), (60, 90), (60, 90), (120, 180), (120, 180)]]
    # every copy found the same square in original pixels: NMS keeps one box, at the square
    assert out["labels"].tolist() == [1]
    torch.testing.assert_close(out["boxes"], torch.tensor([[6.0, 10.0, 36.0, 30.0]]), atol=2.0,
                               rtol=0)  # fmt: skip


def test_one_copy_at_the_test_size_is_the_plain_result():
    model = _model(sample_step=2).eval()
    batch = _batch(train=False)
    for i, x in enumerate(batch):  # the toy inputs: (64, 80) and (48, 64)
        (plain,) = model.inference([x], seeds=[5 + i])
        tta = DetectorWithTTA(model, min_sizes=(min(x["image"].shape[-2:]),), max_size=96,
                              flip=False)  # fmt: skip
        (got,) = tta([x], seeds=[5 + i])
        assert len(got["scores"]) > 0
        for key in ("boxes", "scores", "labels"):
            torch.testing.assert_close(got[key], plain[key])


def test_tta_is_seeded_and_uses_every_copy():
    model = _model(sample_step=2).eval()
    batch = _batch(train=False)[:1]
    tta = DetectorWithTTA(model, min_sizes=(48, 64), max_size=96, flip=True)
    a, b = tta(batch, seeds=[3]), tta(batch, seeds=[3])
    torch.testing.assert_close(a[0]["scores"], b[0]["scores"])
    other = tta(batch, seeds=[4])[0]["scores"]
    assert not torch.equal(a[0]["scores"], other)


def test_build_tta_reads_the_detectron2_keys():
    cfg = get_cfg()
    model = _model()
    assert build_tta(cfg, model) is None  # TEST.AUG.ENABLED is off by default
    cfg.TEST.AUG.ENABLED = True
    cfg.TEST.AUG.MIN_SIZES = (48, 64)
    cfg.TEST.AUG.MAX_SIZE = 100
    cfg.TEST.AUG.FLIP = False
    tta = build_tta(cfg, model)
    assert (tta.min_sizes, tta.max_size, tta.flip) == ([48, 64], 100, False)
    cfg.TEST.AUG.MAX_SIZE = 50
    with pytest.raises(ConfigError, match="TEST.AUG.MAX_SIZE"):
        build_tta(cfg, model)


def test_the_task_evaluates_through_tta_with_the_images_seeds():
    """TEST.AUG.ENABLED routes the engine's evaluation loop (the task's build_inference) through
    DetectorWithTTA, seeded by each test image's ``seed``; off, the loop calls the model."""
    from projects.detection.task import DIFFUSIONDET_TASK

    cfg = get_cfg()
    assert DIFFUSIONDET_TASK.build_inference(cfg) is None  # plain model(inputs)
    cfg.TEST.AUG.ENABLED = True
    cfg.TEST.AUG.MIN_SIZES = (48, 64)
    cfg.TEST.AUG.MAX_SIZE = 96
    cfg.TEST.AUG.FLIP = True
    model = _model(sample_step=1).eval()
    batch = [dict(x, seed=11 + i) for i, x in enumerate(_batch(train=False))]
    run = DIFFUSIONDET_TASK.build_inference(cfg)
    got = run(model, batch)
    want = DetectorWithTTA(model, min_sizes=(48, 64), max_size=96, flip=True)(batch, seeds=[11, 12])
    for g, w in zip(got, want, strict=True):
        for key in ("boxes", "scores", "labels"):
            torch.testing.assert_close(g[key], w[key])
    plain = model(batch)
    assert any(len(g["scores"]) != len(p["scores"]) or not torch.equal(g["scores"], p["scores"])
               for g, p in zip(got, plain, strict=True))  # fmt: skip


def test_the_tta_wrapper_is_built_once_per_evaluated_model(monkeypatch):
    """build_inference's ``run`` reads TEST.AUG once per model, not once per batch; a second
    model (the EMA evaluation) gets its own wrapper."""
    from projects.detection import tta as tta_module
    from projects.detection.task import DIFFUSIONDET_TASK

    cfg = get_cfg()
    cfg.TEST.AUG.ENABLED = True
    cfg.TEST.AUG.MIN_SIZES = (48,)
    cfg.TEST.AUG.MAX_SIZE = 96
    built_for = []
    real_build = tta_module.build_tta

    def counting_build(cfg, model):
        built_for.append(model)
        return real_build(cfg, model)

    monkeypatch.setattr(tta_module, "build_tta", counting_build)
    run = DIFFUSIONDET_TASK.build_inference(cfg)
    live, ema = _model(sample_step=1).eval(), _model(sample_step=1).eval()
    batch = [dict(x, seed=3 + i) for i, x in enumerate(_batch(train=False))]
    for model in (live, live, ema, ema):
        run(model, batch)
    assert built_for == [live, ema]
