"""DiffusionDet's dynamic head: six cascaded Sparse R-CNN-style stages conditioned on time.

Chen et al., "DiffusionDet: Diffusion Model for Object Detection", ICCV 2023 (arXiv:2211.09788),
§4.1 "detection decoder"; code: github.com/ShoufaChen/DiffusionDet@1efb36d ``diffusiondet/head.py``.
Module names, ``nn.Sequential``/``nn.ModuleList`` index layouts and the maths follow the reference
(diffusiondet.md §1.4-§1.8) so that official checkpoints load (``head.*`` keys, §5.2) and give the
same outputs.

Notation: B images, N boxes per image, M = B·N, D = 256 hidden, S = 7 pooler resolution, K classes.
"""

from __future__ import annotations

import copy
import math
import weakref
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .fast_path import fast_stage_forward, stage_scale_shifts
from .pooler import ROIPooler

__all__ = [
    "SinusoidalPositionEmbeddings",
    "DynamicConv",
    "RCNNHead",
    "DynamicHead",
    "apply_deltas",
    "SCALE_CLAMP",
    "BBOX_WEIGHTS",
]

_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # head -> compiled _forward

SCALE_CLAMP = math.log(100000.0 / 16)  # ≈ 8.7403, detectron2's _DEFAULT_SCALE_CLAMP
BBOX_WEIGHTS = (2.0, 2.0, 1.0, 1.0)


class SinusoidalPositionEmbeddings(nn.Module):
    """Transformer sinusoidal embedding of integer timesteps: (B,) -> (B, dim).

    ``f_i = exp(-i · ln(10000) / (dim/2 - 1))``, ``emb = [sin(t f), cos(t f)]`` (reference §1.4).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, time: Tensor) -> Tensor:
        half = self.dim // 2
        scale = math.log(10000) / (half - 1)
        freqs = torch.exp(torch.arange(half, device=time.device) * -scale)
        args = time[:, None] * freqs[None, :]
        return torch.cat((args.sin(), args.cos()), dim=-1)


def apply_deltas(
    deltas: Tensor,
    boxes_xyxy: Tensor,
    *,
    weights: Sequence[float] = BBOX_WEIGHTS,
    scale_clamp: float = SCALE_CLAMP,
) -> Tensor:
    """Decode (dx, dy, dw, dh) deltas (detectron2 ``Box2BoxTransform``, reference §1.7).

    Args:
        deltas: (M, 4) raw regression outputs.
        boxes_xyxy: (M, 4) absolute reference boxes.
        weights: (wx, wy, ww, wh) divisors of the deltas.
        scale_clamp: upper clamp of dw, dh before ``exp``.

    Returns:
        (M, 4) absolute xyxy boxes, not clipped. A box of zero width stays zero-width.
    """
    boxes = boxes_xyxy.to(deltas.dtype)
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx = deltas[:, 0] / wx
    dy = deltas[:, 1] / wy
    dw = (deltas[:, 2] / ww).clamp(max=scale_clamp)
    dh = (deltas[:, 3] / wh).clamp(max=scale_clamp)
    pred_ctr_x = dx * widths + ctr_x
    pred_ctr_y = dy * heights + ctr_y
    pred_w = torch.exp(dw) * widths
    pred_h = torch.exp(dh) * heights
    return torch.stack(
        (
            pred_ctr_x - 0.5 * pred_w,
            pred_ctr_y - 0.5 * pred_h,
            pred_ctr_x + 0.5 * pred_w,
            pred_ctr_y + 0.5 * pred_h,
        ),
        dim=-1,
    )


class DynamicConv(nn.Module):
    """Instance interaction: two per-box 1x1 convs whose weights come from the box's feature.

    ``dynamic_layer`` maps each (D,) proposal feature to W1 (D, d) and W2 (d, D) with
    d = ``dim_dynamic`` (reference §1.6). Flattening the (S², D) output is position-major
    (index p·D + c), which ``out_layer.weight`` (D, S²·D) relies on.
    """

    def __init__(
        self,
        *,
        hidden_dim: int = 256,
        dim_dynamic: int = 64,
        num_dynamic: int = 2,
        pooler_resolution: int = 7,
    ) -> None:
        super().__init__()
        if num_dynamic != 2:
            raise ValueError(f"DynamicConv supports num_dynamic=2 only, got {num_dynamic!r}")
        self.hidden_dim = hidden_dim
        self.dim_dynamic = dim_dynamic
        self.num_params = hidden_dim * dim_dynamic
        self.dynamic_layer = nn.Linear(hidden_dim, num_dynamic * self.num_params)
        self.norm1 = nn.LayerNorm(dim_dynamic)
        self.norm2 = nn.LayerNorm(hidden_dim)
        self.activation = nn.ReLU(inplace=True)
        self.out_layer = nn.Linear(hidden_dim * pooler_resolution**2, hidden_dim)
        self.norm3 = nn.LayerNorm(hidden_dim)

    def forward(self, pro_features: Tensor, roi_features: Tensor) -> Tensor:
        """pro_features (1, M, D), roi_features (S², M, D) -> (M, D)."""
        features = roi_features.permute(1, 0, 2)  # (M, S², D)
        params = self.dynamic_layer(pro_features).permute(1, 0, 2)  # (M, 1, 2·D·d)
        param1 = params[:, :, : self.num_params].view(-1, self.hidden_dim, self.dim_dynamic)
        param2 = params[:, :, self.num_params :].view(-1, self.dim_dynamic, self.hidden_dim)
        features = self.activation(self.norm1(torch.bmm(features, param1)))  # (M, S², d)
        features = self.activation(self.norm2(torch.bmm(features, param2)))  # (M, S², D)
        features = self.out_layer(features.flatten(1))  # p·D + c order
        return self.activation(self.norm3(features))


def _linear_ln_relu(dim: int, depth: int) -> nn.ModuleList:
    # ModuleList (not Sequential) holding the ReLUs, so indices match the checkpoint: 0,1 / 3,4 / ..
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(dim, dim, bias=False), nn.LayerNorm(dim), nn.ReLU(inplace=True)]
    return nn.ModuleList(layers)


class RCNNHead(nn.Module):
    """One stage: self-attention over boxes, dynamic conv, FFN, time scale-shift, cls/reg towers.

    Args:
        num_classes: K (logits per box; sigmoid/focal classification, no background column).
        hidden_dim, dim_feedforward, nhead, dropout: transformer sizes (256, 2048, 8, 0.0).
        num_cls, num_reg: depths of the classification and regression towers (1, 3).
        dim_dynamic, num_dynamic: :class:`DynamicConv` sizes (64, 2).
        pooler_resolution: S (7).
        time_dim: width of the time embedding (4·D = 1024).
        bbox_weights, scale_clamp: :func:`apply_deltas` arguments.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        hidden_dim: int = 256,
        dim_feedforward: int = 2048,
        nhead: int = 8,
        dropout: float = 0.0,
        num_cls: int = 1,
        num_reg: int = 3,
        dim_dynamic: int = 64,
        num_dynamic: int = 2,
        pooler_resolution: int = 7,
        time_dim: int = 1024,
        bbox_weights: Sequence[float] = BBOX_WEIGHTS,
        scale_clamp: float = SCALE_CLAMP,
    ) -> None:
        super().__init__()
        self.hidden_dim = hidden_dim
        self.self_attn = nn.MultiheadAttention(hidden_dim, nhead, dropout=dropout)
        self.inst_interact = DynamicConv(
            hidden_dim=hidden_dim,
            dim_dynamic=dim_dynamic,
            num_dynamic=num_dynamic,
            pooler_resolution=pooler_resolution,
        )
        self.linear1 = nn.Linear(hidden_dim, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, hidden_dim)
        self.norm1 = nn.LayerNorm(hidden_dim)
        self.norm2 = nn.LayerNorm(hidden_dim)
        self.norm3 = nn.LayerNorm(hidden_dim)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.activation = nn.ReLU(inplace=True)
        self.block_time_mlp = nn.Sequential(nn.SiLU(), nn.Linear(time_dim, hidden_dim * 2))
        self.cls_module = _linear_ln_relu(hidden_dim, num_cls)
        self.reg_module = _linear_ln_relu(hidden_dim, num_reg)
        self.class_logits = nn.Linear(hidden_dim, num_classes)
        self.bboxes_delta = nn.Linear(hidden_dim, 4)
        self.bbox_weights = tuple(bbox_weights)
        self.scale_clamp = scale_clamp

    def forward(
        self,
        features: Sequence[Tensor],
        boxes_xyxy: Tensor,
        pro_features: Tensor | None,
        pooler: ROIPooler,
        time_emb: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Run one stage (reference §1.5 steps 1-11).

        Args:
            features: FPN levels p2..p5, each (B, D, H_l, W_l).
            boxes_xyxy: (B, N, 4) absolute boxes of this stage's input.
            pro_features: (1, M, D) previous stage's object features, or None at stage 0 (then the
                mean-pooled RoI feature is used).
            pooler: the RoI pooler.
            time_emb: (B, time_dim) time embedding.

        Returns:
            class_logits (B, N, K), boxes (B, N, 4) absolute xyxy, object features (1, M, D).
        """
        b, n = boxes_xyxy.shape[:2]
        d = self.hidden_dim
        roi = pooler(features, boxes_xyxy)  # (M, D, S, S)
        if pro_features is None:
            pro_features = roi.view(b, n, d, -1).mean(-1)
        roi = roi.view(b * n, d, -1).permute(2, 0, 1)  # (S², M, D), position p = y·S + x
        # self-attention among the boxes of each image (sequence-first), post-norm
        pro = pro_features.view(b, n, d).permute(1, 0, 2)  # (N, B, D)
        pro2 = self.self_attn(pro, pro, value=pro)[0]
        pro = self.norm1(pro + self.dropout1(pro2))
        # instance interaction, image-major order b·N + i
        pro = pro.view(n, b, d).permute(1, 0, 2).reshape(1, b * n, d)
        pro2 = self.inst_interact(pro, roi)
        obj = self.norm2(pro + self.dropout2(pro2))
        # FFN
        obj2 = self.linear2(self.dropout(self.activation(self.linear1(obj))))
        obj = self.norm3(obj + self.dropout3(obj2))  # (1, M, D): next stage's pro_features
        fc = obj.transpose(0, 1).reshape(b * n, -1)
        # time conditioning: scale-shift of the tower input only
        scale_shift = self.block_time_mlp(time_emb).repeat_interleave(n, dim=0)  # (M, 2D)
        scale, shift = scale_shift.chunk(2, dim=1)
        fc = fc * (scale + 1) + shift
        cls_feat = fc
        for layer in self.cls_module:
            cls_feat = layer(cls_feat)
        reg_feat = fc
        for layer in self.reg_module:
            reg_feat = layer(reg_feat)
        logits = self.class_logits(cls_feat)
        deltas = self.bboxes_delta(reg_feat)
        boxes = apply_deltas(
            deltas,
            boxes_xyxy.reshape(-1, 4),
            weights=self.bbox_weights,
            scale_clamp=self.scale_clamp,
        )
        return logits.view(b, n, -1), boxes.view(b, n, -1), obj


class DynamicHead(nn.Module):
    """Time embedding + ``num_heads`` cascaded :class:`RCNNHead` stages (reference §1.4).

    Args:
        num_classes: K.
        num_heads: number of stages (6); each has its own weights.
        deep_supervision: return all stages (True) or only the last one.
        prior_prob: focal-loss prior; ``class_logits.bias`` starts at -log((1-p)/p).
        pooler_scales, pooler_resolution, sampling_ratio: :class:`ROIPooler` arguments.
        **head_kwargs: forwarded to :class:`RCNNHead` (hidden_dim, dim_feedforward, nhead, ...).

    Init (reference §1.8): xavier-uniform on every parameter with dim > 1, then the prior bias on
    ``class_logits.bias`` of every stage. The official loop sets the prior on *every* head tensor
    whose last dim is K or K+1, which for K = 80 (COCO) and 1203 (LVIS) is exactly
    ``class_logits.bias``, but for other K also hits unrelated tensors (K ∈ {3, 4} the box-delta
    bias, K = 256 every LayerNorm, ...). We deliberately set only ``class_logits.bias``: identical
    for the official K, and a fix for custom K.

    Attributes:
        fast_path: run the stages through :func:`~projects.detection.fast_path.fast_stage_forward`
            (same outputs up to float rounding; a plain attribute, not state). Off by default
            here; :class:`~projects.detection.detector.DiffusionDet` turns it on.
        compile_fast_path: run the fast path through ``torch.compile`` (``MODEL.DiffusionDet
            .COMPILE``); the first call of each new shape pays the compile time.
    """

    fast_path: bool = False
    compile_fast_path: bool = False

    def __init__(
        self,
        *,
        num_classes: int = 80,
        num_heads: int = 6,
        hidden_dim: int = 256,
        deep_supervision: bool = True,
        prior_prob: float = 0.01,
        pooler_scales: Sequence[float] = (1 / 4, 1 / 8, 1 / 16, 1 / 32),
        pooler_resolution: int = 7,
        sampling_ratio: int = 2,
        **head_kwargs,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes!r}")
        if num_heads < 1:
            raise ValueError(f"num_heads must be >= 1, got {num_heads!r}")
        self.num_classes = num_classes
        self.deep_supervision = deep_supervision
        self.box_pooler = ROIPooler(
            output_size=pooler_resolution, scales=pooler_scales, sampling_ratio=sampling_ratio
        )
        time_dim = hidden_dim * 4
        stage = RCNNHead(
            num_classes=num_classes,
            hidden_dim=hidden_dim,
            pooler_resolution=pooler_resolution,
            time_dim=time_dim,
            **head_kwargs,
        )
        self.head_series = nn.ModuleList(copy.deepcopy(stage) for _ in range(num_heads))
        self.time_mlp = nn.Sequential(
            SinusoidalPositionEmbeddings(hidden_dim),
            nn.Linear(hidden_dim, time_dim),
            nn.GELU(),
            nn.Linear(time_dim, time_dim),
        )
        self.prior_prob = prior_prob
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        bias_value = -math.log((1 - self.prior_prob) / self.prior_prob)
        for stage in self.head_series:
            nn.init.constant_(stage.class_logits.bias, bias_value)

    def forward(
        self, features: Sequence[Tensor], boxes_xyxy: Tensor, t: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Refine boxes through all stages.

        Args:
            features: p2..p5, each (B, D, H_l, W_l).
            boxes_xyxy: (B, N, 4) absolute noisy boxes in resized-image pixels.
            t: (B,) integer timesteps.

        Returns:
            logits (L, B, N, K) and boxes (L, B, N, 4) absolute xyxy, with L = num_heads under
            deep supervision, else 1 (the last stage).
        """
        if self.fast_path and self.compile_fast_path and not torch.compiler.is_compiling():
            compiled = _COMPILED.get(self)
            if compiled is None:  # kept outside the module: deepcopy/pickle stay plain
                compiled = _COMPILED[self] = torch.compile(self._forward, dynamic=True)
            return compiled(features, boxes_xyxy, t)
        return self._forward(features, boxes_xyxy, t)

    def _forward(
        self, features: Sequence[Tensor], boxes_xyxy: Tensor, t: Tensor
    ) -> tuple[Tensor, Tensor]:
        """:meth:`forward` (same arguments and shapes) without the ``torch.compile`` dispatch."""
        # the sinusoid is computed in float32; cast it to the weights' dtype (float64 models)
        emb = self.time_mlp[0](t).to(self.time_mlp[1].weight.dtype)
        time_emb = self.time_mlp[1:](emb)
        if self.fast_path:  # fast_path.py: same maths, cheaper order (set_fast_path)
            scale_shifts = stage_scale_shifts(self.head_series, time_emb)  # (L, B, 2D)
        boxes = boxes_xyxy
        pro_features = None
        all_logits, all_boxes = [], []
        for i, stage in enumerate(self.head_series):
            if self.fast_path:
                logits, pred_boxes, pro_features = fast_stage_forward(
                    stage, features, boxes, pro_features, self.box_pooler, scale_shifts[i]
                )
            else:
                logits, pred_boxes, pro_features = stage(
                    features, boxes, pro_features, self.box_pooler, time_emb
                )
            all_logits.append(logits)
            all_boxes.append(pred_boxes)
            boxes = pred_boxes.detach()  # no gradient through coordinates between stages
        if self.deep_supervision:
            return torch.stack(all_logits), torch.stack(all_boxes)
        return all_logits[-1][None], all_boxes[-1][None]
