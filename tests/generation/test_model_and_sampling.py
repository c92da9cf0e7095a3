"""DDPMModel losses and the sampling loop (oracle recovery, determinism, CFG, SDEdit, ILVR)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from diffvision.diffusion import get_schedule
from diffvision.diffusion.parameterization import eps_from_x0, v_from_eps_x0
from diffvision.generation.model import DDPMModel
from diffvision.generation.sampling import generate, guided_model_output, low_pass
from diffvision.modeling.unet import UNet


def tiny_unet(**kw) -> UNet:
    args = dict(image_size=8, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                attention_resolutions=(4,), num_heads=2)  # fmt: skip
    args.update(kw)
    return UNet(**args)


def perturbed_unet(**kw) -> UNet:
    """A tiny UNet seeded with 0 whose weights (zero-init output included) are perturbed, so its
    output depends on x, t and the label."""
    torch.manual_seed(0)
    unet = tiny_unet(**kw)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return unet


def batch(n=4):
    return {"image": torch.rand(n, 3, 8, 8) * 2 - 1, "label": torch.arange(n) % 3}


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("min_snr_gamma", [None, 5.0])
def test_mse_loss_uses_the_prediction_types_target(prediction_type, min_snr_gamma):
    """A fresh UNet outputs 0, so loss_mse = mean_b w_b · mean(target_b²); the target is
    recovered from the x_t the UNet saw: ε = (x_t − √ᾱ x_0) / √(1 − ᾱ), v = √ᾱ ε − √(1 − ᾱ) x_0
    (Salimans & Ho 2022), and w is Min-SNR-γ (Hang et al. 2023, Table 1) or 1."""
    torch.manual_seed(0)
    schedule = get_schedule("linear", 100)
    model = DDPMModel(
        unet=tiny_unet(), schedule=schedule,
        prediction_type=prediction_type, min_snr_gamma=min_snr_gamma,
    )  # fmt: skip
    seen = {}
    model.unet.register_forward_hook(lambda m, args, out: seen.update(x_t=args[0], t=args[1]))
    data = batch()
    losses = model(data)
    assert set(losses) == {"loss_mse"}
    x0, t = data["image"].double(), seen["t"]
    a = schedule.alphas_cumprod[t].view(-1, 1, 1, 1)
    eps = (seen["x_t"].double() - a.sqrt() * x0) / (1 - a).sqrt()
    target = {"epsilon": eps, "sample": x0, "v_prediction": a.sqrt() * eps - (1 - a).sqrt() * x0}
    snr = (a / (1 - a)).flatten()
    g = snr.clamp(max=min_snr_gamma or float("inf"))
    weight = {"epsilon": g / snr, "sample": g, "v_prediction": g / (snr + 1)}[prediction_type]
    if min_snr_gamma is None:
        weight = torch.ones_like(snr)
    expected = (weight * target[prediction_type].pow(2).mean(dim=(1, 2, 3))).mean()
    torch.testing.assert_close(losses["loss_mse"].double(), expected, rtol=1e-4, atol=0)
    losses["loss_mse"].backward()
    assert model.unet.out[2].weight.grad.abs().sum() > 0


def test_hybrid_loss_trains_only_variance_through_vlb():
    torch.manual_seed(0)
    unet = tiny_unet(learn_sigma=True, num_classes=3, null_class=True)
    model = DDPMModel(unet=unet, schedule=get_schedule("cosine", 100), class_dropout_prob=0.2)
    losses = model(batch())
    assert set(losses) == {"loss_mse", "loss_vlb"}
    assert torch.isfinite(losses["loss_vlb"]) and losses["loss_vlb"] > 0
    losses["loss_vlb"].backward()
    grad = unet.out[2].weight.grad  # (6, 32, 3, 3): mean channels 0-2, variance channels 3-5
    assert grad[:3].abs().sum() == 0 and grad[3:].abs().sum() > 0  # stop-gradient on the mean


def test_invalid_options():
    with pytest.raises(ValueError, match="null_class"):
        DDPMModel(unet=tiny_unet(), schedule=get_schedule("linear", 50), class_dropout_prob=0.1)
    with pytest.raises(ValueError, match="x0"):
        DDPMModel(unet=tiny_unet(), schedule=get_schedule("linear", 50), prediction_type="x0")


class OracleUNet(nn.Module):
    """Predicts the exact ε/x0/v for data concentrated on one image ``x0``."""

    def __init__(self, x0, schedule, prediction_type, v_raw=None):
        super().__init__()
        self.unet = tiny_unet()
        self.x0, self.schedule, self.prediction_type = x0, schedule, prediction_type
        self.v_raw = v_raw  # constant variance channels (a learned-sigma UNet) if not None

    def __call__(self, x_t, t, y=None):
        eps = eps_from_x0(self.schedule, x_t, self.x0.expand_as(x_t), t)
        if self.v_raw is not None:
            return torch.cat([eps, torch.full_like(eps, self.v_raw)], dim=1)
        if self.prediction_type == "epsilon":
            return eps
        if self.prediction_type == "sample":
            return self.x0.expand_as(x_t)
        return v_from_eps_x0(self.schedule, eps, self.x0.expand_as(x_t), t)


def oracle_model(prediction_type="epsilon", scale=0.8, v_raw=None):
    schedule = get_schedule("linear", 200)
    x0 = (torch.rand(1, 3, 8, 8) * 2 - 1) * scale
    model = DDPMModel(unet=tiny_unet(), schedule=schedule, prediction_type=prediction_type)
    oracle = OracleUNet(x0, schedule, prediction_type, v_raw)
    oracle.in_channels, oracle.image_size = 3, 8
    oracle.learn_sigma, oracle.num_classes, oracle.null_class = v_raw is not None, None, False
    model.unet = oracle  # keep the wrapper, swap in the oracle
    model.__dict__["_device"] = torch.device("cpu")
    return model, x0


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm_solver++"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_oracle_model_recovers_data(sampler, prediction_type, monkeypatch):
    model, x0 = oracle_model(prediction_type)
    monkeypatch.setattr(DDPMModel, "device", property(lambda self: torch.device("cpu")))
    out = generate(model, num_samples=3, sampler=sampler, num_steps=10,
                   generator=torch.Generator().manual_seed(0))  # fmt: skip
    torch.testing.assert_close(out, x0.expand(3, -1, -1, -1), atol=1e-4, rtol=0)


def test_seeded_sampling_is_reproducible_across_batch_sizes():
    unet = perturbed_unet()
    model = DDPMModel(unet=unet, schedule=get_schedule("linear", 50)).eval()
    a = generate(model, num_samples=4, sampler="ddim", num_steps=5,
                 generator=torch.Generator().manual_seed(7))  # fmt: skip
    b = generate(model, num_samples=4, sampler="ddim", num_steps=5, batch_size=2,
                 generator=torch.Generator().manual_seed(7))  # fmt: skip
    # batch-size-dependent conv kernels differ in the last bits; DDIM amplifies that slightly
    torch.testing.assert_close(a, b, rtol=0, atol=2e-3)
    assert a.shape == (4, 3, 8, 8) and float(a.abs().max()) <= 1


def test_guidance_scale_one_is_conditional_sampling():
    unet = perturbed_unet(num_classes=3, null_class=True, learn_sigma=True)
    model = DDPMModel(unet=unet, schedule=get_schedule("linear", 50)).eval()
    labels = torch.tensor([0, 2])
    kw = dict(num_samples=2, sampler="ddpm", num_steps=4, labels=labels)
    a = generate(model, guidance_scale=1.0, generator=torch.Generator().manual_seed(1), **kw)
    b = generate(model, guidance_scale=1.0 + 1e-9, generator=torch.Generator().manual_seed(1), **kw)
    c = generate(model, guidance_scale=3.0, generator=torch.Generator().manual_seed(1), **kw)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)  # the doubled-batch path agrees
    assert not torch.allclose(a, c)


def test_guided_output_is_the_classifier_free_combination():
    """ε̃ = ε(x, ∅) + s (ε(x, y) − ε(x, ∅)) on the mean channels, variance channels from the
    conditional branch (Ho & Salimans 2022, eq. 6), against two separate UNet calls."""
    unet = perturbed_unet(num_classes=3, null_class=True, learn_sigma=True)
    model = DDPMModel(unet=unet, schedule=get_schedule("linear", 50)).eval()
    x, t, y = torch.randn(2, 3, 8, 8), torch.tensor([40, 7]), torch.tensor([0, 2])
    with torch.no_grad():
        cond, uncond = unet(x, t, y), unet(x, t, torch.full_like(y, 3))
        got = guided_model_output(model, x, t, y, guidance_scale=2.5)
        plain = guided_model_output(model, x, t, y, guidance_scale=1.0)
    expected_mean = uncond[:, :3] + 2.5 * (cond[:, :3] - uncond[:, :3])
    assert not torch.allclose(cond[:, :3], uncond[:, :3], atol=1e-3)  # the label matters
    torch.testing.assert_close(got[:, :3], expected_mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got[:, 3:], cond[:, 3:], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(plain, cond, rtol=0, atol=0)


class ZeroEpsUNet(nn.Module):
    """ε̂ = 0.3 x_t (not the data's ε, so the variance shows in the samples), plus constant
    variance channels ``v_raw`` when given."""

    in_channels, image_size, num_classes, null_class = 3, 8, None, False

    def __init__(self, v_raw=None):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))  # gives the wrapper a device
        self.v_raw, self.learn_sigma = v_raw, v_raw is not None

    def forward(self, x_t, t, y=None):
        eps = 0.3 * x_t
        if self.v_raw is None:
            return eps
        return torch.cat([eps, torch.full_like(eps, self.v_raw)], dim=1)


@pytest.mark.parametrize("v_raw, fixed", [(-1.0, "fixed_small"), (1.0, "fixed_large")])
def test_learned_variance_sampling_uses_the_variance_channels(v_raw, fixed):
    """v_raw = −1 is Σ = β̃ and v_raw = +1 is Σ = β of the strided step (Nichol & Dhariwal
    eq. 15): ``variance="learned"`` must then equal the fixed variance with the same draws."""
    schedule = get_schedule("linear", 200)
    learned = DDPMModel(unet=ZeroEpsUNet(v_raw), schedule=schedule)
    fixed_model = DDPMModel(unet=ZeroEpsUNet(), schedule=schedule)
    kw = dict(num_samples=2, sampler="ddpm", num_steps=6, clip_denoised=False)
    a = generate(learned, generator=torch.Generator().manual_seed(4), **kw)
    b = generate(fixed_model, variance=fixed, generator=torch.Generator().manual_seed(4), **kw)
    other = "fixed_large" if fixed == "fixed_small" else "fixed_small"
    c = generate(fixed_model, variance=other, generator=torch.Generator().manual_seed(4), **kw)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(a, c, atol=1e-3)


def _zero_model() -> DDPMModel:
    """A fresh UNet outputs exactly 0 (zero-init): ε̂ = 0, so DDIM (η = 0) maps x_t ↦ x_t / √ᾱ_t."""
    return DDPMModel(unet=tiny_unet(), schedule=get_schedule("linear", 200)).eval()


def test_sdedit_closed_form_with_zero_noise_prediction():
    model = _zero_model()
    guide = torch.rand(1, 3, 8, 8) * 2 - 1
    out = generate(model, num_samples=2, sampler="ddim", num_steps=20, init_image=guide,
                   strength=0.25, clip_denoised=False,
                   generator=torch.Generator().manual_seed(0))  # fmt: skip
    # trailing grid of 20 steps over 200: 199, 189, ..., 9; kept: t <= 0.25·200 − 1 = 49 → t0 = 49
    a = model.schedule.alphas_cumprod[49].float()
    noise = torch.randn((2, 3, 8, 8), generator=torch.Generator().manual_seed(0))
    expected = guide + ((1 - a) / a).sqrt() * noise  # x_t0 / √ᾱ_t0
    torch.testing.assert_close(out, expected.clamp(-1, 1), rtol=0, atol=1e-4)


def test_ilvr_low_pass_and_reference_conditioning(monkeypatch):
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(low_pass(low_pass(x, 2), 2), low_pass(x, 2))  # a projection
    torch.testing.assert_close(low_pass(x, 8), x.mean(dim=(2, 3), keepdim=True).expand_as(x))
    assert torch.equal(low_pass(x, 1), x)
    with pytest.raises(ValueError, match="factor 3"):
        low_pass(x, 3)
    # Oracle model (always x̂_0 = x0): DDIM's last step returns x0, then ILVR with y_0 = y gives
    # x0 − φ(x0) + φ(y): the reference's low band and the model's high band (Choi et al. eq. 7).
    model, x0 = oracle_model(scale=0.3)
    monkeypatch.setattr(DDPMModel, "device", property(lambda self: torch.device("cpu")))
    ref = torch.rand(1, 3, 8, 8) * 0.6 - 0.3
    out = generate(model, num_samples=2, sampler="ddim", num_steps=10, ilvr_reference=ref,
                   ilvr_factor=2, generator=torch.Generator().manual_seed(0))  # fmt: skip
    expected = x0 - low_pass(x0, 2) + low_pass(ref, 2)
    torch.testing.assert_close(out, expected.expand(2, -1, -1, -1), rtol=0, atol=1e-5)
