#!/usr/bin/env python
"""Run a DiffusionDet model on images, a video file or a webcam and draw its detections.

    python tools/demo.py --config projects/detection/diffdet_r50.yaml \
        --input photos/*.jpg --output out/ MODEL.WEIGHTS diffdet_coco_res50.pth
    python tools/demo.py --config ... --video-input clip.mp4 --output clip_det.mp4 MODEL.WEIGHTS ...
    python tools/demo.py --config ... --webcam MODEL.WEIGHTS ...          # ESC quits
    # CPU: append MODEL.DEVICE cpu; fewer boxes/steps: MODEL.DiffusionDet.NUM_PROPOSALS 100
    python tools/demo.py --onnx model.onnx --input photos/*.jpg --output out/  # onnxruntime

``--confidence-threshold`` (default 0.5) filters every path - images, video and webcam (the
official demo ignores it for videos and draws every box, ShoufaChen/DiffusionDet #81/#87/#115).
Without ``--output`` images and frames are shown in a window. ``--input`` takes files, glob
patterns and folders (every image inside, sorted); a file that cannot be read is skipped with a
warning naming it and the batch goes on. Bad input ends with one line ``error: ...`` and exit
status 2 (``--debug``: with the traceback).
``--onnx`` runs a file written by tools/export.py through onnxruntime instead (no config, no
torch model; same resize, seeds, threshold and drawing, class names from the file).
"""

from __future__ import annotations

import glob
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # reach projects/

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import projects  # noqa: E402,F401  (registers every task and its config keys)
from diffvision.data.image_folder import IMAGE_EXTENSIONS  # noqa: E402
from diffvision.data.image_io import read_image_rgb  # noqa: E402
from diffvision.engine.cli import (  # noqa: E402
    Float,
    Int,
    Seed,
    ToolParser,
    run_main,
)
from diffvision.engine.defaults import load_tool_config  # noqa: E402
from diffvision.engine.outputs import (  # noqa: E402
    OVERWRITE_HELP,
    VIDEO_SUFFIXES,
    check_output_path,
    refuse_to_replace,
)
from diffvision.errors import CLIError, DataError, InputFileNotFoundError  # noqa: E402
from projects.detection.build import build_inference_model  # noqa: E402
from projects.detection.export import check_box_memory  # noqa: E402

COCO_CLASSES = (
    "person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant "
    "stop_sign parking_meter bench bird cat dog horse sheep cow elephant bear zebra giraffe "
    "backpack umbrella handbag tie suitcase frisbee skis snowboard sports_ball kite baseball_bat "
    "baseball_glove skateboard surfboard tennis_racket bottle wine_glass cup fork knife spoon bowl "
    "banana apple sandwich orange broccoli carrot hot_dog pizza donut cake chair couch "
    "potted_plant bed dining_table toilet tv laptop mouse remote keyboard cell_phone microwave "
    "oven toaster sink refrigerator book clock vase scissors teddy_bear hair_drier toothbrush"
).split()


def class_names(cfg) -> list[str]:
    """Names from the test dataset's json if it is on disk; COCO's for 80 classes; else ids."""
    from projects.detection.data import get_detection_metadata

    try:
        names = get_detection_metadata(
            cfg, (cfg.DATASETS.TEST or cfg.DATASETS.TRAIN)[0]
        ).thing_classes
        if len(names) == cfg.MODEL.DiffusionDet.NUM_CLASSES:
            return list(names)
    except (FileNotFoundError, KeyError, IndexError, ValueError):
        pass
    if cfg.MODEL.DiffusionDet.NUM_CLASSES == 80:
        return [n.replace("_", " ") for n in COCO_CLASSES]
    return [str(i) for i in range(cfg.MODEL.DiffusionDet.NUM_CLASSES)]


def color_of(label: int) -> tuple[int, int, int]:
    rng = np.random.default_rng(label)
    return tuple(int(c) for c in rng.integers(64, 256, 3))


def detect(model, image_rgb: np.ndarray, threshold: float, seed: int | None) -> dict:
    """Predictions with score > threshold (boxes in the image's pixels)."""
    (out,) = model.predict(image_rgb, seed=seed)
    keep = out["scores"] > threshold
    return {k: v[keep].cpu() for k, v in out.items()}


def draw(image_bgr: np.ndarray, det: dict, names: list[str]) -> np.ndarray:
    """Boxes, class names and scores drawn with OpenCV on a copy of a BGR image."""
    canvas = image_bgr.copy()
    thickness = max(1, round(min(canvas.shape[:2]) / 400))
    for box, score, label in zip(det["boxes"].tolist(), det["scores"].tolist(),
                                 det["labels"].tolist()):  # fmt: skip
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        color = color_of(label)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), color, thickness)
        text = f"{names[label] if label < len(names) else label} {score:.2f}"
        scale = 0.4 * thickness
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        top = max(y1 - th - base, 0)
        cv2.rectangle(canvas, (x1, top), (x1 + tw, top + th + base), color, -1)
        cv2.putText(canvas, text, (x1, top + th), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1,
                    cv2.LINE_AA)  # fmt: skip
    return canvas


def expand_inputs(patterns: list[str]) -> list[str]:
    """Image paths of ``--input``: files as given, glob patterns expanded, folders listed
    (images directly inside, sorted by name).

    Raises:
        InputFileNotFoundError: nothing at all matches (each pattern that matched nothing is named).
    """
    paths, unmatched = [], []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) or ([pattern] if Path(pattern).exists() else [])
        if not matches:
            unmatched.append(pattern)
        for match in matches:
            if Path(match).is_dir():
                inside = sorted(Path(match).iterdir())
                paths += [str(p) for p in inside if p.suffix.lower() in IMAGE_EXTENSIONS]
            else:
                paths.append(match)
    for pattern in unmatched:
        print(f"warning: --input {pattern!r}: no such file or folder, skipped", file=sys.stderr)
    if not paths:
        raise InputFileNotFoundError(
            f"--input {' '.join(patterns)}: no image files found (files, glob patterns or folders "
            f"of {'/'.join(IMAGE_EXTENSIONS)} images)"
        )
    return paths


def run_images(model, paths, args, names) -> int:
    """Detect on every readable image of ``paths``; returns how many were skipped."""
    out_dir = Path(args.output) if args.output else None  # checked by main: not a file
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    skipped = 0
    for path in paths:
        try:
            rgb = read_image_rgb(path)
        except (DataError, InputFileNotFoundError) as exc:
            print(f"warning: skipped {path}: {exc}", file=sys.stderr)
            skipped += 1
            continue
        start = time.perf_counter()
        det = detect(model, rgb, args.confidence_threshold, args.seed)
        print(f"{path}: {len(det['scores'])} detections in {time.perf_counter() - start:.2f}s")
        canvas = draw(np.ascontiguousarray(rgb[:, :, ::-1]), det, names)
        if out_dir is not None:
            cv2.imwrite(str(out_dir / (Path(path).stem + ".jpg")), canvas)
        else:
            cv2.imshow("DiffusionDet", canvas)
            if cv2.waitKey(0) == 27:
                break
    if skipped == len(paths):
        raise DataError(
            f"--input: none of the {len(paths)} images could be read (each is named in a "
            "warning above)"
        )
    if skipped:
        print(f"skipped {skipped} of {len(paths)} inputs that could not be read", file=sys.stderr)
    return skipped


def run_stream(model, source, args, names) -> None:
    capture = cv2.VideoCapture(source)
    if not capture.isOpened():
        kind = "camera" if isinstance(source, int) else "video file"
        raise DataError(f"cannot open {kind} {source!r} (not a video OpenCV can decode?)")
    writer = None
    frames = 0
    try:
        while args.max_frames <= 0 or frames < args.max_frames:
            ok, frame_bgr = capture.read()
            if not ok:
                break
            det = detect(model, np.ascontiguousarray(frame_bgr[:, :, ::-1]),
                         args.confidence_threshold, args.seed)  # fmt: skip
            canvas = draw(frame_bgr, det, names)
            frames += 1
            if args.output:
                if writer is None:
                    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
                    mp4 = args.output.lower().endswith(".mp4")
                    fourcc = cv2.VideoWriter_fourcc(*("mp4v" if mp4 else "MJPG"))
                    h, w = canvas.shape[:2]
                    writer = cv2.VideoWriter(args.output, fourcc, fps, (w, h))
                    if not writer.isOpened():
                        raise DataError(f"--output {args.output}: OpenCV cannot write this video")
                writer.write(canvas)
            else:
                cv2.imshow("DiffusionDet", canvas)
                if cv2.waitKey(1) == 27:
                    break
    finally:
        capture.release()
        if writer is not None:
            writer.release()
        if not args.output:
            cv2.destroyAllWindows()
    print(f"processed {frames} frames")


def run_onnx(args, paths: list[str] | None) -> int:
    """The demo on an exported file through onnxruntime (``--onnx``): no torch model is built."""
    from projects.detection.export import OnnxDetector

    model = OnnxDetector(args.onnx)
    n = int(model.metadata.get("num_classes", 0))
    names = model.metadata.get("class_names") or [str(i) for i in range(n)]
    if paths is not None:
        run_images(model, paths, args, names)
    else:
        run_stream(model, args.video_input if args.video_input else 0, args, names)
    return 0


TOOL = "tools/demo.py"
DETECTION_ARCHITECTURES = ("DiffusionDet",)
IGNORED_KEYS = {
    "TEST.AUG.ENABLED": (
        False,
        "the drawing shows the plain model's detections (test-time augmentation runs only in "
        "evaluation: tools/train_net.py --eval-only)",
    )
}


def argument_parser() -> ToolParser:
    parser = ToolParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", "--config-file", dest="config")
    parser.add_argument("--onnx", help="a tools/export.py .onnx file, instead of --config")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", nargs="+", help="image paths or glob patterns")
    source.add_argument("--video-input", help="a video file")
    source.add_argument("--webcam", action="store_true", help="camera 0")
    parser.add_argument("--output", help="folder for images; file (.mp4 or .avi) for video")
    parser.add_argument("--confidence-threshold", type=Float(0, 1), default=0.5)
    parser.add_argument("--seed", type=Seed(allow_random=True), default=0,
                        help="box sampling seed (-1: random)")  # fmt: skip
    parser.add_argument("--max-frames", type=Int(0, special={0: "all"}), default=0,
                        help="stop video after N frames")  # fmt: skip
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    parser.add_argument("opts", nargs="*", help="config overrides KEY VALUE ...")
    return parser


def check_output(args, paths: list[str] | None) -> None:
    """``--output``: a writable folder for images, a writable .mp4/.avi file for a stream;
    finished drawings are not replaced without ``--overwrite``."""
    if not args.output:
        return
    if paths is None:
        out = check_output_path(args.output, "--output", kind="file", suffixes=VIDEO_SUFFIXES)
        targets = [out]
    else:
        out = check_output_path(args.output, "--output", kind="folder")
        targets = [out / (Path(path).stem + ".jpg") for path in paths]
    refuse_to_replace(targets, overwrite=args.overwrite)


def main(argv: list[str] | None = None) -> int:
    args = argument_parser().parse_args(argv)
    if args.seed is not None and args.seed < 0:
        args.seed = None
    paths = expand_inputs(args.input) if args.input else None  # before building the model
    if args.video_input and not Path(args.video_input).is_file():
        what = "is a folder" if Path(args.video_input).is_dir() else "does not exist"
        raise InputFileNotFoundError(f"--video-input {args.video_input}: {what}")
    if (args.onnx is None) == (args.config is None):
        raise CLIError("give exactly one of --config and --onnx")
    check_output(args, paths)
    if args.onnx:
        if not Path(args.onnx).is_file():
            what = "is a folder" if Path(args.onnx).is_dir() else "does not exist"
            raise InputFileNotFoundError(f"--onnx {args.onnx}: {what}")
        if args.opts:
            raise CLIError(f"--onnx takes no config overrides, got {' '.join(args.opts)}")
        return run_onnx(args, paths)

    cfg = load_tool_config(
        args.config, args.opts, tool=TOOL, architectures=DETECTION_ARCHITECTURES,
        ignored=IGNORED_KEYS,
    )  # fmt: skip
    check_box_memory(cfg, cfg.MODEL.DiffusionDet.NUM_PROPOSALS, "MODEL.DiffusionDet.NUM_PROPOSALS")
    model = build_inference_model(cfg)
    names = class_names(cfg)
    with torch.no_grad():
        if paths is not None:
            run_images(model, paths, args, names)
        elif args.video_input:
            run_stream(model, args.video_input, args, names)
        else:
            run_stream(model, 0, args, names)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
