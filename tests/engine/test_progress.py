"""Progress lines of long tool work (engine/progress.py): counts, elapsed time, the estimate."""

from __future__ import annotations

import io

import pytest

from diffvision.engine.progress import Progress


class _Clock:
    """A clock the test moves by hand."""

    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_estimates_the_time_left():
    lines = io.StringIO()
    progress = Progress(4, "points", interval=0.0, stream=lines)
    progress.start -= 10.0  # as if the first point took 10 s
    progress.update()
    first = lines.getvalue().splitlines()[0]
    assert first.startswith("[1/4 points] 10.0s elapsed, about 30s left"), first
    for _ in range(3):
        progress.update()
    assert lines.getvalue().splitlines()[-1].endswith("about 0s left")


def test_progress_can_go_to_a_log():
    lines = []
    progress = Progress(2, "images", interval=0.0, log=lines.append)
    progress.update()
    progress.update()
    assert [line.split("]")[0] for line in lines] == ["[1/2 images", "[2/2 images"]


def test_sizes_fit_a_line_through_the_finished_units():
    """Units that cost 2 + 3·size seconds: after two distinct sizes the estimate of the rest is
    that line summed over the sizes left, where the average pace would be wrong."""
    clock, lines = _Clock(), []
    sizes = [1, 4, 1, 4, 10]
    progress = Progress(len(sizes), "cells", interval=0.0, log=lines.append, sizes=sizes,
                        clock=clock)  # fmt: skip
    clock.now += 2 + 3 * 1
    progress.update()
    assert progress.remaining() == pytest.approx(5.0 * 4)  # one size seen: the average pace
    clock.now += 2 + 3 * 4
    progress.update()
    assert progress.remaining() == pytest.approx((2 + 3) + (2 + 12) + (2 + 30))
    average = progress.elapsed() / 2 * 3
    assert abs(progress.remaining() - average) > 10  # the fit, not the average
    for size in sizes[2:]:
        clock.now += 2 + 3 * size
        progress.update()
    assert progress.remaining() == 0
    assert lines[-1] == "[5/5 cells] 70.0s elapsed, about 0s left"


def test_sizes_fall_back_to_the_average_on_a_shrinking_trend():
    clock = _Clock()
    progress = Progress(3, "cells", interval=0.0, log=lambda line: None, sizes=[1, 2, 3],
                        clock=clock)  # fmt: skip
    for seconds in (10.0, 4.0):  # bigger yet faster: noise, not a trend to extrapolate
        clock.now += seconds
        progress.update()
    assert progress.remaining() == pytest.approx(7.0)


def test_sizes_must_match_the_units():
    with pytest.raises(ValueError, match="2 sizes for 3 units"):
        Progress(3, "cells", sizes=[1, 2])
