"""Ensemble of pixel MLPs on frozen per-pixel features (Baranchuk et al., ICLR 2022, §B.5–B.7).

Classifier (``src/pixel_classifier.py`` of ``yandex-research/ddpm-segmentation``@9a13776)::

    C < 30:  Linear(D,128) → ReLU → BN(128) → Linear(128,32) → ReLU → BN(32) → Linear(32,C)
    C ≥ 30:  Linear(D,256) → ReLU → BN(256) → Linear(256,128) → ReLU → BN(128) → Linear(128,C)

(ReLU *before* BatchNorm, as in the reference), Linear weights ~ N(0, 0.02), biases 0.

The M models are independent; we train them in one module whose loss is the *sum* of the M
cross-entropies, each model on its own shuffled batch. The models share no parameter, so every
model receives exactly its own gradient and Adam (per-parameter) updates each as if trained
alone — M trainings in one loop of the engine. Prediction is the per-pixel majority vote
(``torch.mode``) of the M argmaxes; the uncertainty map is either the vote disagreement
``1 − #(models agreeing with the vote) / M`` or the mean per-model entropy.

Deviation: the reference stops each model early (from epoch 5, after 50 batches without a new
minimum batch loss); we train a fixed number of iterations (``SOLVER.MAX_ITER``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from diffvision.data.samplers import TrainingSampler
from diffvision.utils.seeding import Stream, derive_seed

__all__ = ["PixelBatches", "PixelMLPEnsemble", "make_pixel_mlp"]

Uncertainty = Literal["vote", "entropy"]


def make_pixel_mlp(*, in_features: int, num_classes: int) -> nn.Sequential:
    """One pixel classifier; widths 128/32, or 256/128 when ``num_classes >= 30``."""
    h1, h2 = (256, 128) if num_classes >= 30 else (128, 32)
    mlp = nn.Sequential(
        nn.Linear(in_features, h1),
        nn.ReLU(),
        nn.BatchNorm1d(h1),
        nn.Linear(h1, h2),
        nn.ReLU(),
        nn.BatchNorm1d(h2),
        nn.Linear(h2, num_classes),
    )
    for m in mlp.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            nn.init.zeros_(m.bias)
    return mlp


class PixelMLPEnsemble(nn.Module):
    """M independent pixel MLPs.

    Args:
        in_features: feature dimension D.
        num_classes: C.
        num_models: M (reference: 10).

    Forward:
        training: ``{"features": (M, B, D), "labels": (M, B)}`` → ``{"loss_ce": Σ_m CE_m}``;
        eval: ``{"features": (N, D)}`` → ``[{"logits": (M, N, C)}]``.
    """

    def __init__(self, *, in_features: int, num_classes: int, num_models: int = 10) -> None:
        super().__init__()
        if num_models < 1:
            raise ValueError(f"num_models must be >= 1, got {num_models}")
        self.in_features, self.num_classes = in_features, num_classes
        self.models = nn.ModuleList(
            make_pixel_mlp(in_features=in_features, num_classes=num_classes)
            for _ in range(num_models)
        )

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """``(N, D)`` → ``(M, N, C)`` logits of every model."""
        features = features.to(self.device, torch.float32)
        return torch.stack([m(features) for m in self.models])

    @torch.no_grad()
    def predict(
        self, features: torch.Tensor, *, uncertainty: Uncertainty = "vote"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Majority vote and uncertainty for ``(N, D)`` features.

        Returns:
            ``labels (N,)`` int64 and ``uncertainty (N,)`` float in [0, 1] for ``"vote"`` or
            [0, log C] for ``"entropy"``.
        """
        if uncertainty not in ("vote", "entropy"):
            raise ValueError(f"uncertainty must be 'vote' or 'entropy', got {uncertainty!r}")
        logits = self.logits(features)  # (M, N, C)
        votes = logits.argmax(-1)  # (M, N)
        labels = votes.mode(dim=0).values  # (N,)
        if uncertainty == "vote":
            agree = (votes == labels[None]).float().mean(0)
            return labels, 1.0 - agree
        log_p = F.log_softmax(logits, dim=-1)
        entropy = -(log_p.exp() * log_p).sum(-1).mean(0)
        return labels, entropy

    def forward(self, batch: dict) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        features = batch["features"].to(self.device, torch.float32)
        if not self.training:
            return [{"logits": self.logits(features)}]
        labels = batch["labels"].to(self.device)
        if features.shape[0] != len(self.models):
            raise ValueError(
                f"expected features (M={len(self.models)}, B, D), got {tuple(features.shape)}"
            )
        loss = sum(F.cross_entropy(m(f), y) for m, f, y in zip(self.models, features, labels))
        return {"loss_ce": loss}


class PixelBatches:
    """Endless ``{"features": (M, b, D) float32, "labels": (M, b)}`` from a pixel store.

    Each of the M models walks its own stream of epoch permutations of the store
    (``DataLoader(shuffle=True)`` per model in the reference); model m's permutation of epoch e
    is seeded by ``(seed, m, e)``, so global batch ``i`` (``batch_pixels`` pixels per model) is a
    pure function of ``(seed, i)``. Rank r of W takes the pixels ``r·b .. (r+1)·b-1`` of it
    (``b = batch_pixels / W``), starting at global batch ``start_iter``.

    Args:
        features: ``(N, D)`` store (any float dtype; batches are cast to float32).
        labels: ``(N,)`` int64.
        num_models: M.
        batch_pixels: global pixels per model and iteration (reference: 64).
        seed: permutation seed.
        start_iter: first global batch.
        rank, world_size: this process's slice (default: one process).
    """

    def __init__(
        self,
        features: torch.Tensor,
        labels: torch.Tensor,
        *,
        num_models: int,
        batch_pixels: int = 64,
        seed: int = 0,
        start_iter: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if features.shape[0] != labels.shape[0]:
            raise ValueError(f"{features.shape[0]} feature rows for {labels.shape[0]} labels")
        if features.shape[0] < batch_pixels:
            raise ValueError(f"{features.shape[0]} pixels < batch_pixels {batch_pixels}")
        if batch_pixels % world_size:
            raise ValueError(f"batch_pixels {batch_pixels} is not divisible by {world_size} ranks")
        self.features, self.labels = features, labels
        self.num_models, self.batch_pixels, self.seed = num_models, batch_pixels, seed
        self.start_iter, self.rank, self.world_size = start_iter, rank, world_size
        n = features.shape[0]
        self.samplers = [
            TrainingSampler(
                n, seed=derive_seed(seed, Stream.ENSEMBLE_MEMBER, m), rank=0, world_size=1
            )
            for m in range(num_models)
        ]

    def __iter__(self) -> Iterator[dict]:
        b = self.batch_pixels // self.world_size
        for it in itertools.count(self.start_iter):
            first = it * self.batch_pixels + self.rank * b
            index = torch.tensor([s.indices(first, first + b) for s in self.samplers])  # (M, b)
            flat = index.reshape(-1)
            yield {
                "features": self.features[flat].float().view(self.num_models, b, -1),
                "labels": self.labels[flat].view(self.num_models, b),
            }
