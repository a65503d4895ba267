"""Denoiser wrappers: eps and v formulas, timesteps, extra channels, CFG batching and rescale."""

import pytest
import torch

from webui.engine.sampling.denoisers import (
    CFGDenoiser, Conditioning, DiscreteSchedule, ScheduledConditioning, make_denoiser,
)


def test_schedule_matches_the_reference_sigmas():
    from diffusers import EulerDiscreteScheduler

    ref = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    ours = DiscreteSchedule.scaled_linear()
    expected = ((1 - ref.alphas_cumprod) / ref.alphas_cumprod) ** 0.5
    # We compute the schedule in float64 like the original LDM code (and so A1111); diffusers uses
    # float32, which differs in the 6th digit.
    assert torch.allclose(ours.sigmas, expected.float(), rtol=2e-5)
    assert ours.sigma_min == pytest.approx(0.0291672, rel=1e-5) and ours.sigma_max == pytest.approx(14.6146, rel=1e-5)


def test_sigma_t_round_trip_and_interpolation():
    s = DiscreteSchedule.scaled_linear()
    t = torch.tensor([0.0, 1.0, 10.5, 500.25, 999.0])
    assert torch.allclose(s.sigma_to_t(s.t_to_sigma(t)), t, atol=1e-3)
    assert torch.allclose(s.t_to_sigma(torch.tensor([10.0])), s.sigmas[10:11])


class OracleUNet:
    """Knows the clean x0 and noise, so it returns the exact eps or v the network should predict."""

    def __init__(self, x0, noise, prediction, schedule, extra_channels=0):
        self.x0, self.noise, self.prediction, self.schedule = x0, noise, prediction, schedule
        self.extra_channels = extra_channels
        self.calls = []

    def __call__(self, x_in, t, context):
        self.calls.append((x_in.shape, t.clone(), context.shape))
        sigma = self.schedule.t_to_sigma(t)[:, None, None, None]
        alpha = 1 / (sigma**2 + 1)  # abar of this noise level
        if self.prediction == "eps":
            return self.noise
        return alpha.sqrt() * self.noise - (1 - alpha).sqrt() * self.x0  # v = sqrt(a) eps - sqrt(1-a) x0


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_denoisers_recover_the_clean_latent(prediction):
    schedule = DiscreteSchedule.scaled_linear()
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 8, generator=gen)
    sigma = schedule.t_to_sigma(torch.tensor([999.0, 40.0]))
    x = x0 + noise * sigma[:, None, None, None]  # k-diffusion's parameterisation
    unet = OracleUNet(x0, noise, prediction, schedule)
    denoiser = make_denoiser(unet, schedule, prediction)
    concat = torch.zeros(2, 5, 8, 8)
    out = denoiser(x, sigma, Conditioning(torch.zeros(2, 77, 16), concat))
    assert torch.allclose(out, x0, atol=1e-4)
    shape, t, _ = unet.calls[0]
    assert shape == (2, 9, 8, 8)  # the extra channels are appended to the scaled input
    assert torch.allclose(t, torch.tensor([999.0, 40.0]), atol=1e-3)


def test_cfg_batches_cond_and_uncond_in_one_call_and_skips_uncond_at_scale_1():
    calls = []

    def denoiser(x, sigma, cond):
        calls.append(x.shape[0])
        return x * 0 + cond.context.mean(dim=(1, 2))[:, None, None, None]

    cond = Conditioning(torch.full((2, 77, 8), 1.0))
    uncond = Conditioning(torch.full((2, 77, 8), 0.0))
    x, sigma = torch.zeros(2, 4, 4, 4), torch.ones(2)
    out = CFGDenoiser(denoiser, cond, uncond, cfg_scale=7.0)(x, sigma)
    assert calls == [4] and torch.allclose(out, torch.full_like(out, 7.0))  # 0 + 7 * (1 - 0)
    calls.clear()
    out = CFGDenoiser(denoiser, cond, uncond, cfg_scale=1.0)(x, sigma)
    assert calls == [2] and torch.allclose(out, torch.ones_like(out))


def test_cfg_rescale_matches_the_diffusers_formula():
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

    gen = torch.Generator().manual_seed(1)
    x, sigma = torch.randn(2, 4, 8, 8, generator=gen) * 3, torch.tensor([2.0, 0.5])
    d_cond, d_uncond = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 8, generator=gen)

    def denoiser(xx, ss, cond):
        return torch.cat([d_cond, d_uncond])

    context = Conditioning(torch.zeros(2, 77, 8))
    out = CFGDenoiser(denoiser, context, context, cfg_scale=5.0, cfg_rescale=0.7)(x, sigma)
    s = sigma[:, None, None, None]
    eps_c, eps_u = (x - d_cond) / s, (x - d_uncond) / s
    eps_guided = eps_u + 5.0 * (eps_c - eps_u)
    expected = x - rescale_noise_cfg(eps_guided, eps_c, guidance_rescale=0.7) * s
    assert torch.allclose(out, expected, atol=1e-5)


def _by_context(x, sigma, cond):
    """A denoiser whose x0 estimate is each row's context mean: shows which conditioning it was given."""
    return x * 0 + cond.context.mean(dim=(1, 2))[:, None, None, None]


def test_and_parts_are_combined_with_their_weights_in_one_call():
    # A1111's composable diffusion: uncond + scale * sum_i w_i (cond_i - uncond).
    calls = []

    def denoiser(x, sigma, cond):
        calls.append(x.shape[0])
        return _by_context(x, sigma, cond)

    parts = [ScheduledConditioning.constant(Conditioning(torch.full((1, 77, 8), v)), w) for v, w in ((1.0, 1.0), (3.0, 0.5))]
    uncond = Conditioning(torch.full((1, 77, 8), 0.5))
    out = CFGDenoiser(denoiser, parts, uncond, cfg_scale=2.0)(torch.zeros(1, 4, 2, 2), torch.ones(1))
    assert calls == [3]
    assert torch.allclose(out, torch.full_like(out, 0.5 + 2.0 * (1.0 * 0.5 + 0.5 * 2.5)))


def test_scheduled_conditioning_follows_the_step():
    first, second = Conditioning(torch.full((1, 77, 8), 1.0)), Conditioning(torch.full((1, 77, 8), 2.0))
    cond = ScheduledConditioning(((1, first), (4, second)))  # steps 0-1: first, then second
    model = CFGDenoiser(_by_context, [cond], Conditioning(torch.zeros(1, 77, 8)), cfg_scale=1.0)
    seen = []
    for step in range(4):
        model.set_step(step)
        seen.append(model(torch.zeros(1, 4, 2, 2), torch.ones(1)).flatten()[0].item())
    assert seen == [1.0, 1.0, 2.0, 2.0]


def test_conditionings_of_different_lengths_are_refused():
    cond = Conditioning(torch.zeros(1, 77, 8))
    with pytest.raises(ValueError, match="same number of tokens"):
        CFGDenoiser(_by_context, [ScheduledConditioning(((1, cond), (4, Conditioning(torch.zeros(1, 154, 8)))))],
                    cond, cfg_scale=7.0)
