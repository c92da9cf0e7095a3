"""The one weight loader: ``load_weights(model, path)`` for every task, dispatched by content.

Reading bytes is :func:`diffvision.modeling.weight_files.read_state_dict`'s job (local path,
``http(s)://`` URL or ``detectron2://`` name; detectron2 ``.pkl``; the ``"model"`` entry of a
wrapped checkpoint). This module decides *where* the tensors go:

1. the whole model, when the file's names are the model's own: diffvision checkpoints,
   official DiffusionDet / detectron2 checkpoints (``{"model": ...}`` or bare), DDPM runs;
2. a submodule whose names match (e.g. a guided-diffusion UNet file into ``DDPMModel.unet``);
3. a renamed ImageNet backbone: every registered converter (detectron2 ``R-50.pkl`` names,
   torchvision ResNet ``.pth``, Swin files, and any a project adds with
   :func:`register_weight_converter`) is tried and the one matching most keys of some
   submodule wins (``backbone.bottom_up`` of DiffusionDet, ``network.backbone`` of DDeP).

Strict by default: a missing, unexpected or mis-shaped key raises
:class:`~diffvision.errors.WeightsError` listing them. A model may declare
``weights_optional_keys`` (names that may be absent or extra, e.g. LVIS's
``criterion.fed_loss_cls_weights``), ``weights_reinit_on_mismatch`` (name prefixes whose shape
may differ and then keep their initialisation, e.g. a denoising head loaded into a segmenter) and
``weights_class_keys`` (``fnmatch`` patterns of the tensors whose first dimension counts classes,
e.g. DiffusionDet's ``head.head_series.*.class_logits.*``).

**Another class count** (a fine-tune, as detectron2 loads a COCO model into a K-class detector):
when the only mis-shaped tensors are class tensors that differ in their first dimension alone,
``allow_class_change=True`` keeps the model's own (fresh) initialisation of exactly those tensors,
optionally copying the rows of classes the two sets share (``class_rows``), and logs one line
naming them and both class counts. Without it (evaluation, demos) this is a
:class:`ClassCountError` naming both counts: a classifier that was never trained cannot be used.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffvision.errors import (
    ConfigError,
    DataError,
    InputFileNotFoundError,
    UnknownNameError,
    WeightsError,
)
from diffvision.modeling.weight_files import backbone_state_dict, read_state_dict
from diffvision.utils.safe_files import safe_torch_load

__all__ = [
    "ClassCountError",
    "load_weights",
    "read_weights",
    "register_weight_converter",
    "shared_class_rows",
    "state_dict_differences",
    "weights_class_names",
]

logger = logging.getLogger(__name__)

# Buffers a module rebuilds itself (constants) or that ImageNet files may lack (counters).
_REGENERATED = ("relative_position_index", "num_batches_tracked")

Converter = Callable[[Mapping[str, torch.Tensor]], "tuple[str, dict[str, torch.Tensor]] | None"]


def _detectron2_style_backbone(state: Mapping[str, torch.Tensor]):
    try:
        return backbone_state_dict(state)
    except ValueError:
        return None


_CONVERTERS: list[Converter] = [_detectron2_style_backbone]


def register_weight_converter(converter: Converter) -> Converter:
    """Add ``converter(state) -> (format_name, renamed_state) | None`` to the renamings tried
    when a file's names match no part of the model. Returns it (usable as a decorator)."""
    if converter not in _CONVERTERS:
        _CONVERTERS.append(converter)
    return converter


def read_weights(path_or_url: str | os.PathLike, *, use_ema: bool = False) -> dict[str, Any]:
    """``{name: tensor}`` of a weight file; with ``use_ema`` the ``"ema"`` entry of a diffvision
    checkpoint when it has one (else its ``"model"`` entry)."""
    if use_ema and os.path.isfile(path_or_url):
        # weights_only, admitting the NumPy RNG states engine checkpoints hold; never full pickle
        data = safe_torch_load(path_or_url, what="weight file")
        if isinstance(data, Mapping) and isinstance(data.get("ema"), Mapping):
            logger.info("Using the EMA weights of %s", path_or_url)
            return dict(data["ema"])
    return read_state_dict(path_or_url)


class ClassCountError(WeightsError):
    """The weight file was trained for another number of classes than the model has."""


def _class_keys(model: nn.Module, keys) -> list[str]:
    """The names among ``keys`` that match the model's ``weights_class_keys`` patterns."""
    patterns = tuple(getattr(model, "weights_class_keys", ()))
    return [k for k in keys if any(fnmatch.fnmatchcase(k, p) for p in patterns)]


def _class_change(
    target: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], keys: list[str]
) -> tuple[int, int] | None:
    """``(file classes, model classes)`` when every key of ``keys`` differs from the model's
    tensor in its first dimension only, by one consistent count; else None."""
    counts = set()
    for k in keys:
        a, b = tuple(state[k].shape), tuple(target[k].shape)
        if len(a) != len(b) or not a or a[1:] != b[1:]:
            return None
        counts.add((a[0], b[0]))
    return counts.pop() if len(counts) == 1 else None


def _summary(keys: list[str], limit: int = 10) -> str:
    shown = ", ".join(keys[:limit])
    return f"{len(keys)} ({shown}{', ...' if len(keys) > limit else ''})"


def _best_placement(
    model: nn.Module, state: Mapping[str, torch.Tensor]
) -> tuple[str, str, dict[str, torch.Tensor], int]:
    """``(format, submodule prefix, state, number of matching keys)`` of the best placement:
    the (renaming, submodule) pair under which most of the file's names exist in the model;
    the whole model and the file's own names win ties."""
    all_keys = list(model.state_dict())
    prefixes = [""] + [name for name, _ in model.named_modules() if name]
    candidates = [("full", dict(state))]
    for converter in _CONVERTERS:
        converted = converter(state)
        if converted is not None:
            candidates.append((converted[0], dict(converted[1])))
    best: tuple[str, str, dict[str, torch.Tensor], int] = ("", "", {}, 0)
    for fmt, cand in candidates:
        for prefix in prefixes:
            head = prefix + "." if prefix else ""
            names = {k[len(head) :] for k in all_keys if k.startswith(head)}
            n = sum(1 for k in cand if k in names)
            # More names placed wins; at equal count, the renaming that leaves fewer names out
            # (e.g. one that drops a classifier) wins.
            if n > best[3] or (n == best[3] and n > 0 and len(cand) < len(best[2])):
                best = (fmt, prefix, cand, n)
        if best[3] == len(best[2]):
            break  # every name placed: a renaming cannot do better
    return best


def state_dict_differences(
    target: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]
) -> dict[str, list[str]]:
    """What keeps ``state`` from loading strictly into a module whose state dict is ``target``:
    ``{"missing": [key], "unexpected": [key], "mismatched": ["key (file shape) vs (model
    shape)"]}``, each empty when it fits."""
    return {
        "missing": [k for k in target if k not in state],
        "unexpected": [k for k in state if k not in target],
        "mismatched": [
            f"{k} {tuple(state[k].shape)} vs {tuple(target[k].shape)}"
            for k in state
            if k in target and tuple(state[k].shape) != tuple(target[k].shape)
        ],
    }


def _load_checked(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    strict: bool,
    source: str,
    optional: tuple[str, ...],
    reinit: tuple[str, ...],
    class_keys: list[str],
    allow_class_change: bool,
    class_names: tuple[list[str], list[str]] | None,
) -> dict[str, Any]:
    target = module.state_dict()
    differences = state_dict_differences(target, state)
    missing = [k for k in differences["missing"] if not k.endswith(_REGENERATED)]
    unexpected = differences["unexpected"]
    mis_keys = [m.split(" ")[0] for m in differences["mismatched"]]
    class_mismatched = [k for k in mis_keys if k in class_keys]
    # a class change re-shapes every class tensor both hold, all alike
    shared_class_keys = [k for k in class_keys if k in target and k in state]
    counts = None
    if class_mismatched and len(class_mismatched) == len(shared_class_keys):
        counts = _class_change(target, state, class_mismatched)
    if counts is not None and not allow_class_change and reinit:
        # keys the model lets differ anyway (e.g. a denoising head loaded into a segmenter)
        if all(k.startswith(reinit) for k in class_mismatched):
            counts = None
    if counts is None:  # not a class-count change: those keys are ordinary mismatches
        class_mismatched = []
    mismatched = [
        m for k, m in zip(mis_keys, differences["mismatched"]) if k not in class_mismatched
    ]
    hard_missing = [k for k in missing if k not in optional]
    hard_unexpected = [k for k in unexpected if k not in optional]
    hard_mismatched = [m for m in mismatched if not m.startswith(reinit)] if reinit else mismatched
    if strict and (hard_missing or hard_unexpected or hard_mismatched):
        parts = [f"cannot load {source}: it does not fit this model (another architecture or "
                 "config?):"]  # fmt: skip
        if hard_missing:
            parts.append(f"missing keys: {_summary(hard_missing)}")
        if hard_unexpected:
            parts.append(f"unexpected keys: {_summary(hard_unexpected)}")
        if hard_mismatched:
            parts.append(f"shape mismatches: {_summary(hard_mismatched)}")
        raise WeightsError(" ".join(parts))
    if counts is not None and strict and not allow_class_change:
        raise ClassCountError(
            f"{source} was trained for {counts[0]} classes but the model has {counts[1]} "
            f"({_summary(class_mismatched, 3)}): a classifier for other classes cannot be "
            "evaluated or used; set the model's NUM_CLASSES to "
            f"{counts[0]} or fine-tune it first"
        )
    skip = {m.split(" ")[0] for m in mismatched} | set(class_mismatched)
    loadable = {k: v for k, v in state.items() if k in target and k not in skip}
    class_rows = {}
    if counts is not None and class_names is not None:
        class_rows = shared_class_rows(*class_names, counts=counts, source=source)
        loadable.update(_copy_class_rows(target, state, class_mismatched, class_rows))
    elif class_names is not None:
        logger.warning("%s: same class count as the model; the class map is not used", source)
    module.load_state_dict(loadable, strict=False)
    if counts is not None:
        shared = ", ".join(class_names[1][m] for m in class_rows) if class_rows else ""
        kept = f"; rows of the shared classes copied: {shared}" if class_rows else ""
        logger.info(
            "%s: class count %d -> %d: re-initialised %s%s",
            source,
            counts[0],
            counts[1],
            ", ".join(class_mismatched),
            kept,
        )
    report = {"missing": missing, "unexpected": unexpected, "mismatched": mismatched}
    for name, keys in report.items():
        if keys:
            logger.warning("%s: %s keys not loaded: %s", source, name, _summary(keys))
    report["reinitialized"] = class_mismatched
    report["num_classes"] = counts  # (file, model) when the class count changed, else None
    return report


def shared_class_rows(
    file_names: list[str], model_names: list[str], *, counts: tuple[int, int], source: str
) -> dict[int, int]:
    """``{model class: file class}`` for the class names both lists hold.

    Raises:
        WeightsError: ``file_names`` does not have the file's class count, or no name is shared.
    """
    if len(file_names) != counts[0]:
        raise WeightsError(
            f"MODEL.WEIGHTS_CLASS_MAP names {len(file_names)} classes but {source} has "
            f"{counts[0]}; expected the checkpoint's class names in its class order"
        )
    if len(model_names) != counts[1]:
        raise WeightsError(
            f"the training set names {len(model_names)} classes but the model has {counts[1]}"
        )
    file_index = {name: i for i, name in enumerate(file_names)}
    rows = {m: file_index[name] for m, name in enumerate(model_names) if name in file_index}
    if not rows:
        raise WeightsError(
            f"MODEL.WEIGHTS_CLASS_MAP names no class of the training set (its classes: "
            f"{', '.join(model_names[:10])}{', ...' if len(model_names) > 10 else ''}; the map: "
            f"{', '.join(file_names[:10])}{', ...' if len(file_names) > 10 else ''})"
        )
    return rows


def _copy_class_rows(
    target: Mapping[str, torch.Tensor],
    state: Mapping[str, torch.Tensor],
    keys: list[str],
    class_rows: Mapping[int, int],
) -> dict[str, torch.Tensor]:
    """The model's fresh class tensors with row ``m`` replaced by the file's row
    ``class_rows[m]`` for every shared class."""
    out = {}
    for k in keys:
        value = target[k].detach().clone()
        for model_row, file_row in class_rows.items():
            value[model_row] = state[k][file_row].to(value)
        out[k] = value
    return out


def _category_names(json_file: Path, what: str) -> list[str]:
    """Category names of a COCO-format json, sorted by category id (the contiguous order)."""
    if not json_file.is_file():
        raise InputFileNotFoundError(f"{what}: {json_file} does not exist")
    try:
        with open(json_file) as f:
            categories = json.load(f)["categories"]
        return [c["name"] for c in sorted(categories, key=lambda c: c["id"])]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(
            f"{what}: {json_file} has no readable COCO 'categories' list with id and name ({exc})"
        ) from None


def weights_class_names(cfg) -> tuple[list[str], list[str]] | None:
    """``(checkpoint class names, training-set class names)`` of ``MODEL.WEIGHTS_CLASS_MAP``,
    None when it is empty.

    The map is either the checkpoint's class names in its class order, or one entry: a
    COCO-format json file or a registered detection dataset name whose categories (sorted by
    id, the contiguous order) are the checkpoint's classes. The model's names are those of the
    first ``DATASETS.TRAIN`` dataset (a detection dataset, ``DATASETS.CUSTOM`` included).

    Raises:
        ConfigError: the training set is not a detection dataset.
        InputFileNotFoundError / DataError: a json entry that is missing or malformed.
    """
    from diffvision.data.catalog import (
        get_detection_dataset,
        list_detection_datasets,
        load_detection_dataset,
        parse_custom_dataset,
        register_coco_dataset,
    )

    entries = [str(e) for e in cfg.MODEL.get("WEIGHTS_CLASS_MAP", [])]
    if not entries:
        return None
    for entry in cfg.DATASETS.get("CUSTOM", []):
        name, json_file, image_root = parse_custom_dataset(entry)
        register_coco_dataset(name, json_file=json_file, image_root=image_root)

    if not cfg.DATASETS.TRAIN:
        raise ConfigError("MODEL.WEIGHTS_CLASS_MAP needs a training set (DATASETS.TRAIN)")
    train = str(cfg.DATASETS.TRAIN[0])
    try:
        model_names = load_detection_dataset(train)[1].thing_classes
    except UnknownNameError:
        raise ConfigError(
            f"MODEL.WEIGHTS_CLASS_MAP: the class names of DATASETS.TRAIN {train!r} are unknown "
            "(the map works with COCO-format detection datasets)"
        ) from None
    if len(entries) == 1 and entries[0].endswith(".json"):
        file_names = _category_names(Path(entries[0]), "MODEL.WEIGHTS_CLASS_MAP")
    elif len(entries) == 1 and entries[0] in list_detection_datasets():
        json_file = get_detection_dataset(entries[0]).json_file
        file_names = _category_names(json_file, f"MODEL.WEIGHTS_CLASS_MAP {entries[0]!r}")
    else:
        file_names = entries
    return list(file_names), list(model_names)


def load_weights(
    model: nn.Module,
    path_or_url: str | os.PathLike,
    *,
    strict: bool = True,
    use_ema: bool = False,
    allow_class_change: bool = False,
    class_names: tuple[list[str], list[str]] | None = None,
) -> dict[str, Any]:
    """Load a weight file into ``model`` (or the submodule its names fit), strictly by default.

    Args:
        model: any task's model (a DDP wrapper is unwrapped).
        path_or_url: local path, ``http(s)://`` URL or ``detectron2://`` name.
        strict: raise on missing, unexpected or mis-shaped keys (the model's
            ``weights_optional_keys`` / ``weights_reinit_on_mismatch`` excepted); with False,
            load what matches and log the rest.
        use_ema: take a diffvision checkpoint's EMA weights when it has them.
        allow_class_change: a file for another class count (only the model's
            ``weights_class_keys`` tensors differ, in their first dimension) loads all other
            tensors and keeps the model's initialisation of those (training a fine-tune).
        class_names: with a class change, ``(the file's class names in its order, the model's)``:
            the file's rows of the classes both name are copied into the otherwise fresh class
            tensors (e.g. COCO's "person" row into a person/dog/kite detector).

    Returns:
        ``{"format": "full" or the converter's name, "target": submodule name ("" = whole
        model), "missing": [...], "unexpected": [...], "mismatched": [...], "reinitialized":
        [class tensors kept fresh], "num_classes": (file, model) or None}``.

    Raises:
        ClassCountError: with ``strict`` and without ``allow_class_change``, a file for another
            class count (naming both counts).
        WeightsError: ``class_names`` that do not match the two class counts or share no name.
        WeightsError: with ``strict``, listing the missing/unexpected/mismatched keys; or a file
            none of whose names fits the model under any known naming.
        FileNotFoundError: a path that does not exist.
    """
    model = getattr(model, "module", model)
    source = os.fspath(path_or_url)
    state = read_weights(path_or_url, use_ema=use_ema)
    fmt, prefix, placed, matched = _best_placement(model, state)
    if matched == 0:
        sample = sorted(state)[:5]
        raise WeightsError(
            f"{source}: no tensor name fits {type(model).__name__} under any known naming "
            f"(keys like {sample}); expected this model's own names, detectron2 ResNet names "
            "(stem.conv1.weight, res2.0.conv1.norm.weight, ...), torchvision ResNet names "
            "(conv1.weight, layer1.0.conv1.weight, ...) or Swin names (patch_embed.*)"
        )
    target = model.get_submodule(prefix) if prefix else model
    cut = len(prefix) + 1 if prefix else 0
    optional = tuple(
        k[cut:] for k in getattr(model, "weights_optional_keys", ()) if k.startswith(prefix)
    )
    reinit = tuple(
        k[cut:] for k in getattr(model, "weights_reinit_on_mismatch", ()) if k.startswith(prefix)
    )
    # class tensors are whole-model names: a file placed into a submodule has none
    class_keys = _class_keys(model, placed) if not prefix else []
    where = f" ({fmt} into {prefix})" if prefix else ""
    info = _load_checked(
        target,
        placed,
        strict=strict,
        source=source + where,
        optional=optional,
        reinit=reinit,
        class_keys=class_keys,
        allow_class_change=allow_class_change,
        class_names=class_names,
    )
    logger.info("Loaded %s%s", source, where)
    return {"format": fmt, "target": prefix, **info}
