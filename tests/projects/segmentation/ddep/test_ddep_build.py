"""Whole-image semantic-segmentation inference (``predict_sem_seg``): the test-input size."""

import pytest
import torch

from projects.segmentation.ddep.build import predict_sem_seg


def _left_right_logits(seen: list):
    """A stand-in network that records its input size and calls the left half class 0, the
    right half class 1, whatever the input size."""

    def logits_fn(x):
        seen.append(tuple(x.shape[-2:]))
        h, w = x.shape[-2:]
        right = (torch.arange(w) >= w // 2).float().expand(h, w)
        return torch.stack([1 - right, right])[None]

    return logits_fn


@pytest.mark.parametrize(
    ("resize", "scale", "expected"),
    [((0, 0), 1.0, (30, 40)), ((0, 0), 2.0, (60, 80)), ((0, 0), 0.55, (16, 22)),
     ((64, 64), 2.0, (64, 64))],
)  # fmt: skip
def test_the_input_is_scaled_by_test_scale_unless_resized_and_labels_keep_their_size(
    resize, scale, expected
):
    seen = []
    image = torch.randint(0, 256, (3, 30, 40), dtype=torch.uint8)
    pred = predict_sem_seg(
        _left_right_logits(seen), image, label_size=(30, 40), num_classes=2,
        resize=resize, scale=scale,
    )  # fmt: skip
    assert seen == [expected]
    assert pred.shape == (30, 40)
    assert (pred[:, :20] == 0).all() and (pred[:, 20:] == 1).all()
