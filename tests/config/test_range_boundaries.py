"""A key's range and its builder agree: every boundary value a range admits builds the model.

For each task's tiny config (``tests/configs/*_tiny.yaml``), each registered range of a model
key (``MODEL.*``) gives its boundary values (``>=1``: 1; ``[0,1)``: 0 and just under 1; ...);
the task's model is built with that one key at that value. A range wider than the constructor
(``NUM_DYNAMIC >= 1`` while the head supports 2) fails here.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

import projects  # noqa: F401  (registers every task and its ranges)
from diffvision.config import get_cfg
from diffvision.config.ranges import registered_ranges
from diffvision.engine.build import building_from_config
from diffvision.engine.defaults import load_config
from diffvision.engine.tasks import get_task
from diffvision.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# the model sections each task's builder reads
TASK_KEYS = {
    "diffdet": ("MODEL.DiffusionDet.", "MODEL.ROI_", "MODEL.FPN.", "MODEL.RESNETS.",
                "MODEL.BACKBONE.", "MODEL.PIXEL_STD"),
    "diffinst": ("MODEL.DiffusionInst.",),  # the shared sections are diffdet's
    "ddpm": ("MODEL.DDPM.",),
    "ddep": ("MODEL.DDEP.", "MODEL.SEM_SEG_HEAD."),
    "pixel_mlp": ("MODEL.PIXEL_MLP.", "MODEL.SEM_SEG_HEAD."),
}  # fmt: skip
# Keys read only under another key's setting, or bound to another key by a rule the builder
# checks: their boundaries are tested with that other key set to fit.
PARTNERS = {
    "MODEL.DiffusionDet.HIDDEN_DIM": ["MODEL.DiffusionDet.NHEADS", "1"],
    # DiffusionInst's mask branch reads the FPN maps: its HIDDEN_DIM is the FPN width
    "MODEL.DiffusionInst.HIDDEN_DIM": [
        "MODEL.DiffusionInst.NHEADS",
        "1",
        "MODEL.FPN.OUT_CHANNELS",
        "1",
    ],
    "MODEL.DDEP.NOISE_SIGMA": ["MODEL.DDEP.NOISE_LEVELS", "fixed"],
    "MODEL.DDEP.TRANSFORMER_DIM": ["MODEL.DDEP.TRANSFORMER_HEADS", "1"],
}
_INTERVAL = re.compile(r"([\[(])\s*(-?[\d.]+)\s*,\s*(-?[\d.]+)\s*([\])])")
_INSIDE = 1e-3  # how far inside an open bound the tested value lies


def boundary_values(spec: str, *, integer: bool) -> list[float]:
    """The values at the edges of ``spec`` that it admits (integers for integer keys)."""
    if " multiple of " in spec:
        spec, step = spec.split(" multiple of ")
        step = int(step)
        edges = boundary_values(spec, integer=True)
        return sorted({math.ceil(edges[0] / step) * step, math.floor(edges[-1] / step) * step})
    if spec.startswith(">="):
        return [float(spec[2:])]
    if spec.startswith(">"):
        low = float(spec[1:])
        return [math.floor(low) + 1 if integer else low + _INSIDE]
    left, lo, hi, right = _INTERVAL.fullmatch(spec).groups()
    lo, hi = float(lo), float(hi)
    if integer:
        return sorted({lo if left == "[" else math.floor(lo) + 1,
                       hi if right == "]" else math.ceil(hi) - 1})  # fmt: skip
    return [lo if left == "[" else lo + _INSIDE, hi if right == "]" else hi - _INSIDE]


def _cases():
    get_cfg()  # declares every key and its range
    ranges = registered_ranges()
    for task, prefixes in TASK_KEYS.items():
        base = load_config(str(CONFIGS / f"{task}_tiny.yaml"))
        for key, spec in sorted(ranges.items()):
            if not key.startswith(prefixes):
                continue
            node = base
            for part in key.split("."):
                node = node[part]
            items = node if isinstance(node, (list, tuple)) else [node]
            integer = all(isinstance(x, int) for x in items)
            for value in boundary_values(spec, integer=integer):
                value = int(value) if integer else value
                text = (
                    repr([value] * len(items)) if isinstance(node, (list, tuple)) else repr(value)
                )
                yield pytest.param(task, key, text, id=f"{task}-{key}={text}")


def test_boundary_values_of_every_range_form():
    assert boundary_values(">=1", integer=True) == [1]
    assert boundary_values(">0", integer=True) == [1]
    assert boundary_values(">0", integer=False) == [_INSIDE]
    assert boundary_values("[0,1)", integer=False) == [0.0, 1 - _INSIDE]
    assert boundary_values("(0,1)", integer=False) == [_INSIDE, 1 - _INSIDE]
    assert boundary_values("[2,2]", integer=True) == [2]
    assert boundary_values(">=32 multiple of 32", integer=True) == [32]
    assert boundary_values("[1,100] multiple of 8", integer=True) == [8, 96]


@pytest.mark.parametrize(("task", "key", "value"), list(_cases()))
def test_every_admitted_boundary_value_builds_the_model(task, key, value, tmp_path):
    opts = ["MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path), "SEED", "0", key, value]
    opts += PARTNERS.get(key, [])
    cfg = load_config(str(CONFIGS / f"{task}_tiny.yaml"), opts)
    with building_from_config(f"{key} {value}"):
        get_task(cfg.MODEL.META_ARCHITECTURE).build_model(cfg)


@pytest.mark.parametrize(
    ("task", "opts", "message"),
    [
        ("diffdet", ["MODEL.DiffusionDet.HIDDEN_DIM", "33"], "divisible by NHEADS"),
        ("diffinst", ["MODEL.DiffusionInst.HIDDEN_DIM", "64"],
         "HIDDEN_DIM .64. must equal MODEL.FPN.OUT_CHANNELS"),
        ("ddep", ["MODEL.DDEP.TRANSFORMER_LAYERS", "1", "MODEL.DDEP.TRANSFORMER_DIM", "13",
                  "MODEL.DDEP.DECODER_CHANNELS", "[8, 8, 8, 8]"], "divisible by TRANSFORMER_HEADS"),
    ],
)  # fmt: skip
def test_a_rule_between_two_keys_is_a_config_error_naming_both(task, opts, message, tmp_path):
    cfg = load_config(str(CONFIGS / f"{task}_tiny.yaml"), ["OUTPUT_DIR", str(tmp_path), *opts])
    with pytest.raises(ConfigError, match=message):
        get_task(cfg.MODEL.META_ARCHITECTURE).build_model(cfg)


def test_a_value_off_the_step_is_rejected_at_load_time():
    with pytest.raises(ConfigError, match="must be >= 32 and a multiple of 32, got 48"):
        load_config(str(CONFIGS / "ddpm_tiny.yaml"), ["MODEL.DDPM.UNET.MODEL_CHANNELS", "48"])
