"""The DDPM training model: a UNet plus a noise schedule, computing the diffusion loss.

Training step (Ho et al. 2020, Alg. 1, generalised):

1. ``t ~ U{0, ..., T-1}``, ``ε ~ N(0, I)``, ``x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε`` (eq. 4).
2. The UNet predicts ``ε`` (Ho et al.), ``x_0`` ("sample") or ``v = √ᾱ_t ε − √(1 − ᾱ_t) x_0``
   (Salimans & Ho 2022, "v_prediction").
3. ``loss_mse = E[w_t ‖target − prediction‖²]`` with ``w_t = 1`` (L_simple, eq. 14) or the
   Min-SNR-γ weight (Hang et al. 2023, eq. 7), see :func:`~.losses.snr_loss_weight`.
4. With learned variance (Nichol & Dhariwal 2021), the UNet also outputs ``v`` of eq. 15 and
   ``loss_vlb = λ · T · E_t[L_{t-1}]`` with the mean prediction detached, so that
   ``loss_mse + loss_vlb`` is their L_hybrid = L_simple + λ L_vlb (eq. 16, λ = 0.001); the factor
   T turns the per-timestep term E_t[L_{t-1}] into the sum L_vlb = Σ_t L_{t-1}.

Classifier-free guidance (Ho & Salimans 2022): with ``class_dropout_prob > 0`` labels are replaced
by the UNet's null class with that probability during training.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from diffvision.diffusion.forward import add_noise, posterior_mean_variance
from diffvision.diffusion.parameterization import (
    PredictionType,
    check_prediction_type,
    get_velocity,
    predict_x0_eps,
)
from diffvision.diffusion.schedule import NoiseSchedule
from diffvision.generation.losses import (
    learned_log_variance,
    mean_flat,
    snr_loss_weight,
    vlb_terms,
)
from diffvision.modeling.unet import UNet
from diffvision.utils.seeding import per_sample_generators

__all__ = ["DDPMModel"]


class DDPMModel(nn.Module):
    """UNet + schedule; ``model(batch)`` returns the training losses.

    Args:
        unet: the denoiser; ``unet.learn_sigma`` decides whether the VLB term is trained.
        schedule: the training noise schedule (T steps).
        prediction_type: ``"epsilon"``, ``"sample"`` or ``"v_prediction"``.
        min_snr_gamma: γ of Min-SNR weighting; ``None`` for L_simple.
        vlb_weight: λ of L_hybrid (only with ``unet.learn_sigma``).
        class_dropout_prob: probability of dropping a label to the null class (CFG training).

    Batches are ``{"image": (B, C, S, S) in [-1, 1], "label": (B,) int64}`` or a pair
    ``(images, labels)``; labels are ignored by unconditional UNets.
    """

    def __init__(
        self,
        *,
        unet: UNet,
        schedule: NoiseSchedule,
        prediction_type: PredictionType = "epsilon",
        min_snr_gamma: float | None = None,
        vlb_weight: float = 0.001,
        class_dropout_prob: float = 0.0,
    ):
        super().__init__()
        check_prediction_type(prediction_type)
        if not 0.0 <= class_dropout_prob < 1.0:
            raise ValueError(f"class_dropout_prob must lie in [0, 1), got {class_dropout_prob}")
        if class_dropout_prob > 0 and not unet.null_class:
            raise ValueError("class_dropout_prob > 0 needs a UNet with null_class=True")
        if vlb_weight < 0:
            raise ValueError(f"vlb_weight must be >= 0, got {vlb_weight}")
        self.unet = unet
        self.schedule = schedule
        self.prediction_type = prediction_type
        self.min_snr_gamma = min_snr_gamma
        self.vlb_weight = vlb_weight
        self.class_dropout_prob = class_dropout_prob

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def num_timesteps(self) -> int:
        return self.schedule.num_timesteps

    # ------------------------------------------------------------------ training
    @staticmethod
    def _unpack(batch: Any) -> tuple[Tensor, Tensor | None]:
        if isinstance(batch, Mapping):
            return batch["image"], batch.get("label")
        if isinstance(batch, Sequence) and not isinstance(batch, Tensor):
            return batch[0], (batch[1] if len(batch) > 1 else None)
        return batch, None

    def forward(self, batch: Any) -> dict[str, Tensor]:
        """Compute the training losses of one batch.

        Returns:
            ``{"loss_mse": scalar}`` plus ``{"loss_vlb": scalar}`` with learned variance.
        """
        images, labels = self._unpack(batch)
        device = self.device
        x0 = images.to(device, non_blocking=True).float()  # (B, C, S, S)
        b = x0.shape[0]
        sched = self.schedule.to(device)
        seeds = batch.get("seed") if isinstance(batch, Mapping) else None
        if seeds is not None:
            # Sample i's timestep, noise and label dropout come from its own generator, so they
            # depend on (SEED, iteration, position in the global batch) only.
            gens = per_sample_generators(seeds)
            t = torch.cat([torch.randint(0, self.num_timesteps, (1,), generator=g) for g in gens])
            noise = torch.stack([torch.randn(x0.shape[1:], generator=g) for g in gens])
            drop_u = torch.cat([torch.rand(1, generator=g) for g in gens])
            t, noise, drop_u = t.to(device), noise.to(device), drop_u.to(device)
        else:
            t = torch.randint(0, self.num_timesteps, (b,), device=device)  # uniform sampling
            noise = torch.randn_like(x0)
            drop_u = (
                torch.rand(b, device=device) if self.class_dropout_prob > 0 else noise.new_ones(b)
            )
        x_t = add_noise(sched, x0, noise, t)
        y = self._training_labels(labels, drop_u)
        out = self.unet(x_t, sched.timestep_map[t], y)  # (B, C or 2C, S, S)
        c = x0.shape[1]
        pred = out[:, :c]
        if self.prediction_type == "epsilon":
            target = noise
        elif self.prediction_type == "sample":
            target = x0
        else:
            target = get_velocity(sched, x0, noise, t)
        alpha_bar = sched.alphas_cumprod[t]
        snr = (alpha_bar / (1.0 - alpha_bar)).float()
        weight = snr_loss_weight(
            snr, prediction_type=self.prediction_type, gamma=self.min_snr_gamma
        )
        losses = {"loss_mse": (weight * mean_flat((pred - target) ** 2)).mean()}
        if self.unet.learn_sigma and self.vlb_weight > 0:
            vlb = self._vlb(pred.detach(), out[:, c:], x0, x_t, t, sched)
            losses["loss_vlb"] = self.vlb_weight * self.num_timesteps * vlb.mean()
        return losses

    def _training_labels(self, labels: Tensor | None, drop_u: Tensor) -> Tensor | None:
        """Labels with classifier-free-guidance dropout where ``drop_u`` (B,) uniform draws are
        below ``class_dropout_prob``."""
        if self.unet.num_classes is None:
            return None
        if labels is None:
            raise ValueError("a class-conditional DDPM needs labels in the batch")
        y = torch.as_tensor(labels, device=drop_u.device).long()
        if self.class_dropout_prob > 0:
            drop = drop_u < self.class_dropout_prob
            y = torch.where(drop, torch.full_like(y, self.unet.num_classes), y)
        return y

    def _vlb(
        self,
        pred: Tensor,
        v_raw: Tensor,
        x0: Tensor,
        x_t: Tensor,
        t: Tensor,
        sched: NoiseSchedule,
    ) -> Tensor:
        """Per-sample L_{t-1} (bits/dim) with the mean frozen (Nichol & Dhariwal 2021, §3.1)."""
        x0_hat, _ = predict_x0_eps(sched, pred, x_t, t, self.prediction_type)
        model_mean, _ = posterior_mean_variance(sched, x0_hat, x_t, t, t - 1)
        true_mean, _ = posterior_mean_variance(sched, x0, x_t, t, t - 1)
        shape = (-1,) + (1,) * (x0.ndim - 1)
        true_log_var = sched.posterior_log_variance_clipped[t].float().view(shape)
        model_log_var = learned_log_variance(
            v_raw,
            log_beta=torch.log(sched.betas[t]).float().view(shape),
            log_posterior_variance_clipped=true_log_var,
        )
        return vlb_terms(
            x0=x0,
            true_mean=true_mean,
            true_log_variance=true_log_var,
            model_mean=model_mean,
            model_log_variance=model_log_var,
            is_first_step=t == 0,
        )
