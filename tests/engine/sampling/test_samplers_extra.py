"""DDIM, PLMS, UniPC, Restart and DPM fast/adaptive: conformance with diffusers, convergence on the
analytic Gaussian denoiser, and A1111's step structure.

diffusers works on x_t = x / sqrt(1 + sigma^2) with eps outputs; `run_diffusers` converts both ways
and feeds it the same denoiser, start and noise, so its final x_t must equal ours up to rounding.
"""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDIMScheduler, PNDMScheduler, UniPCMultistepScheduler

from tests.engine.sampling.analytic import GaussianDenoiser
from webui.engine.sampling.denoisers import DiscreteSchedule
from webui.engine.sampling.schedules import sigmas_karras
from webui.engine.sampling.samplers_extra import (
    restart_segments,
    sample_ddim,
    sample_dpm_adaptive,
    sample_dpm_adaptive_sigmas,
    sample_dpm_fast,
    sample_dpm_fast_sigmas,
    sample_plms,
    sample_restart,
    sample_unipc,
    sigmas_a1111_timesteps,
    sigmas_ddim_timesteps,
    sigmas_unipc_timesteps,
)

SD = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
SCHEDULE = DiscreteSchedule.scaled_linear()


class WavyDenoiser:
    """A fixed nonlinear x0 estimate (the Gaussian one plus a sigma-dependent wiggle), so that a
    sampler's history and stage points all matter."""

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = sigma.to(x.dtype).view(-1, 1, 1, 1)
        return 0.5 + 0.49 / (0.49 + s**2) * (x - 0.5) + 0.3 * torch.sin(2 * x / (1 + s**2).sqrt() + s)


def start_noise(seed: int = 0, shape: tuple[int, ...] = (2, 4, 8, 8)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def run_diffusers(scheduler, denoiser, x: torch.Tensor, sigma_at, step_kwargs=lambda i: {}) -> torch.Tensor:
    """diffusers' sampling loop in x_t space; sigma_at(i, t) is the sigma of loop step i."""
    x_t = x / (1 + sigma_at(0, scheduler.timesteps[0]) ** 2) ** 0.5
    for i, t in enumerate(scheduler.timesteps):
        sigma = sigma_at(i, t)
        x_k = x_t * (1 + sigma**2) ** 0.5
        eps = (x_k - denoiser(x_k, sigma.view(1).expand(x.shape[0]))) / sigma
        x_t = scheduler.step(eps, t, x_t, **step_kwargs(i)).prev_sample
    return x_t


def rel_err(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours - reference).abs().max() / reference.abs().max()).item()


def vp(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Our x at `sigma` as diffusers' x_t."""
    return x / (1 + float(sigma) ** 2) ** 0.5


def diffusers_timestep_scheduler(cls, n: int, **config):
    scheduler = cls(**SD, timestep_spacing="leading", steps_offset=1, set_alpha_to_one=False, **config)
    scheduler.set_timesteps(n)
    return scheduler, DiscreteSchedule(scheduler.alphas_cumprod)


# ---- timesteps ---------------------------------------------------------------------------------


def test_ddim_timesteps_are_the_originals_and_end_at_sigma_min():
    sigmas = sigmas_ddim_timesteps(4, SCHEDULE)
    assert torch.equal(sigmas, SCHEDULE.sigmas[[751, 501, 251, 1, 0]])
    for n in (4, 7, 50):
        scheduler, _ = diffusers_timestep_scheduler(DDIMScheduler, n)
        assert torch.equal(sigmas_ddim_timesteps(n, SCHEDULE)[:-1], SCHEDULE.sigmas[scheduler.timesteps])
    # the model is called at exactly these integer timesteps
    assert torch.equal(SCHEDULE.sigma_to_t(sigmas), torch.tensor([751.0, 501, 251, 1, 0]))


def test_a1111_timesteps_stop_at_t1():
    assert torch.equal(sigmas_a1111_timesteps(4, SCHEDULE), SCHEDULE.sigmas[[751, 501, 251, 1]])
    assert torch.equal(sigmas_a1111_timesteps(3, SCHEDULE), SCHEDULE.sigmas[[999, 667, 334, 1]])  # clipped


def test_unipc_timesteps_are_uniform_in_t_from_sigma_max_to_sigma_min():
    sigmas = sigmas_unipc_timesteps(9, SCHEDULE)
    assert len(sigmas) == 10
    torch.testing.assert_close(sigmas[[0, 3, 6, 9]], SCHEDULE.sigmas[[999, 666, 333, 0]])
    # in between, our denoiser's log-sigma interpolation lands within 0.005 of A1111's fractional t
    sigmas = sigmas_unipc_timesteps(33, SCHEDULE)
    torch.testing.assert_close(SCHEDULE.sigma_to_t(sigmas), torch.linspace(999, 0, 34), atol=5e-3, rtol=0)


# ---- conformance with diffusers ----------------------------------------------------------------


@pytest.mark.parametrize("n", [10, 7])
def test_ddim_matches_diffusers(n):
    scheduler, schedule = diffusers_timestep_scheduler(DDIMScheduler, n, clip_sample=False)
    sigmas = sigmas_ddim_timesteps(n, schedule)
    x = start_noise() * sigmas[0]
    ours = sample_ddim(WavyDenoiser(), x, sigmas)
    reference = run_diffusers(scheduler, WavyDenoiser(), x, lambda i, t: schedule.sigmas[t].double())
    assert rel_err(vp(ours, sigmas[-1]), reference) <= 1e-5


def test_ddim_with_eta_matches_diffusers_given_the_same_noise():
    n, eta = 10, 0.7
    scheduler, schedule = diffusers_timestep_scheduler(DDIMScheduler, n, clip_sample=False)
    sigmas = sigmas_ddim_timesteps(n, schedule)
    noises = [start_noise(seed) for seed in range(1, n + 1)]
    x = start_noise() * sigmas[0]
    draws = iter(noises)
    ours = sample_ddim(WavyDenoiser(), x, sigmas, noise_sampler=lambda s, s_next: next(draws), eta=eta)
    reference = run_diffusers(scheduler, WavyDenoiser(), x, lambda i, t: schedule.sigmas[t].double(),
                              lambda i: {"eta": eta, "variance_noise": noises[i]})
    assert rel_err(vp(ours, sigmas[-1]), reference) <= 1e-5
    assert rel_err(ours, sample_ddim(WavyDenoiser(), x, sigmas)) > 1e-2  # the noise did something


@pytest.mark.parametrize("n", [10, 4])
def test_plms_matches_diffusers_pndm(n):
    scheduler, schedule = diffusers_timestep_scheduler(PNDMScheduler, n, skip_prk_steps=True)
    sigmas = sigmas_ddim_timesteps(n, schedule)
    x = start_noise() * sigmas[0]
    denoiser = WavyDenoiser()
    ours = sample_plms(denoiser, x, sigmas)
    reference = run_diffusers(scheduler, denoiser, x, lambda i, t: schedule.sigmas[t].double())
    assert len(scheduler.timesteps) == n + 1  # diffusers also spends one extra call on the first step
    assert rel_err(vp(ours, sigmas[-1]), reference) <= 1e-5


@pytest.mark.parametrize(
    "variant, order, final, n",
    [("bh1", 3, "sigma_min", 10), ("bh2", 2, "zero", 10), ("bh2", 3, "sigma_min", 6), ("bh1", 1, "sigma_min", 5)],
)
def test_unipc_matches_diffusers(variant, order, final, n):
    scheduler = UniPCMultistepScheduler(**SD, solver_type=variant, solver_order=order, final_sigmas_type=final,
                                        timestep_spacing="linspace", lower_order_final=True)
    scheduler.set_timesteps(n)
    sigmas = scheduler.sigmas.clone()
    x = start_noise() * sigmas[0]
    ours = sample_unipc(WavyDenoiser(), x, sigmas, variant=variant, order=order)
    reference = run_diffusers(scheduler, WavyDenoiser(), x, lambda i, t: scheduler.sigmas[i].double())
    assert rel_err(vp(ours, sigmas[-1]), reference) <= 1e-5


# ---- convergence on the analytic Gaussian ------------------------------------------------------


def exponential(n: int, zero: bool = False) -> torch.Tensor:
    """n steps uniform in log sigma from SD's sigma_max to sigma_min (then 0)."""
    sigmas = torch.linspace(math.log(14.6146), math.log(0.0292), n + 1, dtype=torch.float64).exp()
    return torch.cat([sigmas, torch.zeros(1, dtype=sigmas.dtype)]) if zero else sigmas


def ode_error(sampler, sigmas: torch.Tensor, sigma_end: float | None = None, **options) -> float:
    """Max error against the exact ODE solution from sigmas[0] to sigma_end (default sigmas[-1])."""
    denoiser = GaussianDenoiser()
    x = start_noise() * sigmas[0]
    exact = denoiser.ode_solution(x, float(sigmas[0]), float(sigmas[-1]) if sigma_end is None else sigma_end)
    return (sampler(denoiser, x, sigmas, **options) - exact).abs().max().item()


@pytest.mark.parametrize(
    "sampler, options, min_gain",  # error(n) / error(2n), from the method's order (UniPC-p + corrector: p + 1)
    [(sample_ddim, {}, 1.8), (sample_plms, {}, 3.5), (sample_unipc, {}, 3.5), (sample_unipc, {"variant": "bh2"}, 3.5),
     (sample_unipc, {"order": 2}, 7.0), (sample_unipc, {"lower_order_final": False}, 8.0)],
)
def test_timestep_samplers_converge_to_the_exact_ode_solution(sampler, options, min_gain):
    """On steps uniform in log sigma. (On the timestep lists the last step's log-sigma jump shrinks only
    like log n, which holds every method near first order there; UniPC with lower_order_final ends
    with an uncorrected first-order step, hence its 2nd-order-like gain.)"""
    errors = [ode_error(sampler, exponential(n), **options) for n in (24, 48, 96)]
    assert errors[0] / errors[1] >= min_gain and errors[1] / errors[2] >= min_gain, errors


def test_restart_without_restarts_is_heun_and_converges():
    errors = [ode_error(sample_restart, sigmas_karras(n, 0.0292, 14.6146)) for n in (5, 10, 19)]  # < 20: no restart
    assert errors[0] / errors[1] > 3 and errors[1] / errors[2] > 3, errors


def test_dpm_fast_converges_and_its_wrapper_uses_the_schedule_range():
    """n = 3k + 2: orders 3, ..., 3, 2; the wrapper stops at the last non-zero sigma."""
    errors = [ode_error(sample_dpm_fast_sigmas, exponential(n, zero=True), sigma_end=0.0292) for n in (11, 23, 47)]
    assert errors[0] / errors[1] > 6 and errors[1] / errors[2] > 6, errors
    x = start_noise()
    sigmas = exponential(11, zero=True)
    direct = sample_dpm_fast(GaussianDenoiser(), x, float(sigmas[-2]), float(sigmas[0]), 12)
    assert torch.equal(sample_dpm_fast_sigmas(GaussianDenoiser(), x, sigmas), direct)


@pytest.mark.parametrize("n, calls", [(9, 9), (10, 10), (11, 11), (1, 1), (2, 2)])
def test_dpm_fast_spends_exactly_n_model_calls(n, calls):
    denoiser = GaussianDenoiser()
    sample_dpm_fast(denoiser, start_noise() * 14.6, 0.0292, 14.6146, n)
    assert denoiser.calls == calls


@pytest.mark.parametrize("order, rtols, bound", [(2, (1e-2, 1e-3, 1e-4), 3.0), (3, (1e-4, 1e-5), 4.0)])
def test_dpm_adaptive_reaches_its_tolerance(order, rtols, bound):
    """The final error, in the controller's own scale max(atol, rtol |x|), stays near 1 (the local
    target) however tight the tolerance; order 3's embedded estimate can pass an over-long step at
    middling tolerances (k-diffusion's pair), so it is held to tight ones."""
    x = start_noise() * SCHEDULE.sigma_max
    last_nfe = 0
    for rtol in rtols:
        denoiser = GaussianDenoiser()
        out, info = sample_dpm_adaptive(denoiser, x, SCHEDULE.sigma_min, SCHEDULE.sigma_max, order=order, rtol=rtol,
                                        atol=rtol * 0.156, return_info=True)  # the default atol / rtol
        exact = denoiser.ode_solution(x, SCHEDULE.sigma_max, SCHEDULE.sigma_min)
        scaled = (out - exact) / (exact.abs() * rtol).clamp(min=rtol * 0.156)
        assert scaled.pow(2).mean().sqrt() <= bound
        assert info["nfe"] == denoiser.calls == order * info["steps"] and info["nfe"] > last_nfe
        last_nfe = info["nfe"]


def test_dpm_adaptive_wrapper_uses_only_the_range():
    x = start_noise() * 14.6146
    sigmas = torch.tensor([14.6146, 3.0, 0.5, 0.0292, 0.0])
    expected = sample_dpm_adaptive(GaussianDenoiser(), x, float(sigmas[3]), float(sigmas[0]))
    assert torch.equal(sample_dpm_adaptive_sigmas(GaussianDenoiser(), x, sigmas), expected)


# ---- A1111's Restart structure and the stochastic samplers' distributions ----------------------


@pytest.mark.parametrize("steps, calls", [(10, 19), (20, 39), (36, 71)])
def test_restart_model_calls_follow_a1111s_restart_list(steps, calls):
    """Heun costs 2 calls a step, 1 into sigma 0. 20 steps: Karras(11) + 9 restart steps = 21 + 18;
    36 steps: Karras(36 - 2 * 9) + 2 x 9 restart steps = 35 + 36."""
    sigmas = torch.cat([SCHEDULE.t_to_sigma(torch.linspace(999, 0, steps)), torch.zeros(1)])
    segments = restart_segments(sigmas)
    ups = [i for i, (a, b) in enumerate(segments) if i and a > segments[i - 1][1]]
    assert len(ups) == {10: 0, 20: 1, 36: 2}[steps]
    for i in ups:  # back up from about 0.1 to about 2
        assert segments[i - 1][1] == pytest.approx(0.1, rel=0.3) and segments[i][0] == pytest.approx(2.0, rel=0.3)
    denoiser = GaussianDenoiser()
    sample_restart(denoiser, start_noise() * sigmas[0], sigmas)
    assert denoiser.calls == calls


@pytest.mark.parametrize(
    "sampler, sigmas, options",
    [
        (sample_restart, sigmas_karras(40, 0.0292, 14.6146), {}),
        (sample_ddim, sigmas_ddim_timesteps(200, SCHEDULE), {"eta": 1.0}),
        (sample_dpm_fast_sigmas, torch.cat([SCHEDULE.t_to_sigma(torch.linspace(999, 0, 30)), torch.zeros(1)]),
         {"eta": 1.0}),
    ],
)
def test_stochastic_samplers_keep_the_data_distribution(sampler, sigmas, options):
    """Data ~ N(0.5, 0.7^2): with fresh noise the samples still end with that mean and spread.

    DDIM eta=1 (ancestral Euler) loses s^2 (sigma - sigma_down)^2 / (s^2 + sigma^2) of variance a
    step, a first-order deficit (-7% at 50 steps), hence its 200 steps."""
    denoiser = GaussianDenoiser()
    x = start_noise(shape=(1, 1, 100, 100)) * (denoiser.s**2 + float(sigmas[0]) ** 2) ** 0.5
    gen = torch.Generator().manual_seed(7)
    fresh_noise = lambda s, s_next: torch.randn(x.shape, generator=gen, dtype=x.dtype)  # noqa: E731
    out = sampler(denoiser, x, sigmas, noise_sampler=fresh_noise, **options)
    sigma_end = float(sigmas[sigmas > 0][-1]) if sampler is sample_dpm_fast_sigmas else float(sigmas[-1])
    assert out.mean().item() == pytest.approx(0.5, abs=0.03)
    assert out.std().item() == pytest.approx(math.sqrt(0.49 + sigma_end**2), rel=0.04)


@pytest.mark.parametrize(
    "sampler",
    [sample_ddim, sample_plms, sample_unipc, sample_restart, sample_dpm_fast_sigmas, sample_dpm_adaptive_sigmas],
)
def test_callbacks_follow_the_contract(sampler):
    """Called after each step with the new x (as samplers.py does), so the last call sees the result."""
    seen = []
    sigmas = sigmas_ddim_timesteps(5, SCHEDULE)
    out = sampler(GaussianDenoiser(), start_noise() * sigmas[0], sigmas, callback=seen.append)
    assert seen and all({"i", "x", "sigma", "sigma_hat", "denoised"} <= info.keys() for info in seen)
    assert [info["i"] for info in seen] == list(range(len(seen)))
    assert torch.equal(seen[-1]["x"], out)
