import math

import pytest
import torch

from diffvision.engine.lr_scheduler import lr_factor, make_lr_scheduler


def test_diffusiondet_warmup_and_multistep_match_detectron2_formula():
    kw = dict(schedule="multistep", max_iter=450000, steps=(350000, 420000), gamma=0.1,
              warmup_iters=1000, warmup_factor=0.01)  # fmt: skip
    assert lr_factor(0, **kw) == pytest.approx(0.01)
    assert lr_factor(500, **kw) == pytest.approx(0.01 * 0.5 + 0.5)
    assert lr_factor(1000, **kw) == 1.0
    assert lr_factor(349999, **kw) == 1.0
    assert lr_factor(350000, **kw) == pytest.approx(0.1)
    assert lr_factor(420000, **kw) == pytest.approx(0.01)


def test_cosine_and_poly_closed_forms():
    assert lr_factor(50, schedule="cosine", max_iter=100) == pytest.approx(0.5)
    assert lr_factor(100, schedule="cosine", max_iter=100, end_factor=0.1) == pytest.approx(0.1)
    assert lr_factor(25, schedule="cosine", max_iter=100) == pytest.approx(
        0.5 * (1 + math.cos(math.pi / 4))
    )
    assert lr_factor(50, schedule="poly", max_iter=100, poly_power=2.0) == pytest.approx(0.25)


def test_unknown_schedule_is_rejected():
    with pytest.raises(ValueError, match="Unknown LR schedule 'step'"):
        lr_factor(0, schedule="step", max_iter=10)


def test_scheduler_steps_per_iteration():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=2.0)
    sched = make_lr_scheduler(opt, schedule="multistep", max_iter=10, steps=(2,), gamma=0.5)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == [2.0, 2.0, 1.0, 1.0]
