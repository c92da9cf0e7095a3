"""Checkpoints that survive being killed: written atomically, holding everything needed to resume.

Layout (detectron2's ``{"model": ...}`` wrapper, so official tools read it)::

    {"model": state_dict, "optimizer": ..., "scheduler": ..., "iteration": int,
     "rng": {python, numpy, torch, cuda}, "config": yaml str, "ema": state_dict (optional),
     "format": "diffvision", "version": str}

Files are ``OUTPUT_DIR/model_{iter:07d}.pth`` and ``model_final.pth``;
``OUTPUT_DIR/last_checkpoint`` names the newest. Each file is written to a temporary name and
renamed, so a crash mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import diffvision

__all__ = [
    "Checkpointer",
    "atomic_torch_save",
    "capture_rng_state",
    "is_diffvision_checkpoint",
    "restore_rng_state",
]

logger = logging.getLogger(__name__)

FORMAT_TAG = "diffvision"
LAST_CHECKPOINT_FILE = "last_checkpoint"


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
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def capture_rng_state() -> dict:
    """The state of Python's, NumPy's and torch's (CPU and CUDA) random generators."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Inverse of :func:`capture_rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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
    def last_checkpoint(self) -> Path | None:
        """The checkpoint named by ``last_checkpoint``, if it exists."""
        marker = self.save_dir / LAST_CHECKPOINT_FILE
        if not marker.is_file():
            return None
        path = self.save_dir / marker.read_text().strip()
        return path if path.is_file() else None

    def resume(self) -> int:
        """Restore the newest checkpoint of ``save_dir`` fully; return the next iteration to run.

        Returns 0 (a fresh start) when the folder holds no checkpoint.
        """
        path = self.last_checkpoint()
        if path is None:
            logger.info("No checkpoint found in %s: starting from iteration 0.", self.save_dir)
            return 0
        data = torch.load(path, map_location="cpu", weights_only=False)
        self.model.load_state_dict(data["model"])
        if self.optimizer is not None and "optimizer" in data:
            self.optimizer.load_state_dict(data["optimizer"])
        if self.scheduler is not None and "scheduler" in data:
            self.scheduler.load_state_dict(data["scheduler"])
        if self.ema is not None and "ema" in data:
            self.ema.load_state_dict(data["ema"])
        if "rng" in data:
            restore_rng_state(data["rng"])
        start = int(data["iteration"]) + 1
        logger.info("Resumed from %s: continuing at iteration %d.", path, start)
        return start


def is_diffvision_checkpoint(data: Any) -> bool:
    return isinstance(data, dict) and data.get("format") == FORMAT_TAG and "model" in data
