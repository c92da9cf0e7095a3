"""Checkpoints that survive being killed: written atomically, holding everything needed to resume.

Layout (detectron2's ``{"model": ...}`` wrapper, so official tools read it)::

    {"model": state_dict, "optimizer": ..., "scheduler": ..., "iteration": int,
     "rng": {python, numpy, torch, cuda}, "config": yaml str, "ema": state_dict (optional),
     "format": "diffvision", "version": str}

Files are ``OUTPUT_DIR/model_{iter:07d}.pth`` and ``model_final.pth``;
``OUTPUT_DIR/last_checkpoint`` names the newest. Each file is written to a temporary name and
renamed, so a crash mid-write leaves the previous checkpoint intact; the file gets the mode of any
other output (``0o666`` less the umask), not the temporary file's ``0o600``.

Finished work is never lost:

- :func:`check_output_dir` refuses to start a fresh run in a folder that holds checkpoints unless
  told to ``--resume`` or ``--overwrite``;
- :func:`eval_output_dir` sends an ``--eval-only`` run whose ``OUTPUT_DIR`` already holds files
  (a training run's ``config.yaml`` and ``coco_instances_results.json``, an earlier evaluation)
  to a fresh ``OUTPUT_DIR/eval_NNN`` instead;
- :meth:`Checkpointer.resume` tries ``last_checkpoint`` first and, when that marker is missing,
  empty or names an unreadable file, falls back to the newest intact ``model_*.pth``, logging
  why; it raises :class:`~diffvision.errors.WeightsError` when checkpoints exist but none is
  intact. Checkpoints are read with ``weights_only=True`` (no code runs).
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

import diffvision
from diffvision.engine.weights import state_dict_differences
from diffvision.errors import CLIError, WeightsError
from diffvision.utils.safe_files import safe_torch_load
from diffvision.utils.seeding import capture_rng_state, restore_rng_state

__all__ = [
    "Checkpointer",
    "atomic_torch_save",
    "check_output_dir",
    "eval_output_dir",
    "find_checkpoints",
    "is_diffvision_checkpoint",
]

logger = logging.getLogger(__name__)

FORMAT_TAG = "diffvision"
RESUME_HINT = (
    "resume with the config of that run (OUTPUT_DIR/config.yaml, also stored in every "
    "checkpoint under 'config') or start a new OUTPUT_DIR"
)
LAST_CHECKPOINT_FILE = "last_checkpoint"
_CHECKPOINT_NAME = re.compile(r"model_(\d+|final)\.pth")


def _output_file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give: 0o666 less the process umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _output_file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, _output_file_mode())
    os.replace(tmp, path)


def find_checkpoints(save_dir: str | Path) -> list[Path]:
    """``model_final.pth`` and ``model_XXXXXXX.pth`` of ``save_dir``, newest first."""
    save_dir = Path(save_dir)
    if not save_dir.is_dir():
        return []
    found = []
    for path in save_dir.iterdir():
        match = _CHECKPOINT_NAME.fullmatch(path.name)
        if match and path.is_file():
            order = float("inf") if match.group(1) == "final" else int(match.group(1))
            found.append((order, path))
    return [path for _, path in sorted(found, reverse=True)]


def _zip_intact(path: Path) -> str | None:
    """Cheap integrity check of a ``torch.save`` zip file: None if intact, else the reason."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None if bad is None else f"corrupt member {bad}"


def _resume_candidates(save_dir: Path) -> tuple[list[Path], list[str]]:
    """Checkpoints to try on resume, in order, and notes on why ``last_checkpoint`` was skipped.

    ``last_checkpoint``'s target comes first when the marker is readable and names an existing
    file; then every other ``model_*.pth``, newest first.
    """
    notes = []
    first = None
    marker = save_dir / LAST_CHECKPOINT_FILE
    if not marker.is_file():
        notes.append(f"{marker} is missing")
    else:
        try:
            name = marker.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            name = ""
            notes.append(f"{marker} is unreadable ({exc})")
        else:
            if not name:
                notes.append(f"{marker} is empty")
        if name:
            target = save_dir / name
            if target.is_file():
                first = target
            else:
                notes.append(f"{marker} names {name!r}, which does not exist")
    rest = [p for p in find_checkpoints(save_dir) if first is None or p != first]
    return ([first] if first is not None else []) + rest, notes


def check_output_dir(output_dir: str | Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to start a run that would write over finished work (call before training).

    Args:
        output_dir: the run's ``OUTPUT_DIR``.
        resume: ``--resume`` was given: some checkpoint must be intact if any exists.
        overwrite: ``--overwrite`` was given: checkpoints may be replaced.

    Raises:
        CLIError: the folder holds checkpoints and neither ``resume`` nor ``overwrite`` is set.
        WeightsError: ``resume`` and every checkpoint of the folder is unreadable.
    """
    output_dir = Path(output_dir)
    existing = find_checkpoints(output_dir)
    if resume:
        candidates, _ = _resume_candidates(output_dir)
        problems = []
        for path in candidates:
            reason = _zip_intact(path)
            if reason is None:
                return
            problems.append(f"{path.name} ({reason})")
        if problems:
            raise WeightsError(_no_intact_message(output_dir, problems))
        return
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
    marker = output_dir / "last_checkpoint"
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


def _no_intact_message(save_dir: Path, problems: list[str]) -> str:
    return (
        f"--resume: no intact checkpoint in {save_dir}: {'; '.join(problems)}. Start a new "
        "OUTPUT_DIR, or pass --overwrite instead of --resume to train from scratch here"
    )


class Checkpointer:
    """Saves and restores the training state of one run.

    Args:
        model: the unwrapped model.
        save_dir: the run's output folder.
        optimizer, scheduler: restored on resume when given.
        ema: a :class:`~diffvision.engine.ema.ModelEMA` whose weights are saved as ``"ema"``.
        config_text: the resolved config (YAML) stored in every checkpoint.
        save_on_this_rank: only the main process writes files.
    """

    def __init__(
        self,
        model: nn.Module,
        save_dir: str | Path,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
        ema: Any = None,
        config_text: str = "",
        save_on_this_rank: bool = True,
    ):
        self.model = model
        self.save_dir = Path(save_dir)
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.ema = ema
        self.config_text = config_text
        self.save_on_this_rank = save_on_this_rank

    # ------------------------------------------------------------------ saving
    def save(self, name: str, *, iteration: int) -> Path | None:
        """Write ``save_dir/name.pth`` atomically and point ``last_checkpoint`` at it."""
        if not self.save_on_this_rank:
            return None
        data: dict[str, Any] = {
            "model": self.model.state_dict(),
            "iteration": iteration,
            "rng": capture_rng_state(),
            "config": self.config_text,
            "format": FORMAT_TAG,
            "version": diffvision.__version__,
        }
        if self.optimizer is not None:
            data["optimizer"] = self.optimizer.state_dict()
        if self.scheduler is not None:
            data["scheduler"] = self.scheduler.state_dict()
        if self.ema is not None:
            data["ema"] = self.ema.state_dict()
        path = self.save_dir / f"{name}.pth"
        atomic_torch_save(data, path)
        _atomic_write_text(self.save_dir / LAST_CHECKPOINT_FILE, path.name)
        logger.info("Saved checkpoint %s (iteration %d)", path, iteration)
        return path

    # ------------------------------------------------------------------ loading
    def resume(self) -> int:
        """Restore the newest intact checkpoint of ``save_dir`` fully; the next iteration to run.

        Tries ``last_checkpoint``'s file, then every ``model_*.pth`` newest first, and logs a
        warning naming each one skipped and why. Returns 0 (a fresh start) when the folder holds
        no checkpoint at all.

        Raises:
            WeightsError: checkpoints exist but none can be read.
        """
        candidates, notes = _resume_candidates(self.save_dir)
        if not candidates:
            logger.info("No checkpoint found in %s: starting from iteration 0.", self.save_dir)
            return 0
        problems = []
        for path in candidates:
            try:
                data = safe_torch_load(path, what="checkpoint")
            except WeightsError as exc:
                problems.append(f"{path.name} ({exc})")
                continue
            if not is_diffvision_checkpoint(data):
                problems.append(f"{path.name} (not a diffvision training checkpoint)")
                continue
            break
        else:
            raise WeightsError(_no_intact_message(self.save_dir, problems))
        if notes or problems:
            logger.warning(
                "Resume: %s; falling back to %s, the newest intact checkpoint.",
                "; ".join(notes + [f"skipped {p}" for p in problems]),
                path,
            )
        mismatch = _state_dict_mismatch(self.model, data["model"])
        if mismatch:
            raise WeightsError(
                f"--resume: {path} does not fit the model this config builds ({mismatch}); "
                f"{RESUME_HINT}"
            )
        self.model.load_state_dict(data["model"])
        if self.optimizer is not None and "optimizer" in data:
            saved_groups = data["optimizer"].get("param_groups") or [{}]
            saved, own = set(saved_groups[0]), set(self.optimizer.param_groups[0])
            problem = ""
            if saved != own:  # another optimizer (AdamW's betas vs SGD's momentum)
                problem = f"its settings {sorted(saved - own)} vs {sorted(own - saved)}"
            else:
                try:
                    self.optimizer.load_state_dict(data["optimizer"])
                except ValueError as exc:  # another parameter grouping
                    problem = str(exc)
            if problem:
                raise WeightsError(
                    f"--resume: the optimizer state in {path} does not fit this config's "
                    f"{type(self.optimizer).__name__} ({problem}); {RESUME_HINT}"
                )
        if self.scheduler is not None and "scheduler" in data:
            self.scheduler.load_state_dict(data["scheduler"])
        if self.ema is not None and "ema" in data:
            self.ema.load_state_dict(data["ema"])
        if "rng" in data:
            restore_rng_state(data["rng"])
        start = int(data["iteration"]) + 1
        logger.info("Resumed from %s: continuing at iteration %d.", path, start)
        return start


def _state_dict_mismatch(model: nn.Module, state: dict) -> str:
    """What keeps ``state`` from loading strictly into ``model``: "" when it fits, else the
    counts of missing, unexpected and differently shaped tensors with the first of each."""
    differences = state_dict_differences(model.state_dict(), state)
    labels = {"missing": "missing", "unexpected": "unexpected", "mismatched": "shapes differ"}
    return "; ".join(
        f"{len(items)} {labels[kind]}, e.g. {items[0]}"
        for kind, items in differences.items()
        if items
    )


def is_diffvision_checkpoint(data: Any) -> bool:
    return isinstance(data, dict) and data.get("format") == FORMAT_TAG and "model" in data
