"""Progress of long work in the tools: done / total, elapsed time and an estimate of what is left.

    progress = Progress(total=len(jobs), what="exports")
    for job in jobs:
        run(job)
        progress.update()      # "[3/12 exports] 41.0s elapsed, about 123s left"

Lines go to stdout, at most one per ``interval`` seconds plus the last one, so a long job shows
that it moves and when it will end without flooding a log.

Units of unequal cost (a sweep over boxes × steps, where 4 steps take about twice as long as 1)
pass ``sizes``, one number per unit in the order they finish: the estimate then fits
``seconds = a + b · size`` to the finished units by least squares and sums it over the rest,
instead of assuming every unit costs the average so far.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    """Counts finished units and prints the elapsed time and the linear estimate of the rest.

    Args:
        total: units of work in all (> 0).
        what: the unit, plural (``"samples"``, ``"images"``, ``"sweep points"``).
        interval: minimum seconds between two lines (the last unit is always reported).
        stream: where the lines go (default stdout).
        log: instead of a stream, a function that takes each line (e.g. ``logger.info``).
        sizes: optional cost proxy of each unit, in the order the units finish (``total`` of
            them; e.g. ``boxes * steps``); the estimate fits seconds linearly in it.
        clock: seconds since some origin (default ``time.perf_counter``).
    """

    def __init__(
        self,
        total: int,
        what: str,
        *,
        interval: float = 5.0,
        stream: TextIO | None = None,
        log: Callable[[str], object] | None = None,
        sizes: Sequence[float] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.total = max(int(total), 1)
        if sizes is not None and len(sizes) != self.total:
            raise ValueError(f"Progress: {len(sizes)} sizes for {self.total} units")
        self.sizes = None if sizes is None else [float(x) for x in sizes]
        self.clock = clock
        self.durations: list[float] = []  # seconds of each finished unit (a batch split evenly)
        self.what = what
        self.interval = interval
        self.stream = stream if stream is not None else sys.stdout
        self.log = log
        self.done = 0
        self.start = clock()
        self._last_finish = self.start
        self._last_report = -float("inf")

    def elapsed(self) -> float:
        return self.clock() - self.start

    def remaining(self) -> float:
        """Seconds left (inf before the first unit): the average pace so far times the units
        left; with ``sizes``, the least-squares line ``a + b · size`` through the finished units
        summed over the units left, once two distinct sizes have finished."""
        if self.done == 0:
            return float("inf")
        left = max(self.total - self.done, 0)
        average = self.elapsed() / self.done * left
        if self.sizes is None:
            return average
        fit = _line_fit(self.sizes[: self.done], self.durations)  # one duration per done unit
        if fit is None:
            return average
        a, b = fit
        return sum(max(a + b * x, 0.0) for x in self.sizes[self.done :])

    def update(self, n: int = 1) -> None:
        now = self.clock()
        self.durations += [(now - self._last_finish) / max(n, 1)] * n
        self._last_finish = now
        self.done += n
        if self.done < self.total and now - self._last_report < self.interval:
            return
        self._last_report = now
        line = (
            f"[{self.done}/{self.total} {self.what}] {self.elapsed():.1f}s elapsed, "
            f"about {self.remaining():.0f}s left"
        )
        if self.log is not None:
            self.log(line)
        else:
            print(line, file=self.stream, flush=True)


def _line_fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float] | None:
    """Least-squares ``(a, b)`` of ``y = a + b · x``; None with fewer than two distinct x or a
    negative slope (a unit that costs less when it is bigger is noise, not a trend)."""
    n = len(xs)
    mean_x, mean_y = sum(xs) / max(n, 1), sum(ys) / max(n, 1)
    sxx = sum((x - mean_x) ** 2 for x in xs)
    if n < 2 or sxx <= 1e-12 * max(mean_x * mean_x, 1.0):
        return None
    b = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sxx
    if b < 0:
        return None
    return mean_y - b * mean_x, b
