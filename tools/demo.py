#!/usr/bin/env python
"""Draw a detection model's boxes (and masks) on images, a video file or a webcam.

DiffusionDet and DiffusionInst configs (or DDeP / pixel-MLP segmentation models, on images):

    python tools/demo.py --config projects/detection/diffdet_r50.yaml \
        --input photos/*.jpg --output out/ MODEL.WEIGHTS diffdet_coco_res50.pth
    python tools/demo.py --config ... --video-input clip.mp4 --output clip_det.mp4 MODEL.WEIGHTS ...
    python tools/demo.py --config ... --webcam MODEL.WEIGHTS ...          # ESC quits
    # CPU: append MODEL.DEVICE cpu; fewer boxes/steps: MODEL.DiffusionDet.NUM_PROPOSALS 100
    python tools/demo.py --onnx model.onnx --input photos/*.jpg --output out/  # onnxruntime

``--confidence-threshold`` (default 0.5) filters every path - images, video and webcam (the
official demo ignores it for videos and draws every box, ShoufaChen/DiffusionDet #81/#87/#115).
Without ``--output`` (and ``--json``) images and frames are shown in a window. ``--input`` takes
files, glob patterns and folders (every image inside, sorted); a file that cannot be read is
skipped with a warning naming it and the batch goes on. Bad input ends with one line
``error: ...`` and exit status 2 (``--debug``: with the traceback).
``--onnx`` runs a file written by tools/export.py through onnxruntime instead (no config, no
torch model; same resize, seeds, threshold and drawing, class names from the file).

``--json PATH`` also writes every input's detections (above the threshold) into one JSON file::

    {"categories": [{"id": 0, "name": "person"}, ...],
     "images": [{"file_name": "photos/a.jpg", "height": 480, "width": 640,
                 "detections": [{"bbox": [x, y, w, h], "score": 0.93, "category_id": 0,
                                 "category_name": "person"}, ...]}, ...]}

``bbox`` is in the original image's pixels, ``category_id`` the model's 0-based class index; a
video frame adds ``"frame"`` (0-based), an unreadable image ``"error"`` instead of detections.
``diffvision.evaluation.coco_evaluation.demo_json_to_coco_results`` turns it into COCO results
for an annotation file (images matched by file name, categories by name).

DiffusionInst configs (and files exported from them) draw each detection's mask as a
translucent fill in its class colour under the box and label, and every ``--json`` detection
carries its mask as COCO compressed RLE (the COCO results format, decoded by
``pycocotools.mask.decode``)::

    "segmentation": {"size": [480, 640], "counts": "Xk`0=l5..."}

    python tools/demo.py --config projects/detection/diffinst_toy.yaml --input shapes/ \
        --output out/ --json out/detections.json MODEL.WEIGHTS output/diffinst_toy/model_final.pth

Segmentation configs (``MODEL.META_ARCHITECTURE`` DDeP in segment mode, or PixelMLP) write, per
input image, ``<stem>_seg.png`` (the colourised prediction with a legend of class names) and
``<stem>_label.png`` (the raw class indices, trainIds); ``--json`` holds each image's fraction of
pixels per class::

    python tools/demo.py --config projects/segmentation/configs/ddep_toy_finetune_r18.yaml \
        --input scenes/ --output seg_out/ --json seg_out/fractions.json MODEL.WEIGHTS model.pth
"""

from __future__ import annotations

import glob
import json
import os
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
from diffvision.errors import CLIError, ConfigError, DataError, InputFileNotFoundError  # noqa: E402
from diffvision.evaluation.coco_evaluation import masks_to_rle  # noqa: E402
from projects.detection.build import build_inference_model  # noqa: E402
from projects.detection.config import DETECTOR_ARCHITECTURES, detector_section  # noqa: E402
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

    num_classes = detector_section(cfg)[1].NUM_CLASSES
    try:
        names = get_detection_metadata(
            cfg, (cfg.DATASETS.TEST or cfg.DATASETS.TRAIN)[0]
        ).thing_classes
        if len(names) == num_classes:
            return list(names)
    except (FileNotFoundError, KeyError, IndexError, ValueError):
        pass
    if num_classes == 80:
        return [n.replace("_", " ") for n in COCO_CLASSES]
    return [str(i) for i in range(num_classes)]


def color_of(label: int) -> tuple[int, int, int]:
    rng = np.random.default_rng(label)
    return tuple(int(c) for c in rng.integers(64, 256, 3))


def detect(model, image_rgb: np.ndarray, threshold: float, seed: int | None) -> dict:
    """Predictions with score > threshold (boxes in the image's pixels)."""
    (out,) = model.predict(image_rgb, seed=seed)
    keep = out["scores"] > threshold
    return {k: v[keep].cpu() for k, v in out.items()}


MASK_OPACITY = 0.5


def draw(image_bgr: np.ndarray, det: dict, names: list[str]) -> np.ndarray:
    """Boxes, class names and scores drawn with OpenCV on a copy of a BGR image; with
    ``det["masks"]`` (K, H, W) bool, each mask first, filled in its class colour at
    :data:`MASK_OPACITY` (later detections over earlier ones)."""
    canvas = image_bgr.copy()
    masks = det.get("masks")
    if masks is not None:
        for mask, label in zip(masks.numpy(), det["labels"].tolist(), strict=True):
            color = np.array(color_of(label), dtype=np.float32)
            blended = (1 - MASK_OPACITY) * canvas[mask] + MASK_OPACITY * color
            canvas[mask] = blended.round().astype(np.uint8)
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


def detection_entry(det: dict, names: list[str], **fields) -> dict:
    """One input's ``--json`` record: ``fields`` (file name, size, frame) and its detections
    with ``bbox`` [x, y, w, h] in original pixels, ``score``, ``category_id``, ``category_name``
    and, when ``det`` has ``masks``, ``segmentation`` (COCO compressed RLE)."""
    detections = []
    masks = det.get("masks")
    rles = masks_to_rle(masks) if masks is not None else None
    for i, (box, score, label) in enumerate(zip(det["boxes"].tolist(), det["scores"].tolist(),
                                                det["labels"].tolist())):  # fmt: skip
        x1, y1, x2, y2 = box
        detections.append({
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "score": score,
            "category_id": int(label),
            "category_name": names[label] if label < len(names) else str(label),
        })  # fmt: skip
        if rles is not None:
            detections[-1]["segmentation"] = rles[i]
    return {**fields, "detections": detections}


class JsonRecords:
    """The ``--json`` file: records collected per input, written once at the end (via a
    temporary file renamed into place, so an interrupted run leaves no partial file)."""

    def __init__(self, path: str | None, names: list[str]) -> None:
        self.path = Path(path) if path else None
        self.names = names
        self.images: list[dict] = []

    def add(self, record: dict) -> None:
        if self.path is not None:
            self.images.append(record)

    def write(self) -> None:
        if self.path is None:
            return
        categories = [{"id": i, "name": n} for i, n in enumerate(self.names)]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"categories": categories, "images": self.images}, indent=1))
        os.replace(tmp, self.path)
        print(f"wrote {len(self.images)} records to {self.path}")


def check_json_path(path: str, overwrite: bool) -> None:
    """``--json`` is a writable ``.json`` file name (the shared output check, which also refuses
    a folder), its folder exists, and an existing file is replaced only with ``--overwrite``
    (checked before any work).

    Raises:
        CLIError: naming the path and what is wrong.
    """
    target = check_output_path(
        path, "--json", kind="file", suffixes=(".json",), folder_must_exist=True
    )
    refuse_to_replace([target], overwrite=overwrite, flag="--json")


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


def readable_images(paths: list[str], records: JsonRecords, skipped: list[str]):
    """``(path, RGB array)`` of every input that can be read; the others are named in a
    warning, recorded with their error in ``records`` and appended to ``skipped`` (a count
    follows the last input)."""
    for path in paths:
        try:
            rgb = read_image_rgb(path)
        except (DataError, InputFileNotFoundError) as exc:
            print(f"warning: skipped {path}: {exc}", file=sys.stderr)
            records.add({"file_name": path, "error": str(exc)})
            skipped.append(path)
            continue
        yield path, rgb
    if paths and len(skipped) == len(paths):
        raise DataError(
            f"--input: none of the {len(paths)} images could be read (each is named in a "
            "warning above)"
        )
    if skipped:
        print(f"skipped {len(skipped)} of {len(paths)} inputs that could not be read",
              file=sys.stderr)  # fmt: skip


def run_images(model, paths, args, names, records: JsonRecords) -> int:
    """Detect on every readable image of ``paths``; returns how many were skipped."""
    out_dir = Path(args.output) if args.output else None  # checked by main: not a file
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    skipped: list[str] = []
    for path, rgb in readable_images(paths, records, skipped):
        start = time.perf_counter()
        det = detect(model, rgb, args.confidence_threshold, args.seed)
        h, w = rgb.shape[:2]
        records.add(detection_entry(det, names, file_name=path, height=h, width=w))
        print(f"{path}: {len(det['scores'])} detections in {time.perf_counter() - start:.2f}s")
        canvas = draw(np.ascontiguousarray(rgb[:, :, ::-1]), det, names)
        if out_dir is not None:
            cv2.imwrite(str(out_dir / (Path(path).stem + ".jpg")), canvas)
        elif records.path is None:  # neither --output nor --json: show it
            cv2.imshow("DiffusionDet", canvas)
            if cv2.waitKey(0) == 27:
                break
    return len(skipped)


def run_stream(model, source, args, names, records: JsonRecords) -> None:
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
            h, w = frame_bgr.shape[:2]
            records.add(detection_entry(det, names, file_name=str(source), frame=frames,
                                        height=h, width=w))  # fmt: skip
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
            elif records.path is None:
                cv2.imshow("DiffusionDet", canvas)
                if cv2.waitKey(1) == 27:
                    break
    finally:
        capture.release()
        if writer is not None:
            writer.release()
        if not args.output and records.path is None:
            cv2.destroyAllWindows()
    print(f"processed {frames} frames")


def run_onnx(args, paths: list[str] | None) -> int:
    """The demo on an exported file through onnxruntime (``--onnx``): no torch model is built."""
    from projects.detection.export import OnnxDetector

    model = OnnxDetector(args.onnx)
    n = int(model.metadata.get("num_classes", 0))
    names = model.metadata.get("class_names") or [str(i) for i in range(n)]
    records = JsonRecords(args.json, names)
    if paths is not None:
        run_images(model, paths, args, names, records)
    else:
        run_stream(model, args.video_input if args.video_input else 0, args, names, records)
    records.write()
    return 0


# -- segmentation configs -------------------------------------------------------------------

SEGMENTATION_TASKS = ("DDeP", "PixelMLP")


def segmentation_outputs(output_dir: str, path: str) -> list[Path]:
    """The colourised prediction and the raw label PNG written for input ``path``."""
    stem = Path(path).stem
    return [Path(output_dir) / f"{stem}_seg.png", Path(output_dir) / f"{stem}_label.png"]


def segmentation_classes(cfg) -> tuple[list[str], np.ndarray]:
    """Class names and ``(C, 3)`` RGB palette of the config's dataset (test set, else training
    set); ``class_<i>`` and a fixed palette when it is not on disk."""
    from diffvision.errors import UserInputError
    from diffvision.evaluation.sem_seg import default_palette
    from projects.segmentation.data import get_sem_seg_dataset

    num = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    names, palette = [f"class_{i}" for i in range(num)], default_palette(num)
    datasets = [*cfg.DATASETS.TEST, *cfg.DATASETS.TRAIN]
    if datasets:
        try:
            _, meta = get_sem_seg_dataset(
                datasets[0], toy_image_size=cfg.SEG.TOY_IMAGE_SIZE, require_masks=False
            )
        except (UserInputError, FileNotFoundError):
            return names, palette
        if len(meta.get("classes") or []) == num:
            names = list(meta["classes"])
        if meta.get("palette") is not None and len(meta["palette"]) >= num:
            palette = np.asarray(meta["palette"], dtype=np.uint8)[:num]
    return names, palette


def build_segmenter(cfg):
    """``predict(rgb (H, W, 3) uint8) -> (H, W) int64`` class indices of the config's task,
    through the task's own evaluation inference (the model loaded strictly from
    ``MODEL.WEIGHTS``; a checkpoint of another class count is an error)."""
    from diffvision.data.seg_transforms import resize
    from diffvision.engine.tasks import build_task
    from diffvision.engine.weights import load_weights

    arch = cfg.MODEL.META_ARCHITECTURE
    if arch == "DDeP" and cfg.MODEL.DDEP.MODE != "segment":
        raise ConfigError(
            f"MODEL.DDEP.MODE is {cfg.MODEL.DDEP.MODE!r}: a denoising model predicts no "
            "segmentation; give a segment-mode config and its fine-tuned MODEL.WEIGHTS"
        )
    task = build_task(cfg)
    model = task.build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        load_weights(model, cfg.MODEL.WEIGHTS)
    else:
        print("warning: MODEL.WEIGHTS is empty: the model keeps its random initialisation",
              file=sys.stderr)  # fmt: skip
    model.eval()
    run = task.build_inference(cfg)
    # the pixel MLPs classify features of a fixed-size image (their test loader's resize)
    size = int(cfg.MODEL.PIXEL_MLP.IMAGE_SIZE) if arch == "PixelMLP" else 0

    @torch.no_grad()
    def predict(rgb: np.ndarray) -> torch.Tensor:
        h, w = rgb.shape[:2]
        image = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))
        if size:
            image, _ = resize(image, None, size=(size, size))
        label_size = tuple(image.shape[-2:])
        inputs = [{"image": image, "sem_seg": torch.zeros(label_size, dtype=torch.int64),
                   "file_name": "demo"}]  # fmt: skip
        pred = run(model, inputs)[0]["sem_seg"]
        pred = pred.argmax(0) if pred.ndim == 3 else pred
        if tuple(pred.shape) != (h, w):
            pred = torch.nn.functional.interpolate(pred[None, None].float(), size=(h, w),
                                                   mode="nearest")[0, 0]  # fmt: skip
        return pred.long().cpu()

    return predict


def legend(names: list[str], palette: np.ndarray, height: int) -> np.ndarray:
    """A white RGB panel at least ``height`` tall: one colour swatch and name per class."""
    row = 16
    width = 24 + 7 * max(len(n) for n in names)
    panel = np.full((max(height, row * len(names) + 4), width, 3), 255, np.uint8)
    for k, name in enumerate(names):
        y = 4 + k * row
        color = tuple(int(c) for c in palette[k])
        cv2.rectangle(panel, (4, y), (16, y + 11), color, -1)
        cv2.rectangle(panel, (4, y), (16, y + 11), (0, 0, 0), 1)
        cv2.putText(panel, name, (21, y + 10), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1,
                    cv2.LINE_AA)  # fmt: skip
    return panel


def colour_with_legend(label: np.ndarray, names: list[str], palette: np.ndarray) -> np.ndarray:
    """RGB: the label map in the palette's colours, the legend to its right."""
    from diffvision.evaluation.sem_seg import colorize

    colour = np.asarray(colorize(label, palette))
    key = legend(names, palette, colour.shape[0])
    canvas = np.full((key.shape[0], colour.shape[1] + key.shape[1], 3), 255, np.uint8)
    canvas[: colour.shape[0], : colour.shape[1]] = colour
    canvas[:, colour.shape[1] :] = key
    return canvas


def run_segmentation(cfg, paths: list[str], args) -> int:
    """The segmentation demo: per readable image the colourised prediction with a legend and
    the raw label PNG (with ``--output``), its class pixel fractions in ``--json``; unreadable
    images are skipped with a warning. Returns 0."""
    from PIL import Image

    predict = build_segmenter(cfg)
    names, palette = segmentation_classes(cfg)
    records = JsonRecords(args.json, names)
    out_dir = Path(args.output) if args.output else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    for path, rgb in readable_images(paths, records, []):
        start = time.perf_counter()
        label = predict(rgb).numpy()
        counts = np.bincount(label.ravel(), minlength=len(names))
        fractions = {n: float(c) / label.size for n, c in zip(names, counts)}
        records.add({"file_name": path, "height": int(rgb.shape[0]), "width": int(rgb.shape[1]),
                     "class_fractions": fractions})  # fmt: skip
        print(f"{path}: segmented in {time.perf_counter() - start:.2f}s")
        picture = colour_with_legend(label, names, palette)
        if out_dir is not None:
            seg_png, label_png = segmentation_outputs(args.output, path)
            Image.fromarray(picture).save(seg_png)
            Image.fromarray(label.astype(np.uint8), mode="L").save(label_png)
        elif records.path is None:
            cv2.imshow("segmentation", np.ascontiguousarray(picture[:, :, ::-1]))
            if cv2.waitKey(0) == 27:
                break
    records.write()
    return 0


TOOL = "tools/demo.py"
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
    parser.add_argument("--json", help="also write every input's detections to this JSON file")
    parser.add_argument("--confidence-threshold", type=Float(0, 1), default=0.5)
    parser.add_argument("--seed", type=Seed(allow_random=True), default=0,
                        help="box sampling seed (-1: random)")  # fmt: skip
    parser.add_argument("--max-frames", type=Int(0, special={0: "all"}), default=0,
                        help="stop video after N frames")  # fmt: skip
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    parser.add_argument("opts", nargs="*", help="config overrides KEY VALUE ...")
    return parser


def check_output(args, paths: list[str] | None, segmentation: bool = False) -> None:
    """``--output``: a writable folder for images, a writable .mp4/.avi file for a stream;
    finished drawings are not replaced without ``--overwrite``."""
    if not args.output:
        return
    if paths is None:
        out = check_output_path(args.output, "--output", kind="file", suffixes=VIDEO_SUFFIXES)
        targets = [out]
    else:
        out = check_output_path(args.output, "--output", kind="folder")
        if segmentation:
            targets = [t for path in paths for t in segmentation_outputs(args.output, path)]
        else:
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
    cfg = None
    if args.config:  # the config's task decides which demo runs
        cfg = load_tool_config(
            args.config, args.opts, tool=TOOL,
            architectures=DETECTOR_ARCHITECTURES + SEGMENTATION_TASKS, ignored=IGNORED_KEYS,
        )  # fmt: skip
    segmentation = cfg is not None and cfg.MODEL.META_ARCHITECTURE in SEGMENTATION_TASKS
    if segmentation and paths is None:
        raise CLIError(f"{cfg.MODEL.META_ARCHITECTURE} configs take --input images, not video")
    check_output(args, paths, segmentation)
    if args.json:
        check_json_path(args.json, args.overwrite)
    if args.onnx:
        if not Path(args.onnx).is_file():
            what = "is a folder" if Path(args.onnx).is_dir() else "does not exist"
            raise InputFileNotFoundError(f"--onnx {args.onnx}: {what}")
        if args.opts:
            raise CLIError(f"--onnx takes no config overrides, got {' '.join(args.opts)}")
        return run_onnx(args, paths)

    if segmentation:
        return run_segmentation(cfg, paths, args)
    section, keys = detector_section(cfg)
    check_box_memory(cfg, keys.NUM_PROPOSALS, f"{section}.NUM_PROPOSALS")
    model = build_inference_model(cfg)
    names = class_names(cfg)
    records = JsonRecords(args.json, names)
    with torch.no_grad():
        if paths is not None:
            run_images(model, paths, args, names, records)
        elif args.video_input:
            run_stream(model, args.video_input, args, names, records)
        else:
            run_stream(model, 0, args, names, records)
    records.write()
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
