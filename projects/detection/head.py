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
import threading
import weakref
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
        (M, 4) absolute xyxy boxes in the wider dtype of the two inputs (reduced-precision
        deltas decode in the boxes' float32), not clipped. A box of zero width stays zero-width.
    """
    dtype = torch.promote_types(deltas.dtype, boxes_xyxy.dtype)  # float32 boxes stay float32
    boxes, deltas = boxes_xyxy.to(dtype), deltas.to(dtype)
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


_WORKSPACE = threading.local()


def _workspace(slot: int, shape: tuple[int, ...], like: Tensor) -> Tensor | None:
    """A reusable scratch tensor of ``shape`` (contents undefined), one per slot and thread.

    Only without autograd and outside ``torch.compile``/``torch.export`` tracing (None there):
    for intermediates that never leave :meth:`DynamicConv.forward`. A fresh tensor of tens of MB
    comes from ``mmap`` and is paid again in page faults at every call (measured with
    ``tools/benchmark_detection.py``: 20-25 % of a CPU head pass at 300 boxes); reusing the
    memory avoids that.
    """
    if torch.is_grad_enabled() or torch.compiler.is_compiling():
        return None
    pool = getattr(_WORKSPACE, "pool", None)
    if pool is None:
        pool = _WORKSPACE.pool = {}
    key = (slot, like.dtype, like.device)
    numel = math.prod(shape)
    buf = pool.get(key)
    if buf is None or buf.numel() < numel:
        with torch.inference_mode(False):  # a normal tensor: writable inside and outside
            buf = pool[key] = torch.empty(numel, dtype=like.dtype, device=like.device)
    return buf[:numel].view(shape)


def _layer_norm(x: Tensor, norm: nn.LayerNorm, out: Tensor | None = None) -> Tensor:
    """``norm(x)``, written into ``out`` when given."""
    if out is not None:
        torch.ops.aten.native_layer_norm.out(
            x, norm.normalized_shape, norm.weight, norm.bias, norm.eps,
            out0=out, out1=x.new_empty(0), out2=x.new_empty(0),
        )  # fmt: skip
        return out
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def _relu(x: Tensor) -> Tensor:
    """ReLU, in place on the fresh intermediates it gets when no gradient is recorded."""
    return F.relu(x) if torch.is_grad_enabled() else F.relu_(x)


class DynamicConv(nn.Module):
    """Instance interaction: two per-box 1x1 convs whose weights come from the box's feature.

    ``dynamic_layer`` maps each (D,) proposal feature to W1 (D, d) and W2 (d, D) with
    d = ``dim_dynamic`` (official ``DynamicConv``). Flattening the (S², D) output is
    position-major (index p·D + c), which ``out_layer.weight`` (D, S²·D) relies on.
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

    def forward(self, pro: Tensor, roi: Tensor) -> Tensor:
        """Apply each box's two dynamic 1x1 convs to its pooled features.

        Args:
            pro: (M, D) proposal features.
            roi: (M, D, S²) pooled features (the pooler's (M, D, S, S) flattened).

        Returns:
            (M, D).

        The dynamic weights are two strided views of the one (M, 2·D·d) output of
        ``dynamic_layer``, and the features are read in the pooler's layout: no permute copies.
        Without autograd the large intermediates go to reused scratch memory (:func:`_workspace`).
        """
        m, dim, s2 = roi.shape
        d = self.dim_dynamic
        layer = self.dynamic_layer
        out = _workspace(0, (m, 2 * self.num_params), pro)
        if out is not None:
            params = torch.addmm(layer.bias, pro, layer.weight.t(), out=out)  # (M, 2Dd)
        else:
            params = F.linear(pro, layer.weight, layer.bias)
        param1 = params[:, : self.num_params].view(m, dim, d)
        param2 = params[:, self.num_params :].view(m, d, dim)
        x = torch.bmm(roi.transpose(1, 2), param1, out=_workspace(1, (m, s2, d), roi))  # (M,S²,d)
        x = _relu(_layer_norm(x, self.norm1, _workspace(2, (m, s2, d), roi)))
        x = torch.bmm(x, param2, out=_workspace(3, (m, s2, dim), roi))  # (M, S², D)
        x = _relu(_layer_norm(x, self.norm2, _workspace(4, (m, s2, dim), roi)))
        x = F.linear(x.flatten(1), self.out_layer.weight, self.out_layer.bias)  # p·D + c order
        return _relu(_layer_norm(x, self.norm3))


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

    The computation is the official stage's (official ``RCNNHead.forward``) in a cheaper order
    with the same result up to float rounding: the RoI features stay in the pooler's (M, D, S²)
    layout, self-attention skips the head-averaged attention weights (``need_weights=False``),
    the time scale/shift broadcasts over the boxes of an image instead of a
    ``repeat_interleave`` to (M, 2D), the first layers of both towers share one matmul, and
    activations run in place on fresh intermediates when no gradient is recorded.
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

    def towers(self, fc: Tensor) -> tuple[Tensor, Tensor]:
        """Classification and regression towers (Linear, LayerNorm, ReLU repeated), their first
        linear layers in one (M, D) x (D, 2D) matmul.

        Args:
            fc: (M, D) time-modulated object features.

        Returns:
            (M, D) inputs of ``class_logits`` and ``bboxes_delta``.
        """
        cls_layers, reg_layers = list(self.cls_module), list(self.reg_module)
        dim = fc.shape[1]
        both = F.linear(fc, torch.cat((cls_layers[0].weight, reg_layers[0].weight)))  # no biases
        outs = []
        for part, layers in ((both[:, :dim], cls_layers), (both[:, dim:], reg_layers)):
            x = _relu(_layer_norm(part, layers[1]))
            for i in range(3, len(layers), 3):
                x = _relu(_layer_norm(layers[i](x), layers[i + 1]))
            outs.append(x)
        return outs[0], outs[1]

    def forward(
        self,
        features: Sequence[Tensor],
        boxes_xyxy: Tensor,
        pro_features: Tensor | None,
        pooler: ROIPooler,
        scale_shift: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Run one stage (official ``RCNNHead.forward``).

        Args:
            features: FPN levels p2..p5, each (B, D, H_l, W_l).
            boxes_xyxy: (B, N, 4) absolute boxes of this stage's input.
            pro_features: (M, D) previous stage's object features, or None at stage 0 (then the
                mean-pooled RoI feature is used).
            pooler: the RoI pooler.
            scale_shift: (B, 2D) this stage's ``block_time_mlp(time_emb)``
                (:meth:`DynamicHead.scale_shifts` computes every stage's at once).

        Returns:
            class_logits (B, N, K) and boxes (B, N, 4) absolute xyxy, both in the dtype of
            ``boxes_xyxy`` or of the weights, whichever is wider; object features (M, D).
        """
        b, n = boxes_xyxy.shape[:2]
        d = self.hidden_dim
        # pooled at the boxes' precision, then in the weights' dtype (bf16/fp16 copies)
        roi = pooler(features, boxes_xyxy).flatten(2).to(self.norm1.weight.dtype)  # (M, D, S²)
        if pro_features is None:
            pro_features = roi.mean(-1)  # (M, D)
        # self-attention among the boxes of each image, sequence-first (N, B, D), post-norm
        pro = pro_features.view(b, n, d).transpose(0, 1)
        attn = self.self_attn(pro, pro, pro, need_weights=False)[0]
        pro = _layer_norm(pro + self.dropout1(attn), self.norm1).transpose(0, 1).reshape(b * n, d)
        # instance interaction, image-major order b·N + i
        obj = _layer_norm(pro + self.dropout2(self.inst_interact(pro, roi)), self.norm2)
        # FFN
        hidden = self.dropout(_relu(self.linear1(obj)))
        obj = _layer_norm(obj + self.dropout3(self.linear2(hidden)), self.norm3)
        # time conditioning of the tower input only, broadcast over the boxes of each image
        scale, shift = scale_shift[:, None, :].chunk(2, dim=-1)  # (B, 1, D) each
        fc = torch.addcmul(shift, obj.view(b, n, d), scale + 1).view(b * n, d)
        cls_feat, reg_feat = self.towers(fc)
        # the output layers may hold float32 weights in a reduced-precision copy
        logits = self.class_logits(cls_feat.to(self.class_logits.weight.dtype))
        deltas = self.bboxes_delta(reg_feat.to(self.bboxes_delta.weight.dtype))
        boxes = apply_deltas(
            deltas,
            boxes_xyxy.reshape(-1, 4),
            weights=self.bbox_weights,
            scale_clamp=self.scale_clamp,
        )
        return logits.view(b, n, -1).to(boxes.dtype), boxes.view(b, n, 4), obj


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
        use_compile: run :meth:`forward` through ``torch.compile`` (``MODEL.DiffusionDet
            .COMPILE``); the first call of each new shape pays the compile time. A plain
            attribute, not state.
    """

    use_compile: bool = False

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
        if self.use_compile and not torch.compiler.is_compiling():
            compiled = _COMPILED.get(self)
            if compiled is None:  # kept outside the module: deepcopy/pickle stay plain
                compiled = _COMPILED[self] = torch.compile(self._forward, dynamic=True)
            return compiled(features, boxes_xyxy, t)
        return self._forward(features, boxes_xyxy, t)

    def scale_shifts(self, time_emb: Tensor) -> Tensor:
        """Every stage's ``block_time_mlp(time_emb)`` (SiLU, Linear(T, 2D)) in one matmul.

        Args:
            time_emb: (B, T) time embedding of this step.

        Returns:
            (L, B, 2D): stage l's scale and shift.
        """
        linears = [stage.block_time_mlp[1] for stage in self.head_series]
        weight = torch.cat([lin.weight for lin in linears])  # (L·2D, T)
        bias = torch.cat([lin.bias for lin in linears])
        out = F.linear(F.silu(time_emb), weight, bias)  # (B, L·2D)
        return out.view(time_emb.shape[0], len(linears), -1).transpose(0, 1)

    def _forward(
        self, features: Sequence[Tensor], boxes_xyxy: Tensor, t: Tensor
    ) -> tuple[Tensor, Tensor]:
        """:meth:`forward` (same arguments and shapes) without the ``torch.compile`` dispatch."""
        # the sinusoid is computed in float32; cast it to the weights' dtype (float64 models)
        emb = self.time_mlp[0](t).to(self.time_mlp[1].weight.dtype)
        scale_shifts = self.scale_shifts(self.time_mlp[1:](emb))  # (L, B, 2D)
        boxes = boxes_xyxy
        pro_features = None
        all_logits, all_boxes = [], []
        for stage, scale_shift in zip(self.head_series, scale_shifts, strict=True):
            logits, pred_boxes, pro_features = stage(
                features, boxes, pro_features, self.box_pooler, scale_shift
            )
            all_logits.append(logits)
            all_boxes.append(pred_boxes)
            boxes = pred_boxes.detach()  # no gradient through coordinates between stages
        if self.deep_supervision:
            return torch.stack(all_logits), torch.stack(all_boxes)
        return all_logits[-1][None], all_boxes[-1][None]
