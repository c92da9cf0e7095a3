"""Names of detection datasets and where their files are.

Builtin names use detectron2's layout under :func:`diffvision.data.paths.datasets_root`
(``$DIFFVISION_DATASETS``, else ``$DETECTRON2_DATASETS``, else ``./datasets``)::

    coco_2017_train   coco/annotations/instances_train2017.json   images coco/train2017
    coco_2017_val     coco/annotations/instances_val2017.json     images coco/val2017
    lvis_v1_train     lvis/lvis_v1_train.json                     images coco/  (via coco_url)
    lvis_v1_val       lvis/lvis_v1_val.json                       images coco/  (via coco_url)
    toy_detection_train / toy_detection_val   generated on first use (diffvision.data.toy_detection)
    toy_instances_train / toy_instances_val   the same, with exact masks (COCO RLE segmentations)
    toy_glyphs_{train,val}, toy_glyphs_lvis_{train,val}   generated on first use (.toy_glyphs)

Custom COCO-format datasets are added with :func:`register_coco_dataset` (the detection project
does it for every ``DATASETS.CUSTOM`` entry ``"name:json_file:image_root"`` of a config).
Paths are resolved when a dataset is used, so the environment variables may change after import.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from diffvision.data.coco import DetectionMetadata, load_coco_json
from diffvision.data.paths import DATASETS_ENV_VARS, datasets_root
from diffvision.errors import ConfigError, InputFileNotFoundError, UnknownNameError, did_you_mean

__all__ = [
    "DetectionDatasetInfo",
    "check_dataset_files",
    "get_detection_dataset",
    "list_detection_datasets",
    "load_detection_dataset",
    "missing_data_hint",
    "parse_custom_dataset",
    "register_coco_dataset",
]

EvaluatorType = Literal["coco", "lvis"]


@dataclass(frozen=True)
class DetectionDatasetInfo:
    """Where a detection dataset lives and how to evaluate it.

    Attributes:
        name: registered name.
        json_file: COCO/LVIS-format annotation file.
        image_root: folder image file names are relative to.
        evaluator_type: ``"coco"`` (pycocotools) or ``"lvis"`` (lvis package).
    """

    name: str
    json_file: Path
    image_root: Path
    evaluator_type: EvaluatorType


# name -> function returning the info; called at use time so the datasets root is current.
_REGISTRY: dict[str, Callable[[], DetectionDatasetInfo]] = {}


def _builtin(name: str, json_rel: str, image_rel: str, evaluator_type: EvaluatorType) -> None:
    def resolve() -> DetectionDatasetInfo:
        root = datasets_root()
        return DetectionDatasetInfo(name, root / json_rel, root / image_rel, evaluator_type)

    _REGISTRY[name] = resolve


for _split in ("train", "val"):
    _builtin(
        f"coco_2017_{_split}",
        f"coco/annotations/instances_{_split}2017.json",
        f"coco/{_split}2017",
        "coco",
    )
    _builtin(f"lvis_v1_{_split}", f"lvis/lvis_v1_{_split}.json", "coco", "lvis")


def _toy(split: str) -> Callable[[], DetectionDatasetInfo]:
    def resolve() -> DetectionDatasetInfo:
        # Imported here: the generator pulls in PIL drawing code that plain lookups do not need.
        from diffvision.data.toy_detection import ensure_toy_detection

        root = ensure_toy_detection()
        return DetectionDatasetInfo(
            f"toy_detection_{split}",
            root / "annotations" / f"instances_{split}.json",
            root / split,
            "coco",
        )

    return resolve


def _toy_instances(split: str) -> Callable[[], DetectionDatasetInfo]:
    def resolve() -> DetectionDatasetInfo:
        from diffvision.data.toy_detection import ensure_toy_detection

        root = ensure_toy_detection(datasets_root() / "toy_instances", masks=True)
        return DetectionDatasetInfo(
            f"toy_instances_{split}",
            root / "annotations" / f"instances_{split}.json",
            root / split,
            "coco",
        )

    return resolve


for _split in ("train", "val"):
    _REGISTRY[f"toy_detection_{_split}"] = _toy(_split)
    # the same images with each object's exact visible mask as a COCO RLE segmentation
    _REGISTRY[f"toy_instances_{_split}"] = _toy_instances(_split)


def _toy_glyphs(split: str, fmt: str) -> Callable[[], DetectionDatasetInfo]:
    def resolve() -> DetectionDatasetInfo:
        from diffvision.data.toy_glyphs import ensure_toy_glyphs

        root = ensure_toy_glyphs()
        name = "toy_glyphs_lvis" if fmt == "lvis" else "toy_glyphs"
        json_name = f"lvis_{split}.json" if fmt == "lvis" else f"instances_{split}.json"
        return DetectionDatasetInfo(
            f"{name}_{split}", root / "annotations" / json_name, root / split, fmt
        )

    return resolve


for _split in ("train", "val"):  # Hershey digits, classes differ only by shape (toy_glyphs.py)
    _REGISTRY[f"toy_glyphs_{_split}"] = _toy_glyphs(_split, "coco")
    _REGISTRY[f"toy_glyphs_lvis_{_split}"] = _toy_glyphs(_split, "lvis")

_BUILTIN_NAMES = frozenset(_REGISTRY)


def register_coco_dataset(
    name: str,
    *,
    json_file: str | os.PathLike,
    image_root: str | os.PathLike,
    evaluator_type: EvaluatorType | None = None,
) -> None:
    """Register a COCO-format detection dataset under ``name``.

    Registering the same name again with the same files is a no-op; with other files it is an
    error (builtin names cannot be replaced).

    Args:
        name: the name used in ``DATASETS.TRAIN`` / ``DATASETS.TEST``.
        json_file: instances json (COCO format; LVIS format works too).
        image_root: folder the images' ``file_name`` are relative to.
        evaluator_type: ``"coco"`` or ``"lvis"``; default ``"lvis"`` when the name contains
            ``lvis``, else ``"coco"`` (detectron2's DiffusionDet ``build_evaluator`` rule).
    """
    if evaluator_type is None:
        evaluator_type = "lvis" if "lvis" in name else "coco"
    if evaluator_type not in ("coco", "lvis"):
        raise ConfigError(f"evaluator_type must be 'coco' or 'lvis', got {evaluator_type!r}")
    info = DetectionDatasetInfo(name, Path(json_file), Path(image_root), evaluator_type)
    if name in _REGISTRY:
        existing = _REGISTRY[name]()
        if existing != info:
            raise ConfigError(
                f"dataset '{name}' is already registered with {existing.json_file} / "
                f"{existing.image_root}; choose another name"
            )
        return
    _REGISTRY[name] = lambda: info


def parse_custom_dataset(entry: str) -> tuple[str, Path, Path]:
    """Split a ``DATASETS.CUSTOM`` entry ``"name:json_file:image_root"``.

    Raises:
        ConfigError: the entry does not have three non-empty parts.
    """
    parts = str(entry).split(":")
    if len(parts) != 3 or not all(parts):
        raise ConfigError(f"DATASETS.CUSTOM entry {entry!r} must be 'name:json_file:image_root'")
    name, json_file, image_root = parts
    return name, Path(json_file), Path(image_root)


def list_detection_datasets() -> list[str]:
    """Registered detection dataset names, sorted."""
    return sorted(_REGISTRY)


def get_detection_dataset(name: str) -> DetectionDatasetInfo:
    """Look up a detection dataset (generating the toy set if that is the one asked for).

    Raises:
        KeyError: unknown name; the message lists the closest registered names.
    """
    if name not in _REGISTRY:
        raise UnknownNameError(
            f"unknown detection dataset '{name}'.{did_you_mean(name, _REGISTRY, 0.5)} Registered: "
            f"{', '.join(list_detection_datasets())}. Declare custom COCO-format datasets with "
            "DATASETS.CUSTOM entries 'name:json_file:image_root'."
        )
    return _REGISTRY[name]()


# written on first use, never missing
_GENERATED_PREFIXES = ("toy_detection", "toy_instances", "toy_glyphs")


def check_dataset_files(name: str) -> None:
    """Check that a registered builtin or custom detection dataset's files exist, without
    reading them (cheap; for validating a command line before any process starts).

    Unknown names and the generated toy sets (created on first use) pass.

    Raises:
        InputFileNotFoundError: the json or the image folder is missing (builtin names say
            where datasets are looked up).
    """
    if name not in _REGISTRY or name.startswith(_GENERATED_PREFIXES):
        return
    info = _REGISTRY[name]()
    hint = f" {missing_data_hint()}" if name in _BUILTIN_NAMES else ""
    if not info.json_file.is_file():
        raise InputFileNotFoundError(
            f"dataset '{name}': annotation file not found: {info.json_file}.{hint}"
        )
    if not info.image_root.is_dir():
        raise InputFileNotFoundError(
            f"dataset '{name}': image folder not found: {info.image_root}.{hint}"
        )


def missing_data_hint() -> str:
    """The sentence appended to "file not found" errors for builtin datasets."""
    return (
        f"Datasets are looked up under {datasets_root().resolve()}; set "
        f"${DATASETS_ENV_VARS[0]} (or ${DATASETS_ENV_VARS[1]}) to the folder holding "
        "coco/ and lvis/."
    )


@functools.lru_cache(maxsize=8)
def _load(info: DetectionDatasetInfo, masks: bool) -> tuple[list[dict], DetectionMetadata]:
    builtin = info.name in _BUILTIN_NAMES and not info.name.startswith(_GENERATED_PREFIXES)
    return load_coco_json(
        info.json_file,
        info.image_root,
        dataset_name=info.name,
        env_hint=missing_data_hint() if builtin else None,
        masks=masks,
    )


def load_detection_dataset(
    name: str, *, masks: bool = False
) -> tuple[list[dict], DetectionMetadata]:
    """Dataset dicts and class metadata of a registered dataset (cached per process).

    See :func:`diffvision.data.coco.load_coco_json` for the dict layout (``masks``: with the
    annotations' ``segmentation``). Callers that modify the dicts must copy them first.
    """
    return _load(get_detection_dataset(name), bool(masks))
