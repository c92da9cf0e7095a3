"""Multi-level RoIAlign pooler: detectron2's level rule and roi_align(aligned=True) per level."""

from __future__ import annotations

import torch
from torchvision.ops import roi_align

from projects.detection.pooler import ROIPooler, assign_boxes_to_levels


def _square(size: float) -> list[float]:
    return [10.0, 10.0, 10.0 + size, 10.0 + size]


def test_level_rule():
    sizes = [0.0, 32.0, 111.9, 112.0, 223.9, 224.0, 447.9, 448.0, 2000.0]
    boxes = torch.tensor([_square(s) for s in sizes])
    levels = assign_boxes_to_levels(boxes, min_level=2, max_level=5)
    # floor(4 + log2(size / 224 + 1e-8)) clamped to [2, 5], minus 2
    assert levels.tolist() == [0, 0, 0, 1, 1, 2, 2, 3, 3]


def test_pooler_equals_roi_align_on_the_assigned_level():
    torch.manual_seed(0)
    feats = [torch.randn(2, 3, 256 // s, 256 // s) for s in (4, 8, 16, 32)]
    boxes = torch.tensor(
        [
            [_square(20.0), _square(130.0), _square(240.0)],
            [_square(60.0), _square(500.0), [5.0, 7.0, 9.0, 200.0]],
        ]
    )
    out = ROIPooler()(feats, boxes)
    assert out.shape == (6, 3, 7, 7)
    flat = boxes.reshape(-1, 4)
    levels = assign_boxes_to_levels(flat, min_level=2, max_level=5)
    for row in range(6):
        b, lv = row // 3, int(levels[row])
        roi = torch.cat([torch.tensor([[float(b)]]), flat[row : row + 1]], dim=1)
        scale = 1.0 / 2 ** (lv + 2)
        expected = roi_align(feats[lv], roi, 7, scale, 2, aligned=True)
        torch.testing.assert_close(out[row : row + 1], expected)


class _PerLevelFeatures(torch.nn.Module):
    """Four FPN-like levels, each made by its own 1x1 conv (so each level owns parameters)."""

    def __init__(self):
        super().__init__()
        self.convs = torch.nn.ModuleList(torch.nn.Conv2d(3, 3, 1) for _ in range(4))
        self.pooler = ROIPooler()

    def forward(self, image, boxes):
        feats = [
            conv(torch.nn.functional.avg_pool2d(image, s))
            for conv, s in zip(self.convs, (4, 8, 16, 32))
        ]
        return self.pooler(feats, boxes).square().mean()


def _small_boxes():
    # every box is small -> all on the finest level; levels 1..3 receive nothing
    return torch.tensor([[_square(8.0), _square(20.0)]])


def test_empty_levels_stay_in_the_graph():
    torch.manual_seed(0)
    net = _PerLevelFeatures()
    net(torch.randn(1, 3, 256, 256), _small_boxes()).backward()
    for i, conv in enumerate(net.convs):
        assert conv.weight.grad is not None, f"level {i} left the graph"
    assert net.convs[0].weight.grad.abs().sum() > 0
    for conv in net.convs[1:]:  # empty levels: in the graph with an exactly-zero gradient
        assert conv.weight.grad.abs().sum() == 0


def test_ddp_without_find_unused_parameters_accepts_empty_levels(tmp_path):
    """DDP (gloo, one process) with find_unused_parameters=False fails on the second step if a
    level's parameters got no gradient on the first (its reducer never finished)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        ddp = DistributedDataParallel(_PerLevelFeatures(), find_unused_parameters=False)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
        for _ in range(3):
            opt.zero_grad()
            ddp(torch.randn(1, 3, 64, 64), _small_boxes()).backward()
            opt.step()
    finally:
        dist.destroy_process_group()


def test_non_finite_boxes_never_reach_roi_align(monkeypatch):
    """NaN/inf coordinates crash torchvision's CPU roi_align (signal 11); the pooler keeps them
    out and returns NaN rows for exactly those boxes, the other rows unchanged."""
    import projects.detection.pooler as pooler_module

    seen = []

    def checked_roi_align(feature, rois, *args, **kwargs):
        seen.append(rois)
        assert torch.isfinite(rois).all(), "a non-finite box reached roi_align"
        return roi_align(feature, rois, *args, **kwargs)

    monkeypatch.setattr(pooler_module, "roi_align", checked_roi_align)
    torch.manual_seed(0)
    feats = [torch.randn(2, 3, 256 // s, 256 // s) for s in (4, 8, 16, 32)]
    good = torch.tensor([[_square(20.0), _square(130.0)], [_square(60.0), _square(300.0)]])
    bad = good.clone()
    bad[0, 1, 2] = float("nan")
    bad[1, 0, 0] = float("inf")
    bad[1, 1, 3] = float("-inf")
    pooler = ROIPooler()
    out_bad, out_good = pooler(feats, bad), pooler(feats, good)
    assert seen
    nan_rows = torch.isnan(out_bad).flatten(1).all(dim=1)
    assert nan_rows.tolist() == [False, True, True, True]
    torch.testing.assert_close(out_bad[0], out_good[0])
    # one level only (no level assignment) takes the same guard
    single = ROIPooler(scales=(1 / 4,))(feats[:1], bad)
    assert torch.isnan(single).flatten(1).all(dim=1).tolist() == [False, True, True, True]
