"""A1111's other samplers: Restart, k-diffusion's DPM-Solver fast and adaptive, and (re-exported from
`samplers_timestep`) the timestep samplers DDIM, PLMS and UniPC, all with the samplers' contract.

DPM fast and adaptive are defined on a sigma range, as in k-diffusion; `sample_dpm_fast_sigmas` and
`sample_dpm_adaptive_sigmas` put them behind the common signature for the registry.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from webui.engine.sampling.samplers import Callback, NoiseSampler, default_noise_sampler, get_ancestral_step
from webui.engine.sampling.schedules import sigmas_karras
from webui.engine.sampling.samplers_timestep import (
    sample_ddim,
    sample_plms,
    sample_unipc,
    sigmas_a1111_timesteps,
    sigmas_ddim_timesteps,
    sigmas_unipc_timesteps,
)

__all__ = [
    "restart_segments", "sample_ddim", "sample_dpm_adaptive", "sample_dpm_adaptive_sigmas", "sample_dpm_fast",
    "sample_dpm_fast_sigmas", "sample_plms", "sample_restart", "sample_unipc", "sigmas_a1111_timesteps",
    "sigmas_ddim_timesteps", "sigmas_unipc_timesteps",
]

Model = Callable[..., torch.Tensor]


# ---- Restart -----------------------------------------------------------------------------------


def restart_segments(
    sigmas: torch.Tensor, restart_list: dict[float, tuple[int, int, float]] | None = None
) -> list[tuple[float, float]]:
    """Restart's (sigma_from, sigma_to) steps in order; a step that goes UP means "add noise here".

    restart_list maps sigma_lo -> (restart_steps, restart_times, sigma_hi): when the schedule reaches
    its level nearest sigma_lo, go back to the level nearest sigma_hi and come down again over
    restart_steps - 1 Karras steps, restart_times times. None gives A1111's choice by step count
    (steps = len(sigmas) - 1): under 20, none; from 20, once over 9 steps; from 36, twice over
    steps // 4; in both cases the main schedule becomes Karras with the remaining step count between
    sigmas[-2] and sigmas[0], so the model-call budget stays near a plain Heun run's.
    """
    steps = len(sigmas) - 1
    if restart_list is None:
        restart_list = {}
        if steps >= 20:
            restart_steps, restart_times = (steps // 4, 2) if steps >= 36 else (9, 1)
            sigmas = sigmas_karras(steps - restart_steps * restart_times, float(sigmas[-2]), float(sigmas[0]))
            restart_list = {0.1: (restart_steps + 1, restart_times, 2.0)}
    nearest = lambda level: int((sigmas - level).abs().argmin())  # noqa: E731
    restarts = {nearest(lo): plan for lo, plan in restart_list.items()}

    segments = []
    for i in range(len(sigmas) - 1):
        segments.append((float(sigmas[i]), float(sigmas[i + 1])))
        if i + 1 in restarts:
            restart_steps, restart_times, hi = restarts[i + 1]
            lo_idx, hi_idx = i + 1, nearest(hi)
            if hi_idx < lo_idx:  # the restart level is above the current one
                levels = sigmas_karras(restart_steps, float(sigmas[lo_idx]), float(sigmas[hi_idx]))[:-1].tolist()
                segments += list(zip(levels[:-1], levels[1:])) * restart_times
    return segments


@torch.no_grad()
def sample_restart(
    model: Model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    noise_sampler: NoiseSampler | None = None,
    s_noise: float = 1.0,
    restart_list: dict[float, tuple[int, int, float]] | None = None,
) -> torch.Tensor:
    """Restart sampling (Xu et al. 2023) as A1111's "Restart": Heun ODE steps (Euler into sigma 0),
    re-noised from sigma_lo up to sigma_hi per `restart_segments`, with fresh noise_sampler noise of
    std s_noise * sqrt(sigma_hi^2 - sigma_lo^2). A1111 passes no options (s_noise 1, its own list).
    """
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or default_noise_sampler(x)
    s_in = x.new_ones(x.shape[0])
    segments = restart_segments(sigmas, restart_list)
    last = segments[0][0]
    for i, (sigma, sigma_next) in enumerate(segments):
        if sigma > last:  # back up: the forward process adds the missing variance
            noise = noise_sampler(torch.tensor(last), torch.tensor(sigma))
            x = x + noise * s_noise * (sigma**2 - last**2) ** 0.5
        denoised = model(x, sigma * s_in, **extra_args)
        d = (x - denoised) / sigma
        x_next = x + d * (sigma_next - sigma)
        if sigma_next > 0:  # Heun's correction
            d_next = (x_next - model(x_next, sigma_next * s_in, **extra_args)) / sigma_next
            x_next = x + (d + d_next) / 2 * (sigma_next - sigma)
        x, last = x_next, sigma_next
        if callback is not None:
            callback({"i": i, "x": x, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})
    return x


# ---- DPM-Solver (k-diffusion's fast and adaptive) ----------------------------------------------


class _DPMSolver:
    """DPM-Solver-1/2/3 steps (Lu et al. 2022) in t = -log(sigma) on eps = (x - x0) / sigma.

    eps values are cached per step under a stage name, so a step pair of different orders (the
    adaptive error estimate) shares the model calls at the common points.
    """

    def __init__(self, model: Model, x: torch.Tensor, extra_args: dict[str, Any] | None) -> None:
        self.model, self.extra_args = model, extra_args or {}
        self.s_in = x.new_ones(x.shape[0])

    def eps(self, cache: dict[str, torch.Tensor], stage: str, x: torch.Tensor, t: float) -> torch.Tensor:
        if stage not in cache:
            sigma = math.exp(-t)
            cache[stage] = (x - self.model(x, sigma * self.s_in, **self.extra_args)) / sigma
        return cache[stage]

    def step(
        self, x: torch.Tensor, t: float, t_next: float, order: int, cache: dict, r1: float | None = None
    ) -> torch.Tensor:
        """One DPM-Solver step of `order` from t to t_next (r1: the 2nd-order midpoint, 1/2 by default)."""
        h = t_next - t
        sigma_next = math.exp(-t_next)
        eps = self.eps(cache, "eps", x, t)
        x_1 = x - sigma_next * math.expm1(h) * eps  # DPM-Solver-1 = DDIM
        if order == 1:
            return x_1
        r1 = (1 / 2 if order == 2 else 1 / 3) if r1 is None else r1
        s1 = t + r1 * h
        u1 = x - math.exp(-s1) * math.expm1(r1 * h) * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        if order == 2:
            return x_1 - sigma_next / (2 * r1) * math.expm1(h) * (eps_r1 - eps)
        r2 = 2 / 3
        s2 = t + r2 * h
        u2 = (x - math.exp(-s2) * math.expm1(r2 * h) * eps
              - math.exp(-s2) * (r2 / r1) * (math.expm1(r2 * h) / (r2 * h) - 1) * (eps_r1 - eps))
        eps_r2 = self.eps(cache, "eps_r2", u2, s2)
        return x_1 - sigma_next / r2 * (math.expm1(h) / h - 1) * (eps_r2 - eps)

    def ancestral(self, t: float, t_next: float, t_end: float, eta: float) -> tuple[float, float]:
        """(t to step to, std of the noise to add after): eta > 0 steps below sigma(t_next), not past t_end."""
        if not eta:
            return t_next, 0.0
        sigma_down, _ = get_ancestral_step(*torch.tensor([t, t_next], dtype=torch.float64).neg().exp(), eta)
        t_down = min(t_end, -math.log(float(sigma_down)))
        return t_down, (math.exp(-2 * t_next) - math.exp(-2 * t_down)) ** 0.5


def _check_range(sigma_min: float, sigma_max: float) -> None:
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")


@torch.no_grad()
def sample_dpm_fast(
    model: Model,
    x: torch.Tensor,
    sigma_min: float,
    sigma_max: float,
    n: int,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    noise_sampler: NoiseSampler | None = None,
    eta: float = 0.0,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """DPM-Solver "fast": n model calls over steps uniform in log sigma, orders 3, ..., 3 then 2, 1
    (n divisible by 3) or then n % 3. A1111 passes eta = its "Eta for ancestral samplers", 1.0.
    """
    _check_range(sigma_min, sigma_max)
    noise_sampler = noise_sampler or default_noise_sampler(x)
    solver = _DPMSolver(model, x, extra_args)
    t_start, t_end = -math.log(sigma_max), -math.log(sigma_min)
    m = n // 3 + 1
    orders = [3] * (m - 2) + [2, 1] if n % 3 == 0 else [3] * (m - 1) + [n % 3]
    ts = torch.linspace(t_start, t_end, len(orders) + 1, dtype=torch.float64).tolist()
    for i, order in enumerate(orders):
        t, t_next = ts[i], ts[i + 1]
        cache: dict[str, torch.Tensor] = {}
        t_down, sigma_up = solver.ancestral(t, t_next, t_end, eta)
        denoised = x - math.exp(-t) * solver.eps(cache, "eps", x, t)
        x = solver.step(x, t, t_down, order, cache)
        if sigma_up > 0:
            x = x + noise_sampler(torch.tensor(math.exp(-t)), torch.tensor(math.exp(-t_next))) * sigma_up * s_noise
        if callback is not None:
            callback({"i": i, "x": x, "sigma": math.exp(-t), "sigma_hat": math.exp(-t), "denoised": denoised})
    return x


@dataclass
class _PIDStepSize:
    """PID step-size control on the inverse error (Söderlind 2003), with k-diffusion's limiter."""

    h: float
    b: tuple[float, float, float]  # exponents of the last three inverse errors
    accept_safety: float
    inv_errors: list[float] = field(default_factory=list)

    def propose(self, error: float) -> bool:
        inv_error = 1 / (error + 1e-8)
        if not self.inv_errors:
            self.inv_errors = [inv_error] * 3
        self.inv_errors[0] = inv_error
        factor = self.inv_errors[0] ** self.b[0] * self.inv_errors[1] ** self.b[1] * self.inv_errors[2] ** self.b[2]
        factor = 1 + math.atan(factor - 1)  # limit the change per step
        accept = factor >= self.accept_safety
        if accept:
            self.inv_errors[2], self.inv_errors[1] = self.inv_errors[1], self.inv_errors[0]
        self.h *= factor
        return accept


@torch.no_grad()
def sample_dpm_adaptive(
    model: Model,
    x: torch.Tensor,
    sigma_min: float,
    sigma_max: float,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    noise_sampler: NoiseSampler | None = None,
    order: int = 3,
    rtol: float = 0.05,
    atol: float = 0.0078,
    h_init: float = 0.05,
    pcoeff: float = 0.0,
    icoeff: float = 1.0,
    dcoeff: float = 0.0,
    accept_safety: float = 0.81,
    eta: float = 0.0,
    s_noise: float = 1.0,
    return_info: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, int]]:
    """DPM-Solver adaptive: embedded order 3/2 (or 2/1) pairs in log sigma, step size set by a PID
    controller so that the RMS of (x_high - x_low) / max(atol, rtol * |x|) stays under 1.

    k-diffusion's defaults (A1111 changes none but eta, which it sets to 1.0). The error is taken
    over the whole batch, so the images of a batch share their steps. Each attempt costs `order`
    model calls; info counts steps, nfe, n_accept and n_reject.
    """
    _check_range(sigma_min, sigma_max)
    if order not in (2, 3):
        raise ValueError(f"order must be 2 or 3, not {order}")
    noise_sampler = noise_sampler or default_noise_sampler(x)
    solver = _DPMSolver(model, x, extra_args)
    s, t_end = -math.log(sigma_max), -math.log(sigma_min)
    b = ((pcoeff + icoeff + dcoeff), -(pcoeff + 2 * dcoeff), dcoeff)
    controller_order = 1.5 if eta else order
    pid = _PIDStepSize(abs(h_init), tuple(c / controller_order for c in b), accept_safety)
    info = {"steps": 0, "nfe": 0, "n_accept": 0, "n_reject": 0}
    x_prev = x
    while s < t_end - 1e-5:
        cache: dict[str, torch.Tensor] = {}
        t = min(t_end, s + pid.h)
        t_down, sigma_up = solver.ancestral(s, t, t_end, eta)
        sigma = math.exp(-s)
        denoised = x - sigma * solver.eps(cache, "eps", x, s)
        x_low = solver.step(x, s, t_down, order - 1, cache, r1=1 / 3)
        x_high = solver.step(x, s, t_down, order, cache)
        scale = torch.maximum(x_low.abs(), x_prev.abs()).mul(rtol).clamp(min=atol)
        error = (torch.linalg.vector_norm((x_low - x_high) / scale) / x.numel() ** 0.5).item()
        if pid.propose(error):
            x_prev = x_low
            x = x_high
            if sigma_up > 0:
                x = x + noise_sampler(torch.tensor(sigma), torch.tensor(math.exp(-t))) * sigma_up * s_noise
            s = t
            info["n_accept"] += 1
        else:
            info["n_reject"] += 1
        info["nfe"] += order
        info["steps"] += 1
        if callback is not None:  # after every attempt, accepted or not (x unchanged if rejected)
            callback({"i": info["steps"] - 1, "x": x, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})
    return (x, info) if return_info else x


def _sigma_range(sigmas: torch.Tensor) -> tuple[float, float]:
    """(the last non-zero sigma, sigmas[0]) of a schedule."""
    return float(sigmas[sigmas > 0][-1]), float(sigmas[0])


def sample_dpm_fast_sigmas(
    model: Model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    noise_sampler: NoiseSampler | None = None,
    eta: float = 0.0,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """`sample_dpm_fast` with the common signature: len(sigmas) - 1 model calls over the schedule's range."""
    sigma_min, sigma_max = _sigma_range(sigmas)
    n = len(sigmas) - 1
    return sample_dpm_fast(model, x, sigma_min, sigma_max, n, extra_args, callback, noise_sampler, eta, s_noise)


def sample_dpm_adaptive_sigmas(
    model: Model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    noise_sampler: NoiseSampler | None = None,
    eta: float = 0.0,
    s_noise: float = 1.0,
    **options: Any,
) -> torch.Tensor:
    """`sample_dpm_adaptive` with the common signature: only the schedule's range is used, not its steps.

    options: the controller's (order, rtol, atol, h_init, pcoeff, icoeff, dcoeff, accept_safety).
    """
    sigma_min, sigma_max = _sigma_range(sigmas)
    return sample_dpm_adaptive(model, x, sigma_min, sigma_max, extra_args, callback, noise_sampler,
                               eta=eta, s_noise=s_noise, **options)
