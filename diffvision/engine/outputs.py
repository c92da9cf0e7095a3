"""Where the tools write, checked before the work: the one output-path and output-folder policy.

Every tool calls these before it builds a model or reads data, so a refused run costs nothing:

- :func:`check_output_path`: a file or folder the tool will write can be created there (not below
  a file, in a writable place, not a folder where a file goes or the reverse) and has an
  extension that fits what is written (a video is not written to ``out.png``);
- :func:`refuse_to_replace`: finished outputs are never replaced without ``--overwrite``;
- ``train_net``'s ``OUTPUT_DIR``: :func:`check_output_dir` (checkpoints need ``--resume`` or
  ``--overwrite``), :func:`clear_checkpoints` (what ``--overwrite`` removes),
  :func:`eval_output_dir` (``--eval-only`` next to finished files goes to ``eval_NNN``) and
  :func:`run_config_path` (a resumed run with another config keeps the first ``config.yaml``).

    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    ...
    out = check_output_path(args.output, "--output", kind="folder")
    refuse_to_replace([out / "samples.png", out / "samples.npz"], overwrite=args.overwrite)
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from diffvision.engine.checkpoint import LAST_CHECKPOINT_FILE, check_resumable, find_checkpoints
from diffvision.errors import CLIError, ConfigError

__all__ = [
    "IMAGE_SUFFIXES",
    "OVERWRITE_HELP",
    "VIDEO_SUFFIXES",
    "check_output_dir",
    "check_output_path",
    "clear_checkpoints",
    "eval_output_dir",
    "refuse_to_replace",
    "run_config_path",
]

logger = logging.getLogger(__name__)

OVERWRITE_HELP = "replace output files that already exist (refused without it)"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".avi")


def _error(name: str, message: str) -> Exception:
    """A flag's problem is a :class:`CLIError`, a config key's (``OUTPUT_DIR``) a ConfigError."""
    return (CLIError if name.startswith("-") else ConfigError)(f"{name} {message}")


def check_output_path(
    path: str | os.PathLike,
    name: str,
    *,
    kind: Literal["file", "folder"],
    suffixes: Iterable[str] | None = None,
    folder_must_exist: bool = False,
) -> Path:
    """Check that the tool can write ``path`` (nothing is created).

    Args:
        path: the output file or folder.
        name: the flag or config key that chose it (``"--output"``, ``"OUTPUT_DIR"``).
        kind: ``"file"`` (written as one file) or ``"folder"`` (outputs go inside it).
        suffixes: for a file, the extensions that fit what is written (lower case, with dot).
        folder_must_exist: for a file, refuse a missing folder instead of creating it (for
            tools that write one file and create nothing else).

    Returns:
        ``path`` as a :class:`Path`.

    Raises:
        CLIError (for a flag) or ConfigError (for a config key): ``path`` is a folder where a
            file goes or a file where a folder goes, has another extension, lies below a file,
            or its nearest existing folder is not writable; with ``folder_must_exist``, its folder
            does not exist.
    """
    path = Path(path)
    if kind == "folder" and path.exists() and not path.is_dir():
        raise _error(name, f"{path} is a file; expected a folder (outputs are written into it)")
    if kind == "file" and path.is_dir():
        raise _error(name, f"{path} is a folder; expected a file name")
    if kind == "file" and suffixes is not None:
        suffixes = tuple(suffixes)
        if path.suffix.lower() not in suffixes:
            raise _error(
                name,
                f"{path}: expected a file ending in {' or '.join(suffixes)} for what is written "
                f"here, got {path.suffix or 'no extension'!r}",
            )
    if kind == "file" and folder_must_exist and not path.parent.exists():
        raise _error(name, f"{path}: folder {path.parent} does not exist; create it first")
    existing = path if kind == "folder" else path.parent  # relative paths end at "."
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise _error(name, f"{path} lies below {existing}, which is a file, not a folder")
    if kind == "file" and path.exists() and not os.access(path, os.W_OK):
        raise _error(name, f"{path} exists and is not writable")
    try:  # os.access is not enough: root passes it on read-only mounts and /proc
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise _error(
            name, f"{path}: cannot write in {existing} ({exc.strerror or exc}); choose another"
        ) from None
    return path


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


def check_output_dir(output_dir: str | Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to start a training run that would write over finished work (before any worker).

    Args:
        output_dir: the run's ``OUTPUT_DIR``.
        resume: ``--resume`` was given: some checkpoint must be intact if any exists.
        overwrite: ``--overwrite`` was given: checkpoints may be replaced.

    Raises:
        ConfigError: ``OUTPUT_DIR`` cannot be written (:func:`check_output_path`).
        CLIError: the folder holds checkpoints and neither ``resume`` nor ``overwrite`` is set.
        WeightsError: ``resume`` and every checkpoint of the folder is unreadable.
    """
    output_dir = check_output_path(output_dir, "OUTPUT_DIR", kind="folder")
    if resume:
        check_resumable(output_dir)
        return
    existing = find_checkpoints(output_dir)
    if existing and not overwrite:
        names = ", ".join(p.name for p in existing[:3]) + (", ..." if len(existing) > 3 else "")
        raise CLIError(
            f"OUTPUT_DIR {output_dir} already holds checkpoints ({names}); pass --resume to "
            "continue that run, set a new OUTPUT_DIR, or pass --overwrite to replace them"
        )


def eval_output_dir(output_dir: str | Path) -> Path:
    """Where an ``--eval-only`` run writes its config, log and results without replacing any.

    Returns ``output_dir`` itself when it does not exist or is empty, else the first
    ``output_dir/eval_NNN`` (``eval_000``, ``eval_001``, ...) that does not exist yet. Decided
    once, before any worker starts, so every process writes to the same folder.
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir() or not any(output_dir.iterdir()):
        return output_dir
    index = 0
    while (output_dir / f"eval_{index:03d}").exists():
        index += 1
    return output_dir / f"eval_{index:03d}"


def clear_checkpoints(output_dir: str | Path) -> list[Path]:
    """Remove a previous run's checkpoints and ``last_checkpoint`` from ``output_dir`` (what
    ``--overwrite`` asks for), so that no stale ``model_*.pth`` of that run can later be resumed
    as if it belonged to the new one. Returns the removed paths (and logs them)."""
    output_dir = Path(output_dir)
    removed = find_checkpoints(output_dir)
    marker = output_dir / LAST_CHECKPOINT_FILE
    if marker.is_file():
        removed.append(marker)
    for path in removed:
        path.unlink()
    if removed:
        logger.warning(
            "--overwrite: removed %d files of the previous run in %s (%s)",
            len(removed),
            output_dir,
            ", ".join(p.name for p in removed),
        )
    return removed


def run_config_path(output_dir: Path, text: str, *, resume: bool) -> Path:
    """Where the run's config goes: ``config.yaml``, except that a resumed run whose config
    differs from the one the run started with keeps that file (the record of how the
    checkpoints were made) and writes ``config.resume<N>.yaml`` instead."""
    first = output_dir / "config.yaml"
    if not resume or not first.is_file() or first.read_text() == text:
        return first
    index = 1
    while (output_dir / f"config.resume{index}.yaml").exists():
        index += 1
    logger.info("config.yaml keeps the config the run started with; this one differs")
    return output_dir / f"config.resume{index}.yaml"
