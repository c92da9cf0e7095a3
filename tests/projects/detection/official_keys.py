"""The official DiffusionDet head key layout (as in the released ``diffdet_coco_res50.pth``),
written once for the head and checkpoint tests."""

from __future__ import annotations

__all__ = ["official_head_keys"]


def official_head_keys(num_classes: int = 80) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of ``DiffusionDet.head`` (keys without the ``head.`` prefix)."""
    keys = {
        "time_mlp.1.weight": (1024, 256),
        "time_mlp.1.bias": (1024,),
        "time_mlp.3.weight": (1024, 1024),
        "time_mlp.3.bias": (1024,),
    }
    for s in range(6):
        p = f"head_series.{s}."
        stage = {
            "self_attn.in_proj_weight": (768, 256),
            "self_attn.in_proj_bias": (768,),
            "self_attn.out_proj.weight": (256, 256),
            "self_attn.out_proj.bias": (256,),
            "inst_interact.dynamic_layer.weight": (32768, 256),
            "inst_interact.dynamic_layer.bias": (32768,),
            "inst_interact.norm1.weight": (64,),
            "inst_interact.norm1.bias": (64,),
            "inst_interact.norm2.weight": (256,),
            "inst_interact.norm2.bias": (256,),
            "inst_interact.out_layer.weight": (256, 12544),
            "inst_interact.out_layer.bias": (256,),
            "inst_interact.norm3.weight": (256,),
            "inst_interact.norm3.bias": (256,),
            "linear1.weight": (2048, 256),
            "linear1.bias": (2048,),
            "linear2.weight": (256, 2048),
            "linear2.bias": (256,),
            "block_time_mlp.1.weight": (512, 1024),
            "block_time_mlp.1.bias": (512,),
            "cls_module.0.weight": (256, 256),
            "class_logits.weight": (num_classes, 256),
            "class_logits.bias": (num_classes,),
            "bboxes_delta.weight": (4, 256),
            "bboxes_delta.bias": (4,),
        }
        for n in (
            "norm1",
            "norm2",
            "norm3",
            "cls_module.1",
            "reg_module.1",
            "reg_module.4",
            "reg_module.7",
        ):
            stage[f"{n}.weight"] = (256,)
            stage[f"{n}.bias"] = (256,)
        for i in (0, 3, 6):
            stage[f"reg_module.{i}.weight"] = (256, 256)
        keys.update({p + k: v for k, v in stage.items()})
    return keys
