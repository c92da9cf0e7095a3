"""The PixelMLP task (``MODEL.META_ARCHITECTURE: PixelMLP``): few-shot pixel classifiers on
frozen DDPM features; its keys, model builder and data builders registered with the engine (the
contract of ``docs/internals.md``)."""

from diffvision.engine.tasks import register_task
from projects.segmentation.data import check_seg_inputs

from .build import build_inference, build_model
from .config import add_pixel_mlp_config
from .data import build_evaluator, build_test_loader, build_train_loader

PIXEL_MLP_TASK = register_task(
    "PixelMLP",
    add_config=add_pixel_mlp_config,
    build_model=build_model,
    build_train_loader=build_train_loader,
    build_test_loader=build_test_loader,
    build_evaluator=build_evaluator,
    build_inference=build_inference,
    check_inputs=check_seg_inputs,
)
