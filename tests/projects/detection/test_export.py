"""ONNX export of the whole DiffusionDet: onnxruntime's detections equal the eager model's.

One exported file per (model, S) serves every image size; every random draw is a graph input,
so the comparison is exact up to float rounding (same labels, IoU > 0.99, scores within 1e-3).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from diffvision.engine.defaults import load_config  # noqa: E402
from projects.detection.box_diffusion import diffusion_to_boxes  # noqa: E402
from projects.detection.build import build_model  # noqa: E402
from projects.detection.export import (  # noqa: E402
    OnnxDetector,
    export_onnx,
    graph_input_names,
    seeded_draws,
)

ROOT = Path(__file__).resolve().parents[3]


def _model(config: str, *opts: str) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = load_config(str(ROOT / "projects/detection" / config), ["MODEL.WEIGHTS", "", *opts])
    model = build_model(cfg, with_criterion=False).eval()
    # class biases that put the median box's best score at the renewal threshold 0.5: box
    # renewal keeps some boxes and replaces others, and the scores vary between classes
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        last = model.head.head_series[-1].class_logits
        last.bias.copy_(torch.randn(last.bias.shape, generator=g))
        image = torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8, generator=g)
        images, whwh = model.preprocess_image([{"image": image}])
        boxes = diffusion_to_boxes(torch.randn(1, 16, 4, generator=g), whwh)
        logits = model.head(model.extract_features(images), boxes, torch.tensor([999]))[0][-1]
        last.bias.sub_(logits.amax(dim=-1).median())
    return model


@pytest.fixture(scope="module")
def toy():
    return _model("diffdet_toy.yaml", "MODEL.DiffusionDet.NUM_PROPOSALS", "16")


@pytest.fixture(scope="module")
def r50():
    # an R50-FPN with random weights (FrozenBN: identity statistics), 1 head stage (export time)
    return _model(
        "diffdet_r50.yaml",
        "MODEL.DiffusionDet.NUM_PROPOSALS", "16",
        "MODEL.DiffusionDet.NUM_HEADS", "1",
    )  # fmt: skip


class _Exports(dict):
    """(model name, steps) -> exported file, exported on first use: a test run that selects a
    few tests exports only the files they need."""

    def __init__(self, out: Path, models: dict) -> None:
        super().__init__()
        self.out, self.models = out, models

    def __missing__(self, key: tuple[str, int]) -> Path:
        name, steps = key
        self[key] = export_onnx(self.models[name], self.out / f"{name}_s{steps}.onnx",
                                num_boxes=16, steps=steps, image_hw=(96, 128))  # fmt: skip
        return self[key]


@pytest.fixture(scope="module")
def files(tmp_path_factory, toy, r50):
    return _Exports(tmp_path_factory.mktemp("onnx"), {"toy": toy, "r50": r50})


def _assert_same_detections(onnx_out, eager: dict) -> None:
    """Same detections up to the order of near-tied scores: each onnxruntime detection matches
    a distinct eager one of the same label with IoU > 0.99 and a score within 1e-3."""
    boxes, scores, labels = (torch.from_numpy(np.asarray(v)) for v in onnx_out)
    assert labels.dtype == torch.int64 and boxes.dtype == torch.float32
    assert len(scores) > 0, "a test without detections compares nothing"
    assert sorted(labels.tolist()) == sorted(eager["labels"].tolist())
    iou = box_iou(boxes, eager["boxes"])
    close = (labels[:, None] == eager["labels"][None]) & (
        (scores[:, None] - eager["scores"][None]).abs() <= 1e-3
    )
    iou = torch.where(close, iou, torch.zeros_like(iou))
    used = torch.zeros(len(scores), dtype=torch.bool)
    for i in range(len(scores)):  # greedy, highest IoU first: ties are rare and near-exact
        candidates = torch.where(used, torch.zeros_like(iou[i]), iou[i])
        j = int(candidates.argmax())
        assert float(candidates[j]) > 0.99, (i, boxes[i], scores[i], labels[i])
        used[j] = True


@pytest.mark.parametrize("name,steps", [("toy", 1), ("toy", 4), ("r50", 4)])
def test_onnxruntime_equals_eager_at_two_image_sizes(files, toy, r50, name, steps):
    model = {"toy": toy, "r50": r50}[name]
    path = files[(name, steps)]
    onnx.checker.check_model(str(path), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = graph_input_names(model, steps)
    assert [i.name for i in session.get_inputs()] == names
    assert names[:2] == ["image", "init_boxes"] and len(names) == (2 if steps == 1 else 4)
    g = torch.Generator().manual_seed(steps)
    for h, w in [(96, 128), (75, 150)]:  # the traced size and another one (not a multiple of 32)
        image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
        draws = {n: torch.randn(steps - 1, 16, 4, generator=g) for n in names[2:]}
        init = torch.randn(16, 4, generator=g)
        feeds = {"image": image.numpy(), "init_boxes": init.numpy()}
        feeds.update({n: v.numpy() for n, v in draws.items()})
        (eager,) = model.inference(
            [{"image": image}],
            num_boxes=16,
            steps=steps,
            init_boxes=init[None],
            step_noise=draws["step_noise"][None] if steps > 1 else None,
            renewal_boxes=draws["renewal_boxes"][None] if steps > 1 else None,
        )
        _assert_same_detections(session.run(["boxes", "scores", "labels"], feeds), eager)


def test_draw_inputs_change_the_multi_step_result(files):
    # the draws are real inputs of the graph, not constants folded at export time
    session = ort.InferenceSession(str(files[("toy", 4)]), providers=["CPUExecutionProvider"])
    image = np.random.default_rng(0).integers(0, 256, (3, 96, 128), dtype=np.uint8)
    feeds = {"image": image, **seeded_draws(0, num_boxes=16, steps=4, names=_names(session))}
    base = session.run(["scores"], feeds)[0]
    for name in ("step_noise", "renewal_boxes"):
        changed = dict(feeds, **{name: feeds[name] + 1.0})
        assert not np.array_equal(session.run(["scores"], changed)[0], base), name


def _names(session) -> list[str]:
    return [i.name for i in session.get_inputs()]


def test_onnx_detector_predict_equals_model_predict(files, toy):
    # the --onnx demo path: same resize, same seeded draws, boxes back in original pixels
    detector = OnnxDetector(files[("toy", 4)])
    assert detector.metadata["num_boxes"] == 16 and detector.metadata["steps"] == 4
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (150, 210, 3), dtype=np.uint8) for _ in range(2)]
    got = detector.predict(images, seed=3)
    want = toy.predict(images, seed=3, num_boxes=16, steps=4)
    for a, b in zip(got, want, strict=True):
        _assert_same_detections((a["boxes"], a["scores"], a["labels"]), b)
        assert float(a["boxes"][:, 2].max()) > 128  # mapped back beyond the 128-px network size


@pytest.mark.parametrize("number_format", ["float32", "int8"])
def test_demo_runs_the_onnx_file(files, tmp_path, number_format):
    import cv2

    from projects.detection.export import quantize_onnx

    path = files[("toy", 4)]
    if number_format == "int8":  # dynamic: the quantized file without calibration data
        path = quantize_onnx(path, tmp_path / "int8.onnx", method="dynamic")
    image = np.random.default_rng(2).integers(0, 256, (100, 140, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "in.png"), image)
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "tools/demo.py"), "--onnx", str(path)]
    cmd += ["--input", str(tmp_path / "in.png"), "--output", str(out)]
    cmd += ["--confidence-threshold", "0.0"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "detections" in result.stdout
    drawn = cv2.imread(str(out / "in.jpg"))
    assert drawn.shape == image.shape and np.abs(drawn.astype(int) - image).max() > 50


def test_export_tool_rejects_bad_input(tmp_path):
    def run(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, str(ROOT / "tools/export.py"), *args]
        return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)

    missing = run("--config", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "nope.yaml" in missing.stderr
    steps = run("--config", "projects/detection/diffdet_toy.yaml", "--steps", "0")
    assert steps.returncode == 2 and "--steps" in steps.stderr
    # the exporter would write an opset below 18 silently at its default 18: refused instead
    old = run("--config", "projects/detection/diffdet_toy.yaml", "--opset", "13",
              "--output", str(tmp_path / "m.onnx"))  # fmt: skip
    assert old.returncode == 2 and "opset 13" in old.stderr and "Traceback" not in old.stderr
    assert not (tmp_path / "m.onnx").exists()
    # float16 / bfloat16 files are refused with the measured reason, before any work
    for number_format, reason in [("fp16", "float16 file 1.05"), ("bf16", "no bfloat16 Conv")]:
        refused = run("--config", "projects/detection/diffdet_toy.yaml", "--quantize",
                      number_format, "--output", str(tmp_path / "m.onnx"))  # fmt: skip
        assert refused.returncode == 2 and reason in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1 and not (tmp_path / "m.onnx").exists()


def test_onnx_detector_names_a_missing_file(tmp_path):
    from diffvision.errors import InputFileNotFoundError

    with pytest.raises(InputFileNotFoundError, match="missing.onnx"):
        OnnxDetector(tmp_path / "missing.onnx")


@pytest.mark.parametrize("method", ["static", "dynamic"])
def test_int8_file_runs_in_onnxruntime(files, toy, tmp_path, method):
    from projects.detection.export import quantize_onnx

    src = files[("toy", 4)]
    rng = np.random.default_rng(4)
    images = [rng.integers(0, 256, (3, 96, 128), dtype=np.uint8) for _ in range(3)]
    names = graph_input_names(toy, 4)
    feeds = [{"image": im, **seeded_draws(i, num_boxes=16, steps=4, names=names)}
             for i, im in enumerate(images)]  # fmt: skip
    path = quantize_onnx(src, tmp_path / f"{method}.onnx", method=method, calibration=feeds)
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    quantized_ops = {"static": "QuantizeLinear", "dynamic": "DynamicQuantizeLinear"}[method]
    assert quantized_ops in ops, sorted(ops)
    detector = OnnxDetector(path)
    assert detector.metadata["quantized"] == f"int8 {method}"
    assert detector.metadata["num_boxes"] == 16 and detector.metadata["steps"] == 4
    reference = OnnxDetector(src)
    for feed in feeds:
        draws = {k: v for k, v in feed.items() if k != "image"}
        got, want = detector.run(feed["image"], draws), reference.run(feed["image"], draws)
        assert got["boxes"].dtype == got["scores"].dtype == np.float32
        assert got["labels"].dtype == np.int64 and len(got["scores"]) > 0
        # measured on this random-weight model: the best fp32 score moves by < 0.01
        assert abs(float(got["scores"].max()) - float(want["scores"].max())) < 0.05


def test_static_int8_keeps_products_of_two_activations_in_float32(files, toy, tmp_path):
    from projects.detection.export import activation_matmuls, quantize_onnx

    src = files[("toy", 1)]
    names = graph_input_names(toy, 1)
    rng = np.random.default_rng(5)
    feeds = [{"image": rng.integers(0, 256, (3, 96, 128), dtype=np.uint8),
              **seeded_draws(i, num_boxes=16, steps=1, names=names)} for i in range(2)]  # fmt: skip
    float_matmuls = [n for n in onnx.load(str(src)).graph.node if n.op_type in ("MatMul", "Gemm")]
    per_box = activation_matmuls(src)
    # per head stage: self-attention's two products (Q K^T, weights V) and the dynamic
    # convolution's two (pooled features x the per-box parameters)
    assert len(per_box) == 4 * len(toy.head.head_series)
    assert len(per_box) < len(float_matmuls)

    path = quantize_onnx(src, tmp_path / "static.onnx", method="static", calibration=feeds)
    graph = onnx.load(str(path)).graph
    dequantized = {out for n in graph.node if n.op_type == "DequantizeLinear" for out in n.output}
    matmuls = [n for n in graph.node if n.op_type in ("MatMul", "Gemm")]
    in_int8 = [n.name for n in matmuls if dequantized.intersection(n.input)]
    in_float = [n.name for n in matmuls if not dequantized.intersection(n.input)]
    assert sorted(in_float) == sorted(per_box)
    assert len(in_int8) == len(matmuls) - len(per_box) > 0
