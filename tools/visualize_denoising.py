#!/usr/bin/env python
"""Draw DiffusionDet's box denoising step by step: random boxes turning into objects.

    python tools/visualize_denoising.py --config projects/detection/diffdet_toy.yaml \
        --input image.png --output denoising.png --steps 4 --boxes 30 --gif denoising.gif \
        MODEL.WEIGHTS output/diffdet_toy/model_final.pth

The panels, left to right and top to bottom, are what the DDIM sampler (arXiv 2211.09788,
Alg. 2) holds at each step of ``model.predict``:

- ``x_T``: the starting boxes, Gaussian noise in box space;
- ``step i: prediction``: the head's box prediction x̂_0 at that step, green where the best class
  score is above the renewal threshold (kept), red where it is not (box renewal replaces those);
- ``step i+1: input``: the boxes the head sees next, the DDIM update of the kept boxes (blue) and
  the fresh random boxes that replaced the renewed ones (yellow);
- ``detections``: the final output (ensemble of the steps, NMS) above ``--confidence-threshold``.

Boxes are recorded at the head's input and output during one seeded ``model.predict`` call (the
same draws as ``tools/demo.py --seed``), so the picture is reproducible and shows exactly the
sampler's boxes. ``--gif`` writes the panels as an animation. Bad input ends with one line
``error: ...`` and exit status 2 (``--debug``: with the traceback).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # reach projects/

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import projects  # noqa: E402,F401  (registers every task and its config keys)
from diffvision.data.detection_transforms import resized_shape  # noqa: E402
from diffvision.data.image_io import read_image_rgb  # noqa: E402
from diffvision.engine.cli import Float, Int, Seed, ToolParser, run_main  # noqa: E402
from diffvision.engine.defaults import load_tool_config  # noqa: E402
from diffvision.engine.outputs import (  # noqa: E402
    OVERWRITE_HELP,
    check_output_path,
    refuse_to_replace,
)
from diffvision.errors import InputFileNotFoundError  # noqa: E402
from projects.detection.build import build_inference_model  # noqa: E402
from projects.detection.export import check_box_memory  # noqa: E402

TOOL = "tools/visualize_denoising.py"

KEPT, RENEWED, UPDATED, FRESH, NOISE, FINAL = (
    (60, 200, 60), (230, 50, 50), (60, 120, 240), (240, 200, 0), (200, 200, 200), (255, 0, 255)
)  # RGB  # fmt: skip


@torch.no_grad()
def denoising_trajectory(model, rgb: np.ndarray, *, steps: int, boxes: int, seed: int) -> dict:
    """One seeded ``model.predict`` call, with the head's input and output boxes of every step.

    Returns:
        ``{"inputs": [(N, 4)] * S`` boxes the head received at each step (step 0: the starting
        noise), ``"predictions": [(N, 4)] * S`` its x̂_0 boxes, ``"scores": [(N,)] * S`` their best
        class score, ``"renewed": [(N,) bool] * (S - 1)`` boxes box renewal replaced after each
        step but the last, ``"detections"``: predict's output}; boxes are xyxy in the original
        image's pixels.
    """
    h, w = rgb.shape[:2]
    new_h, new_w = resized_shape(h, w, model.min_size_test, model.max_size_test)
    scale = torch.tensor([w / new_w, h / new_h, w / new_w, h / new_h])
    calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def record(_module, args, output):
        logits, pred_boxes = output[0][-1], output[1][-1]  # the last head stage
        calls.append((args[1][0].float().cpu(), pred_boxes[0].float().cpu(),
                      logits[0].sigmoid().amax(-1).float().cpu()))  # fmt: skip

    handle = model.head.register_forward_hook(record)
    try:
        (detections,) = model.predict(rgb, num_boxes=boxes, steps=steps, seed=seed)
    finally:
        handle.remove()
    renew = model.box_renewal
    return {
        "inputs": [c[0] * scale for c in calls],
        "predictions": [c[1] * scale for c in calls],
        "scores": [c[2] for c in calls],
        "renewed": [
            (c[2] <= model.renewal_threshold) if renew else torch.zeros_like(c[2], dtype=torch.bool)
            for c in calls[:-1]
        ],
        "detections": {k: v.cpu() for k, v in detections.items()},
    }


def draw_boxes(image: np.ndarray, boxes: torch.Tensor, color, thickness: int = 1) -> np.ndarray:
    """``boxes`` (n, 4) xyxy rectangles in ``color`` on a copy of an RGB image (clipped)."""
    canvas = image.copy()
    h, w = canvas.shape[:2]
    for x1, y1, x2, y2 in boxes.tolist():
        p1 = (int(round(min(max(x1, 0), w - 1))), int(round(min(max(y1, 0), h - 1))))
        p2 = (int(round(min(max(x2, 0), w - 1))), int(round(min(max(y2, 0), h - 1))))
        cv2.rectangle(canvas, p1, p2, color, thickness)
    return canvas


def _titled(image: np.ndarray, title: str) -> np.ndarray:
    bar = np.full((18, image.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, title, (3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([bar, image], axis=0)


def render_panels(rgb: np.ndarray, traj: dict, threshold: float) -> list[np.ndarray]:
    """The titled RGB panels of the module docstring, in order."""
    image = (rgb.astype(np.float32) * 0.6 + 255 * 0.4).astype(np.uint8)  # faded: boxes stand out
    panels = [_titled(draw_boxes(image, traj["inputs"][0], NOISE), "x_T: random boxes")]
    steps = len(traj["predictions"])
    for i in range(steps):
        if i > 0:
            fresh = traj["renewed"][i - 1]
            canvas = draw_boxes(image, traj["inputs"][i][~fresh], UPDATED)
            canvas = draw_boxes(canvas, traj["inputs"][i][fresh], FRESH)
            panels.append(_titled(canvas, f"step {i + 1}: input"))
        pred = traj["predictions"][i]
        renewed = traj["renewed"][i] if i < steps - 1 else torch.zeros(len(pred), dtype=torch.bool)
        canvas = draw_boxes(image, pred[renewed], RENEWED)
        canvas = draw_boxes(canvas, pred[~renewed], KEPT)
        panels.append(_titled(canvas, f"step {i + 1}: prediction"))
    det = traj["detections"]
    keep = det["scores"] > threshold
    canvas = draw_boxes(image, det["boxes"][keep], FINAL, 2)
    panels.append(_titled(canvas, f"detections > {threshold:g}"))
    return panels


def grid(panels: list[np.ndarray], columns: int) -> np.ndarray:
    """Panels (equal shapes) in rows of ``columns``, white gaps, the last row padded."""
    h, w = panels[0].shape[:2]
    rows = -(-len(panels) // columns)
    out = np.full((rows * (h + 4) - 4, columns * (w + 4) - 4, 3), 255, np.uint8)
    for k, panel in enumerate(panels):
        r, c = divmod(k, columns)
        out[r * (h + 4) : r * (h + 4) + h, c * (w + 4) : c * (w + 4) + w] = panel
    return out


def argument_parser() -> ToolParser:
    parser = ToolParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", "--config-file", dest="config", required=True)
    parser.add_argument("--input", required=True, help="one image")
    parser.add_argument("--output", required=True, help="the grid, a .png file")
    parser.add_argument("--steps", type=Int(1, 1000), default=4, help="DDIM steps S (default 4)")
    parser.add_argument("--boxes", type=Int(1, 100_000), default=30, help="boxes N (default 30)")
    parser.add_argument("--gif", help="also write the panels as an animated .gif")
    parser.add_argument("--seed", type=Seed(), default=0, help="box sampling seed")
    parser.add_argument("--columns", type=Int(1, 64), default=4, help="panels per row")
    parser.add_argument("--confidence-threshold", type=Float(0, 1), default=0.5)
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    parser.add_argument("opts", nargs="*", help="config overrides KEY VALUE ...")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = argument_parser().parse_args(argv)
    if not Path(args.input).is_file():
        raise InputFileNotFoundError(f"--input {args.input}: no such image file")
    outputs = [(args.output, "--output", ".png")] + (
        [(args.gif, "--gif", ".gif")] if args.gif else []
    )
    for path, flag, suffix in outputs:
        check_output_path(path, flag, kind="file", suffixes=(suffix,), folder_must_exist=True)
        refuse_to_replace([path], overwrite=args.overwrite, flag=flag)
    rgb = read_image_rgb(args.input)  # DataError naming the file when unreadable

    cfg = load_tool_config(args.config, args.opts, tool=TOOL, architectures=("DiffusionDet",))
    check_box_memory(cfg, args.boxes)
    model = build_inference_model(cfg)
    traj = denoising_trajectory(model, rgb, steps=args.steps, boxes=args.boxes, seed=args.seed)
    panels = render_panels(rgb, traj, args.confidence_threshold)
    picture = grid(panels, min(args.columns, len(panels)))
    cv2.imwrite(args.output, np.ascontiguousarray(picture[:, :, ::-1]))
    print(f"wrote {args.output} ({len(panels)} panels)")
    if args.gif:
        from PIL import Image

        frames = [Image.fromarray(p) for p in panels]
        frames[0].save(args.gif, save_all=True, append_images=frames[1:], duration=700, loop=0)
        print(f"wrote {args.gif}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
