"""Label-fraction subsets for label-efficient fine-tuning.

A fraction is written ``"full"``, ``"1/4"``, ``"1/8"``, ``"1/30"``, a float in (0, 1] such as
``"0.25"``, or an absolute image count such as ``"100"``. Fractions round *up*, which gives the
usual Cityscapes subset sizes of the 2975 training images (as in the semi-supervised
segmentation literature, e.g. the U2PL split lists): 1/4 → 744, 1/8 → 372, 1/30 → 100.

The subset is drawn by a seeded permutation, or read from a split-list file (one image per line,
e.g. ``leftImg8bit/train/ulm/ulm_000079_000019_leftImg8bit.png``, as in the public U2PL lists);
lines are matched to records by file-name stem. :func:`write_split_file` records the chosen
subset in the output directory so the run can be repeated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np

from diffvision.errors import ConfigError, DataError, InputFileNotFoundError

__all__ = [
    "label_fraction_count",
    "read_split_file",
    "select_label_fraction",
    "write_split_file",
]


def _stem(path: str) -> str:
    return Path(path.strip()).stem


def label_fraction_count(fraction: str | float | int, *, num_total: int) -> int:
    """Number of labeled images for a fraction spec.

    Args:
        fraction: ``"full"``, ``"1/N"``, a float in (0, 1], or an integer count ≥ 1 (int or
            digit string).
        num_total: size of the full labeled set.

    Returns:
        ``ceil(fraction * num_total)`` for fractions, the count itself for counts.

    Raises:
        ValueError: malformed spec, a fraction outside (0, 1], or a count above ``num_total``.
    """
    if num_total < 1:
        raise ValueError(f"num_total must be >= 1, got {num_total}")
    spec = str(fraction).strip().lower()
    if spec in ("full", "all", "1/1", "1.0"):
        return num_total
    if isinstance(fraction, int) or spec.isdigit():
        count = int(spec)
        if not 1 <= count <= num_total:
            raise ConfigError(f"label count {count} must lie in [1, {num_total}]")
        return count
    try:
        value = Fraction(spec) if "/" in spec else Fraction(float(spec))
    except (ValueError, ZeroDivisionError) as exc:
        raise ConfigError(
            f"label fraction {fraction!r} is not 'full', '1/N', a float in (0, 1] or a count"
        ) from exc
    if not 0 < value <= 1:
        raise ConfigError(f"label fraction {fraction!r} must lie in (0, 1]")
    return max(1, math.ceil(value * num_total))


def read_split_file(path: str | Path) -> list[str]:
    """Read a split-list file: one image path or stem per non-empty line."""
    path = Path(path)
    if not path.is_file():
        raise InputFileNotFoundError(f"split file not found: {path}")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def write_split_file(path: str | Path, file_names: Sequence[str]) -> None:
    """Write the chosen image paths, one per line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{name}\n" for name in file_names))


def select_label_fraction(
    file_names: Sequence[str],
    *,
    fraction: str | float | int = "full",
    seed: int = 0,
    split_file: str | Path | None = None,
) -> list[int]:
    """Pick the indices of the labeled subset.

    Args:
        file_names: image paths of the full labeled set, in dataset order.
        fraction: see :func:`label_fraction_count`; ignored when ``split_file`` is given.
        seed: seed of the permutation (NumPy ``default_rng``); the same seed and the same file
            list always give the same subset.
        split_file: optional list file; its lines are matched to ``file_names`` by stem.

    Returns:
        sorted indices into ``file_names``.

    Raises:
        ValueError: a split-file line matches no image, or a malformed fraction.
    """
    if split_file is not None:
        by_stem = {_stem(name): i for i, name in enumerate(file_names)}
        wanted = read_split_file(split_file)
        missing = [line for line in wanted if _stem(line) not in by_stem]
        if missing:
            raise DataError(
                f"{len(missing)} entries of split file {split_file} match no image, "
                f"e.g. {missing[:3]}"
            )
        return sorted({by_stem[_stem(line)] for line in wanted})
    count = label_fraction_count(fraction, num_total=len(file_names))
    if count == len(file_names):
        return list(range(len(file_names)))
    order = np.random.default_rng(seed).permutation(len(file_names))
    return sorted(int(i) for i in order[:count])
