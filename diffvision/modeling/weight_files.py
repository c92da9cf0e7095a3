"""Reading weight files: detectron2 ``.pkl`` pickles, torch ``.pth`` files, local paths and URLs.

- ``detectron2://X`` resolves to ``https://dl.fbaipublicfiles.com/detectron2/X`` (detectron2's
  ``Detectron2Handler``); ``http(s)://`` files are downloaded once into
  ``torch.hub.get_dir()/checkpoints``.
- A ``.pkl`` is a pickle of ``{"model": {name: numpy array}, "__author__": ..., ...}``
  (detectron2 model zoo, ``convert-torchvision-to-d2.py``, Detic's third-party converter) or a
  bare dict of arrays.
- A ``.pth`` is ``torch.save`` output: a bare state_dict or ``{"model": state_dict, ...}``.

No weight file ever runs code: ``.pth`` files are read with
:func:`~diffvision.utils.safe_files.safe_torch_load`, ``.pkl`` files with
:func:`~diffvision.utils.safe_files.load_restricted_pickle` (plain data only).

:func:`backbone_state_dict` recognises backbone-only ImageNet files (detectron2 ResNet naming,
torchvision ResNet naming, Microsoft Swin naming) and renames them to the keys of
:class:`~diffvision.modeling.resnet.ResNet` or :class:`~diffvision.modeling.swin.SwinTransformer`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch

from diffvision.errors import InputFileNotFoundError, WeightsError
from diffvision.modeling.resnet import convert_torchvision_resnet
from diffvision.utils.safe_files import load_restricted_pickle, safe_torch_load

__all__ = [
    "WeightDownloadError",
    "is_remote_weight",
    "resolve_weight_path",
    "read_state_dict",
    "backbone_state_dict",
    "BACKBONE_FORMATS",
]

logger = logging.getLogger(__name__)

_D2_PREFIX = "detectron2://"
_D2_URL = "https://dl.fbaipublicfiles.com/detectron2/"

BACKBONE_FORMATS = ("detectron2-resnet", "torchvision-resnet", "swin")


class WeightDownloadError(WeightsError):
    """A weight URL could not be fetched (no network, wrong URL); the message says what to do."""


def is_remote_weight(name: str | os.PathLike) -> bool:
    """True for ``http(s)://`` URLs and ``detectron2://`` names (downloaded on first use)."""
    return os.fspath(name).startswith(("http://", "https://", _D2_PREFIX))


def resolve_weight_path(path_or_url: str | os.PathLike) -> Path:
    """Return a local file for a path, ``http(s)://`` URL or ``detectron2://`` name.

    Raises:
        InputFileNotFoundError: a local path that does not exist or is a folder.
        WeightDownloadError: a URL that cannot be fetched (the message names the URL and the local
            fallback).
    """
    name = os.fspath(path_or_url)
    if name.startswith(_D2_PREFIX):
        name = _D2_URL + name[len(_D2_PREFIX) :]
    if name.startswith(("http://", "https://")):
        filename = os.path.basename(urlparse(name).path)
        target = Path(torch.hub.get_dir()) / "checkpoints" / filename
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            logger.info("Downloading %s to %s", name, target)
            try:
                torch.hub.download_url_to_file(name, str(target), progress=False)
            except Exception as exc:  # network errors come in many types
                raise WeightDownloadError(
                    f"could not download weights from {name!r} ({type(exc).__name__}: {exc}). "
                    "Download the file by other means and pass its local path instead, or "
                    f"place it at {target}."
                ) from exc
        return target
    path = Path(name).expanduser()
    if path.is_dir():
        raise InputFileNotFoundError(f"weight file {name!r} is a folder, expected a file")
    if not path.is_file():
        raise InputFileNotFoundError(f"weight file {name!r} does not exist")
    return path


def _to_tensors(obj: Mapping) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in obj.items():
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.ascontiguousarray(value))
        elif not isinstance(value, torch.Tensor):
            continue  # e.g. scalar metadata
        out[str(key)] = value
    return out


def read_state_dict(path_or_url: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a weight file and return ``{name: tensor}`` (the ``"model"`` entry if wrapped).

    numpy arrays become tensors (dtype kept, so float64 buffers stay float64); non-tensor
    entries are dropped; a ``module.`` prefix (DDP) is stripped. Nothing in the file is
    executed (see the module docstring).

    Raises:
        InputFileNotFoundError: a local path that does not exist.
        WeightDownloadError: a URL that cannot be fetched.
        WeightsError: the file is corrupt, holds code-bearing objects or no dict of weights.
    """
    path = resolve_weight_path(path_or_url)
    obj = load_restricted_pickle(path) if path.suffix == ".pkl" else safe_torch_load(path)
    if not isinstance(obj, Mapping):
        raise WeightsError(
            f"weight file {path} does not hold a dict of weights (got {type(obj).__name__})"
        )
    if "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    elif "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    elif "blobs" in obj:
        raise WeightsError(
            f"{path} is a Caffe2/Detectron1 pickle (has 'blobs'); convert it to detectron2 or "
            "torchvision naming first (e.g. detectron2's ImageNetPretrained/torchvision/R-50.pkl)"
        )
    state = _to_tensors(obj)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _detect_backbone_format(state: Mapping[str, torch.Tensor]) -> str | None:
    keys = list(state)
    if any(k.startswith(("stem.", "res2.")) for k in keys):
        return "detectron2-resnet"
    if any(k.startswith("layer1.") for k in keys) and "conv1.weight" in state:
        return "torchvision-resnet"
    if any(k.startswith("patch_embed.") for k in keys):
        return "swin"
    return None


def backbone_state_dict(state: Mapping[str, torch.Tensor]) -> tuple[str, dict[str, torch.Tensor]]:
    """Rename an ImageNet backbone file to bottom-up keys (no ``backbone.bottom_up.`` prefix).

    Returns:
        (format, state) with format one of :data:`BACKBONE_FORMATS`. Classifier heads
        (``fc.*``, ``stem.fc.*``, Swin ``head.*``/final ``norm.*``) and ``num_batches_tracked``
        are dropped.

    Raises:
        ValueError: the naming is none of the known formats.
    """
    fmt = _detect_backbone_format(state)
    if fmt is None:
        sample = sorted(state)[:5]
        raise ValueError(
            f"cannot tell the backbone format of a weight file with keys like {sample}; "
            "expected detectron2 ResNet names (stem.conv1.weight, res2.0.conv1.norm.weight, ...), "
            "torchvision ResNet names (conv1.weight, layer1.0.conv1.weight, ...) or Swin names "
            "(patch_embed.*)"
        )
    if fmt == "torchvision-resnet":
        return fmt, convert_torchvision_resnet(state)
    out = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        if fmt == "detectron2-resnet" and (key.startswith(("stem.fc.", "fc.", "linear."))):
            continue
        if fmt == "swin" and (
            key.startswith(("head.", "norm.")) or key.endswith(("attn_mask", "coords_table"))
        ):
            continue
        out[key] = value
    return fmt, out
