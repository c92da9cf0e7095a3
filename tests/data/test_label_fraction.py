from __future__ import annotations

import pytest

from diffvision.data.label_fraction import (
    label_fraction_count,
    select_label_fraction,
    write_split_file,
)


def test_cityscapes_counts():
    counts = [label_fraction_count(f, num_total=2975) for f in ("full", "1/4", "1/8", "1/30")]
    assert counts == [2975, 744, 372, 100]
    assert label_fraction_count("100", num_total=2975) == 100
    assert label_fraction_count(5, num_total=10) == 5
    assert label_fraction_count("0.5", num_total=10) == 5
    for bad in ("1/0", "abc", "2/1", "0", "11"):
        with pytest.raises(ValueError):
            label_fraction_count(bad, num_total=10)


def test_seeded_selection_is_reproducible_and_nested_in_range():
    names = [f"img_{i:03d}.png" for i in range(90)]
    a = select_label_fraction(names, fraction="1/30", seed=3)
    assert a == select_label_fraction(names, fraction="1/30", seed=3)
    assert len(a) == 3 and a == sorted(a) and all(0 <= i < 90 for i in a)
    assert a != select_label_fraction(names, fraction="1/30", seed=4)
    # one permutation per seed: a smaller fraction is a subset of a larger one
    eighth, quarter = (select_label_fraction(names, fraction=f, seed=3) for f in ("1/8", "1/4"))
    assert (len(eighth), len(quarter)) == (12, 23)
    assert set(a) < set(eighth) < set(quarter)
    assert select_label_fraction(names, fraction="full") == list(range(90))


def test_split_file_roundtrip(tmp_path):
    names = [f"/data/leftImg8bit/train/ulm/ulm_{i:06d}_000019_leftImg8bit.png" for i in range(10)]
    split = tmp_path / "split.txt"
    write_split_file(split, ["leftImg8bit/train/ulm/ulm_000007_000019_leftImg8bit.png", names[2]])
    assert select_label_fraction(names, split_file=split) == [2, 7]
    write_split_file(split, ["leftImg8bit/train/ulm/missing_leftImg8bit.png"])
    with pytest.raises(ValueError, match="missing"):
        select_label_fraction(names, split_file=split)
