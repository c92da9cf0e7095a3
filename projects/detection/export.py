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
xyxy in ``image``'s pixels, ``scores`` (K,) float32, ``labels`` (K,) int64 (contiguous class ids),
and the per-detection outputs a model adds (DiffusionInst: ``mask_probs`` (K, h/4, w/4) of the
padded image, turned into masks at the original size by :class:`OnnxDetector`). A model adds
outputs by returning per-candidate tensors after ``(boxes, scores, labels)`` from
``sample_boxes`` and defining ``graph_output_names`` and ``graph_outputs(features, extras)``.

Capture: ``torch.export.export(strict=True)`` (dynamo), where the python-int timesteps and the
DDIM coefficients (python floats, float64) of the core's loop are constants baked into the graph;
then ``torch.onnx.export(exported_program, dynamo=True)`` (onnxscript). torchvision's
``roi_align`` and ``nms`` become ONNX ``RoiAlign`` (``half_pixel`` = ``aligned=True``) and
``NonMaxSuppression`` through onnxscript's torchlib; class-aware NMS offsets each class's boxes
apart first, as ``batched_nms`` does.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.ops import nms

from diffvision.data.detection_transforms import ResizeTransform, resized_shape
from diffvision.errors import ConfigError, InputFileNotFoundError, WeightsError
from diffvision.modeling.timm_backbone import fixed_same_padding
from diffvision.utils.seeding import seeded_generator

from .config import detector_section
from .detector import DiffusionDet

__all__ = [
    "OUTPUT_NAMES",
    "QUANTIZE_METHODS",
    "DetectorGraph",
    "OnnxDetector",
    "activation_matmuls",
    "export_onnx",
    "graph_input_names",
    "output_names",
    "quantize_onnx",
    "seeded_draws",
    "write_metadata",
]

OUTPUT_NAMES = ("boxes", "scores", "labels")


def graph_input_names(model: DiffusionDet, steps: int) -> list[str]:
    """The graph's input names for ``steps`` S (the draws that S and the model's options use)."""
    names = ["image", "init_boxes"]
    if steps > 1 and model.ddim_eta > 0:
        names.append("step_noise")
    if steps > 1 and model.box_renewal:
        names.append("renewal_boxes")
    return names


def seeded_draws(
    seed: int, *, num_boxes: int, steps: int, names: Sequence[str]
) -> dict[str, np.ndarray]:
    """The draws :meth:`DiffusionDet.inference` makes for one image seeded with ``seed``.

    Same generator, same order (x_T, then per step i < S - 1 the η noise and the renewal
    boxes), so a graph fed these returns what ``model.predict(image, seed=seed)`` returns.

    Returns:
        ``{name: float32 array}`` for the draw inputs in ``names`` (not ``image``).
    """
    g = seeded_generator(seed)
    init = torch.randn(num_boxes, 4, generator=g)
    noise, refill = [], []
    for _ in range(steps - 1):
        noise.append(torch.randn(num_boxes, 4, generator=g))
        refill.append(torch.randn(num_boxes, 4, generator=g))
    empty = torch.zeros(0, num_boxes, 4)
    every = {
        "init_boxes": init,
        "step_noise": torch.stack(noise) if noise else empty,
        "renewal_boxes": torch.stack(refill) if refill else empty,
    }
    return {name: every[name].numpy() for name in names if name != "image"}


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
        device = model.device
        self.register_buffer("pixel_mean", model._pixel_mean.to(device), persistent=False)
        self.register_buffer("pixel_std", model._pixel_std.to(device), persistent=False)

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

        candidates = model.sample_boxes(
            features, images_whwh, init_boxes[None], steps=self.steps, draws=step_draws
        )
        boxes, scores, labels, *extras = (c[0] for c in candidates)  # per-candidate extras
        if model.use_nms:
            keep = _batched_nms(boxes, scores, labels, model.nms_threshold)
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            extras = [e[keep] for e in extras]
        # DiffusionDet._postprocess at scale 1: clip to the image, drop empty boxes
        limits = images_whwh[0]
        boxes = torch.minimum(boxes.clamp(min=0), limits)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        outputs = (boxes[keep], scores[keep], labels[keep].long())
        if extras:
            outputs += tuple(model.graph_outputs(features, [e[keep] for e in extras]))
        return outputs


def output_names(model: nn.Module) -> list[str]:
    """The graph's output names: ``boxes, scores, labels`` and the model's
    ``graph_output_names`` (DiffusionInst: ``mask_probs``)."""
    return [*OUTPUT_NAMES, *getattr(model, "graph_output_names", ())]


def _batched_nms(boxes: Tensor, scores: Tensor, labels: Tensor, threshold: float) -> Tensor:
    """Class-aware NMS by offsetting each class's boxes apart (what ``batched_nms`` does for
    up to 1000 boxes; its per-class loop for more boxes keeps the same boxes), one ``nms``."""
    offsets = labels.to(boxes) * (boxes.max() + 1)
    return nms(boxes + offsets[:, None], scores, threshold)


MIN_OPSET = 18  # the oldest opset torch.onnx's dynamo exporter writes this graph at


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
        opset: ONNX opset (None: the exporter's default); at least :data:`MIN_OPSET`.

    Returns:
        ``path`` as a :class:`~pathlib.Path` after ``onnx.checker.check_model`` passed.

    Raises:
        ConfigError: N or S below 1, an empty image size, or an opset the exporter does not
            write (torch.onnx would write its default opset instead, without a word).
    """
    import onnx

    if num_boxes < 1 or steps < 1:
        raise ConfigError(f"export needs num_boxes >= 1 and steps >= 1, got {num_boxes}, {steps}")
    h, w = (int(v) for v in image_hw)
    if h < 1 or w < 1:
        raise ConfigError(f"image_hw must be positive, got {image_hw}")
    if opset is not None and opset < MIN_OPSET:
        raise ConfigError(
            f"opset {opset}: torch.onnx writes this graph at opset {MIN_OPSET} or newer (it cannot "
            "convert it to an older one)"
        )
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
    precision = model.precision
    model.precision = "fp32"  # the graph holds the float32 weights (quantize_onnx: int8)
    model.eval()
    try:
        # strict (dynamo) tracing reads python ints and floats of the schedule as constants: the
        # DDIM coefficients are baked into the graph in float64, as eager computes them
        # fixed_same_padding: the batch is padded to size_divisibility (a multiple of every
        # stride), where timm's size-dependent "same" padding is a constant
        with (
            torch.no_grad(),
            torch._dynamo.config.patch(specialize_float=True),
            fixed_same_padding(model.backbone),
        ):
            exported = torch.export.export(
                graph, (image, init_boxes), kwargs=draws, dynamic_shapes=dynamic_shapes, strict=True
            )
            program = torch.onnx.export(
                exported,
                dynamo=True,
                input_names=graph.input_names,
                output_names=output_names(model),
                opset_version=opset,
                optimize=True,
                verify=False,
                report=False,
            )
    finally:
        model.train(was_training)
        model.precision = precision
    written = {o.domain: o.version for o in program.model_proto.opset_import}
    if opset is not None and written.get("", written.get("ai.onnx")) != opset:
        raise ConfigError(
            f"opset {opset}: the exporter built opset {written.get('')} instead (it could not "
            "convert the graph); nothing was written"
        )
    program.save(str(path), external_data=False)
    write_metadata(
        path,
        {
            "meta_architecture": type(model).__name__,
            "masks": "mask_probs" in output_names(model),
            "num_boxes": num_boxes,
            "steps": steps,
            "num_classes": model.num_classes,
            "min_size_test": model.min_size_test,
            "max_size_test": model.max_size_test,
        },
    )
    onnx.checker.check_model(str(path), full_check=True)
    return path


def write_metadata(path: str | os.PathLike, values: dict) -> None:
    """Add ``values`` (JSON-encoded) to the ONNX file's ``metadata_props``."""
    import onnx

    proto = onnx.load(str(path))
    props = {p.key: p.value for p in proto.metadata_props}
    props.update({k: json.dumps(v) for k, v in values.items()})
    del proto.metadata_props[:]
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))


QUANTIZE_METHODS = ("static", "dynamic")


def quantize_onnx(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    method: str = "static",
    calibration: Sequence[dict[str, np.ndarray]] = (),
) -> Path:
    """Write an int8 copy of an exported DiffusionDet (onnxruntime quantization).

    ``static``: the convolutions' and matmuls' weights (per output channel) and activations in
    int8, QDQ format, activation ranges calibrated (min/max) on ``calibration``; onnxruntime
    fuses the QDQ pairs into integer kernels (VNNI on x86). A matmul of two activations (the
    dynamic convolution's pooled features times the per-box parameters, self-attention's
    products) stays float32: rounding both sides to int8 moved the toy model's AP by up to 2.2
    and reproduced fewer fp32 detections, quantizing only the matmuls with weights did not
    (SPEED.md). ``dynamic``: weights in int8, activation ranges computed at run time (no
    calibration; onnxruntime quantizes MatMul and Gemm this way, convolutions stay float32). In
    both, box decoding, the DDIM update, scores and NMS are not quantized (they are not
    convolutions or matmuls) and stay float32. The
    metadata of ``src`` is kept.

    Args:
        src: a float32 file from :func:`export_onnx`.
        dst: the int8 file to write.
        method: ``"static"`` or ``"dynamic"``.
        calibration: ``static`` only: the graph's input feeds (``image`` plus the draws, as
            :meth:`OnnxDetector.run` builds them) of a few representative images.

    Returns:
        ``dst`` as a :class:`~pathlib.Path`.

    Raises:
        ConfigError: an unknown method, or ``static`` without calibration feeds.
    """
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in QUANTIZE_METHODS:
        raise ConfigError(f"quantization method {method!r}: expected one of {QUANTIZE_METHODS}")
    calibration = list(calibration)
    if method == "static" and not calibration:
        raise ConfigError("static int8 quantization needs calibration images")
    src, dst = Path(src), Path(dst)
    # onnxruntime's recommended pre-processing: shape inference and graph optimisation, which
    # folds the exported per-call weight arithmetic (norms folded into convolutions, the
    # stages' concatenated time-MLP weights) into constants the quantizer can convert
    prepared = dst.with_name(dst.stem + ".prepared.tmp.onnx")
    quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
    try:
        _quantize(prepared, dst, method, calibration)
    finally:
        prepared.unlink(missing_ok=True)
    proto = onnx.load(str(dst))
    del proto.metadata_props[:]
    for prop in onnx.load(str(src)).metadata_props:
        proto.metadata_props.add(key=prop.key, value=prop.value)
    onnx.save(proto, str(dst))
    write_metadata(dst, {"quantized": f"int8 {method}"})
    return dst


def _quantize(
    src: Path, dst: Path, method: str, calibration: Sequence[dict[str, np.ndarray]]
) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    if method == "dynamic":
        quantize_dynamic(src, dst, per_channel=True, weight_type=QuantType.QInt8)
    else:
        feeds = list(calibration)

        class _Feeds(CalibrationDataReader):
            def __init__(self) -> None:
                self._it = iter(feeds)

            def get_next(self) -> dict[str, np.ndarray] | None:
                return next(self._it, None)

        quantize_static(
            src, dst, _Feeds(), quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["Conv", "MatMul", "Gemm"], per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            nodes_to_exclude=activation_matmuls(src),
        )  # fmt: skip


def activation_matmuls(path: str | os.PathLike) -> list[str]:
    """Names of the ``MatMul`` / ``Gemm`` nodes of the ONNX file ``path`` none of whose inputs
    is a constant (an initializer or a ``Constant`` node's output): products of two
    activations: DiffusionDet's dynamic convolution (its second operand is computed per box)
    and self-attention's ``Q K^T`` and ``softmax(.) V``."""
    import onnx

    graph = onnx.load(str(path)).graph
    constants = {t.name for t in graph.initializer}
    constants |= {out for node in graph.node if node.op_type == "Constant" for out in node.output}
    return [
        node.name
        for node in graph.node
        if node.op_type in ("MatMul", "Gemm") and not constants.intersection(node.input)
    ]


def check_box_memory(cfg, num_boxes: int, flag: str = "--boxes") -> None:
    """Refuse a box count whose pooled RoI features alone (float32, ``HIDDEN_DIM x R x R`` per
    box and head stage) would not fit in this machine's memory.

    Raises:
        CLIError: naming ``flag``, the estimate and the memory (:func:`check_allocation`).
    """
    from diffvision.engine.cli import check_allocation

    d = detector_section(cfg)[1]
    side = cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION
    per_box = d.HIDDEN_DIM * side * side * 4 * d.NUM_HEADS
    check_allocation(flag, num_boxes * per_box, f"{num_boxes} boxes through {d.NUM_HEADS} heads")


_METADATA_INTS = ("num_boxes", "steps", "min_size_test", "max_size_test")


def _read_metadata(path: Path, meta: dict[str, str]) -> dict:
    """The file's JSON metadata, with the integers the runner needs checked.

    Raises:
        WeightsError: a needed key is missing, a value is not JSON or not an integer >= 1.
    """
    missing = [k for k in _METADATA_INTS if k not in meta]
    if missing:
        raise WeightsError(f"{path}: metadata {missing} missing; export it with tools/export.py")
    values = {}
    for key, text in meta.items():
        try:
            values[key] = json.loads(text)
        except ValueError:
            values[key] = text  # metadata of other tools: kept as written
    for key in _METADATA_INTS:
        value = values[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise WeightsError(
                f"{path}: metadata {key} is {meta[key]!r}; expected an integer >= 1 (written by "
                "tools/export.py)"
            )
    return values


def _check_graph(path: Path, session, num_boxes: int, steps: int) -> tuple[int, int] | None:
    """Check that the graph's inputs and outputs are those of :func:`export_onnx`.

    Returns:
        ``(H, W)`` when the image input has a fixed size, None when its size is dynamic.

    Raises:
        WeightsError: one line naming the first input or output that does not match.
    """
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name for o in session.get_outputs()}
    draws = {"init_boxes": [num_boxes, 4]}
    if steps > 1:
        draws.update(step_noise=[steps - 1, num_boxes, 4], renewal_boxes=[steps - 1, num_boxes, 4])
    hint = "expected a DiffusionDet file written by tools/export.py"
    missing = [n for n in ("image", "init_boxes") if n not in inputs]
    unknown = sorted(set(inputs) - {"image", *draws})
    if missing or unknown:
        raise WeightsError(
            f"{path}: graph inputs {sorted(inputs)} (missing {missing}, unknown {unknown}); {hint}"
        )
    if not set(OUTPUT_NAMES) <= outputs:
        raise WeightsError(
            f"{path}: graph outputs {sorted(outputs)} lack {sorted(set(OUTPUT_NAMES) - outputs)}; "
            f"{hint}"
        )
    image = inputs["image"]
    channels_ok = (
        len(image.shape) == 3
        and image.shape[0] in (3, None)
        or (
            len(image.shape) == 3 and isinstance(image.shape[0], str)  # a symbolic dimension
        )
    )
    if image.type != "tensor(uint8)" or not channels_ok:
        raise WeightsError(
            f"{path}: input 'image' is {image.type} {image.shape}; expected uint8 (3, H, W)"
        )
    for name, shape in draws.items():
        if name not in inputs:
            continue
        got = inputs[name].shape
        fixed = [d if isinstance(d, int) else None for d in got]
        if len(got) != len(shape) or any(f is not None and f != s for f, s in zip(fixed, shape)):
            raise WeightsError(
                f"{path}: input {name!r} has shape {got}, but the metadata's num_boxes "
                f"{num_boxes} and steps {steps} need {shape}; {hint}"
            )
    h, w = image.shape[1:] if len(image.shape) == 3 else (None, None)
    return (h, w) if isinstance(h, int) and isinstance(w, int) else None


class OnnxDetector:
    """An exported DiffusionDet run by onnxruntime, with :meth:`DiffusionDet.predict`'s interface.

    No torch model is built: images are resized like ``predict`` (the sizes stored in the file by
    :func:`export_onnx`), the draws come from :func:`seeded_draws`, and the boxes are mapped back
    to the original pixels. Given the same seed it returns ``predict``'s detections.

    Args:
        path: an ``.onnx`` file written by :func:`export_onnx` / ``tools/export.py``.
        providers: onnxruntime execution providers (default CPU).
        threads: intra-op threads (None: onnxruntime's default).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        threads: int | None = None,
    ) -> None:
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise InputFileNotFoundError(f"ONNX file {str(path)!r} does not exist")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(str(path), options, providers=list(providers))
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise WeightsError(f"{path}: not a loadable ONNX model ({exc})") from exc
        self.path = path
        self.metadata = _read_metadata(path, self.session.get_modelmeta().custom_metadata_map)
        self.num_boxes = int(self.metadata["num_boxes"])
        self.steps = int(self.metadata["steps"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.fixed_hw = _check_graph(path, self.session, self.num_boxes, self.steps)
        self.output_names = [o.name for o in self.session.get_outputs()]
        if self.metadata.get("masks") and "mask_probs" not in self.output_names:
            raise WeightsError(
                f"{path}: its metadata says it predicts masks, but the graph has no 'mask_probs' "
                f"output (outputs {self.output_names}); export it again with tools/export.py"
            )

    def run(self, image_chw: np.ndarray, draws: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One graph call: ``image`` (3, H, W) uint8 at network resolution plus the draws."""
        feeds = {"image": np.ascontiguousarray(image_chw, dtype=np.uint8), **draws}
        outputs = self.session.run(self.output_names, feeds)
        return dict(zip(self.output_names, outputs, strict=True))

    def predict(
        self, images: np.ndarray | Sequence[np.ndarray], seed: int | Sequence[int] | None = None
    ) -> list[dict[str, Tensor]]:
        """Detect objects in (H, W, 3) uint8 RGB images (one array or a list), like ``predict``.

        ``seed``: int (image i uses ``seed + i``), one int per image, or None (torch's global
        RNG picks the seeds). Returns per image ``{"boxes", "scores", "labels"}`` tensors in
        original pixels (and ``masks`` (K, H, W) bool for a DiffusionInst graph).
        """
        if isinstance(images, np.ndarray) and images.ndim == 3:
            images = [images]
        images = list(images)
        if seed is None:
            seeds = torch.randint(0, 2**62, (len(images),)).tolist()
        elif isinstance(seed, (int, np.integer)):
            seeds = [int(seed) + i for i in range(len(images))]
        else:
            seeds = [int(s) for s in seed]
        results = []
        for img, s in zip(images, seeds, strict=True):
            arr = np.asarray(img)
            if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
                raise ValueError(
                    f"predict takes RGB uint8 (H, W, 3) images, got {arr.dtype} {arr.shape}"
                )
            h, w = arr.shape[:2]
            new_h, new_w = resized_shape(
                h, w, int(self.metadata["min_size_test"]), int(self.metadata["max_size_test"])
            )
            if self.fixed_hw is not None and (new_h, new_w) != self.fixed_hw:
                raise WeightsError(
                    f"{self.path} takes only {self.fixed_hw[0]}x{self.fixed_hw[1]} images (its "
                    f"image input has a fixed size); a {h}x{w} image resizes to {new_h}x{new_w}. "
                    "Export with tools/export.py, whose image size is dynamic"
                )
            if (new_h, new_w) != (h, w):
                arr = ResizeTransform(h, w, new_h, new_w).apply_image(arr)
            draws = seeded_draws(
                s, num_boxes=self.num_boxes, steps=self.steps, names=self.input_names
            )
            out = self.run(arr.transpose(2, 0, 1), draws)
            result = DiffusionDet._postprocess(
                torch.from_numpy(out["boxes"]),
                torch.from_numpy(out["scores"]),
                torch.from_numpy(out["labels"]),
                (new_h, new_w),
                (h, w),
            )  # the graph dropped empty boxes already: scaling keeps every one
            if "mask_probs" in out:  # a DiffusionInst graph
                from .diffusioninst.model import postprocess_masks

                probs = torch.from_numpy(out["mask_probs"])
                result["masks"] = postprocess_masks(probs, result["boxes"], (new_h, new_w), (h, w))
            results.append(result)
        return results
