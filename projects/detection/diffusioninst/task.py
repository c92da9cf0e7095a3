"""The ``DiffusionInst`` task (``MODEL.META_ARCHITECTURE: DiffusionInst``): DiffusionDet's test
loader (per-image sampling seeds), this package's model, mask-carrying training loader and
box + mask evaluators."""

from __future__ import annotations

from diffvision.config import CfgNode
from diffvision.engine.tasks import register_task
from diffvision.errors import ConfigError
from diffvision.modeling.timm_backbone import add_timm_config
from projects.detection.build import build_test_loader
from projects.detection.data import add_detection_data_config

from .build import build_model
from .config import add_diffusioninst_config
from .data import build_instance_evaluator, build_instance_train_loader

__all__ = ["DIFFUSIONINST_TASK"]


def _add_config(cfg: CfgNode) -> None:
    add_diffusioninst_config(cfg)
    add_detection_data_config(cfg)
    add_timm_config(cfg)


def _build_inference(cfg: CfgNode):
    """Plain ``model(inputs)``; test-time augmentation is refused (its merge is box-only)."""
    if cfg.TEST.AUG.ENABLED:
        raise ConfigError(
            "TEST.AUG.ENABLED True: test-time augmentation merges boxes only and would drop "
            "DiffusionInst's masks; set TEST.AUG.ENABLED False"
        )
    return None


DIFFUSIONINST_TASK = register_task(
    "DiffusionInst",
    add_config=_add_config,
    build_model=build_model,
    build_train_loader=build_instance_train_loader,
    build_test_loader=build_test_loader,
    build_evaluator=build_instance_evaluator,
    build_inference=_build_inference,
)
