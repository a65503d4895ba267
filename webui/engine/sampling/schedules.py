"""Noise schedules: decreasing sigmas for a sampler to visit (k-diffusion's `get_sigmas_*` style).

Each `sigmas_*` function returns a 1-D float32 tensor of n + 1 decreasing sigmas ending with 0, so a
sampler runs n steps, unless its docstring says otherwise. The definitions follow A1111 v1.10.1
(`modules/sd_schedulers.py`), which takes most of them from k-diffusion and ComfyUI; where a reference
differs, the docstring says which one is followed. `make_sigmas` resolves A1111's display names.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from webui.engine.sampling.denoisers import DiscreteSchedule


def _with_zero(sigmas: torch.Tensor | np.ndarray | list[float]) -> torch.Tensor:
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    return torch.cat([sigmas, sigmas.new_zeros(1)]).float()


def sigmas_karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022) eq. 5, as k-diffusion's `get_sigmas_karras`: uniform in sigma^(1/rho)."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    max_inv_rho, min_inv_rho = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return _with_zero((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho)


def sigmas_exponential(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """k-diffusion's `get_sigmas_exponential`: uniform in log-sigma."""
    return _with_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64).exp())


def sigmas_polyexponential(n: int, sigma_min: float, sigma_max: float, rho: float = 1.0) -> torch.Tensor:
    """k-diffusion's `get_sigmas_polyexponential`: log-sigma along a ramp**rho (rho=1 is exponential)."""
    ramp = torch.linspace(1, 0, n, dtype=torch.float64) ** rho
    return _with_zero((ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min)).exp())


def sigmas_uniform(n: int, schedule: DiscreteSchedule) -> torch.Tensor:
    """A1111 "Uniform" = k-diffusion's `get_sigmas`: t = linspace(999, 0, n), log-sigma interpolated."""
    t_max = len(schedule.sigmas) - 1
    return _with_zero(schedule.t_to_sigma(torch.linspace(t_max, 0, n)))


def _timestep_range(
    schedule: DiscreteSchedule, sigma_min: float | None, sigma_max: float | None
) -> tuple[float, float]:
    sigma_max = schedule.sigma_max if sigma_max is None else sigma_max
    sigma_min = schedule.sigma_min if sigma_min is None else sigma_min
    start = schedule.sigma_to_t(torch.tensor(sigma_max)).item()
    end = schedule.sigma_to_t(torch.tensor(sigma_min)).item()
    return start, end


def sigmas_normal(
    n: int, schedule: DiscreteSchedule, sigma_min: float | None = None, sigma_max: float | None = None
) -> torch.Tensor:
    """A1111/ComfyUI "Normal": n timesteps evenly from t(sigma_max) to t(sigma_min) (= Uniform by default)."""
    start, end = _timestep_range(schedule, sigma_min, sigma_max)
    return _with_zero(schedule.t_to_sigma(torch.linspace(start, end, n)))


def sigmas_sgm_uniform(
    n: int, schedule: DiscreteSchedule, sigma_min: float | None = None, sigma_max: float | None = None
) -> torch.Tensor:
    """A1111/ComfyUI "SGM Uniform": t = linspace(t(sigma_max), t(sigma_min), n + 1)[:-1], then 0.

    Close to diffusers' `timestep_spacing="trailing"`, which rounds the same points to integer
    timesteps (999, 749, 499, 249 where this gives 999, 749.25, 499.5, 249.75).
    """
    start, end = _timestep_range(schedule, sigma_min, sigma_max)
    return _with_zero(schedule.t_to_sigma(torch.linspace(start, end, n + 1)[:-1]))


def sigmas_simple(n: int, schedule: DiscreteSchedule) -> torch.Tensor:
    """ComfyUI's "simple" (as in A1111): every (1000/n)-th training sigma from the top, floored."""
    stride = len(schedule.sigmas) / n
    return _with_zero([schedule.sigmas[-(1 + int(k * stride))].item() for k in range(n)])


def sigmas_ddim(n: int, schedule: DiscreteSchedule) -> torch.Tensor:
    """ComfyUI's "ddim_uniform" (as in A1111): training sigmas at t = 1, 1 + 1000//n, ... reversed, then 0.

    Like the references, this gives a few more than n steps when n does not divide 1000 (n=7 -> 8).
    """
    stride = max(len(schedule.sigmas) // n, 1)
    picked = schedule.sigmas[1::stride]
    return _with_zero(picked.flip(0))


def sigmas_kl_optimal(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """A1111's "KL Optimal" (Sabour et al. 2024, AYS appendix): uniform in arctan(sigma).

    As A1111 defines it, the n + 1 sigmas end at sigma_min, not 0 (ComfyUI's version ends with 0).
    """
    frac = torch.arange(n + 1, dtype=torch.float64) / n
    return torch.tan(frac * math.atan(sigma_min) + (1 - frac) * math.atan(sigma_max)).float()


# Published 10-step "Align Your Steps" sigmas (NVIDIA, research.nvidia.com/labs/toronto-ai/AlignYourSteps/howto.html).
AYS_SIGMAS = {
    "sd1": [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029],
    "sdxl": [14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029],
}


def sigmas_align_your_steps(n: int, family: str = "sd1") -> torch.Tensor:
    """A1111's "Align Your Steps": the published list log-linearly resampled to n sigmas, then 0.

    A1111 treats the 11 published values as the nonzero sigmas of an 11-step schedule (n=11 returns
    them unchanged); ComfyUI's AYS node instead ends its 10 steps with 0 in place of 0.029.
    """
    if family not in AYS_SIGMAS:
        raise ValueError(f"Align Your Steps family must be one of {sorted(AYS_SIGMAS)}, not {family!r}")
    published = np.log(np.array(AYS_SIGMAS[family][::-1]))  # ascending, as np.interp needs
    resampled = np.interp(np.linspace(0, 1, n), np.linspace(0, 1, len(published)), published)
    return _with_zero(np.exp(resampled)[::-1].copy())


def sigmas_beta(
    n: int,
    schedule: DiscreteSchedule,
    alpha: float = 0.6,
    beta: float = 0.6,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
) -> torch.Tensor:
    """A1111's "Beta" (Lee et al. 2024): sigma_min + Beta(alpha, beta).ppf(1 - k/(n-1)) * (sigma_max - sigma_min).

    Linear in sigma as A1111 and diffusers' `use_beta_sigmas` do (ComfyUI instead picks training timesteps).
    """
    from scipy.stats import beta as beta_distribution  # only this schedule needs scipy

    sigma_min = schedule.sigma_min if sigma_min is None else sigma_min
    sigma_max = schedule.sigma_max if sigma_max is None else sigma_max
    quantiles = beta_distribution.ppf(1 - np.linspace(0, 1, n), alpha, beta)
    return _with_zero(sigma_min + quantiles * (sigma_max - sigma_min))


# ---------------------------------------------------------------------------------------------------
# A1111's schedule names


def _karras(n, schedule, sigma_min, sigma_max, rho):
    return sigmas_karras(n, sigma_min, sigma_max, 7.0 if rho is None else rho)


def _polyexponential(n, schedule, sigma_min, sigma_max, rho):
    return sigmas_polyexponential(n, sigma_min, sigma_max, 1.0 if rho is None else rho)


# (n, schedule, sigma_min, sigma_max, rho) -> sigmas; sigma_min/max are already resolved to numbers.
# Uniform, Simple, DDIM and Align Your Steps ignore the sigma range and rho, as in A1111.
_SCHEDULES: dict[str, Callable[..., torch.Tensor]] = {
    "Uniform": lambda n, sch, lo, hi, rho: sigmas_uniform(n, sch),
    "Karras": _karras,
    "Exponential": lambda n, sch, lo, hi, rho: sigmas_exponential(n, lo, hi),
    "Polyexponential": _polyexponential,
    "SGM Uniform": lambda n, sch, lo, hi, rho: sigmas_sgm_uniform(n, sch, lo, hi),
    "KL Optimal": lambda n, sch, lo, hi, rho: sigmas_kl_optimal(n, lo, hi),
    "Align Your Steps": lambda n, sch, lo, hi, rho: sigmas_align_your_steps(n, "sd1"),
    "Simple": lambda n, sch, lo, hi, rho: sigmas_simple(n, sch),
    "Normal": lambda n, sch, lo, hi, rho: sigmas_normal(n, sch, lo, hi),
    "DDIM": lambda n, sch, lo, hi, rho: sigmas_ddim(n, sch),
    "Beta": lambda n, sch, lo, hi, rho: sigmas_beta(n, sch, sigma_min=lo, sigma_max=hi),
}
SCHEDULE_ALIASES = {"SGMUniform": "SGM Uniform"}
SCHEDULE_NAMES = tuple(_SCHEDULES)


def make_sigmas(
    schedule_name: str,
    n: int,
    schedule: DiscreteSchedule,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    rho: float | None = None,
    discard_penultimate: bool = False,
) -> torch.Tensor:
    """Sigmas for `n` steps of the schedule A1111 calls `schedule_name`, with A1111's overrides.

    sigma_min / sigma_max / rho: None or 0 means the model's range and the schedule's own rho (A1111's
    "0 = default" settings). `discard_penultimate` (DPM2, DPM2 a, DPM++ 3M SDE) builds n + 1 steps and
    drops the next-to-last sigma, so the sampler still runs n steps, as A1111 does. "Automatic" is not
    a schedule: the sampler registry resolves it to one of these names first.
    """
    name = SCHEDULE_ALIASES.get(schedule_name, schedule_name)
    if name not in _SCHEDULES:
        allowed = ", ".join([*SCHEDULE_NAMES, *SCHEDULE_ALIASES])
        raise ValueError(f"unknown schedule type {schedule_name!r}; allowed: {allowed}")
    if n < 1:
        raise ValueError(f"steps must be at least 1, not {n}")
    sigma_min = sigma_min or schedule.sigma_min
    sigma_max = sigma_max or schedule.sigma_max
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    sigmas = _SCHEDULES[name](n + 1 if discard_penultimate else n, schedule, sigma_min, sigma_max, rho or None)
    if discard_penultimate:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    return sigmas
