"""DiffusionInst's mask parts: the mask branch on the FPN, the per-box parameter generators
("controllers") and the dynamic mask head whose filters they produce.

Gu et al., "DiffusionInst: Diffusion Model for Instance Segmentation" (arXiv:2212.02773), Sec. 3.2;
official code github.com/chenhaoxing/DiffusionInst ``diffusioninst/head.py`` and
``diffusioninst/detector.py``. Module names and ``nn.Sequential`` index layouts are the official
ones, so official checkpoints load strictly (``head.mask_refine.*``, ``head.mask_head.*``,
``head.head_series.{i}.controller.*``).

Computation (CondInst-style, Tian et al. arXiv:2003.05664 Sec. 3.2, without its relative
coordinates):

- mask branch, once per image: p2, p3, p4 (the first three ``ROI_HEADS.IN_FEATURES``, p5 is
  unused) each go through 3x3 conv 256 -> 128 (no bias), BatchNorm, ReLU; p3 and p4 are brought to
  stride 4 with :func:`aligned_bilinear` and summed onto p2; then four [3x3 conv 128 -> 128, BN,
  ReLU] and a 1x1 conv 128 -> 8 give ``mask_feat`` (B, 8, H/4, W/4) of the padded input.
- controller, in every stage: Linear(256 -> 153) on the stage's regression feature (the output
  of its ``reg_module``, the input of ``bboxes_delta``).
- dynamic mask head, per box: three 1x1 convs 8 -> 8 -> 8 -> 1 with ReLUs between, whose weights
  and biases are the box's 153 parameters (:data:`DYNAMIC_PARAM_SPLIT`), run on ``mask_feat`` of
  the box's image: one mask logit per stride-4 cell.

Notation: B images, N boxes per image, L stages, D hidden (256), P = 153 parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffvision.engine.sync_bn import SyncBatchNorm
from projects.detection.head import DynamicHead

__all__ = [
    "DYNAMIC_CHANNELS",
    "DYNAMIC_PARAM_SPLIT",
    "MASK_FEAT_CHANNELS",
    "NUM_DYNAMIC_PARAMS",
    "DiffusionInstHead",
    "aligned_bilinear",
    "dynamic_mask_logits",
    "split_dynamic_params",
]

MASK_FEAT_CHANNELS = 8  # channels of mask_feat = input channels of the first dynamic layer
MASK_BRANCH_DIM = 128  # refine and tower width of the official code
MASK_TOWER_CONVS = 4
MASK_BRANCH_LEVELS = 3  # p2, p3, p4
MASK_STRIDE = 4
#: (in, out) channels of the three dynamic 1x1 convolutions
DYNAMIC_CHANNELS = ((MASK_FEAT_CHANNELS, 8), (8, 8), (8, 1))
#: sizes of the parameter vector's parts, in order: the three weights, then the three biases
DYNAMIC_PARAM_SPLIT = tuple(i * o for i, o in DYNAMIC_CHANNELS) + tuple(
    o for _, o in DYNAMIC_CHANNELS
)
NUM_DYNAMIC_PARAMS = sum(DYNAMIC_PARAM_SPLIT)  # 64 + 64 + 8 + 8 + 8 + 1 = 153


def aligned_bilinear(x: Tensor, factor: int) -> Tensor:
    """Upsample (B, C, H, W) by an integer ``factor`` so that output pixel ``f·i + f//2`` lies
    exactly on input pixel ``i`` (CondInst's resampler, used by the official code).

    Replicate-pad one pixel right and bottom, resize bilinearly (``align_corners=True``) to
    (f·H + 1, f·W + 1), replicate-pad ``f // 2`` pixels left and top, keep (f·H, f·W).
    """
    if factor < 1 or int(factor) != factor:
        raise ValueError(f"aligned_bilinear needs a positive integer factor, got {factor!r}")
    factor = int(factor)
    if factor == 1:
        return x
    h, w = x.shape[-2:]
    x = F.pad(x, (0, 1, 0, 1), mode="replicate")
    x = F.interpolate(x, size=(factor * h + 1, factor * w + 1), mode="bilinear", align_corners=True)
    x = F.pad(x, (factor // 2, 0, factor // 2, 0), mode="replicate")
    return x[..., : factor * h, : factor * w]


def split_dynamic_params(params: Tensor) -> tuple[list[Tensor], list[Tensor]]:
    """(K, 153) parameters -> weights [(K, 8, 8), (K, 8, 8), (K, 1, 8)] as (out, in) row-major
    and biases [(K, 8), (K, 8), (K, 1)] (official layout: all weights first, then all biases)."""
    parts = torch.split(params, DYNAMIC_PARAM_SPLIT, dim=1)
    n = len(DYNAMIC_CHANNELS)
    weights = [p.reshape(-1, o, i) for p, (i, o) in zip(parts[:n], DYNAMIC_CHANNELS, strict=True)]
    return weights, list(parts[n:])


def dynamic_mask_logits(mask_feat: Tensor, params: Tensor) -> Tensor:
    """Run each instance's dynamic 1x1-conv chain on one image's mask features.

    Args:
        mask_feat: (8, H, W) the image's ``mask_feat``.
        params: (K, 153) the instances' generated parameters.

    Returns:
        (K, H, W) mask logits: ``W3 · relu(W2 · relu(W1 · f + b1) + b2) + b3`` at every cell f.
    """
    weights, biases = split_dynamic_params(params)
    h, w = mask_feat.shape[-2:]
    x = mask_feat.reshape(1, mask_feat.shape[0], h * w).to(params.dtype)  # (1, 8, HW)
    for i, (weight, bias) in enumerate(zip(weights, biases, strict=True)):
        x = torch.matmul(weight, x) + bias[..., None]  # (K, out, HW)
        if i < len(weights) - 1:
            x = F.relu(x)
    return x.view(-1, h, w)


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        SyncBatchNorm(out_channels),
        nn.ReLU(),
    )


class DiffusionInstHead(DynamicHead):
    """DiffusionDet's :class:`~projects.detection.head.DynamicHead` plus the mask parts.

    Same constructor arguments (``hidden_dim`` is the FPN width the mask branch reads), plus
    ``mask_branch_dim``: the refine/tower width (the official 128; ``MASK_BRANCH_DIM``). The box
    forward is DynamicHead's, unchanged; :meth:`forward` also records, for the call, each
    stage's generated mask parameters (:attr:`mask_params`, (L, B, N, 153); only the last stage
    outside training, the only one inference uses).

    The parameters are computed from what each stage returns (its object features) and its own
    ``block_time_mlp``, ``reg_module`` and ``controller``: the regression feature
    ``reg_module(obj · (scale + 1) + shift)`` the stage computed internally, recomputed here, so
    the stage's code stays DiffusionDet's (a few (N, D) x (D, D) matmuls per stage).

    Init: the official head's (xavier-uniform on every weight with dim > 1, default biases).

    The mask branch's BatchNorms are :class:`~diffvision.engine.sync_bn.SyncBatchNorm` (same
    parameters, buffers and names as the official ``nn.BatchNorm2d``): in training their
    statistics span the global batch, so W processes train as one does (the official code
    normalises each GPU's images alone); in eval both are the running-statistics affine map.
    """

    def __init__(self, *, mask_branch_dim: int = MASK_BRANCH_DIM, **kwargs) -> None:
        super().__init__(**kwargs)
        hidden_dim = self.head_series[0].hidden_dim
        for stage in self.head_series:
            stage.controller = nn.Linear(hidden_dim, NUM_DYNAMIC_PARAMS)
        self.mask_refine = nn.ModuleList(
            _conv_bn_relu(hidden_dim, mask_branch_dim) for _ in range(MASK_BRANCH_LEVELS)
        )
        self.mask_head = nn.Sequential(
            *(_conv_bn_relu(mask_branch_dim, mask_branch_dim) for _ in range(MASK_TOWER_CONVS)),
            nn.Conv2d(mask_branch_dim, MASK_FEAT_CHANNELS, 1),
        )
        # each stage's object features, recorded by a hook during forward (the stage's code
        # stays DiffusionDet's); registered once here so that tracing (torch.export) sees them
        self._stage_objects: list[Tensor] = []
        for stage in self.head_series:
            stage.register_forward_hook(self._record_stage_output)
        new = [*(s.controller for s in self.head_series), self.mask_refine, self.mask_head]
        for module in new:
            for p in module.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)
        self.mask_params: Tensor | None = None

    def _record_stage_output(self, _stage: nn.Module, _args: tuple, output: tuple) -> None:
        self._stage_objects.append(output[2])

    def mask_features(self, features: Sequence[Tensor]) -> Tensor:
        """FPN maps (p2, p3, p4, ...; p5 unused) -> ``mask_feat`` (B, 8, H_p2, W_p2).

        Raises:
            ValueError: fewer than 3 maps, or a map whose size is not an integer fraction of
                p2's (inputs are padded to a multiple of 32, so FPN maps always are).
        """
        if len(features) < MASK_BRANCH_LEVELS:
            raise ValueError(
                f"the mask branch needs {MASK_BRANCH_LEVELS} FPN maps (p2, p3, p4), "
                f"got {len(features)}"
            )
        dtype = self.mask_refine[0][0].weight.dtype  # a reduced-precision copy's convolutions
        mask_feat = self.mask_refine[0](features[0].to(dtype))
        target = mask_feat.shape[-2:]
        for refine, x in zip(self.mask_refine[1:], features[1:MASK_BRANCH_LEVELS], strict=True):
            x = refine(x.to(dtype))
            fh, fw = target[0] // x.shape[-2], target[1] // x.shape[-1]
            if fh != fw or (fh * x.shape[-2], fw * x.shape[-1]) != tuple(target):
                raise ValueError(
                    f"FPN map of size {tuple(x.shape[-2:])} is not an integer fraction of the "
                    f"stride-4 map {tuple(target)}"
                )
            mask_feat = mask_feat + aligned_bilinear(x, fh)
        return self.mask_head(mask_feat)

    def stage_mask_params(self, stage: nn.Module, obj: Tensor, time_emb: Tensor) -> Tensor:
        """One stage's parameters: ``controller(reg_module(obj · (scale + 1) + shift))``.

        Args:
            stage: an :class:`~projects.detection.head.RCNNHead` with a ``controller``.
            obj: (B·N, D) (or (1, B·N, D)) the stage's object features, image-major.
            time_emb: (B, 4D) the step's time embedding.

        Returns:
            (B, N, 153).
        """
        b = time_emb.shape[0]
        d = stage.hidden_dim
        obj = obj.reshape(b, -1, d)
        scale, shift = stage.block_time_mlp(time_emb)[:, None, :].chunk(2, dim=-1)
        x = obj * (scale + 1) + shift
        for layer in stage.reg_module:
            x = layer(x)
        return stage.controller(x)

    def forward(
        self, features: Sequence[Tensor], boxes_xyxy: Tensor, t: Tensor
    ) -> tuple[Tensor, Tensor]:
        """DynamicHead's forward (same arguments and returns), recording :attr:`mask_params`."""
        self._stage_objects.clear()
        logits, boxes = super().forward(features, boxes_xyxy, t)
        objects = list(self._stage_objects)
        self._stage_objects.clear()
        if len(objects) != len(self.head_series):
            raise RuntimeError(
                "DiffusionInstHead reads each stage's output through a forward hook; the stages "
                "were not called as modules (a fused path that bypasses them is not supported)"
            )
        emb = self.time_mlp[0](t).to(self.time_mlp[1].weight.dtype)
        time_emb = self.time_mlp[1:](emb)
        wanted = range(len(objects)) if self.training else [len(objects) - 1]
        self.mask_params = torch.stack(
            [self.stage_mask_params(self.head_series[i], objects[i], time_emb) for i in wanted]
        )
        return logits, boxes
