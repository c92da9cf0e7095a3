"""A tiny registered task (linear regression) written against the task contract, to exercise the
engine end to end: a map-style dataset with a random augmentation, per-sample model draws, a
test loader and a ``DatasetEvaluator`` that gathers over ranks."""

from __future__ import annotations

import torch
from torch import nn

from diffvision.config import CN
from diffvision.data.samplers import GlobalBatchLoader, TrainingSampler
from diffvision.engine.tasks import register_task
from diffvision.utils import comm
from diffvision.utils.seeding import per_sample_generators

TRUE_WEIGHT = torch.tensor([[2.0, -3.0, 0.5]])


def add_toy_config(cfg) -> None:
    cfg.TOY = CN()
    cfg.TOY.NAN_AT_ITER = -1  # make the loss non-finite from this iteration on (-1: never)
    cfg.TOY.DATASET_SIZE = 40


class ToyRegressor(nn.Module):
    def __init__(self, *, nan_at_iter: int = -1):
        super().__init__()
        self.backbone = nn.Linear(3, 4)
        self.head = nn.Linear(4, 1)
        self.nan_at_iter = nan_at_iter
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, batch):
        if not self.training:
            return self.head(self.backbone(batch["x"]))
        if self.training:
            self.calls += 1
        # A per-sample "diffusion" draw: input jitter from each sample's own generator.
        jitter = torch.stack(
            [torch.randn(3, generator=g) for g in per_sample_generators(batch["seed"])]
        )
        pred = self.head(self.backbone(batch["x"] + 0.01 * jitter))
        loss = ((pred - batch["y"]) ** 2).mean()
        if 0 <= self.nan_at_iter <= int(self.calls) - 1:  # calls is saved: counts resumed steps
            loss = loss * float("nan")
        return {"loss_mse": loss}


class ToyPoints:
    """Point i is fixed by i; reading it adds a random augmentation from the process RNG."""

    def __init__(self, size: int):
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int):
        x = torch.randn(3, generator=torch.Generator().manual_seed(i))
        x = x + 0.05 * torch.randn(
            3
        )  # augmentation: isolated_rng makes it a function of (SEED, it, j)
        return {"x": x, "y": x @ TRUE_WEIGHT[0], "index": i}


def build_model(cfg):
    return ToyRegressor(nan_at_iter=cfg.TOY.NAN_AT_ITER)


def build_train_loader(cfg, *, start_iter: int = 0):
    dataset = ToyPoints(cfg.TOY.DATASET_SIZE)

    def collate(items, seeds):
        return {
            "x": torch.stack([it["x"] for it in items]),
            "y": torch.stack([it["y"] for it in items])[:, None],
            "index": [it["index"] for it in items],
            "seed": torch.tensor(seeds),
        }

    return GlobalBatchLoader(
        dataset,
        sampler=TrainingSampler(len(dataset), seed=cfg.SEED),
        seed=cfg.SEED,
        global_batch_size=cfg.SOLVER.IMS_PER_BATCH,
        start_iter=start_iter,
        collate=collate,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )


def build_test_loader(cfg, dataset_name):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, generator=g)
    shard = slice(comm.get_rank(), None, comm.get_world_size())
    return [{"x": x[shard][i : i + 8]} for i in range(0, len(x[shard]), 8)]


class ToyEvaluator:
    def reset(self):
        self.sq, self.n = 0.0, 0

    def process(self, inputs, outputs):
        self.sq += float(((outputs - inputs["x"] @ TRUE_WEIGHT.T) ** 2).sum())
        self.n += len(outputs)

    def evaluate(self):
        parts = comm.all_gather((self.sq, self.n))
        return {"mse": sum(p[0] for p in parts) / sum(p[1] for p in parts)}


TOY_TASK = register_task(
    "ToyRegression",
    add_config=add_toy_config,
    build_model=build_model,
    build_train_loader=build_train_loader,
    build_test_loader=build_test_loader,
    build_evaluator=lambda cfg, name: ToyEvaluator(),
    test_dataset_names=lambda cfg: ["toy_points"],
)
