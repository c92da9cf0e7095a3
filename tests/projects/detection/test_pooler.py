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
