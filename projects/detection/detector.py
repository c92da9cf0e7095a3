"""DiffusionDet: object detection as denoising of random boxes.

Chen et al., "DiffusionDet: Diffusion Model for Object Detection", ICCV 2023 (arXiv:2211.09788);
official code github.com/ShoufaChen/DiffusionDet (v0.1) ``diffusiondet/detector.py``.

- Training (paper Alg. 1): ground-truth boxes padded to N with Gaussian boxes, one timestep per
  image, corrupted with the core's ``add_noise``; the head predicts boxes and classes at all six
  stages and the set-prediction criterion (dynamic-k matching) supervises them.
- Inference (paper Alg. 2): N boxes from N(0, I) in diffusion space, ``S`` DDIM steps (η = 1) with
  box renewal (boxes whose best class score is ≤ 0.5 are replaced by fresh Gaussian boxes) and an
  ensemble over steps, class-aware NMS 0.5, top-N over boxes × classes, rescale to the original
  image.

Differences from the official code (all deliberate, none changes a batch-1 result in distribution):

- Batched inference with per-image renewal: the official ``ddim_sample`` is batch-1 only.
  Each image keeps exactly N boxes; renewed-away boxes are refilled in place with fresh N(0, I)
  draws (the official compacts the kept boxes and appends the refills: the same set of boxes).
- Every random draw of image i comes from its own generator seeded by ``seeds[i]``, so a batch gives
  the same detections as each image run alone with the same seed (up to padding effects when
  images of different sizes are padded to a common size).
- ``ensemble_include_last_step``: the official ensemble drops the last step's predictions
  (ShoufaChen/DiffusionDet issue #56: S=2 equals S=1). Default False = the official behaviour,
  which produced the official numbers;
  True appends the last step as MMDetection does.
- Non-finite boxes in training give NaN losses for their stage (the trainer then raises
  ``FloatingPointError`` naming the iteration and the loss terms) instead of the official
  ``assert`` deep inside GIoU; the pooler keeps them out of ``roi_align``.
- Ensemble and per-step candidates are sorted by score (the official ``topk(sorted=False)`` order
  is device dependent).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms, box_convert

from diffvision.data.detection_transforms import ResizeTransform, resized_shape
from diffvision.diffusion.sampling import sample
from diffvision.diffusion.schedule import NoiseSchedule, get_schedule
from diffvision.modeling.precision import (
    check_precision,
    describe_precision,
    reduced_copy,
    weights_fingerprint,
)
from diffvision.modeling.resnet import set_norm_folding
from diffvision.utils.seeding import per_sample_generators, seeded_generator

from .box_diffusion import boxes_to_diffusion, diffusion_to_boxes, prepare_diffusion_concat
from .head import DynamicHead

__all__ = ["DiffusionDet", "SCHEDULE_BUFFERS", "FLOAT32_HEAD_LAYERS"]

#: head layers that keep float32 weights in reduced precision (their outputs are the box deltas
#: and class logits)
FLOAT32_HEAD_LAYERS = ("class_logits", "bboxes_delta")

logger = logging.getLogger(__name__)

SCHEDULE_BUFFERS = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)


class DiffusionDet(nn.Module):
    """The DiffusionDet detector (keyword-only constructor; :func:`build_model` reads the config).

    Args:
        backbone: module mapping (B, 3, H, W) to a dict containing ``in_features``; must expose
            ``size_divisibility`` (32 for FPNs).
        head: the :class:`~projects.detection.head.DynamicHead`.
        criterion: ``criterion(outputs, targets) -> dict`` of weighted losses (training only; may be
            None for inference-only models).
        num_proposals: N, boxes per image at training and (by default) at inference.
        in_features: backbone outputs pooled by the head (``p2..p5``).
        pixel_mean, pixel_std: RGB normalisation on the 0-255 scale.
        num_timesteps: T of the cosine schedule.
        snr_scale: signal scale of the box diffusion space.
        sample_step: default number of DDIM steps S at inference.
        ddim_eta: η of the DDIM update (1.0 in the official code).
        box_renewal: replace boxes with max score ≤ ``renewal_threshold`` between steps.
        renewal_threshold: 0.5 in the official code.
        use_ensemble: collect each step's predictions when S > 1.
        ensemble_include_last_step: also collect the last step (False = official behaviour).
        use_nms: class-aware NMS at ``nms_threshold`` on the final candidates.
        min_size_test, max_size_test: :meth:`predict`'s resize (detectron2 ``ResizeShortestEdge``).
    """

    # load_weights: the tensors whose first dimension counts classes (a fine-tune to another
    # class count re-initialises exactly these)
    weights_class_keys = ("head.head_series.*.class_logits.*", "criterion.fed_loss_cls_weights")

    def __init__(
        self,
        *,
        backbone: nn.Module,
        head: DynamicHead,
        criterion: nn.Module | None = None,
        num_proposals: int = 300,
        in_features: Sequence[str] = ("p2", "p3", "p4", "p5"),
        pixel_mean: Sequence[float] = (123.675, 116.28, 103.53),
        pixel_std: Sequence[float] = (58.395, 57.12, 57.375),
        num_timesteps: int = 1000,
        snr_scale: float = 2.0,
        sample_step: int = 1,
        ddim_eta: float = 1.0,
        box_renewal: bool = True,
        renewal_threshold: float = 0.5,
        use_ensemble: bool = True,
        ensemble_include_last_step: bool = False,
        use_nms: bool = True,
        nms_threshold: float = 0.5,
        min_size_test: int = 800,
        max_size_test: int = 1333,
    ) -> None:
        super().__init__()
        if num_proposals < 1:
            raise ValueError(f"num_proposals must be >= 1, got {num_proposals!r}")
        if sample_step < 1:
            raise ValueError(f"sample_step must be >= 1, got {sample_step!r}")
        if len(pixel_mean) != 3 or len(pixel_std) != 3:
            raise ValueError(f"pixel_mean/pixel_std need 3 values, got {pixel_mean}, {pixel_std}")
        self.backbone = backbone
        self.in_features = tuple(in_features)
        self.num_proposals = num_proposals
        self.num_classes = head.num_classes
        self.snr_scale = snr_scale
        self.sample_step = sample_step
        self.ddim_eta = ddim_eta
        self.box_renewal = box_renewal
        self.renewal_threshold = renewal_threshold
        self.use_ensemble = use_ensemble
        self.ensemble_include_last_step = ensemble_include_last_step
        self.use_nms = use_nms
        self.nms_threshold = nms_threshold
        self.min_size_test = min_size_test
        self.max_size_test = max_size_test
        self.size_divisibility = int(getattr(backbone, "size_divisibility", 32))

        # The schedule is the core's; the 12 float64 buffers only mirror it under the official
        # names so that official checkpoints load strictly.
        self.schedule = get_schedule("cosine", num_timesteps)
        betas = self.schedule.betas
        ac = self.schedule.alphas_cumprod
        ac_prev = torch.cat([ac.new_ones(1), ac[:-1]])
        posterior_variance = betas * (1.0 - ac_prev) / (1.0 - ac)
        buffers = {  # the official formulas (detector.py L103-128)
            "betas": betas,
            "alphas_cumprod": ac,
            "alphas_cumprod_prev": ac_prev,
            "sqrt_alphas_cumprod": ac.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - ac).sqrt(),
            "log_one_minus_alphas_cumprod": torch.log(1.0 - ac),
            "sqrt_recip_alphas_cumprod": (1.0 / ac).sqrt(),
            "sqrt_recipm1_alphas_cumprod": (1.0 / ac - 1).sqrt(),
            "posterior_variance": posterior_variance,
            "posterior_log_variance_clipped": torch.log(posterior_variance.clamp(min=1e-20)),
            "posterior_mean_coef1": betas * ac_prev.sqrt() / (1.0 - ac),
            "posterior_mean_coef2": (1.0 - ac_prev) * (1.0 - betas).sqrt() / (1.0 - ac),
        }
        for name in SCHEDULE_BUFFERS:
            self.register_buffer(name, buffers[name].to(torch.float64).clone())

        self.head = head
        self.criterion = criterion
        # not buffers: official checkpoints have no pixel_mean/pixel_std keys
        self._pixel_mean = torch.tensor(pixel_mean, dtype=torch.float32).view(3, 1, 1)
        self._pixel_std = torch.tensor(pixel_std, dtype=torch.float32).view(3, 1, 1)
        #: run the backbone in channels-last memory format (faster for some CPUs and backbones)
        self.channels_last = False
        # FrozenBN (and eval-mode BN) folded into the preceding convolutions: one conv per block
        # instead of conv + norm, same outputs up to float rounding
        set_norm_folding(self.backbone, True)
        self.precision = "fp32"
        self._allow_slow_precision = False
        # precision -> (weights fingerprint, backbone, head): reduced copies, made on demand
        self._reduced: dict[str, tuple] = {}
        self._logged_precisions: set[str] = set()

    # -------------------------------------------------------------------- precision
    def set_precision(self, precision: str, *, allow_slow: bool = False) -> DiffusionDet:
        """Run inference in ``"fp32"``, ``"bf16"`` or ``"fp16"`` (``TEST.PRECISION``).

        In ``bf16``/``fp16`` the backbone's and head's convolutions and matmuls run in the
        reduced type through copies of the two modules whose weights are converted once (norms
        folded first; the backbone channels-last), made at the first
        inference and again only when the float32 weights change (kept per precision, so
        switching back and forth costs nothing). Image normalisation, the
        pooler's box coordinates and RoIAlign, box decoding, the DDIM update, scores, top-k, NMS
        and every returned tensor stay float32. Training always uses the float32 modules, and
        ``state_dict`` is unchanged. Returns ``self``.

        Args:
            precision: ``"fp32"``, ``"bf16"`` or ``"fp16"``.
            allow_slow: accept ``fp16`` on a CPU, where it is refused otherwise (for
                measurements only: it is slower than ``fp32`` there).

        Raises:
            ConfigError: an unknown precision, or ``fp16`` on a CPU without ``allow_slow``.
        """
        check_precision(precision, self.device, allow_slow=allow_slow)
        self.precision = precision
        self._allow_slow_precision = allow_slow
        if precision not in self._logged_precisions:  # once per precision and model
            self._logged_precisions.add(precision)
            logger.info("DiffusionDet %s", describe_precision(precision, self.device))
        return self

    def _channels_last(self) -> bool:
        """Run the backbone in channels-last memory format: when :attr:`channels_last` is set,
        and always in reduced precision (oneDNN's bf16 convolutions prefer it: R50-FPN
        backbone 0.47x fp32 time channels-last vs 0.55x contiguous, measured on AVX-512 BF16)."""
        return self.channels_last or (not self.training and self.precision != "fp32")

    def inference_modules(self) -> tuple[nn.Module, DynamicHead]:
        """The (backbone, head) that run: the float32 modules in training or at ``fp32``, else
        their reduced-precision copies (see :meth:`set_precision`)."""
        if self.training or self.precision == "fp32":
            return self.backbone, self.head
        key = weights_fingerprint((self.backbone, self.head))
        cached = self._reduced.get(self.precision)
        if cached is None or cached[0] != key:
            dtype = check_precision(
                self.precision, self.device, allow_slow=self._allow_slow_precision
            )
            cached = self._reduced[self.precision] = (
                key,
                reduced_copy(self.backbone, dtype, channels_last=True),
                # the box-delta and class-logit layers (D -> 4, D -> K: a negligible share of
                # the work) in float32, so deltas and scores are not rounded to the reduced type
                reduced_copy(self.head, dtype, keep_float32=FLOAT32_HEAD_LAYERS),
            )
        return cached[1], cached[2]

    # ------------------------------------------------------------------ helpers
    @property
    def device(self) -> torch.device:
        return self.betas.device

    def _schedule(self, device: torch.device) -> NoiseSchedule:
        return self.schedule.to(device)  # the core caches one copy per device

    def preprocess_image(self, batched_inputs: Sequence[dict]) -> tuple[Tensor, Tensor]:
        """Normalise, zero-pad (after normalisation) to a multiple of ``size_divisibility``.

        Returns:
            images (B, 3, H_pad, W_pad) float32 and images_whwh (B, 4) of the unpadded sizes.
        """
        device = self.device
        mean, std = self._pixel_mean.to(device), self._pixel_std.to(device)
        images = [(x["image"].to(device).float() - mean) / std for x in batched_inputs]
        d = self.size_divisibility
        max_h = max(img.shape[-2] for img in images)
        max_w = max(img.shape[-1] for img in images)
        pad_h, pad_w = -(-max_h // d) * d, -(-max_w // d) * d
        batch = images[0].new_zeros(len(images), 3, pad_h, pad_w)
        for i, img in enumerate(images):
            batch[i, :, : img.shape[-2], : img.shape[-1]] = img
        whwh = torch.tensor(
            [[img.shape[-1], img.shape[-2], img.shape[-1], img.shape[-2]] for img in images],
            dtype=torch.float32,
            device=device,
        )
        return batch, whwh

    def extract_features(self, images: Tensor) -> list[Tensor]:
        """(B, 3, H, W) normalised images -> the ``in_features`` maps, each (B, C, H_l, W_l).

        The maps are in the dtype of the float32 (or float64) weights whatever the precision:
        RoIAlign pools them at float32 box coordinates (converted once here, not per stage).
        """
        backbone, _ = self.inference_modules()
        dtype = self.head.time_mlp[1].weight.dtype  # float32, or float64 models
        images = images.to(next(backbone.parameters()).dtype)
        if self._channels_last():
            images = images.contiguous(memory_format=torch.channels_last)
        features = backbone(images)
        # RoIAlign reads NCHW in the boxes' dtype: convert once here, not at every stage
        return [features[f].to(dtype, memory_format=torch.contiguous_format)
                for f in self.in_features]  # fmt: skip

    # ------------------------------------------------------------------ forward
    def forward(self, batched_inputs: Sequence[dict]):
        """Training: dict of weighted losses. Eval: list of per-image result dicts.

        Args:
            batched_inputs: one dict per image: ``image`` uint8 (3, H, W) RGB (already resized),
                ``height``/``width`` (original size), and in training ``instances`` =
                ``{"gt_boxes": (n, 4) xyxy resized pixels, "gt_classes": (n,) int64}``. In eval an
                optional int ``seed`` per image makes its sampling deterministic.
        """
        if not self.training:
            seeds = [x.get("seed") for x in batched_inputs]
            with torch.inference_mode():
                results = self.inference(batched_inputs, seeds=None if None in seeds else seeds)
            # normal tensors again (a few KB): callers may edit the outputs in place
            return [{k: v.clone() for k, v in r.items()} for r in results]
        return self.losses(batched_inputs)

    def prepare_targets(
        self, batched_inputs: Sequence[dict], images_whwh: Tensor
    ) -> tuple[list[dict], Tensor, Tensor]:
        """Targets in the official layout plus the corrupted boxes (official ``prepare_targets``).

        Returns:
            targets (list of dicts: ``labels``, ``boxes`` normalised cxcywh, ``boxes_xyxy``,
            ``image_size_xyxy``, ``image_size_xyxy_tgt``, ``area``), noisy boxes (B, N, 4)
            normalised xyxy and t (B,).
        """
        device = self.device
        schedule = self._schedule(device)
        targets, boxes, ts = [], [], []
        for x, whwh in zip(batched_inputs, images_whwh, strict=True):
            inst = x.get("instances")
            if inst is None:
                raise ValueError("training inputs need an 'instances' entry with gt_boxes/classes")
            gt_xyxy = torch.as_tensor(inst["gt_boxes"], dtype=torch.float32, device=device)
            gt_xyxy = gt_xyxy.reshape(-1, 4)
            labels = torch.as_tensor(inst["gt_classes"], dtype=torch.int64, device=device)
            gt_cxcywh = box_convert(gt_xyxy / whwh, "xyxy", "cxcywh")
            seed = x.get("seed")  # set by the training loader: draws = f(SEED, iteration, position)
            d_boxes, _, t = prepare_diffusion_concat(
                gt_cxcywh,
                schedule=schedule,
                num_proposals=self.num_proposals,
                scale=self.snr_scale,
                generator=None if seed is None else seeded_generator(seed),
            )
            boxes.append(d_boxes)
            ts.append(t)
            targets.append(
                {
                    "labels": labels,
                    "boxes": gt_cxcywh,
                    "boxes_xyxy": gt_xyxy,
                    "image_size_xyxy": whwh,
                    "image_size_xyxy_tgt": whwh[None].repeat(len(gt_xyxy), 1),
                    "area": (gt_xyxy[:, 2] - gt_xyxy[:, 0]) * (gt_xyxy[:, 3] - gt_xyxy[:, 1]),
                }
            )
        return targets, torch.stack(boxes), torch.cat(ts)

    def losses(self, batched_inputs: Sequence[dict]) -> dict[str, Tensor]:
        """Training forward (paper Alg. 1)."""
        if self.criterion is None:
            raise RuntimeError("this DiffusionDet was built without a criterion: cannot train")
        images, images_whwh = self.preprocess_image(batched_inputs)
        features = self.extract_features(images)
        targets, x_boxes, t = self.prepare_targets(batched_inputs, images_whwh)
        x_boxes = x_boxes * images_whwh[:, None, :]
        # Non-finite boxes of a diverged stage give NaN losses for it (criterion), so the
        # trainer's FloatingPointError names the iteration and every loss term.
        logits, boxes = self.head(features, x_boxes, t)  # (L, B, N, K), (L, B, N, 4)
        outputs = {
            "pred_logits": logits[-1],
            "pred_boxes": boxes[-1],
            "aux_outputs": [
                {"pred_logits": a, "pred_boxes": b}
                for a, b in zip(logits[:-1], boxes[:-1], strict=True)
            ],
        }
        return self.criterion(outputs, targets)

    # ---------------------------------------------------------------- inference
    def _topk(self, logits: Tensor, boxes: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
        """Top-k over boxes × classes per image: (B, N, K), (B, N, 4) -> (B, k, 4), (B, k) x2."""
        scores = logits.sigmoid().flatten(1)  # (B, N·K)
        k = min(k, scores.shape[1])
        top_scores, idx = scores.topk(k, dim=1, sorted=True)
        labels = idx % self.num_classes
        box_idx = idx // self.num_classes
        top_boxes = boxes.gather(1, box_idx[..., None].expand(-1, -1, 4))
        return top_boxes, top_scores, labels

    def sample_boxes(
        self,
        features: Sequence[Tensor],
        images_whwh: Tensor,
        x_T: Tensor,
        *,
        steps: int,
        draws: Callable[[int], tuple[Tensor, Tensor]],
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The DDIM loop over boxes, through the core's loop :func:`diffvision.diffusion.sample`.

        As the official ``ddim_sample`` (paper Alg. 2): the head predicts x̂_0
        (``prediction_type="sample"``) on the official grid
        (``make_timesteps(T, S, "diffusiondet")``); after each step but the last, boxes whose best
        class score is ≤ ``renewal_threshold`` are replaced (box renewal) and each step's top-N
        predictions join the ensemble. The DDIM update runs in float64 (the official schedule
        buffers are float64) and the state is kept in float32 between steps. Eager inference and
        the ONNX export (:mod:`projects.detection.export`) both run this method; only where the
        random draws come from differs.

        Args:
            features: the FPN maps of :meth:`extract_features`, each (B, D, H_l, W_l).
            images_whwh: (B, 4) unpadded (w, h, w, h) of each image.
            x_T: (B, N, 4) starting boxes in diffusion space.
            steps: S.
            draws: ``draws(i) -> (noise, refill)`` for step i < S - 1, each (B, N, 4): the DDIM η
                noise z and the fresh boxes that replace renewed-away ones.

        Returns:
            candidate boxes (B, M, 4) absolute xyxy, scores (B, M) and labels (B, M) before NMS;
            M = N · (number of ensembled steps), or N without an ensemble.
        """
        n_box = x_T.shape[1]
        _, head = self.inference_modules()
        ensemble = self.use_ensemble and steps > 1
        head_out: dict[str, Tensor] = {}
        candidates: list[tuple[Tensor, Tensor, Tensor]] = []

        def model_fn(x_t: Tensor, t: Tensor) -> Tensor:  # x̂_0 in diffusion space
            boxes_in = diffusion_to_boxes(x_t.float(), images_whwh, scale=self.snr_scale)
            all_logits, all_boxes = head(features, boxes_in, t)
            head_out["logits"], head_out["boxes"] = all_logits[-1], all_boxes[-1]
            return boxes_to_diffusion(all_boxes[-1], images_whwh, scale=self.snr_scale).double()

        def noise_fn(i: int) -> Tensor:  # the last step lands on x̂_0 (σ = 0): no draw
            if i == steps - 1:
                return x_T.new_zeros(x_T.shape, dtype=torch.float64)
            return draws(i)[0].double()

        def step_callback(i: int, t: int, x_prev: Tensor, x0: Tensor) -> Tensor | None:
            logits, boxes = head_out["logits"], head_out["boxes"]
            is_last = i == steps - 1
            if ensemble and (not is_last or self.ensemble_include_last_step):
                candidates.append(self._topk(logits, boxes, n_box))
            if is_last:
                return None
            x_prev = x_prev.to(x_T.dtype)
            if self.box_renewal:
                keep = logits.sigmoid().amax(dim=-1) > self.renewal_threshold  # (B, N)
                x_prev = torch.where(keep[..., None], x_prev, draws(i)[1].to(x_prev))
            return x_prev.double()

        sample(
            model_fn,
            x_T.double(),
            self._schedule(x_T.device),
            sampler="ddim",
            num_steps=steps,
            eta=self.ddim_eta,
            prediction_type="sample",
            spacing="diffusiondet",
            noise_fn=noise_fn,
            step_callback=step_callback,
        )
        if not candidates:
            return self._topk(head_out["logits"], head_out["boxes"], n_box)
        return tuple(torch.cat([c[j] for c in candidates], dim=1) for j in range(3))

    @torch.no_grad()
    def inference(
        self,
        batched_inputs: Sequence[dict],
        *,
        num_boxes: int | None = None,
        steps: int | None = None,
        seeds: Sequence[int] | None = None,
        init_boxes: Tensor | None = None,
        step_noise: Tensor | None = None,
        renewal_boxes: Tensor | None = None,
    ) -> list[dict[str, Tensor]]:
        """DDIM sampling over boxes for a batch (official ``ddim_sample``, batched with per-image
        renewal).

        Args:
            batched_inputs: dicts with ``image`` (3, H, W) uint8 already resized and optional
                ``height``/``width`` of the original image.
            num_boxes: N (default ``num_proposals``).
            steps: S (default ``sample_step``).
            seeds: one int per image; image i's draws come from a generator seeded with
                ``seeds[i]``. None draws the per-image seeds from torch's global RNG.
            init_boxes: (B, N, 4) starting boxes x_T in diffusion space (replaces the first draw).
            step_noise: (B, S - 1, N, 4) the DDIM η noise of steps 0..S-2 (replaces those draws;
                given together with ``renewal_boxes``).
            renewal_boxes: (B, S - 1, N, 4) the fresh boxes of box renewal after steps 0..S-2.
                With ``init_boxes`` these fix every random draw (the ONNX graph's inputs).

        Returns:
            per image ``{"boxes": (n, 4) xyxy original pixels, "scores": (n,), "labels": (n,)}``.
        """
        n_img = len(batched_inputs)
        n_box = int(num_boxes or self.num_proposals)
        n_steps = int(steps or self.sample_step)
        if n_box < 1 or n_steps < 1:
            raise ValueError(f"num_boxes and steps must be >= 1, got {n_box!r}, {n_steps!r}")
        if seeds is None:
            seeds = torch.randint(0, 2**62, (n_img,)).tolist()
        if len(seeds) != n_img:
            raise ValueError(f"got {len(seeds)} seeds for {n_img} images")
        device = self.device
        generators = per_sample_generators(seeds)

        def randn() -> Tensor:  # (B, N, 4), each image from its own generator
            draws = [torch.randn(n_box, 4, generator=g) for g in generators]
            return torch.stack(draws).to(device)

        def given(name: str, value: Tensor | None, shape: tuple[int, ...]) -> Tensor | None:
            if value is None:
                return None
            value = torch.as_tensor(value, dtype=torch.float32)
            if value.shape != shape:
                raise ValueError(f"{name} must have shape {shape}, got {tuple(value.shape)}")
            return value.to(device)

        init_boxes = given("init_boxes", init_boxes, (n_img, n_box, 4))
        fixed_noise = given("step_noise", step_noise, (n_img, n_steps - 1, n_box, 4))
        fixed_refill = given("renewal_boxes", renewal_boxes, (n_img, n_steps - 1, n_box, 4))
        if (fixed_noise is None) != (fixed_refill is None):
            raise ValueError("step_noise and renewal_boxes are given together or not at all")

        images, images_whwh = self.preprocess_image(batched_inputs)
        features = self.extract_features(images)
        x_t = init_boxes if init_boxes is not None else randn()
        step_draws: dict[int, tuple[Tensor, Tensor]] = {}

        def draws(i: int) -> tuple[Tensor, Tensor]:  # per step: the η noise, then the refill
            if fixed_noise is not None:
                return fixed_noise[:, i], fixed_refill[:, i]
            if i not in step_draws:
                step_draws[i] = (randn(), randn())
            return step_draws[i]

        candidates = self.sample_boxes(features, images_whwh, x_t, steps=n_steps, draws=draws)
        return self.finalize(batched_inputs, features, candidates)

    def finalize(
        self, batched_inputs: Sequence[dict], features: Sequence[Tensor], candidates: tuple
    ) -> list[dict[str, Tensor]]:
        """Per image: class-aware NMS of :meth:`sample_boxes`'s candidates, then
        :meth:`_postprocess` to the original size (a subclass adding per-box outputs overrides
        this together with :meth:`sample_boxes`)."""
        cand_boxes, cand_scores, cand_labels = candidates
        results = []
        for i, x in enumerate(batched_inputs):
            b, s, lab = cand_boxes[i], cand_scores[i], cand_labels[i]
            if self.use_nms:
                keep = batched_nms(b, s, lab, self.nms_threshold)
                b, s, lab = b[keep], s[keep], lab[keep]
            h, w = x["image"].shape[-2:]
            results.append(
                self._postprocess(b, s, lab, (h, w), (x.get("height", h), x.get("width", w)))
            )
        return results

    @staticmethod
    def _postprocess(
        boxes: Tensor,
        scores: Tensor,
        labels: Tensor,
        image_size: tuple[int, int],
        output_size: tuple[int, int],
    ) -> dict[str, Tensor]:
        """detectron2 ``detector_postprocess``: rescale to the original size, clip, drop empty."""
        out_h, out_w = int(output_size[0]), int(output_size[1])
        scale = boxes.new_tensor(
            [
                out_w / image_size[1],
                out_h / image_size[0],
                out_w / image_size[1],
                out_h / image_size[0],
            ]
        )
        boxes = boxes * scale
        boxes = torch.stack(
            (
                boxes[:, 0].clamp(0, out_w),
                boxes[:, 1].clamp(0, out_h),
                boxes[:, 2].clamp(0, out_w),
                boxes[:, 3].clamp(0, out_h),
            ),
            dim=1,
        )
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep].long()}

    # ------------------------------------------------------------------ predict
    def predict(
        self,
        images: np.ndarray | Tensor | Sequence[np.ndarray | Tensor],
        num_boxes: int | None = None,
        steps: int | None = None,
        init_boxes: Tensor | None = None,
        seed: int | Sequence[int] | None = None,
    ) -> list[dict[str, Tensor]]:
        """Detect objects in RGB images.

        Each image is resized like detectron2's test mapper (shortest edge ``min_size_test``,
        longest at most ``max_size_test``, PIL bilinear), run through :meth:`inference` in one
        batch, and its boxes are mapped back to original pixels.

        Args:
            images: one (H, W, 3) uint8 RGB array, a (B, H, W, 3) array, or a list of (H, W, 3)
                arrays (sizes may differ).
            num_boxes: N (default ``num_proposals``).
            steps: DDIM steps S (default ``sample_step``).
            init_boxes: (B, N, 4) starting noise in diffusion space (normalised cxcywh scaled to
                [-scale, scale] before clamping), for exact reproducibility.
            seed: int (image i uses ``seed + i``) or one int per image; None follows torch's global
                RNG (so ``torch.manual_seed`` makes it reproducible too).

        Returns:
            per image ``{"boxes": (n, 4) float xyxy in original pixels, "scores": (n,), "labels":
            (n,) int64 contiguous 0-based}``.
        """
        if isinstance(images, (np.ndarray, Tensor)) and images.ndim == 3:
            images = [images]
        images = list(images)
        if seed is None:
            seeds = None
        elif isinstance(seed, (int, np.integer)):
            seeds = [int(seed) + i for i in range(len(images))]
        else:
            seeds = [int(s) for s in seed]
        inputs = []
        for img in images:
            arr = img.cpu().numpy() if isinstance(img, Tensor) else np.asarray(img)
            if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
                raise ValueError(
                    f"predict takes RGB uint8 (H, W, 3) images, got {arr.dtype} {arr.shape}"
                )
            h, w = arr.shape[:2]
            new_h, new_w = resized_shape(h, w, self.min_size_test, self.max_size_test)
            if (new_h, new_w) != (h, w):
                arr = ResizeTransform(h, w, new_h, new_w).apply_image(arr)
            tensor = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
            inputs.append({"image": tensor, "height": h, "width": w})
        was_training = self.training
        self.eval()
        try:
            return self.inference(
                inputs, num_boxes=num_boxes, steps=steps, seeds=seeds, init_boxes=init_boxes
            )
        finally:
            self.train(was_training)
