"""The DDeP task (``MODEL.META_ARCHITECTURE: DDeP``): denoising pretraining and segmentation
fine-tuning; its keys, model builder and data builders registered with the engine (the contract
of ``docs/internals.md``)."""

from diffvision.engine.tasks import register_task
from projects.segmentation.data import check_seg_inputs

from .build import build_ddep_model, build_inference
from .config import add_ddep_config
from .data import build_evaluator, build_test_loader, build_train_loader

DDEP_TASK = register_task(
    "DDeP",
    add_config=add_ddep_config,
    build_model=build_ddep_model,
    build_train_loader=build_train_loader,
    build_test_loader=build_test_loader,
    build_evaluator=build_evaluator,
    build_inference=build_inference,
    check_inputs=check_seg_inputs,
)
