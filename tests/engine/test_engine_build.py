"""The engine's builders from config: the learning-rate schedule."""

import logging

import pytest
import torch

from diffvision.config import get_cfg
from diffvision.engine.build import build_lr_scheduler


@pytest.mark.parametrize(
    ("name", "warned"),
    [("WarmupMultiStepLR", True), ("WarmupCosineLR", False), ("WarmupPolyLR", False)],
)
def test_only_the_multistep_schedule_warns_of_steps_beyond_max_iter(name, warned, caplog):
    cfg = get_cfg()
    cfg.merge_from_list(["SOLVER.LR_SCHEDULER_NAME", name, "SOLVER.MAX_ITER", "300",
                         "SOLVER.STEPS", "(30000,)"])  # fmt: skip
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with caplog.at_level(logging.WARNING, logger="diffvision.engine.build"):
        build_lr_scheduler(cfg, opt)
    assert ("milestones beyond MAX_ITER" in caplog.text) is warned
