"""Dataset names, label-fraction subsets and infinite training loaders for the segmentation tasks.

Dataset names (``DATASETS.TRAIN`` / ``DATASETS.TEST``):

- ``cityscapes_fine_sem_seg_{train,val}``: Cityscapes under ``$DIFFVISION_DATASETS/cityscapes``.
- ``toy_scenes_{train,val}``: generated on first use (:mod:`diffvision.data.toy_scenes`).
- any folder in the generic format (``images/``, ``masks/``, ``classes.json``), by path.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from diffvision.data.cityscapes import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    CITYSCAPES_SEM_SEG_SPLITS,
    get_cityscapes_sem_seg_records,
)
from diffvision.data.label_fraction import select_label_fraction, write_split_file
from diffvision.data.samplers import GlobalBatchLoader
from diffvision.data.seg_folder import SemSegDataset, load_seg_folder, read_classes_json
from diffvision.data.toy_scenes import TOY_SCENE_SPLITS, ensure_toy_scenes
from diffvision.errors import DataError, InputFileNotFoundError
from diffvision.utils import comm

__all__ = [
    "SegTestBatches",
    "build_seg_train_loader",
    "collate_sem_seg",
    "get_sem_seg_dataset",
    "sem_seg_evaluator_kwargs",
    "labeled_subset",
    "train_records",
]

logger = logging.getLogger(__name__)


def _toy_scene_split(name: str) -> str | None:
    """``"train"`` for ``toy_scenes_train`` (a generated split), None for any other name."""
    split = name.removeprefix("toy_scenes_")
    return split if split != name and split in TOY_SCENE_SPLITS else None


def get_sem_seg_dataset(
    name: str, *, toy_image_size: int = 64, require_masks: bool = True
) -> tuple[list[dict], dict]:
    """Records and metadata of a named dataset or folder.

    Returns:
        ``(records, meta)`` with ``meta = {"classes", "palette", "ignore_label"}``.

    Raises:
        FileNotFoundError: an unknown name that is not an existing folder.
    """
    if name in CITYSCAPES_SEM_SEG_SPLITS:
        meta = {
            "classes": list(CITYSCAPES_CLASSES),
            "palette": CITYSCAPES_PALETTE,
            "ignore_label": 255,
        }
        return get_cityscapes_sem_seg_records(name), meta
    toy_split = _toy_scene_split(name)
    if toy_split is not None:
        folder = ensure_toy_scenes(toy_split, image_size=toy_image_size)
    else:
        folder = Path(name)
        if not folder.is_dir():
            raise InputFileNotFoundError(
                f"dataset {name!r} is neither a known name (cityscapes_fine_sem_seg_*, "
                f"toy_scenes_{{{','.join(TOY_SCENE_SPLITS)}}}) nor a folder"
            )
    return load_seg_folder(folder, require_masks=require_masks), read_classes_json(
        folder / "classes.json"
    )


def check_sem_seg_dataset_files(name: str) -> None:
    """A named split or folder exists, without reading it (Cityscapes: its ``leftImg8bit``
    folder; generated toy scenes always pass).

    Raises:
        InputFileNotFoundError: an unknown name that is not an existing folder.
    """
    if name in CITYSCAPES_SEM_SEG_SPLITS or _toy_scene_split(name) is not None:
        return
    if not Path(name).is_dir():
        what = "a file, expected a folder" if Path(name).exists() else "not a known name or folder"
        raise InputFileNotFoundError(
            f"dataset {name!r} is {what} (known: cityscapes_fine_sem_seg_*, "
            f"toy_scenes_{{{','.join(TOY_SCENE_SPLITS)}}}, or a folder with images/ and masks/)"
        )


def check_seg_inputs(cfg) -> None:
    """``Task.check_inputs`` of the segmentation tasks: every ``DATASETS.TRAIN`` / ``TEST``."""
    for name in (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST):
        check_sem_seg_dataset_files(str(name))


def labeled_subset(
    records: Sequence[dict],
    *,
    fraction: str | int,
    seed: int,
    split_file: str = "",
    output_dir: str | Path | None = None,
) -> list[dict]:
    """Apply a label fraction and record the chosen images in ``output_dir/labeled_split.txt``."""
    indices = select_label_fraction(
        [r["file_name"] for r in records],
        fraction=fraction,
        seed=seed,
        split_file=split_file or None,
    )
    subset = [records[i] for i in indices]
    logger.info("Label fraction %s: %d of %d images", fraction, len(subset), len(records))
    if output_dir is not None:
        write_split_file(Path(output_dir) / "labeled_split.txt", [r["file_name"] for r in subset])
    return subset


def train_records(cfg, *, labeled: bool = True) -> list[dict]:
    """Records of every ``DATASETS.TRAIN`` dataset; when ``labeled``, only the label fraction
    chosen by ``SEG.LABEL_COUNT``/``LABEL_FRACTION``/``SPLIT_FILE`` (recorded in OUTPUT_DIR)."""
    records = []
    for name in cfg.DATASETS.TRAIN:
        records += get_sem_seg_dataset(
            name, toy_image_size=cfg.SEG.TOY_IMAGE_SIZE, require_masks=labeled
        )[0]
    if not records:
        raise DataError(f"DATASETS.TRAIN {tuple(cfg.DATASETS.TRAIN)} holds no images.")
    if not labeled:
        return records
    return labeled_subset(
        records,
        fraction=cfg.SEG.LABEL_COUNT or cfg.SEG.LABEL_FRACTION,
        seed=cfg.SEG.FRACTION_SEED,
        split_file=cfg.SEG.SPLIT_FILE,
        output_dir=cfg.OUTPUT_DIR if comm.is_main_process() else None,
    )


def collate_sem_seg(items: list[dict], seeds: list[int] | None = None) -> dict:
    """Stack same-sized items into ``{"image": (B,3,H,W) uint8, "sem_seg": (B,H,W), "file_name":
    [...], "seed": (B,) int64}`` (``seed`` when given: each sample's noise-draw seed)."""
    batch = {"image": torch.stack([it["image"] for it in items])}
    if all("sem_seg" in it for it in items):
        batch["sem_seg"] = torch.stack([it["sem_seg"] for it in items])
    batch["file_name"] = [it["file_name"] for it in items]
    if seeds is not None:
        batch["seed"] = torch.as_tensor(seeds, dtype=torch.int64)
    return batch


def build_seg_train_loader(
    dataset: Dataset, *, seed: int, global_batch_size: int, start_iter: int, num_workers: int
) -> GlobalBatchLoader:
    """This rank's part of every global batch of ``dataset`` from ``start_iter`` on; crops,
    flips and noise seeds depend on ``(seed, iteration, position)`` only."""
    return GlobalBatchLoader(
        dataset,
        seed=seed,
        global_batch_size=global_batch_size,
        start_iter=start_iter,
        collate=collate_sem_seg,
        num_workers=num_workers,
    )


class SegTestBatches:
    """This rank's share (every ``world_size``-th record) of a test set, one-image batches
    ``[{"image": (3, H, W) uint8, "sem_seg": (H, W), "file_name"}]``."""

    def __init__(self, records: Sequence[dict]) -> None:
        self.records = list(records)[comm.get_rank() :: comm.get_world_size()]

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[list[dict]]:
        for item in SemSegDataset(self.records):
            yield [item]


def sem_seg_evaluator_kwargs(cfg, dataset_name: str) -> dict:
    """The :class:`~diffvision.evaluation.sem_seg.SemSegEvaluator` arguments of both
    segmentation tasks for ``dataset_name`` (classes, palette, overlays under
    ``OUTPUT_DIR/vis/<name>`` on the main process)."""
    _, meta = get_sem_seg_dataset(dataset_name, toy_image_size=cfg.SEG.TOY_IMAGE_SIZE)
    vis_dir = Path(cfg.OUTPUT_DIR) / "vis" / Path(dataset_name).name
    return {
        "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
        "ignore_label": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
        "class_names": meta["classes"],
        "palette": meta.get("palette"),
        "output_dir": vis_dir if comm.is_main_process() else None,
        "num_visualizations": cfg.SEG.NUM_VIS,
    }
