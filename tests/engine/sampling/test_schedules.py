"""Schedules: shapes, known values, A1111's names and overrides, and diffusers' sigma lists."""

from __future__ import annotations

import math

import pytest
import torch

from webui.engine.sampling import schedules
from webui.engine.sampling.denoisers import DiscreteSchedule
from webui.engine.sampling.schedules import SCHEDULE_NAMES, make_sigmas

SD = DiscreteSchedule.scaled_linear()
SIGMA_MIN, SIGMA_MAX = SD.sigma_min, SD.sigma_max  # 0.0292, 14.6146


def assert_schedule(sigmas: torch.Tensor, n: int, last_zero: bool = True) -> None:
    assert sigmas.dtype == torch.float32 and sigmas.shape == (n + 1,)
    assert (sigmas[1:] < sigmas[:-1]).all(), sigmas
    assert (sigmas[-1] == 0) == last_zero


def test_model_range_is_sd_scaled_linear():
    assert SIGMA_MIN == pytest.approx(0.029168, rel=1e-4)
    assert SIGMA_MAX == pytest.approx(14.614642, rel=1e-5)


def test_karras_endpoints_and_rho_spacing():
    sigmas = schedules.sigmas_karras(10, SIGMA_MIN, SIGMA_MAX, rho=7.0)
    assert_schedule(sigmas, 10)
    assert sigmas[0].item() == pytest.approx(SIGMA_MAX, rel=1e-6)
    assert sigmas[-2].item() == pytest.approx(SIGMA_MIN, rel=1e-6)
    # Uniform in sigma^(1/rho): the 10 nonzero sigmas' 7th roots step evenly.
    roots = sigmas[:-1].double() ** (1 / 7)
    assert torch.allclose(roots.diff(), roots.diff()[0].expand(9), rtol=1e-5)


def test_exponential_is_log_uniform_and_polyexponential_rho_1_equals_it():
    sigmas = schedules.sigmas_exponential(8, SIGMA_MIN, SIGMA_MAX)
    assert_schedule(sigmas, 8)
    ratios = sigmas[1:-1] / sigmas[:-2]
    assert torch.allclose(ratios, ratios[0].expand(7), rtol=1e-5)
    assert sigmas[0].item() == pytest.approx(SIGMA_MAX, rel=1e-6)
    assert torch.allclose(schedules.sigmas_polyexponential(8, SIGMA_MIN, SIGMA_MAX, rho=1.0), sigmas)
    # rho > 1 spends more steps at low noise
    assert (schedules.sigmas_polyexponential(8, SIGMA_MIN, SIGMA_MAX, rho=2.0)[1:-2] < sigmas[1:-2]).all()


def test_uniform_visits_k_diffusion_timesteps():
    sigmas = schedules.sigmas_uniform(4, SD)
    assert_schedule(sigmas, 4)
    assert SD.sigma_to_t(sigmas[:-1]).tolist() == pytest.approx([999, 666, 333, 0], abs=1e-3)
    assert torch.equal(schedules.sigmas_normal(4, SD), sigmas)  # Normal = Uniform over the model's range


def test_normal_and_sgm_uniform_follow_the_sigma_range():
    sigmas = schedules.sigmas_normal(5, SD, sigma_min=0.1, sigma_max=10.0)
    assert sigmas[0].item() == pytest.approx(10.0, rel=1e-4) and sigmas[-2].item() == pytest.approx(0.1, rel=1e-4)
    sgm = schedules.sigmas_sgm_uniform(4, SD)
    assert_schedule(sgm, 4)
    assert SD.sigma_to_t(sgm[:-1]).tolist() == pytest.approx([999, 749.25, 499.5, 249.75], abs=1e-3)


def test_simple_and_ddim_pick_training_sigmas():
    simple = schedules.sigmas_simple(4, SD)
    assert_schedule(simple, 4)
    assert simple[:-1].tolist() == SD.sigmas[[999, 749, 499, 249]].tolist()
    ddim = schedules.sigmas_ddim(10, SD)
    assert_schedule(ddim, 10)
    assert ddim[:-1].tolist() == SD.sigmas[list(range(901, 0, -100))].tolist()
    # As in A1111 and ComfyUI, a step count that does not divide 1000 gets an extra step or so.
    assert len(schedules.sigmas_ddim(7, SD)) == 9


def test_kl_optimal_is_uniform_in_arctan_and_ends_at_sigma_min():
    sigmas = schedules.sigmas_kl_optimal(6, SIGMA_MIN, SIGMA_MAX)
    assert_schedule(sigmas, 6, last_zero=False)
    assert sigmas[0].item() == pytest.approx(SIGMA_MAX, rel=1e-6)
    assert sigmas[-1].item() == pytest.approx(SIGMA_MIN, rel=1e-6)
    angles = sigmas.double().atan()
    assert torch.allclose(angles.diff(), angles.diff()[0].expand(6), rtol=1e-5)


def test_align_your_steps_published_lists_and_resampling():
    published = [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029]
    assert schedules.sigmas_align_your_steps(11).tolist() == pytest.approx([*published, 0.0], rel=1e-6)
    sdxl = schedules.sigmas_align_your_steps(11, family="sdxl")
    assert sdxl[3].item() == pytest.approx(2.181, rel=1e-6)
    ten = schedules.sigmas_align_your_steps(10)
    assert_schedule(ten, 10)
    assert ten[0].item() == pytest.approx(14.615, rel=1e-6) and ten[-2].item() == pytest.approx(0.029, rel=1e-6)
    # Log-linear resampling: 21 points put every published sigma at an even index, geometric means between.
    twenty_one = schedules.sigmas_align_your_steps(21)
    assert twenty_one[:-1:2].tolist() == pytest.approx(published, rel=1e-5)
    assert twenty_one[1].item() == pytest.approx(math.sqrt(14.615 * 6.475), rel=1e-5)
    with pytest.raises(ValueError, match="sd1"):
        schedules.sigmas_align_your_steps(10, family="sd3")


def test_beta_endpoints_and_symmetry():
    sigmas = schedules.sigmas_beta(9, SD)
    assert_schedule(sigmas, 9)
    assert sigmas[0].item() == pytest.approx(SIGMA_MAX, rel=1e-6)
    assert sigmas[-2].item() == pytest.approx(SIGMA_MIN, rel=1e-6)
    # alpha = beta: the middle quantile is the middle of the range
    assert sigmas[4].item() == pytest.approx((SIGMA_MIN + SIGMA_MAX) / 2, rel=1e-6)


# ---------------------------------------------------------------------------------------------------
# make_sigmas: A1111's names and settings


@pytest.mark.parametrize("name", SCHEDULE_NAMES)
def test_every_a1111_schedule_name_builds_a_schedule(name):
    sigmas = make_sigmas(name, 10, SD)
    assert_schedule(sigmas, 10, last_zero=name != "KL Optimal")


def test_unknown_schedule_names_list_the_allowed_ones():
    with pytest.raises(ValueError, match="unknown schedule type 'Automatic'.*Uniform, Karras.*SGMUniform"):
        make_sigmas("Automatic", 10, SD)
    with pytest.raises(ValueError, match="'karras'"):
        make_sigmas("karras", 10, SD)
    assert torch.equal(make_sigmas("SGMUniform", 6, SD), make_sigmas("SGM Uniform", 6, SD))


def test_sigma_range_and_rho_overrides():
    assert torch.equal(make_sigmas("Karras", 8, SD), schedules.sigmas_karras(8, SIGMA_MIN, SIGMA_MAX, 7.0))
    assert torch.equal(make_sigmas("Karras", 8, SD, sigma_min=0, sigma_max=0, rho=0), make_sigmas("Karras", 8, SD))
    custom = make_sigmas("Karras", 8, SD, sigma_min=0.1, sigma_max=10.0, rho=5.0)
    assert torch.equal(custom, schedules.sigmas_karras(8, 0.1, 10.0, 5.0))
    polyexponential = schedules.sigmas_polyexponential(8, SIGMA_MIN, SIGMA_MAX, 2.0)
    assert torch.equal(make_sigmas("Polyexponential", 8, SD, rho=2.0), polyexponential)
    assert torch.equal(make_sigmas("Exponential", 8, SD, rho=3.0), make_sigmas("Exponential", 8, SD))  # no rho
    assert make_sigmas("Beta", 8, SD, sigma_max=5.0)[0].item() == pytest.approx(5.0)
    assert make_sigmas("SGM Uniform", 8, SD, sigma_max=5.0)[0].item() == pytest.approx(5.0, rel=1e-4)
    assert torch.equal(make_sigmas("Uniform", 8, SD, sigma_max=5.0), make_sigmas("Uniform", 8, SD))  # as A1111
    with pytest.raises(ValueError, match="sigma_min"):
        make_sigmas("Karras", 8, SD, sigma_min=20.0)
    with pytest.raises(ValueError, match="steps"):
        make_sigmas("Karras", 0, SD)


def test_discard_penultimate_keeps_the_step_count():
    full = make_sigmas("Karras", 11, SD)
    discarded = make_sigmas("Karras", 10, SD, discard_penultimate=True)
    assert_schedule(discarded, 10)
    assert torch.equal(discarded, torch.cat([full[:-2], full[-1:]]))


# ---------------------------------------------------------------------------------------------------
# The same sigmas as diffusers' schedulers (built on diffusers' own alphas_cumprod, float32)

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning")


def diffusers_sigmas(steps: int, **config) -> tuple[torch.Tensor, DiscreteSchedule]:
    scheduler = diffusers.EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type="epsilon", **config
    )
    scheduler.set_timesteps(steps)
    return scheduler.sigmas, DiscreteSchedule(scheduler.alphas_cumprod)


@pytest.mark.parametrize(
    ("name", "steps", "config"),
    [
        ("Uniform", 10, {"timestep_spacing": "linspace"}),  # 999/9 = 111: integer timesteps
        ("Karras", 7, {"timestep_spacing": "linspace", "use_karras_sigmas": True}),
        ("Exponential", 7, {"timestep_spacing": "linspace", "use_exponential_sigmas": True}),
        ("Beta", 7, {"timestep_spacing": "linspace", "use_beta_sigmas": True}),
        ("Simple", 10, {"timestep_spacing": "trailing"}),  # equal when n divides 1000
        ("Simple", 8, {"timestep_spacing": "trailing"}),
    ],
)
def test_sigmas_match_diffusers(name, steps, config):
    reference, schedule = diffusers_sigmas(steps, **config)
    ours = make_sigmas(name, steps, schedule)
    assert ours.shape == reference.shape
    assert torch.allclose(ours, reference, rtol=2e-6, atol=0)


def test_sgm_uniform_is_diffusers_trailing_before_rounding():
    """diffusers' "trailing" rounds A1111's SGM Uniform timesteps to integers: within one timestep."""
    for steps in (3, 7, 20):
        reference, schedule = diffusers_sigmas(steps, timestep_spacing="trailing")
        ours = make_sigmas("SGM Uniform", steps, schedule)
        t_ours, t_reference = schedule.sigma_to_t(ours[:-1]), schedule.sigma_to_t(reference[:-1])
        assert (t_ours - t_reference).abs().max() <= 1.0
