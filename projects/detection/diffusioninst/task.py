"""The DiffusionInst task (``MODEL.META_ARCHITECTURE: DiffusionInst``): its keys, model builder
and data builders registered with the engine (the contract of ``docs/internals.md``).
DiffusionDet's test loader (per-image sampling seeds) and input checks; this package's model,
mask-carrying training loader and box + mask evaluators."""

from diffvision.engine.tasks import register_task
from projects.detection.data import build_detection_test_loader, check_detection_inputs

from .build import build_inference, build_model
from .config import add_diffusioninst_config
from .data import build_instance_evaluator, build_instance_train_loader

DIFFUSIONINST_TASK = register_task(
    "DiffusionInst",
    add_config=add_diffusioninst_config,
    build_model=build_model,
    build_train_loader=build_instance_train_loader,
    build_test_loader=build_detection_test_loader,
    build_evaluator=build_instance_evaluator,
    build_inference=build_inference,
    check_inputs=check_detection_inputs,
)
