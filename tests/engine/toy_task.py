"""A tiny registered task (linear regression on fixed data) to exercise the engine end to end."""

from __future__ import annotations

import torch
from torch import nn

from diffvision.config import CN
from diffvision.engine.tasks import Task, register_task

TRUE_WEIGHT = torch.tensor([[2.0, -3.0, 0.5]])


def add_toy_config(cfg) -> None:
    cfg.TOY = CN()
    cfg.TOY.NAN_AT_ITER = -1  # make the loss non-finite from this iteration on (-1: never)
    cfg.TOY.BATCH = 8


class ToyRegressor(nn.Module):
    def __init__(self, *, nan_at_iter: int = -1):
        super().__init__()
        self.backbone = nn.Linear(3, 4)
        self.head = nn.Linear(4, 1)
        self.nan_at_iter = nan_at_iter
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, batch):
        x, y, it = batch
        if self.training:
            self.calls += 1
        pred = self.head(self.backbone(x))
        loss = ((pred - y) ** 2).mean()
        if 0 <= self.nan_at_iter <= it:
            loss = loss * float("nan")
        return {"loss_mse": loss}


def make_batches(seed: int, batch: int, start_iter: int = 0):
    """Batch i depends only on (seed, i), so a resumed loader continues the same sequence."""
    it = start_iter
    while True:
        g = torch.Generator().manual_seed(seed * 100003 + it)
        x = torch.randn(batch, 3, generator=g)
        yield x, x @ TRUE_WEIGHT.T, it
        it += 1


@register_task("ToyRegression", add_config=add_toy_config)
def build_toy_task(cfg) -> Task:
    model = ToyRegressor(nan_at_iter=cfg.TOY.NAN_AT_ITER)

    def build_train_loader(start_iter: int = 0):
        return make_batches(cfg.SEED, cfg.TOY.BATCH, start_iter)

    def evaluate(m):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(64, 3, generator=g)
        with torch.no_grad():
            return {"mse": float(((m.head(m.backbone(x)) - x @ TRUE_WEIGHT.T) ** 2).mean())}

    return Task(model=model, build_train_loader=build_train_loader, evaluate=evaluate)
