"""The tools' overwrite rule for the files they write: finished outputs are never replaced silently.

    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    ...
    refuse_to_replace([out / "samples.png", out / "samples.npz"], overwrite=args.overwrite)

Called before any work starts, so a refused run costs nothing. ``train_net``'s own rule for
``OUTPUT_DIR`` (checkpoints, ``--resume``) is :func:`diffvision.engine.checkpoint.check_output_dir`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from diffvision.errors import CLIError

__all__ = ["OVERWRITE_HELP", "refuse_to_replace"]

OVERWRITE_HELP = "replace output files that already exist (refused without it)"


def refuse_to_replace(
    paths: Iterable[str | os.PathLike], *, overwrite: bool, flag: str = "--output"
) -> None:
    """Stop unless none of ``paths`` exists yet, or ``overwrite`` is set.

    Args:
        paths: the files the tool is about to write.
        overwrite: the tool's ``--overwrite`` flag.
        flag: the option that chose the paths, named in the message.

    Raises:
        CLIError: one line naming up to three existing files and both ways out; also when two
            of ``paths`` are the same file (one output would replace the other in this run).
    """
    paths = [Path(p) for p in paths]
    seen: dict[Path, int] = {}
    for index, path in enumerate(paths):
        key = Path(os.path.abspath(path))
        if key in seen:
            raise CLIError(
                f"{flag}: two outputs of this run would both be written to {path}; rename one "
                "of the inputs"
            )
        seen[key] = index
    if overwrite:
        return
    existing = [p for p in paths if p.exists()]
    if existing:
        names = ", ".join(str(p) for p in existing[:3])
        more = f" and {len(existing) - 3} more" if len(existing) > 3 else ""
        raise CLIError(
            f"{flag}: {names}{more} already exist{'s' if len(existing) == 1 else ''}; choose "
            "another output or pass --overwrite to replace"
        )
