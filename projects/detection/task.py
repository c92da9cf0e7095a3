"""The DiffusionDet task (``MODEL.META_ARCHITECTURE: DiffusionDet``): its keys, model builder and
data builders registered with the engine (the contract of ``docs/internals.md``)."""

from diffvision.engine.tasks import register_task

from .build import build_inference, build_model
from .config import add_diffusiondet_config
from .data import (
    build_detection_evaluator,
    build_detection_test_loader,
    build_detection_train_loader,
    check_detection_inputs,
)

DIFFUSIONDET_TASK = register_task(
    "DiffusionDet",
    add_config=add_diffusiondet_config,
    build_model=build_model,
    build_train_loader=build_detection_train_loader,
    build_test_loader=build_detection_test_loader,
    build_evaluator=build_detection_evaluator,
    build_inference=build_inference,
    check_inputs=check_detection_inputs,
)
