"""Export a whole DiffusionDet to one ONNX file that onnxruntime runs with the eager detections.

The graph holds everything :meth:`DiffusionDet.inference` does for one image: normalisation and
zero padding to the backbone's size divisibility, backbone + FPN, all S DDIM steps of
:meth:`DiffusionDet.sample_boxes` (the same method the eager model runs, with box renewal and the
step ensemble), top-k over boxes × classes, class-aware NMS, clipping to the image and dropping
empty boxes. Every random draw is a graph input, so a graph and the eager model given the same
inputs return the same detections at any number of steps:

=================  ======================  =====================================================
input              shape, dtype            meaning
=================  ======================  =====================================================
``image``          (3, H, W) uint8         RGB at network resolution (what ``inference`` takes
                                           as ``batched_inputs[i]["image"]``); H, W dynamic
                                           when ``dynamic_image``
``init_boxes``     (N, 4) float32          x_T in diffusion space (``predict(init_boxes=...)``)
``step_noise``     (S - 1, N, 4) float32   DDIM η noise z of steps 0..S-2 (only when S > 1
                                           and η > 0)
``renewal_boxes``  (S - 1, N, 4) float32   fresh boxes of box renewal after steps 0..S-2 (only
                                           when S > 1 and box renewal is on)
=================  ======================  =====================================================

Draw all of them from N(0, I) to sample like the eager model. Outputs: ``boxes`` (K, 4) float32
xyxy in ``image``'s pixels, ``scores`` (K,) float32, ``labels`` (K,) int64 (contiguous class ids).

The exporter is ``torch.onnx.export(..., dynamo=True)``; torchvision's ``roi_align`` and ``nms``
are translated by onnxscript's torchlib to ONNX ``RoiAlign`` (``half_pixel`` = ``aligned=True``)
and ``NonMaxSuppression``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.ops import nms

from diffvision.errors import ConfigError

from .detector import DiffusionDet

__all__ = ["DetectorGraph", "export_onnx", "graph_input_names", "OUTPUT_NAMES"]

OUTPUT_NAMES = ("boxes", "scores", "labels")


def graph_input_names(model: DiffusionDet, steps: int) -> list[str]:
    """The graph's input names for ``steps`` S (the draws that S and the model's options use)."""
    names = ["image", "init_boxes"]
    if steps > 1 and model.ddim_eta > 0:
        names.append("step_noise")
    if steps > 1 and model.box_renewal:
        names.append("renewal_boxes")
    return names


class DetectorGraph(nn.Module):
    """One image through a :class:`DiffusionDet` with every random draw given (the exported graph).

    Args:
        model: the detector (eval mode).
        num_boxes: N.
        steps: S.

    ``forward(image, init_boxes, step_noise=None, renewal_boxes=None)`` takes the inputs of
    :func:`graph_input_names` and returns ``(boxes (K, 4), scores (K,), labels (K,))`` in
    ``image``'s pixels; a draw that is not given is zero (unused when the model does not draw it).
    """

    def __init__(self, model: DiffusionDet, *, num_boxes: int, steps: int) -> None:
        super().__init__()
        self.model = model
        self.num_boxes = int(num_boxes)
        self.steps = int(steps)
        self.input_names = graph_input_names(model, self.steps)
        model._schedule(model.device)  # built eagerly: the trace sees constants, not checks
        self.register_buffer("pixel_mean", model._pixel_mean.clone(), persistent=False)
        self.register_buffer("pixel_std", model._pixel_std.clone(), persistent=False)

    def forward(
        self,
        image: Tensor,
        init_boxes: Tensor,
        step_noise: Tensor | None = None,
        renewal_boxes: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        model = self.model
        h, w = image.shape[-2], image.shape[-1]
        # preprocess_image for one image: normalise, then zero-pad to the size divisibility
        x = (image.float() - self.pixel_mean) / self.pixel_std
        d = model.size_divisibility
        x = F.pad(x, (0, (d - w % d) % d, 0, (d - h % d) % d))[None]
        images_whwh = torch.tensor([[w, h, w, h]], dtype=torch.float32, device=image.device)
        features = model.extract_features(x)
        zeros = init_boxes.new_zeros(1, self.num_boxes, 4)

        def step_draws(i: int) -> tuple[Tensor, Tensor]:
            noise = zeros if step_noise is None else step_noise[i][None]
            refill = zeros if renewal_boxes is None else renewal_boxes[i][None]
            return noise, refill

        boxes, scores, labels = model.sample_boxes(
            features, images_whwh, init_boxes[None], steps=self.steps, draws=step_draws
        )
        boxes, scores, labels = boxes[0], scores[0], labels[0]
        if model.use_nms:
            keep = _batched_nms(boxes, scores, labels, model.nms_threshold)
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        # DiffusionDet._postprocess at scale 1: clip to the image, drop empty boxes
        limits = images_whwh[0]
        boxes = torch.minimum(boxes.clamp(min=0), limits)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return boxes[keep], scores[keep], labels[keep].long()


def _batched_nms(boxes: Tensor, scores: Tensor, labels: Tensor, threshold: float) -> Tensor:
    """Class-aware NMS by offsetting each class's boxes apart (what ``batched_nms`` does for
    up to 1000 boxes; its per-class loop for more boxes keeps the same boxes), one ``nms``."""
    offsets = labels.to(boxes) * (boxes.max() + 1)
    return nms(boxes + offsets[:, None], scores, threshold)


def export_onnx(
    model: DiffusionDet,
    path: str | os.PathLike,
    *,
    num_boxes: int,
    steps: int,
    image_hw: tuple[int, int] = (128, 160),
    dynamic_image: bool = True,
    opset: int | None = None,
) -> Path:
    """Export ``model`` (N boxes, S DDIM steps, one image) to ONNX and check the file.

    Args:
        model: a :class:`DiffusionDet`; exported in eval mode on its device, restored after.
        path: the ``.onnx`` file to write (its folder is created).
        num_boxes: N.
        steps: S.
        image_hw: (H, W) of the example image traced through the graph; with ``dynamic_image``
            the file takes any size, else exactly this one.
        dynamic_image: H and W of ``image`` are dynamic axes.
        opset: ONNX opset (None: the exporter's default).

    Returns:
        ``path`` as a :class:`~pathlib.Path` after ``onnx.checker.check_model`` passed.
    """
    import onnx

    if num_boxes < 1 or steps < 1:
        raise ConfigError(f"export needs num_boxes >= 1 and steps >= 1, got {num_boxes}, {steps}")
    h, w = (int(v) for v in image_hw)
    if h < 1 or w < 1:
        raise ConfigError(f"image_hw must be positive, got {image_hw}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = DetectorGraph(model, num_boxes=num_boxes, steps=steps)
    device = model.device
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g).to(device)
    init_boxes = torch.randn(num_boxes, 4, generator=g).to(device)
    draws = {
        name: torch.randn(steps - 1, num_boxes, 4, generator=g).to(device)
        for name in graph.input_names[2:]
    }
    dynamic_shapes = None
    if dynamic_image:
        dims = {1: torch.export.Dim.DYNAMIC, 2: torch.export.Dim.DYNAMIC}
        dynamic_shapes = {"image": dims, "init_boxes": None, **{name: None for name in draws}}
    was_training = model.training
    model.eval()
    try:
        # strict (dynamo) tracing reads python ints and floats of the schedule as constants: the
        # DDIM coefficients are baked into the graph in float64, as eager computes them
        with torch.no_grad(), torch._dynamo.config.patch(specialize_float=True):
            exported = torch.export.export(
                graph, (image, init_boxes), kwargs=draws, dynamic_shapes=dynamic_shapes, strict=True
            )
            program = torch.onnx.export(
                exported,
                dynamo=True,
                input_names=graph.input_names,
                output_names=list(OUTPUT_NAMES),
                opset_version=opset,
                optimize=True,
                verify=False,
                report=False,
            )
    finally:
        model.train(was_training)
    program.save(str(path))
    onnx.checker.check_model(str(path), full_check=True)
    return path
