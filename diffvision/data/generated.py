"""Generate-on-first-use for the toy datasets: one atomic scheme for every generated set.

A set is written into a temporary sibling folder, a marker file recording what was generated is
written last, and the folder is renamed into place. So concurrent processes (several ranks, two
runs) and interrupted runs never see a half-written set: the loser of a race discards its copy,
and a folder without the marker is an interrupted write that is replaced.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["MARKER_FILE", "generate_once"]

logger = logging.getLogger(__name__)

MARKER_FILE = ".generated.json"


def _recorded(root: Path) -> dict | None:
    try:
        return json.loads((root / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return None


def generate_once(
    root: str | os.PathLike,
    generate: Callable[[Path], object],
    *,
    what: str,
    params: dict[str, Any] | None = None,
) -> Path:
    """Return ``root`` once it holds a complete generated set, calling ``generate(folder)`` first
    when it does not.

    Args:
        root: the set's folder.
        generate: writes the set into the (new, empty) folder it is given.
        what: the set's name, for the log.
        params: what the set is a function of (sizes, seed, ...). ``None``: any complete set at
            ``root`` is kept; otherwise a set generated with other ``params`` is replaced.
    """
    root = Path(root)

    def complete() -> bool:
        recorded = _recorded(root)
        return recorded is not None and (params is None or recorded.get("params") == params)

    if complete():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    logger.info("Generating the %s dataset under %s", what, root)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        generate(tmp / "data")
        (tmp / "data" / MARKER_FILE).write_text(json.dumps({"what": what, "params": params}))
        if complete():  # another process finished first: keep its copy
            return root
        if root.exists():  # an interrupted write, or a set with other params: set it aside
            os.replace(root, tmp / "old")
        try:
            os.rename(tmp / "data", root)
        except OSError:
            if not complete():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
