"""Config -> detection data of the DiffusionDet task: train/test loaders, evaluators, input
checks, class metadata.

The only place in the detection data path that reads the config. Keys read:

- ``DATASETS.TRAIN``, ``DATASETS.TEST``, ``DATASETS.CUSTOM`` (see below)
- ``INPUT.MIN_SIZE_TRAIN``, ``MAX_SIZE_TRAIN``, ``MIN_SIZE_TRAIN_SAMPLING``, ``MIN_SIZE_TEST``,
  ``MAX_SIZE_TEST``, ``RANDOM_FLIP``, ``FORMAT`` (must be RGB), ``CROP.{ENABLED, TYPE, SIZE}``,
  ``CROP.PRE_RESIZE_MIN_SIZES``
- ``DATALOADER.{NUM_WORKERS, ASPECT_RATIO_GROUPING, SAMPLER_TRAIN, REPEAT_THRESHOLD, REPEAT_SQRT,
  FILTER_EMPTY_ANNOTATIONS}``, ``SOLVER.IMS_PER_BATCH`` (total over processes),
  ``TEST.IMS_PER_BATCH`` (per process), ``SEED``
- ``MODEL.ROI_BOX_HEAD.FED_LOSS_FREQ_WEIGHT_POWER`` (federated-loss class weights)

Custom COCO-format datasets (the official repository's most asked-for feature) are declared in
the config, one string per dataset, and can then be used in ``DATASETS.TRAIN``/``TEST``::

    DATASETS:
      CUSTOM: ["my_train:data/my/train.json:data/my/train_images",
               "my_val:data/my/val.json:data/my/val_images"]
      TRAIN: ("my_train",)
      TEST: ("my_val",)

Relative paths are relative to the working directory. A name containing ``lvis`` is evaluated
with the LVIS evaluator, any other with COCO's.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from diffvision.config import CN
from diffvision.data.catalog import (
    check_dataset_files,
    get_detection_dataset,
    load_detection_dataset,
    parse_custom_dataset,
    register_coco_dataset,
)
from diffvision.data.coco import DetectionMetadata
from diffvision.data.detection_mapper import DetectionDatasetMapper
from diffvision.data.detection_transforms import RandomCrop, RandomFlip, ResizeShortestEdge
from diffvision.data.samplers import (
    GlobalBatchLoader,
    InferenceSampler,
    RepeatFactorTrainingSampler,
    TrainingSampler,
    repeat_factors_from_category_frequency,
)
from diffvision.engine.build import build_seed
from diffvision.errors import ConfigError, DataError, InputFileNotFoundError
from diffvision.evaluation.coco_evaluation import COCOEvaluator
from diffvision.evaluation.lvis_evaluation import LVISEvaluator
from diffvision.utils.seeding import eval_image_seed
from projects.detection.criterion import get_fed_loss_cls_weights

__all__ = [
    "build_detection_evaluator",
    "build_detection_test_loader",
    "build_detection_train_loader",
    "build_fed_loss_cls_weights",
    "build_test_mapper",
    "build_train_mapper",
    "check_detection_inputs",
    "get_detection_metadata",
    "get_detection_dataset_dicts",
    "register_custom_datasets",
]

logger = logging.getLogger(__name__)


def register_custom_datasets(cfg: CN) -> None:
    """Register every ``DATASETS.CUSTOM`` entry (safe to call repeatedly)."""
    for entry in cfg.DATASETS.CUSTOM:
        name, json_file, image_root = parse_custom_dataset(entry)
        register_coco_dataset(name, json_file=json_file, image_root=image_root)


def check_detection_inputs(cfg: CN) -> None:
    """``Task.check_inputs``: the files of builtin datasets and ``DATASETS.CUSTOM`` entries in
    ``DATASETS.TRAIN`` / ``TEST`` exist (their content is checked when loaded).

    Raises:
        ConfigError: a ``DATASETS.CUSTOM`` entry is not ``name:json_file:image_root``.
        InputFileNotFoundError: a json file or image folder does not exist.
    """
    for name in (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST):
        check_dataset_files(str(name))
    for entry in cfg.DATASETS.CUSTOM:
        name, json_file, image_root = parse_custom_dataset(entry)
        if not json_file.is_file():
            raise InputFileNotFoundError(
                f"DATASETS.CUSTOM {name!r}: annotation file {json_file} does not exist"
            )
        if not image_root.is_dir():
            raise InputFileNotFoundError(
                f"DATASETS.CUSTOM {name!r}: image folder {image_root} does not exist"
            )


def get_detection_dataset_dicts(
    names: str | Sequence[str], *, filter_empty: bool = False, masks: bool = False
) -> tuple[list[dict[str, Any]], DetectionMetadata]:
    """Dataset dicts of one or more registered datasets, concatenated.

    Args:
        names: dataset name(s); all must share the same classes.
        filter_empty: drop images without non-crowd annotations.
        masks: with the annotations' segmentations (instance segmentation).

    Returns:
        ``(dicts, metadata)`` (the dicts are shared with the loader cache: do not modify).
    """
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise ConfigError("no dataset given (DATASETS.TRAIN / DATASETS.TEST is empty)")
    all_dicts, metadata = [], None
    for name in names:
        dicts, meta = load_detection_dataset(name, masks=masks)
        if metadata is not None and meta.thing_classes != metadata.thing_classes:
            raise DataError(f"dataset '{name}' has other classes than '{names[0]}'")
        metadata = meta
        all_dicts.extend(dicts)
    if filter_empty:
        before = len(all_dicts)
        all_dicts = [d for d in all_dicts if any(not a.get("iscrowd", 0) for a in d["annotations"])]
        logger.info("Removed %d images without annotations", before - len(all_dicts))
    return all_dicts, metadata


def require_annotations(dicts: Sequence[dict[str, Any]], names: Sequence[str]) -> None:
    """Fail before training on data with nothing to learn from.

    Raises:
        DataError: no image of ``names`` keeps a usable (non-crowd) annotation after the
            registration checks (the log says what was dropped and why).
    """
    if not any(not a.get("iscrowd", 0) for d in dicts for a in d["annotations"]):
        files = ", ".join(str(get_detection_dataset(name).json_file) for name in names)
        raise DataError(
            f"DATASETS.TRAIN {tuple(names)} ({files}): no usable annotation in {len(dicts)} "
            "images, nothing to train on (the log lists what was dropped: annotations of unknown "
            "images or categories, degenerate or out-of-image boxes, missing images)"
        )


def get_detection_metadata(cfg: CN, dataset_name: str | None = None) -> DetectionMetadata:
    """Class metadata of ``dataset_name`` (default: the first training dataset)."""
    register_custom_datasets(cfg)
    name = dataset_name or (cfg.DATASETS.TRAIN or cfg.DATASETS.TEST)[0]
    return load_detection_dataset(name)[1]


def build_fed_loss_cls_weights(cfg: CN) -> torch.Tensor:
    """Federated-loss class weights ``image_count ** power`` for the training datasets.

    Uses LVIS ``image_count`` metadata when the json has it, else counts images per class.
    """
    power = cfg.MODEL.ROI_BOX_HEAD.FED_LOSS_FREQ_WEIGHT_POWER
    register_custom_datasets(cfg)
    dicts, metadata = get_detection_dataset_dicts(cfg.DATASETS.TRAIN)
    if metadata.class_image_count is not None and len(cfg.DATASETS.TRAIN) == 1:
        return torch.tensor(metadata.class_image_count, dtype=torch.float32) ** power
    weights = get_fed_loss_cls_weights(dicts, power=power)
    # classes that never occur still need an entry
    full = torch.zeros(len(metadata.thing_classes))
    full[: len(weights)] = weights
    return full


# ---------------------------------------------------------------------------------------------
# Mappers
# ---------------------------------------------------------------------------------------------


def _check_format(cfg: CN) -> None:
    if cfg.INPUT.FORMAT != "RGB":
        raise ConfigError(
            f"DiffusionDet models take RGB input; INPUT.FORMAT is {cfg.INPUT.FORMAT!r}"
        )


def build_train_mapper(cfg: CN, *, masks: bool = False) -> DetectionDatasetMapper:
    """DiffusionDet's training mapper: flip + multi-scale resize, or the crop branch (p=0.5);
    ``masks``: instance masks through the same transforms."""
    _check_format(cfg)
    resize = ResizeShortestEdge(
        short_edge_length=tuple(cfg.INPUT.MIN_SIZE_TRAIN),
        max_size=cfg.INPUT.MAX_SIZE_TRAIN,
        sample_style=cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING,
    )
    flip = [] if cfg.INPUT.RANDOM_FLIP == "none" else [RandomFlip(direction=cfg.INPUT.RANDOM_FLIP)]
    augmentations = [*flip, resize]
    crop_augmentations = None
    if cfg.INPUT.CROP.ENABLED:
        crop_augmentations = [
            *flip,
            ResizeShortestEdge(short_edge_length=tuple(cfg.INPUT.CROP.PRE_RESIZE_MIN_SIZES)),
            RandomCrop(crop_type=cfg.INPUT.CROP.TYPE, crop_size=tuple(cfg.INPUT.CROP.SIZE)),
            resize,
        ]
    return DetectionDatasetMapper(
        augmentations=augmentations,
        crop_augmentations=crop_augmentations,
        is_train=True,
        masks=masks,
    )


def build_test_mapper(cfg: CN) -> DetectionDatasetMapper:
    """Test mapper: ``ResizeShortestEdge(MIN_SIZE_TEST, MAX_SIZE_TEST)``, no annotations."""
    _check_format(cfg)
    resize = ResizeShortestEdge(
        short_edge_length=cfg.INPUT.MIN_SIZE_TEST, max_size=cfg.INPUT.MAX_SIZE_TEST
    )
    return DetectionDatasetMapper(augmentations=[resize], is_train=False)


# ---------------------------------------------------------------------------------------------
# Datasets and loaders
# ---------------------------------------------------------------------------------------------


class _SerializedList:
    """A list of dicts stored as one pickled byte buffer.

    Python objects in a list are copied page by page into every forked data-loader worker as
    their reference counts change; one numpy buffer is shared (detectron2 does the same).
    """

    def __init__(self, items: Sequence[Any]) -> None:
        blobs = [np.frombuffer(pickle.dumps(x, protocol=-1), dtype=np.uint8) for x in items]
        self._offsets = np.cumsum([len(b) for b in blobs], dtype=np.int64)
        self._data = np.concatenate(blobs) if blobs else np.zeros(0, dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._offsets)

    def __getitem__(self, i: int) -> Any:
        start = 0 if i == 0 else int(self._offsets[i - 1])
        return pickle.loads(memoryview(self._data[start : int(self._offsets[i])]))


class _MappedDataset(Dataset):
    def __init__(self, dicts: _SerializedList, mapper: DetectionDatasetMapper) -> None:
        self.dicts = dicts
        self.mapper = mapper

    def __len__(self) -> int:
        return len(self.dicts)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.mapper(self.dicts[i])


def _attach_seeds(items: list[dict[str, Any]], seeds: list[int]) -> list[dict[str, Any]]:
    """A training batch: the mapped dicts, each with ``seed`` for its diffusion draws (timestep,
    noise, padded boxes)."""
    for item, seed in zip(items, seeds, strict=True):
        item["seed"] = seed
    return items


def _check_num_classes(cfg: CN, metadata: DetectionMetadata) -> None:
    """A dataset with more classes than the model's logits would train silently wrong (a class id
    equal to NUM_CLASSES reads as background): the most common custom-dataset mistake."""
    # the configured task's section (DiffusionInst has DiffusionDet's keys), else DiffusionDet's
    section = cfg.MODEL.META_ARCHITECTURE
    if "NUM_CLASSES" not in cfg.MODEL.get(section, {}):
        section = "DiffusionDet"
    model_cfg = cfg.MODEL.get(section)
    if model_cfg is None:
        return
    num_data, num_model = len(metadata.thing_classes), model_cfg.NUM_CLASSES
    if num_data > num_model:
        raise ConfigError(
            f"the training data has {num_data} classes but MODEL.{section}.NUM_CLASSES is "
            f"{num_model}; set MODEL.{section}.NUM_CLASSES {num_data}"
        )
    if num_data < num_model:
        logger.warning(
            "the training data has %d classes, MODEL.%s.NUM_CLASSES is %d",
            num_data,
            section,
            num_model,
        )


def build_detection_train_loader(
    cfg: CN, *, start_iter: int = 0, masks: bool = False
) -> GlobalBatchLoader:
    """Infinite training loader of this process, from global batch ``start_iter`` on.

    Yields lists of ``SOLVER.IMS_PER_BATCH // world_size`` mapped dicts (see
    :mod:`diffvision.data.detection_mapper` for their layout) plus ``seed``: this rank's slice of
    each global batch; sampling, augmentation and diffusion draws depend on ``(SEED, iteration,
    position)`` only (:class:`~diffvision.data.samplers.GlobalBatchLoader`). ``masks``: the
    instances also carry ``gt_masks`` / ``gt_mask_valid`` (DiffusionInst).
    ``DATALOADER.ASPECT_RATIO_GROUPING`` is not honoured: grouping would make a batch depend on
    what earlier batches left in the buckets.
    """
    register_custom_datasets(cfg)
    dicts, metadata = get_detection_dataset_dicts(
        cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS, masks=masks
    )
    require_annotations(dicts, cfg.DATASETS.TRAIN)
    _check_num_classes(cfg, metadata)
    seed = build_seed(cfg)
    sampler_name = cfg.DATALOADER.SAMPLER_TRAIN
    if sampler_name == "TrainingSampler":
        sampler = TrainingSampler(len(dicts), seed=seed)
    elif sampler_name == "RepeatFactorTrainingSampler":
        factors = repeat_factors_from_category_frequency(
            dicts, repeat_thresh=cfg.DATALOADER.REPEAT_THRESHOLD, sqrt=cfg.DATALOADER.REPEAT_SQRT
        )
        sampler = RepeatFactorTrainingSampler(factors, seed=seed)
    else:
        raise ConfigError(
            f"DATALOADER.SAMPLER_TRAIN must be 'TrainingSampler' or "
            f"'RepeatFactorTrainingSampler', got {sampler_name!r}"
        )
    if cfg.DATALOADER.ASPECT_RATIO_GROUPING:
        logger.warning(
            "DATALOADER.ASPECT_RATIO_GROUPING True is not honoured: batches are fixed by (SEED, "
            "iteration) so that resumed and multi-process runs see the same batches"
        )
    logger.info("Training on %d images of %s with %s", len(dicts), cfg.DATASETS.TRAIN, sampler_name)
    return GlobalBatchLoader(
        _MappedDataset(_SerializedList(dicts), build_train_mapper(cfg, masks=masks)),
        sampler=sampler,
        seed=seed,
        global_batch_size=cfg.SOLVER.IMS_PER_BATCH,
        start_iter=start_iter,
        collate=_attach_seeds,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )


class _SeededTestBatches:
    """Test batches whose images carry ``seed``: the ``EVAL_IMAGE`` seed of (``seed``,
    image id) (:func:`~diffvision.utils.seeding.eval_image_seed`)."""

    def __init__(self, loader: DataLoader, seed: int | None) -> None:
        self.loader = loader
        self.seed = seed

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[list[dict[str, Any]]]:
        for batch in self.loader:
            if self.seed is not None:
                for i, x in enumerate(batch):
                    x["seed"] = eval_image_seed(self.seed, x.get("image_id", i))
            yield batch


def build_detection_test_loader(
    cfg: CN, dataset_name: str, *, batch_size: int | None = None
) -> _SeededTestBatches:
    """Finite test loader over this process's shard of ``dataset_name``.

    Batches are lists of ``TEST.IMS_PER_BATCH`` (or ``batch_size``) mapped dicts without
    annotations, resized to ``MIN_SIZE_TEST``/``MAX_SIZE_TEST``; with ``SEED >= 0`` every image
    carries its sampling seed :func:`~diffvision.utils.seeding.eval_image_seed` (``SEED``,
    ``image_id``) as ``seed``, so its sampled boxes (and the AP) are reproducible and do not
    depend on batching or sharding.
    """
    register_custom_datasets(cfg)
    dicts, _ = get_detection_dataset_dicts(dataset_name)
    dataset = _MappedDataset(_SerializedList(dicts), build_test_mapper(cfg))
    loader = DataLoader(
        dataset,
        sampler=InferenceSampler(len(dataset)),
        batch_size=batch_size or cfg.TEST.IMS_PER_BATCH,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        collate_fn=list,
    )
    return _SeededTestBatches(loader, cfg.SEED if cfg.SEED >= 0 else None)


def build_detection_evaluator(
    cfg: CN, dataset_name: str, output_dir: str | None = None
) -> COCOEvaluator:
    """COCO evaluator, or LVIS for LVIS-type datasets (names containing ``lvis``), writing its
    results to ``output_dir`` (default ``OUTPUT_DIR``)."""
    register_custom_datasets(cfg)
    info = get_detection_dataset(dataset_name)
    output_dir = cfg.OUTPUT_DIR if output_dir is None else output_dir
    if info.evaluator_type == "lvis":
        return LVISEvaluator(dataset_name, output_dir)
    return COCOEvaluator(dataset_name, output_dir)
