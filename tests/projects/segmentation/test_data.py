from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from diffvision.config import get_cfg
from diffvision.data.seg_folder import SemSegDataset
from diffvision.data.seg_transforms import SegAugmentation
from diffvision.data.toy_scenes import generate_toy_scenes
from projects.segmentation.data import build_seg_train_loader, get_sem_seg_dataset, labeled_subset
from projects.segmentation.pixel_mlp.build import build_feature_extractor


def test_train_loader_slices_the_global_batch_and_resumes_mid_stream(tmp_path):
    folder = generate_toy_scenes(tmp_path / "toy", num_images=6, image_size=16)
    records, _ = get_sem_seg_dataset(str(folder))
    dataset = SemSegDataset(records, transform=SegAugmentation(crop_size=(8, 8)))

    def batches(rank, world, start_iter=0, n=3):
        loader = build_seg_train_loader(
            dataset, seed=3, global_batch_size=4, start_iter=start_iter, num_workers=0
        )
        loader.rank, loader.world_size, loader.batch_size = rank, world, 4 // world
        return list(itertools.islice(loader, n))

    whole = batches(0, 1)
    halves = [batches(r, 2) for r in (0, 1)]
    for it in range(3):
        # rank r holds slice r of global batch it: same crops, flips and noise seeds
        for key in ("image", "sem_seg", "seed"):
            joined = torch.cat([halves[0][it][key], halves[1][it][key]])
            assert torch.equal(joined, whole[it][key]), (it, key)
        assert halves[0][it]["file_name"] + halves[1][it]["file_name"] == whole[it]["file_name"]
    # 6 images, batch 4: global batch 1 straddles the epoch boundary and still has no repeat
    # within the first epoch's 6 positions.
    first_epoch = whole[0]["file_name"] + whole[1]["file_name"][:2]
    assert sorted(first_epoch) == sorted(r["file_name"] for r in records)
    resumed = batches(0, 1, start_iter=1, n=2)
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(resumed, whole[1:]))
    assert whole[0]["seed"].unique().numel() == 4


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


def test_class_loss_weights_closed_form(tmp_path):
    """Shares f = (0.9, 0.09, 0.01, 0) of the labeled pixels (255 ignored): w_c = f_c^-p /
    sum_k f_k^(1-p), so sum_c f_c w_c = 1; an absent class gets the largest present weight."""
    from PIL import Image

    from projects.segmentation.data import class_loss_weights

    mask = np.zeros((10, 100), np.uint8)
    mask.flat[900:990] = 1
    mask.flat[990:1000] = 2
    mask[0, :10] = 255  # ignored: not counted (10 of the background pixels)
    mask.flat[10:20] = 0
    Image.fromarray(mask, mode="L").save(tmp_path / "m.png")
    records = [{"sem_seg_file_name": str(tmp_path / "m.png")}]
    counts = np.array([(mask == c).sum() for c in range(3)], float)
    share = counts / counts.sum()
    for power in (0.0, 0.5, 1.0):
        weights = class_loss_weights(records, num_classes=4, ignore_label=255, power=power)
        expected = share**-power / (share ** (1 - power)).sum()
        np.testing.assert_allclose(weights[:3].numpy(), expected, rtol=1e-6)
        assert weights[3] == weights[:3].max()
        assert abs(float((torch.from_numpy(share).float() * weights[:3]).sum()) - 1) < 1e-6
    assert torch.equal(
        class_loss_weights(records, num_classes=4, ignore_label=255, power=0.0), torch.ones(4)
    )
