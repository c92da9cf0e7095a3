"""Synchronised batch normalisation that also runs on CPU (gloo), for ``NORM: SyncBN``.

``torch.nn.SyncBatchNorm`` only trains on GPUs. :class:`SyncBatchNorm` computes the batch
statistics of the *global* batch with two differentiable all-reduces per layer ((Σx, count),
then Σ(x − mean)²), so a model trained on W processes with global batch B sees the statistics a
1-process run on B sees (up to float summation order); one process runs the same formula without
the all-reduces. In eval mode it is plain ``BatchNorm`` (running statistics).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["SyncBatchNorm", "convert_sync_batchnorm"]


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the gradient is summed over ranks too (every rank's loss uses the sum)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class SyncBatchNorm(_BatchNorm):
    """BatchNorm over ``(N, C, ...)`` inputs whose training statistics span all ranks."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"SyncBatchNorm expects (N, C, ...) input, got shape {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        # One formula whatever the process count (two passes: mean, then centred squares), so
        # 1 and W processes differ by float summation order only.
        self._check_input_dim(x)
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        reduce = _AllReduceSum.apply if distributed else (lambda t: t)
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = (1, c) + (1,) * (x.dim() - 2)
        xf = x.float()
        count = torch.full((1,), x.numel() // c, dtype=torch.float32, device=x.device)
        sums = reduce(torch.cat([xf.sum(dims), count]))
        n = sums[-1]
        mean = sums[:c] / n
        centred = xf - mean.view(shape)
        var = reduce((centred * centred).sum(dims)) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum
                if m is None:
                    m = 1.0 / float(self.num_batches_tracked)
                unbiased = var * n / (n - 1).clamp(min=1)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.detach(), alpha=m)
        y = centred * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm{1,2,3}d`` (not FrozenBN) by :class:`SyncBatchNorm` with the
    same parameters and buffers; returns the (possibly new) module."""
    out = module
    if isinstance(module, _BatchNorm) and not isinstance(module, SyncBatchNorm):
        out = SyncBatchNorm(
            module.num_features,
            eps=module.eps,
            momentum=module.momentum,
            affine=module.affine,
            track_running_stats=module.track_running_stats,
        )
        out.load_state_dict(module.state_dict())
        if module.affine:
            out.weight.requires_grad_(module.weight.requires_grad)
            out.bias.requires_grad_(module.bias.requires_grad)
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, convert_sync_batchnorm(child))
    return out
