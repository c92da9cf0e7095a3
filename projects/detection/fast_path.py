"""DiffusionDet's fast path: the same maths as the plain modules in a cheaper order.

Nothing here owns parameters: every function reads the weights of the plain modules
(:class:`~projects.detection.head.RCNNHead`, ...), so checkpoints, ``state_dict`` keys and
``load_state_dict`` are untouched and results equal the plain path up to float rounding.
:meth:`DiffusionDet.set_fast_path <projects.detection.detector.DiffusionDet.set_fast_path>` turns
it on (the default) or off (the official computation order, used by the equivalence tests and
as the benchmark's baseline).

What changes against the plain order (reference diffusiondet.md §1.5-§1.6):

- The dynamic layer's output (M, 2·D·d) stays one contiguous (M, 2Dd) matrix and both dynamic
  weights are strided views of it (the plain code permutes and copies it);
  the RoI features are read in the pooler's (M, D, S²) layout, without the (S², M, D) permute.
- The time scale/shift broadcasts over the boxes of an image instead of ``repeat_interleave``
  to (M, 2D); the first tower layers of the classification and regression branches share one
  (M, D) x (D, 2D) matmul.
- ReLUs, residual additions and the scale-shift run in place on fresh intermediates when no
  gradient is needed.
- Self-attention skips the head-averaged attention weights (``need_weights=False``), which the
  plain path computes and discards.
- Without autograd, the dynamic convolution's large intermediates (the (M, 2Dd) dynamic weights,
  the (M, S², d) and (M, S², D) activations) are written into per-thread scratch memory that
  is reused from call to call: a fresh multi-MB tensor costs page faults at every call, about a
  fifth of a CPU head pass at 300 boxes (measured with ``tools/benchmark_detection.py``).

Shapes: B images, N boxes per image, M = B·N, D hidden, d = ``dim_dynamic``, S pooler size,
K classes.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["fast_stage_forward", "fast_dynamic_conv", "fast_towers", "stage_scale_shifts"]


_WORKSPACE = threading.local()


def _workspace(slot: int, shape: tuple[int, ...], like: Tensor) -> Tensor:
    """A reusable scratch tensor of ``shape`` (contents undefined), one per slot and thread.

    A fresh tensor of tens of MB comes from ``mmap`` and is paid again in page faults at every
    call (measured: 20-25 % of a head pass on CPU); reusing the memory avoids that. Only for
    intermediates that never leave :func:`fast_dynamic_conv`, without autograd.
    """
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


def _use_workspace() -> bool:
    return not torch.is_grad_enabled() and not torch.compiler.is_compiling()


def _layer_norm(x: Tensor, norm: nn.LayerNorm, out: Tensor | None = None) -> Tensor:
    if out is not None:
        torch.ops.aten.native_layer_norm.out(
            x, norm.normalized_shape, norm.weight, norm.bias, norm.eps,
            out0=out, out1=x.new_empty(0), out2=x.new_empty(0),
        )  # fmt: skip
        return out
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def _relu(x: Tensor, inplace: bool) -> Tensor:
    return F.relu_(x) if inplace else F.relu(x)


def fast_dynamic_conv(module: nn.Module, pro: Tensor, roi: Tensor, *, inplace: bool) -> Tensor:
    """:class:`~projects.detection.head.DynamicConv` on the pooler's layout.

    Args:
        module: the ``DynamicConv`` whose weights are used.
        pro: (M, D) proposal features.
        roi: (M, D, S²) pooled features (the pooler's (M, D, S, S) flattened).
        inplace: allow in-place activations (no autograd graph needed).

    Returns:
        (M, D), equal to ``module(pro[None], roi.permute(2, 0, 1))``.
    """
    m, dim, s2 = roi.shape
    d = module.dim_dynamic
    layer = module.dynamic_layer
    if _use_workspace():  # the same ops, into reused memory
        out = _workspace(0, (m, 2 * module.num_params), pro)
        params = torch.addmm(layer.bias, pro, layer.weight.t(), out=out)
    else:
        params = F.linear(pro, layer.weight, layer.bias)  # (M, 2Dd)
    param1 = params[:, : module.num_params].view(m, dim, d)
    param2 = params[:, module.num_params :].view(m, d, dim)
    ws = _use_workspace()

    def scratch(slot: int, shape: tuple[int, ...]) -> Tensor | None:
        return _workspace(slot, shape, roi) if ws else None

    x = torch.bmm(roi.transpose(1, 2), param1, out=scratch(1, (m, s2, d)))  # (M, S², d)
    x = _relu(_layer_norm(x, module.norm1, scratch(2, (m, s2, d))), inplace)
    x = torch.bmm(x, param2, out=scratch(3, (m, s2, dim)))  # (M, S², D)
    x = _relu(_layer_norm(x, module.norm2, scratch(4, (m, s2, dim))), inplace)
    x = F.linear(x.flatten(1), module.out_layer.weight, module.out_layer.bias)  # p·D + c order
    return _relu(_layer_norm(x, module.norm3), inplace)


def fast_towers(stage: nn.Module, fc: Tensor, *, inplace: bool) -> tuple[Tensor, Tensor]:
    """Classification and regression towers, first layers in one matmul.

    Args:
        stage: the ``RCNNHead`` (its ``cls_module``/``reg_module`` ModuleLists: Linear, LayerNorm,
            ReLU repeated).
        fc: (M, D) time-modulated object features.

    Returns:
        (M, D) inputs of ``class_logits`` and ``bboxes_delta``.
    """
    cls_layers, reg_layers = list(stage.cls_module), list(stage.reg_module)
    dim = fc.shape[1]
    first = torch.cat((cls_layers[0].weight, reg_layers[0].weight))  # (2D, D), no biases
    both = F.linear(fc, first)
    outs = []
    for part, layers in ((both[:, :dim], cls_layers), (both[:, dim:], reg_layers)):
        x = _relu(_layer_norm(part, layers[1]), inplace)
        for i in range(3, len(layers), 3):
            x = layers[i](x)
            x = _relu(_layer_norm(x, layers[i + 1]), inplace)
        outs.append(x)
    return outs[0], outs[1]


def stage_scale_shifts(stages: Sequence[nn.Module], time_emb: Tensor) -> Tensor:
    """Every stage's ``block_time_mlp(time_emb)`` in one matmul.

    Args:
        stages: the ``RCNNHead`` stages (``block_time_mlp`` = SiLU, Linear(T, 2D)).
        time_emb: (B, T) time embedding of this step.

    Returns:
        (L, B, 2D): stage l's scale and shift.
    """
    linears = [s.block_time_mlp[1] for s in stages]
    weight = torch.cat([lin.weight for lin in linears])  # (L·2D, T)
    bias = torch.cat([lin.bias for lin in linears])
    out = F.linear(F.silu(time_emb), weight, bias)  # (B, L·2D)
    return out.view(time_emb.shape[0], len(linears), -1).transpose(0, 1)


def fast_stage_forward(
    stage: nn.Module,
    features: Sequence[Tensor],
    boxes_xyxy: Tensor,
    pro_features: Tensor | None,
    pooler: nn.Module,
    scale_shift: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """One :class:`~projects.detection.head.RCNNHead` stage in the fast order.

    Args:
        stage: the ``RCNNHead`` whose weights are used.
        features: FPN levels, each (B, D, H_l, W_l).
        boxes_xyxy: (B, N, 4) absolute boxes.
        pro_features: (M, D) object features of the previous stage, or None at stage 0.
        pooler: the head's ``ROIPooler``.
        scale_shift: (B, 2D) this stage's ``block_time_mlp(time_emb)``.

    Returns:
        class logits (B, N, K), boxes (B, N, 4), object features (M, D) for the next stage.
    """
    from .head import apply_deltas  # local: head imports this module

    inplace = not torch.is_grad_enabled()
    b, n = boxes_xyxy.shape[:2]
    d = stage.hidden_dim
    roi = pooler(features, boxes_xyxy)  # (M, D, S, S)
    roi = roi.flatten(2)  # (M, D, S²)
    if pro_features is None:
        pro_features = roi.mean(-1)  # (M, D)
    # self-attention among the boxes of each image, sequence-first (N, B, D), post-norm
    pro = pro_features.view(b, n, d).transpose(0, 1)
    attn = stage.self_attn(pro, pro, pro, need_weights=False)[0]
    pro = _layer_norm(pro + stage.dropout1(attn), stage.norm1).transpose(0, 1).reshape(b * n, d)
    # instance interaction
    inter = fast_dynamic_conv(stage.inst_interact, pro, roi, inplace=inplace)
    obj = _layer_norm(pro + stage.dropout2(inter), stage.norm2)
    # FFN
    hidden = stage.dropout(_relu(F.linear(obj, stage.linear1.weight, stage.linear1.bias), inplace))
    obj2 = F.linear(hidden, stage.linear2.weight, stage.linear2.bias)
    obj = _layer_norm(obj + stage.dropout3(obj2), stage.norm3)
    # time conditioning, broadcast over the boxes of each image
    scale, shift = scale_shift[:, None, :].chunk(2, dim=-1)  # (B, 1, D) each
    fc = torch.addcmul(shift, obj.view(b, n, d), scale + 1).view(b * n, d)
    cls_feat, reg_feat = fast_towers(stage, fc, inplace=inplace)
    logits = F.linear(cls_feat, stage.class_logits.weight, stage.class_logits.bias)
    deltas = F.linear(reg_feat, stage.bboxes_delta.weight, stage.bboxes_delta.bias)
    boxes = apply_deltas(
        deltas, boxes_xyxy.reshape(-1, 4), weights=stage.bbox_weights, scale_clamp=stage.scale_clamp
    )
    return logits.view(b, n, -1), boxes.view(b, n, 4), obj
