"""Smoke test of tools/benchmark_samplers.py (--quick) and its metrics."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "benchmark_samplers.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("benchmark_samplers", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("dataset", ["swiss_roll", "8_gaussians"])
def test_toy_data_is_roughly_standardised(bench, dataset):
    x = bench.make_data(dataset, 4000, torch.Generator().manual_seed(0))
    assert x.shape == (4000, 2)
    assert bool((x.std(0) > 0.5).all()) and bool((x.std(0) < 1.5).all())
    assert x.abs().max() < 2.2  # inside the plot limits


def test_metrics_closed_forms(bench):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 2, generator=g)
    assert bench.sliced_wasserstein(x, x) == 0.0
    # a shift by c along a unit direction u moves every projection on w by c·<u, w>
    shifted = x + torch.tensor([0.5, 0.0])
    sw = bench.sliced_wasserstein(x, shifted, num_projections=2000)
    assert sw == pytest.approx(0.5 * 2 / torch.pi, rel=0.05)  # E|cos θ| = 2/π in 2-D
    y = torch.randn(500, 2, generator=g)
    h = bench.median_distance(x)
    assert abs(bench.mmd2_rbf(x, y, bandwidth=h)) < 0.01
    assert bench.mmd2_rbf(x, shifted + 1.0, bandwidth=h) > 0.1


def test_quick_benchmark_writes_every_row(bench, tmp_path):
    # --quick takes a few seconds on an idle 2-core machine (well under 20 s on a busy one);
    # no wall-time assertion here, it would only make the test flaky under load.
    threads = torch.get_num_threads()
    try:
        table = bench.main(["--quick", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    written = (tmp_path / "results.md").read_text()
    assert table in written
    rows = [line.split("|")[1:-1] for line in table.splitlines()[2:]]
    cells = [(r[0].strip(), r[1].strip(), r[2].strip()) for r in rows]
    expected = []
    for dataset in bench.DATASETS[:1]:  # --quick runs the first toy only
        expected.append((dataset, "true samples (2nd held-out set)", "-"))
        expected += [(dataset, label, str(steps)) for label, _, steps, _ in bench.SAMPLER_RUNS]
    assert cells == expected
    for r in rows:
        float(r[3]), float(r[4])  # SW1 and MMD² are numbers
    labels = {label for label, *_ in bench.SAMPLER_RUNS}
    assert {"DDPM", "DDIM", "DPM-Solver++(2M)"} <= labels
    png = tmp_path / "samplers.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size < 300_000
