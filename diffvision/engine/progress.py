"""Progress of long work in the tools: done / total, elapsed time and an estimate of what is left.

    progress = Progress(total=len(jobs), what="exports")
    for job in jobs:
        run(job)
        progress.update()      # "[3/12 exports] 41.0s elapsed, about 123s left"

Lines go to stdout, at most one per ``interval`` seconds plus the last one, so a long job shows
that it moves and when it will end without flooding a log.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
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
    """

    def __init__(
        self,
        total: int,
        what: str,
        *,
        interval: float = 5.0,
        stream: TextIO | None = None,
        log: Callable[[str], object] | None = None,
    ):
        self.total = max(int(total), 1)
        self.what = what
        self.interval = interval
        self.stream = stream if stream is not None else sys.stdout
        self.log = log
        self.done = 0
        self.start = time.perf_counter()
        self._last_report = -float("inf")

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def remaining(self) -> float:
        """Seconds left if the rest goes at the average pace so far (inf before the first unit)."""
        if self.done == 0:
            return float("inf")
        return self.elapsed() / self.done * max(self.total - self.done, 0)

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
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
