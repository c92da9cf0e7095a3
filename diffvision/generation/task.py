"""The DDPM task (``MODEL.META_ARCHITECTURE: DDPM``): an image diffusion model trained by the
engine; its keys, model builder and data builders registered with the engine (the contract of
``docs/internals.md``). The engine evaluates the EMA model when ``MODEL_EMA.ENABLED``."""

from diffvision.engine.tasks import register_task
from diffvision.generation.build import build_inference, build_model
from diffvision.generation.config import add_ddpm_config
from diffvision.generation.data import (
    build_evaluator,
    build_test_loader,
    build_train_loader,
    test_dataset_names,
)

DDPM_TASK = register_task(
    "DDPM",
    add_config=add_ddpm_config,
    build_model=build_model,
    build_train_loader=build_train_loader,
    build_test_loader=build_test_loader,
    build_evaluator=build_evaluator,
    build_inference=build_inference,
    test_dataset_names=test_dataset_names,
)
