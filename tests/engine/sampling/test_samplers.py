"""Samplers: conformance with diffusers' schedulers, convergence on an analytic denoiser, statistics.

Conformance drives a diffusers scheduler and our sampler with the SAME deterministic x0-denoiser, the
same start and the same noise, and compares the final latents. diffusers wants eps in its own input
space, so the adapter converts: eps = (x - denoised) / sigma, with x the sigma-space latent.
"""

from __future__ import annotations

import math
import sys
import types

import pytest
import torch

from tests.engine.sampling.analytic import GaussianDenoiser
from webui.engine.sampling import samplers
from webui.engine.sampling.denoisers import DiscreteSchedule
from webui.engine.sampling.schedules import make_sigmas

diffusers = pytest.importorskip("diffusers")
# diffusers' schedulers run numpy over torch tensors, which numpy 2 warns about thousands of times.
pytestmark = pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning")

SHAPE = (2, 4, 8, 8)
SD_CONFIG = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "prediction_type": "epsilon"}
GAUSSIAN = GaussianDenoiser(mu=0.5, s=0.7)


def wobbly_denoiser(x: torch.Tensor, sigma: torch.Tensor, **_: object) -> torch.Tensor:
    """Deterministic and nonlinear in x and sigma: the Gaussian optimum plus a smooth bend."""
    s = sigma.to(x.dtype).view(-1, 1, 1, 1)
    return GAUSSIAN(x, sigma) + 0.1 * torch.sin(x / (1 + s))


class NoiseQueue:
    """The same pre-drawn noise, handed out in order, for diffusers and for our noise_sampler."""

    def __init__(self, count: int, seed: int = 1, shape: tuple[int, ...] = SHAPE) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.noises = [torch.randn(shape, generator=generator) for _ in range(count)]

    def sampler(self):
        queue = list(self.noises)
        return lambda *_, **__: queue.pop(0)


# ---------------------------------------------------------------------------------------------------
# The diffusers side


def _sigma_now(scheduler) -> torch.Tensor:
    """The sigma diffusers will evaluate the model at, read from the scheduler's state."""
    name, i = type(scheduler).__name__, scheduler.step_index
    if name == "KDPM2DiscreteScheduler" and not scheduler.state_in_first_order:
        return scheduler.sigmas_interpol[i]
    if name == "KDPM2AncestralDiscreteScheduler" and not scheduler.state_in_first_order:
        return scheduler.sigmas_interpol[i - 1]
    if name == "DPMSolverSDEScheduler" and not scheduler.state_in_first_order:
        return scheduler.mid_point_sigma
    return scheduler.sigmas[i]


def run_diffusers(scheduler, steps: int, x_start: torch.Tensor, denoiser, noise=None) -> torch.Tensor:
    """Sample with a diffusers scheduler (epsilon prediction), x_start given in sigma space.

    `noise` (a NoiseQueue sampler) replaces the scheduler's own random draws.
    """
    scheduler.set_timesteps(steps)
    name = type(scheduler).__name__
    lcm = name == "LCMScheduler"
    vp = lcm or name == "DPMSolverMultistepScheduler"  # these work on x / sqrt(1 + sigma^2)
    step_kwargs = {}
    if name == "DPMSolverSDEScheduler":
        scheduler.noise_sampler = noise
    sample = None
    for t in scheduler.timesteps:
        if scheduler.step_index is None:
            scheduler._init_step_index(t)
        if lcm:
            abar = scheduler.alphas_cumprod[int(t)]
            sigma = ((1 - abar) / abar) ** 0.5
        else:
            sigma = _sigma_now(scheduler)
        scale = (sigma**2 + 1) ** 0.5 if vp else 1.0
        if sample is None:
            sample = x_start / scale
        x = sample * scale
        scheduler.scale_model_input(sample, t)  # (LMS and Euler warn if it is skipped)
        eps = (x - denoiser(x, sigma.view(1).expand(x.shape[0]))) / sigma
        if name == "DPMSolverMultistepScheduler" and noise is not None:
            step_kwargs["variance_noise"] = noise()
        sample = scheduler.step(eps, t, sample, **step_kwargs).prev_sample
    return sample


@pytest.fixture
def patched_randn(monkeypatch):
    """Make a diffusers scheduler module draw its noise from a NoiseQueue sampler."""

    def patch(module_name: str, noise) -> None:
        module = sys.modules[module_name]
        monkeypatch.setattr(module, "randn_tensor", lambda *_, **__: noise())

    return patch


def _dpm_sde_scheduler_class(monkeypatch):
    """diffusers' DPMSolverSDEScheduler imports torchsde at module level, only for its Brownian tree;
    we replace that noise source anyway, so a stub module satisfies the import."""
    monkeypatch.setitem(sys.modules, "torchsde", sys.modules.get("torchsde") or types.ModuleType("torchsde"))
    from diffusers.schedulers.scheduling_dpmsolver_sde import DPMSolverSDEScheduler

    return DPMSolverSDEScheduler


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours - reference).abs().max() / reference.abs().max()).item()


def _start(schedule_sigma_max: float) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)) * schedule_sigma_max


# ---------------------------------------------------------------------------------------------------
# Conformance with diffusers (float32; measured 0 to 7e-7 relative on the final latent, asserted 1e-5)

D = diffusers
LINSPACE = {"timestep_spacing": "linspace"}
DETERMINISTIC_CASES = [
    # (our sampler, its kwargs, our schedule name, diffusers class, its config)
    ("euler", {}, "Uniform", D.EulerDiscreteScheduler, LINSPACE),
    ("euler", {}, "Simple", D.EulerDiscreteScheduler, {"timestep_spacing": "trailing"}),
    ("euler", {}, "Exponential", D.EulerDiscreteScheduler, {**LINSPACE, "use_exponential_sigmas": True}),
    ("euler", {}, "Beta", D.EulerDiscreteScheduler, {**LINSPACE, "use_beta_sigmas": True}),
    ("heun", {}, "Uniform", D.HeunDiscreteScheduler, LINSPACE),
    ("lms", {}, "Uniform", D.LMSDiscreteScheduler, LINSPACE),
    ("lms", {}, "Karras", D.LMSDiscreteScheduler, {**LINSPACE, "use_karras_sigmas": True}),
    ("dpm_2", {}, "Karras", D.KDPM2DiscreteScheduler, {**LINSPACE, "use_karras_sigmas": True}),
    ("dpmpp_2m", {}, "Karras", D.DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
    # DPM++ 3M SDE with eta=0 is DPM-Solver++(3M). Its second-order start uses the "heun" coefficient, and
    # diffusers drops to order 2 before the end unless told not to.
    ("dpmpp_3m_sde", {"eta": 0.0}, "Exponential", D.DPMSolverMultistepScheduler,
     {"solver_order": 3, "solver_type": "heun", "use_exponential_sigmas": True, "lower_order_final": False}),
]


@pytest.mark.parametrize(("name", "kwargs", "schedule_name", "cls", "config"), DETERMINISTIC_CASES)
def test_deterministic_samplers_match_diffusers(name, kwargs, schedule_name, cls, config):
    steps = 10  # 999/(10-1) = 111: linspace timesteps are integers, so diffusers' linear interpolation agrees
    scheduler = cls(**SD_CONFIG, **config)
    schedule = DiscreteSchedule(scheduler.alphas_cumprod)
    sigmas = make_sigmas(schedule_name, steps, schedule)
    x_start = _start(sigmas[0].item())
    reference = run_diffusers(scheduler, steps, x_start, wobbly_denoiser)
    ours = getattr(samplers, f"sample_{name}")(wobbly_denoiser, x_start, sigmas, **kwargs)
    assert relative_error(ours, reference) <= 1e-5


STOCHASTIC_CASES = [
    ("euler_ancestral", {}, "Uniform", D.EulerAncestralDiscreteScheduler, LINSPACE),
    ("dpm_2_ancestral", {}, "Karras", D.KDPM2AncestralDiscreteScheduler, {**LINSPACE, "use_karras_sigmas": True}),
    ("dpmpp_2m_sde", {}, "Karras", D.DPMSolverMultistepScheduler,
     {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True}),
    ("dpmpp_2m_sde", {"solver_type": "heun"}, "Exponential", D.DPMSolverMultistepScheduler,
     {"algorithm_type": "sde-dpmsolver++", "solver_type": "heun", "use_exponential_sigmas": True}),
    ("lcm", {}, None, D.LCMScheduler, {}),
    # diffusers' third-order "sde-dpmsolver++" update weights D2 by (1 - e^-2h - 2h)/(2h)^2 - 0.5 where
    # k-diffusion (and the Taylor expansion: the weight must be O(h)) has + 0.5, so with eta=1 only the
    # first- and second-order steps can agree: 3 steps never reach the third-order update.
    ("dpmpp_3m_sde", {}, "Exponential", D.DPMSolverMultistepScheduler,
     {"algorithm_type": "sde-dpmsolver++", "solver_order": 3, "solver_type": "heun", "use_exponential_sigmas": True,
      "lower_order_final": False}),
]


@pytest.mark.parametrize(("name", "kwargs", "schedule_name", "cls", "config"), STOCHASTIC_CASES)
def test_stochastic_samplers_match_diffusers_given_the_same_noise(
    name, kwargs, schedule_name, cls, config, patched_randn
):
    steps = {"lcm": 4, "dpmpp_3m_sde": 3}.get(name, 10)
    scheduler = cls(**SD_CONFIG, **config)
    schedule = DiscreteSchedule(scheduler.alphas_cumprod)
    if name == "lcm":  # LCM runs on its own skipped training timesteps (999, 759, 499, 259)
        scheduler.set_timesteps(steps)
        sigmas = torch.cat([schedule.sigmas[scheduler.timesteps.long()], torch.zeros(1)])
    else:
        sigmas = make_sigmas(schedule_name, steps, schedule)
    noise = NoiseQueue(2 * steps)
    patched_randn(cls.__module__, noise.sampler())
    x_start = _start(sigmas[0].item())
    reference = run_diffusers(scheduler, steps, x_start, wobbly_denoiser, noise=noise.sampler())
    sample = getattr(samplers, f"sample_{name}")
    ours = sample(wobbly_denoiser, x_start, sigmas, noise_sampler=noise.sampler(), **kwargs)
    assert relative_error(ours, reference) <= 1e-5


def brownian_tree_stand_in(draw):
    """What diffusers' Brownian tree answers, built from our sampler's two draws per step.

    DPMSolverSDEScheduler asks for the increments over [sigma_s, sigma], then [sigma_next, sigma] (which
    contains the first); sample_dpmpp_sde draws [sigma_s, sigma] and [sigma_next, sigma_s] and joins them.
    """
    pending = {}

    def sample(sigma, sigma_to):
        if not pending:
            pending.update(noise=draw(), sigma_s=sigma_to)
            return pending["noise"]
        first, rest = sigma - pending["sigma_s"], pending["sigma_s"] - sigma_to
        joined = (pending.pop("noise") * first.sqrt() + draw() * rest.sqrt()) / (first + rest).sqrt()
        pending.clear()
        return joined

    return sample


def test_dpmpp_sde_matches_diffusers_dpm_solver_sde_scheduler(monkeypatch):
    """diffusers' DPMSolverSDEScheduler is k-diffusion's sample_dpmpp_sde (DPMSolverSinglestepScheduler is
    another algorithm, a singlestep DPM-Solver++); its Brownian tree is replaced by the same draws as ours."""
    cls = _dpm_sde_scheduler_class(monkeypatch)
    steps = 10
    scheduler = cls(**SD_CONFIG, use_karras_sigmas=True)
    schedule = DiscreteSchedule(scheduler.alphas_cumprod)
    sigmas = make_sigmas("Karras", steps, schedule)
    noise = NoiseQueue(2 * steps)
    x_start = _start(sigmas[0].item())
    reference = run_diffusers(scheduler, steps, x_start, wobbly_denoiser, noise=brownian_tree_stand_in(noise.sampler()))
    ours = samplers.sample_dpmpp_sde(wobbly_denoiser, x_start, sigmas, noise_sampler=noise.sampler())
    assert relative_error(ours, reference) <= 1e-5


# ---------------------------------------------------------------------------------------------------
# Convergence on the analytic Gaussian denoiser (float64)

# Deterministic samplers (ancestral/SDE ones with eta=0) and the factor by which their error must shrink
# from 10 to 40 Karras steps: 4**order with some slack. DPM++ 3M reaches only ~order 2 asymptotically,
# because its first (first-order) step's local error is O(h^2), as in k-diffusion and diffusers.
CONVERGENCE = [
    ("euler", {}, 3.0),
    ("euler_ancestral", {"eta": 0.0}, 3.0),
    ("heun", {}, 12.0),
    ("dpm_2", {}, 12.0),
    ("dpm_2_ancestral", {"eta": 0.0}, 12.0),
    ("lms", {}, 40.0),
    ("dpmpp_2s_ancestral", {"eta": 0.0}, 12.0),
    ("dpmpp_sde", {"eta": 0.0}, 12.0),
    ("dpmpp_2m", {}, 12.0),
    ("dpmpp_2m_sde", {"eta": 0.0}, 12.0),
    ("dpmpp_2m_sde", {"eta": 0.0, "solver_type": "heun"}, 12.0),
    ("dpmpp_3m_sde", {"eta": 0.0}, 12.0),
]


@pytest.mark.parametrize(("name", "kwargs", "min_shrink"), CONVERGENCE)
def test_deterministic_samplers_converge_to_the_exact_ode_solution(name, kwargs, min_shrink):
    x_unit = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    errors = []
    for steps in (10, 40):
        # Stop at sigma_min (drop the final 0): the last jump to 0 has an error floor of its own.
        sigmas = make_sigmas("Karras", steps, DiscreteSchedule.scaled_linear())[:-1].double()
        x = x_unit * sigmas[0]
        ours = getattr(samplers, f"sample_{name}")(GAUSSIAN, x, sigmas, **kwargs)
        exact = GAUSSIAN.ode_solution(x, sigmas[0].item(), sigmas[-1].item())
        errors.append((ours - exact).abs().max().item())
    assert errors[0] / errors[1] >= min_shrink, f"error {errors[0]:.2e} -> {errors[1]:.2e}"


# (sampler, kwargs, Karras steps). Ancestral and churned samplers shrink the variance by O(step) per
# step, so the first-order ones need 300 steps to come within the tolerance. LCM is left out: it
# expects a consistency model (whose output is a sample), and with a posterior-mean denoiser such as
# the Gaussian one it comes out too narrow by design; it is checked against diffusers above.
STOCHASTIC = [
    ("euler", {"s_churn": 10.0}, 300),
    ("euler_ancestral", {}, 300),
    ("heun", {"s_churn": 10.0}, 100),
    ("dpm_2", {"s_churn": 10.0}, 100),
    ("dpm_2_ancestral", {}, 100),
    ("dpmpp_2s_ancestral", {}, 100),
    ("dpmpp_sde", {}, 100),
    ("dpmpp_2m_sde", {}, 100),
    ("dpmpp_2m_sde", {"solver_type": "heun"}, 100),
    ("dpmpp_3m_sde", {}, 100),
]


@pytest.mark.parametrize(("name", "kwargs", "steps"), STOCHASTIC)
def test_stochastic_samplers_reach_the_data_distribution(name, kwargs, steps):
    """16384 independent samples of N(mu, s^2) (fixed seed): the mean's standard error is 0.0055 and
    the std's 0.004; the tolerance 0.02 covers that and the remaining discretisation bias."""
    torch.manual_seed(0)
    sigmas = make_sigmas("Karras", steps, DiscreteSchedule.scaled_linear())
    x = torch.randn(4, 4, 32, 32) * sigmas[0]
    out = getattr(samplers, f"sample_{name}")(GAUSSIAN, x, sigmas, **kwargs)
    assert abs(out.mean().item() - GAUSSIAN.mu) < 0.02
    assert abs(out.std().item() - GAUSSIAN.s) < 0.02


def test_dpmpp_sde_draws_brownian_increments_so_the_variance_is_right_with_few_steps():
    """Two unrelated draws per step would give std 0.63 here; a Brownian path over the step gives 0.69."""
    torch.manual_seed(0)
    sigmas = make_sigmas("Karras", 30, DiscreteSchedule.scaled_linear())
    out = samplers.sample_dpmpp_sde(GAUSSIAN, torch.randn(4, 4, 32, 32) * sigmas[0], sigmas)
    assert abs(out.std().item() - GAUSSIAN.s) < 0.015


# ---------------------------------------------------------------------------------------------------
# Contract details


def test_every_sampler_reports_each_step_through_the_callback():
    sigmas = make_sigmas("Karras", 5, DiscreteSchedule.scaled_linear())
    names = [n for n in dir(samplers) if n.startswith("sample_")]
    assert len(names) == 12
    for name in names:
        seen = []
        x = torch.randn(1, 4, 4, 4) * sigmas[0]
        getattr(samplers, name)(GAUSSIAN, x, sigmas, callback=seen.append)
        assert [info["i"] for info in seen] == list(range(5)), name
        assert set(seen[0]) == {"i", "x", "sigma", "sigma_hat", "denoised"}, name
        assert seen[0]["sigma"] == sigmas[0]


def test_noise_sampler_is_used_instead_of_the_global_rng():
    sigmas = make_sigmas("Karras", 6, DiscreteSchedule.scaled_linear())
    x = torch.ones(1, 4, 4, 4) * sigmas[0]
    for name in ("euler_ancestral", "dpmpp_2m_sde", "dpmpp_sde", "lcm"):
        runs = []
        for global_seed in (1, 2):
            torch.manual_seed(global_seed)
            noise = NoiseQueue(20, seed=5, shape=x.shape).sampler()
            runs.append(getattr(samplers, f"sample_{name}")(GAUSSIAN, x, sigmas, noise_sampler=noise))
        assert torch.equal(runs[0], runs[1]), name


def test_lms_coefficients_integrate_the_lagrange_polynomials_exactly():
    sigmas = torch.tensor([10.0, 6.0, 3.0, 1.5, 0.5]).double().numpy()
    # First step: one point, the coefficient is the step length.
    assert samplers.lms_coefficients(sigmas, 0, 1) == pytest.approx([-4.0])
    # Step 3 -> 4 with up to 4 past points: polynomials of degree < order are integrated exactly.
    for order in (1, 2, 3, 4):
        coefficients = samplers.lms_coefficients(sigmas, 3, order)
        for degree in range(order):
            exact = (sigmas[4] ** (degree + 1) - sigmas[3] ** (degree + 1)) / (degree + 1)
            estimate = sum(c * sigmas[3 - j] ** degree for j, c in enumerate(coefficients))
            assert estimate == pytest.approx(exact, rel=1e-12)


def test_ancestral_step_splits_the_variance():
    sigma_down, sigma_up = samplers.get_ancestral_step(torch.tensor(2.0), torch.tensor(1.0), eta=1.0)
    assert (sigma_down**2 + sigma_up**2).item() == pytest.approx(1.0)
    assert sigma_up.item() == pytest.approx(math.sqrt(3) / 2)
    assert samplers.get_ancestral_step(torch.tensor(2.0), torch.tensor(1.0), eta=0.0)[1] == 0
    with pytest.raises(ValueError, match="solver_type"):
        samplers.sample_dpmpp_2m_sde(GAUSSIAN, torch.zeros(1, 1, 2, 2), torch.tensor([1.0, 0.0]), solver_type="x")
