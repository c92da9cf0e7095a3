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
from torch.utils.data import DataLoader, Dataset, Sampler

from diffvision.data.cityscapes import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    CITYSCAPES_SEM_SEG_SPLITS,
    get_cityscapes_sem_seg_records,
)
from diffvision.data.label_fraction import select_label_fraction, write_split_file
from diffvision.data.seg_folder import load_seg_folder, read_classes_json
from diffvision.data.toy_scenes import TOY_SCENE_SPLITS, ensure_toy_scenes
from diffvision.engine import comm
from diffvision.errors import DataError, InputFileNotFoundError

__all__ = [
    "InfiniteSampler",
    "collate_sem_seg",
    "get_sem_seg_dataset",
    "infinite_loader",
    "labeled_subset",
    "train_records",
]

logger = logging.getLogger(__name__)


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
    if name.startswith("toy_scenes_") and name[len("toy_scenes_") :] in TOY_SCENE_SPLITS:
        folder = ensure_toy_scenes(name[len("toy_scenes_") :], image_size=toy_image_size)
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


class InfiniteSampler(Sampler[int]):
    """Endless shuffled indices, sharded over ranks (detectron2's ``TrainingSampler``).

    Args:
        size: dataset length.
        seed: shared across ranks so the permutations agree.
        rank, world_size: this process's shard.
    """

    def __init__(self, size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if size < 1:
            raise ValueError(f"dataset size must be >= 1, got {size}")
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed)
        position = 0
        while True:
            for index in torch.randperm(self.size, generator=generator).tolist():
                if position % self.world_size == self.rank:
                    yield index
                position += 1


def collate_sem_seg(items: list[dict]) -> dict:
    """Stack same-sized items into ``{"image": (B,3,H,W) uint8, "sem_seg": (B,H,W)}``."""
    batch = {"image": torch.stack([it["image"] for it in items])}
    if all("sem_seg" in it for it in items):
        batch["sem_seg"] = torch.stack([it["sem_seg"] for it in items])
    batch["file_name"] = [it["file_name"] for it in items]
    return batch


def infinite_loader(
    dataset: Dataset, *, batch_size: int, num_workers: int, seed: int, rank: int, world_size: int
) -> DataLoader:
    """An endless ``DataLoader`` of collated batches for this rank."""
    sampler = InfiniteSampler(len(dataset), seed=seed, rank=rank, world_size=world_size)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_sem_seg,
        drop_last=True,
        persistent_workers=num_workers > 0,
    )
