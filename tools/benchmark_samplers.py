"""Benchmark the diffusion core's samplers on 2-D toy distributions (CPU, a few minutes).

For each toy distribution (swiss roll, 8 Gaussians) a small MLP ε-model (sinusoidal time
embedding + 3 hidden layers of 128) is trained on fresh samples, then every sampler draws the same
number of points from the same x_T. Quality is the distance to held-out true samples:

- SW1: sliced Wasserstein-1 distance (mean over random unit directions of the 1-D W1 distance of
  the projected, sorted samples), in data units;
- MMD²: unbiased squared maximum mean discrepancy with a Gaussian RBF kernel whose bandwidth is
  the median pairwise distance of the held-out set.

A second held-out set gives the "true samples" row: the noise floor of both metrics at this sample
size. Time is the wall time of the whole sampling loop (the model dominates).

Usage::

    python tools/benchmark_samplers.py                # full run, writes output/benchmark_samplers/
    python tools/benchmark_samplers.py --quick        # smoke test in a few seconds
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from diffvision.diffusion import (  # noqa: E402
    add_noise,
    build_sampler,
    estimate_analytic_gamma,
    get_schedule,
    sample,
)
from diffvision.engine.cli import (  # noqa: E402
    Float,
    Int,
    Seed,
    ToolParser,
    check_allocation,
    run_main,
)
from diffvision.engine.outputs import (  # noqa: E402
    OVERWRITE_HELP,
    check_output_path,
    refuse_to_replace,
)

# (label, sampler, num_steps, extra kwargs of sample()); the analytic row gets its Γ at run time.
SAMPLER_RUNS = [
    ("DDPM", "ddpm", 1000, {}),
    ("DDPM", "ddpm", 100, {}),
    ("Analytic-DDPM", "ddpm", 100, {"variance": "analytic"}),
    ("DDIM", "ddim", 10, {}),
    ("DDIM", "ddim", 20, {}),
    ("DDIM", "ddim", 50, {}),
    ("DDIM", "ddim", 100, {}),
    ("DPM-Solver++(2M)", "dpm_solver++", 10, {"order": 2}),
    ("DPM-Solver++(2M)", "dpm_solver++", 20, {"order": 2}),
]
DATASETS = ("swiss_roll", "8_gaussians")


# ------------------------------------------------------------------------------------------ data
def make_data(name: str, n: int, generator: torch.Generator) -> Tensor:
    """(n, 2) samples of a toy distribution, scaled to roughly unit variance per coordinate."""
    if name == "swiss_roll":
        u = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=generator))
        x = torch.stack([u * torch.cos(u), u * torch.sin(u)], dim=1)
        x = x + 0.3 * torch.randn(n, 2, generator=generator)
        return x / 7.5
    if name == "8_gaussians":
        angles = torch.randint(0, 8, (n,), generator=generator) * (2 * math.pi / 8)
        centers = torch.stack([torch.cos(angles), torch.sin(angles)], dim=1) * 1.4
        return centers + 0.1 * torch.randn(n, 2, generator=generator)
    raise ValueError(f"unknown dataset {name!r}; expected one of {list(DATASETS)}")


# ----------------------------------------------------------------------------------------- model
class TimeEmbedding(nn.Module):
    """Sinusoidal embedding of the timestep (Vaswani et al. 2017, as in DDPM) followed by an MLP."""

    def __init__(self, dim: int = 64, max_period: float = 10000.0) -> None:
        super().__init__()
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half) / half)
        self.register_buffer("freqs", freqs, persistent=False)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        args = t.float()[:, None] * self.freqs[None]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=1))


class EpsMLP(nn.Module):
    """ε_θ(x_t, t) for 2-D data: 3 hidden layers of 128 (SiLU), each adding a projection of emb(t).

    Adding the time embedding to every hidden layer (rather than only concatenating it to the
    input) lets the small network change its behaviour with t; it halved SW1 in a trial run.
    """

    def __init__(self, *, dim: int = 2, hidden: int = 128, depth: int = 3, emb_dim: int = 64):
        super().__init__()
        self.embed = TimeEmbedding(emb_dim)
        self.layers = nn.ModuleList(
            [nn.Linear(dim if i == 0 else hidden, hidden) for i in range(depth)]
        )
        self.time_proj = nn.ModuleList([nn.Linear(emb_dim, hidden) for _ in range(depth)])
        self.out = nn.Linear(hidden, dim)

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        emb = self.embed(t)  # (B, emb_dim)
        h = x_t  # (B, 2)
        for layer, proj in zip(self.layers, self.time_proj):
            h = F.silu(layer(h) + proj(emb))
        return self.out(h)


def train(
    model: EpsMLP, dataset: str, schedule, *, steps: int, batch_size: int, lr: float, seed: int
) -> float:
    """ε-prediction training (Ho et al. 2020, Alg. 1) on fresh samples; returns the last loss."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1), eta_min=1e-4)
    loss = torch.zeros(())
    for _ in range(steps):
        x0 = make_data(dataset, batch_size, g)
        t = torch.randint(0, schedule.num_timesteps, (batch_size,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        loss = (model(add_noise(schedule, x0, noise, t), t) - noise).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return loss.item()


# --------------------------------------------------------------------------------------- metrics
def sliced_wasserstein(x: Tensor, y: Tensor, *, num_projections: int = 256, seed: int = 0) -> float:
    """Sliced W1 between two equally sized (n, d) point sets (exact 1-D W1 by sorting)."""
    if x.shape != y.shape:
        raise ValueError(f"sliced_wasserstein needs equal shapes, got {x.shape} and {y.shape}")
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(x.shape[1], num_projections, generator=g, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    px = (x.double() @ dirs).sort(dim=0).values
    py = (y.double() @ dirs).sort(dim=0).values
    return (px - py).abs().mean().item()


def mmd2_rbf(x: Tensor, y: Tensor, *, bandwidth: float) -> float:
    """Unbiased MMD² with k(a, b) = exp(-‖a - b‖² / (2 h²)) (Gretton et al. 2012, eq. 3)."""
    x, y = x.double(), y.double()
    m, n = x.shape[0], y.shape[0]

    def k(a: Tensor, b: Tensor) -> Tensor:
        return torch.exp(-torch.cdist(a, b).pow(2) / (2 * bandwidth**2))

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    term_x = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    term_y = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return (term_x + term_y - 2 * kxy.mean()).item()


def median_distance(x: Tensor) -> float:
    d = torch.cdist(x.double(), x.double())
    return d[torch.triu(torch.ones_like(d, dtype=torch.bool), diagonal=1)].median().item()


# ------------------------------------------------------------------------------------------- run
def benchmark(args: argparse.Namespace) -> tuple[str, dict]:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    schedule = get_schedule("linear", 1000)
    rows, samples = [], {}
    for k, dataset in enumerate(args.datasets):
        g = torch.Generator().manual_seed(args.seed + 1000 * k)
        held_out = make_data(dataset, args.num_samples, g)
        held_out_2 = make_data(dataset, args.num_samples, g)
        bandwidth = median_distance(held_out)

        model = EpsMLP()
        t0 = time.perf_counter()
        loss = train(
            model,
            dataset,
            schedule,
            steps=args.train_steps,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed + 1000 * k + 1,
        )
        train_time = time.perf_counter() - t0
        print(
            f"[{dataset}] trained {args.train_steps} steps in {train_time:.1f} s (loss {loss:.4f})"
        )
        model.eval()

        def model_fn(x: Tensor, t: Tensor, model: EpsMLP = model) -> Tensor:
            return model(x, t)

        def metrics(x: Tensor, ref: Tensor = held_out, h: float = bandwidth) -> tuple[float, float]:
            return sliced_wasserstein(x, ref), mmd2_rbf(x, ref, bandwidth=h)

        sw, mmd = metrics(held_out_2)
        rows.append((dataset, "true samples (2nd held-out set)", "-", sw, mmd, float("nan")))
        samples[dataset, "true samples"] = held_out_2
        x_T = torch.randn(args.num_samples, 2, generator=g)
        for label, name, num_steps, extra in SAMPLER_RUNS:
            kwargs = dict(extra)
            if kwargs.get("variance") == "analytic":
                # Γ_n on fresh training data at the sampler's timesteps (Bao et al. 2022)
                timesteps = build_sampler(name, schedule, num_steps=num_steps).timesteps
                data = make_data(dataset, args.num_samples, g)
                with torch.no_grad():
                    kwargs["analytic_gamma"] = estimate_analytic_gamma(
                        model_fn, data, schedule, timesteps, generator=g
                    )
            t0 = time.perf_counter()
            x0 = sample(
                model_fn,
                x_T,
                schedule,
                sampler=name,
                num_steps=num_steps,
                generator=torch.Generator().manual_seed(args.seed),
                **kwargs,
            )
            elapsed = time.perf_counter() - t0
            sw, mmd = metrics(x0)
            rows.append((dataset, label, str(num_steps), sw, mmd, elapsed))
            samples[dataset, f"{label} {num_steps}"] = x0
            print(
                f"[{dataset}] {label:>17} {num_steps:>4} steps: "
                f"SW1 {sw:.4f}  MMD² {mmd:.5f}  {elapsed:.2f} s"
            )

    lines = [
        "| dataset | sampler | steps (NFE) | SW1 ↓ | MMD² ↓ | time (s) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for dataset, label, steps, sw, mmd, elapsed in rows:
        time_str = "-" if math.isnan(elapsed) else f"{elapsed:.2f}"
        lines.append(f"| {dataset} | {label} | {steps} | {sw:.4f} | {mmd:.5f} | {time_str} |")
    return "\n".join(lines), samples


def plot(samples: dict, datasets: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = list(dict.fromkeys(name for _, name in samples))
    fig, axes = plt.subplots(
        len(datasets),
        len(columns),
        figsize=(1.6 * len(columns), 1.7 * len(datasets)),
        squeeze=False,
    )
    for r, dataset in enumerate(datasets):
        for c, name in enumerate(columns):
            ax = axes[r][c]
            x = samples[dataset, name]
            ax.scatter(x[:, 0], x[:, 1], s=0.5, alpha=0.5, color="black" if c == 0 else "C0")
            ax.set_xlim(-2.2, 2.2)
            ax.set_ylim(-2.2, 2.2)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name.replace(" (", "\n(").replace("++(2M) ", "++(2M)\n"), fontsize=6)
        axes[r][0].set_ylabel(dataset, fontsize=7)
    fig.tight_layout(pad=0.3)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def argument_parser() -> ToolParser:
    parser = ToolParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny run for a smoke test")
    parser.add_argument("--seed", type=Seed(), default=0)
    parser.add_argument("--out", type=Path, default=Path("output/benchmark_samplers"))
    parser.add_argument("--train-steps", type=Int(0, 10**7), default=None, help="per dataset")
    parser.add_argument("--num-samples", type=Int(2, 10**6), default=None,
                        help="samples per sampler")  # fmt: skip
    parser.add_argument("--batch-size", type=Int(1, 10**6), default=None)
    parser.add_argument("--lr", type=Float(0, 10, lo_open=True), default=5e-3,
                        help="Adam, cosine-decayed to 1e-4")  # fmt: skip
    parser.add_argument(
        "--threads",
        type=Int(1, 1024),
        default=None,
        help="torch.set_num_threads (default 2; 1 with --quick: on a busy machine a second "
        "thread only adds synchronisation waits to these tiny operations)",
    )
    parser.add_argument(
        "--datasets",
        nargs="+",
        default=None,
        choices=DATASETS,
        help="default: all (--quick: first)",
    )
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    return parser


def main(argv: list[str] | None = None) -> str:
    args = argument_parser().parse_args(argv)
    check_output_path(args.out, "--out", kind="folder")
    refuse_to_replace(
        [args.out / "results.md", args.out / "samplers.png"], overwrite=args.overwrite, flag="--out"
    )
    if args.num_samples is not None:  # the pairwise distances of the metrics: n^2 float64
        check_allocation("--num-samples", 3 * args.num_samples**2 * 8, "pairwise distances")
    defaults = (20, 128, 128) if args.quick else (2000, 2000, 512)
    args.threads = (1 if args.quick else 2) if args.threads is None else args.threads
    if args.datasets is None:
        args.datasets = list(DATASETS[:1] if args.quick else DATASETS)
    args.train_steps = defaults[0] if args.train_steps is None else args.train_steps
    args.num_samples = defaults[1] if args.num_samples is None else args.num_samples
    args.batch_size = defaults[2] if args.batch_size is None else args.batch_size

    t0 = time.perf_counter()
    table, samples = benchmark(args)
    args.out.mkdir(parents=True, exist_ok=True)
    plot(samples, args.datasets, args.out / "samplers.png")
    header = (
        f"Samplers on 2-D toys: {args.train_steps} training steps (batch {args.batch_size}, "
        f"lr {args.lr:g}), {args.num_samples} samples, "
        f"seed {args.seed}, linear schedule T = 1000, torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU thread(s)."
    )
    (args.out / "results.md").write_text(f"{header}\n\n{table}\n")
    print(f"\n{header}\n\n{table}\n")
    total = time.perf_counter() - t0
    print(f"total wall time {total:.1f} s; wrote {args.out}/results.md and samplers.png")
    return table


if __name__ == "__main__":
    sys.exit(run_main(main))
