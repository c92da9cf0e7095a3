from __future__ import annotations

import itertools

import pytest

from diffvision.config import get_cfg
from diffvision.data.toy_scenes import generate_toy_scenes
from projects.segmentation.build_pixel_mlp import build_feature_extractor
from projects.segmentation.data import InfiniteSampler, get_sem_seg_dataset, labeled_subset


def test_infinite_sampler_shards_cover_each_epoch():
    shards = [
        list(itertools.islice(InfiniteSampler(10, seed=3, rank=r, world_size=2), 5)) for r in (0, 1)
    ]
    assert sorted(shards[0] + shards[1]) == list(range(10))
    again = list(itertools.islice(InfiniteSampler(10, seed=3, rank=0, world_size=2), 5))
    assert again == shards[0]


def test_dataset_names_and_subset_record(tmp_path):
    folder = generate_toy_scenes(tmp_path / "toy", num_images=6, image_size=16)
    records, meta = get_sem_seg_dataset(str(folder))
    assert len(records) == 6 and meta["classes"][0] == "background"
    subset = labeled_subset(records, fraction="1/3", seed=0, output_dir=tmp_path / "out")
    assert len(subset) == 2
    lines = (tmp_path / "out" / "labeled_split.txt").read_text().splitlines()
    assert lines == [r["file_name"] for r in subset]
    with pytest.raises(FileNotFoundError, match="neither a known name"):
        get_sem_seg_dataset("toy_scenes_tset")


def test_pixel_mlp_needs_a_feature_source():
    cfg = get_cfg()
    cfg.MODEL.DEVICE = "cpu"
    with pytest.raises(ValueError, match="RANDOM_UNET"):
        build_feature_extractor(cfg)
    cfg.MODEL.PIXEL_MLP.FEATURES = "hog"
    with pytest.raises(ValueError, match="FEATURES"):
        build_feature_extractor(cfg)
