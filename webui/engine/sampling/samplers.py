"""k-diffusion's samplers as small pure functions (the contract is in `sampling/__init__.py`).

Each `sample_*` integrates from sigmas[0] down the given schedule and returns the final latent. The
algorithms are k-diffusion's (Crowson), which A1111 and ComfyUI run. After each step, `callback`
receives {"i", "x", "sigma", "sigma_hat", "denoised"}: x is the latent after step i, sigma the level
the step started from (sigma_hat: raised by churn), denoised the step's last x0 estimate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

Denoiser = Callable[..., Tensor]  # model(x, sigma (B,), **extra_args) -> x0 estimate
NoiseSampler = Callable[[Tensor, Tensor], Tensor]  # (sigma, sigma_next) -> noise like x
Callback = Callable[[dict[str, Any]], None]


# ---------------------------------------------------------------------------------------------------
# Helpers shared by the samplers


def to_d(x: Tensor, sigma: Tensor, denoised: Tensor) -> Tensor:
    """The probability-flow ODE's derivative dx/dsigma = (x - x0) / sigma (Karras et al. 2022)."""
    return (x - denoised) / sigma


def get_ancestral_step(sigma_from, sigma_to, eta: float = 1.0) -> tuple[Tensor, Tensor]:
    """(sigma_down, sigma_up): step deterministically to sigma_down, then add sigma_up of fresh noise.

    sigma_down^2 + sigma_up^2 = sigma_to^2; eta=1 is DDPM's posterior noise, eta=0 no noise at all.
    """
    sigma_from, sigma_to = torch.as_tensor(sigma_from), torch.as_tensor(sigma_to)
    if not eta:
        return sigma_to, torch.zeros_like(sigma_to)
    sigma_up = torch.minimum(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def default_noise_sampler(x: Tensor) -> NoiseSampler:
    """Fresh standard normal noise from torch's global RNG, for direct calls; the pipeline passes seeded noise."""
    return lambda sigma, sigma_next: torch.randn_like(x)


def _prepare(
    x: Tensor, extra_args: dict | None, noise_sampler: NoiseSampler | None
) -> tuple[Tensor, dict, NoiseSampler]:
    ones = x.new_ones([x.shape[0]])  # sigma * ones: the (B,) sigma the denoiser takes
    return ones, extra_args or {}, noise_sampler or default_noise_sampler(x)


def _report(callback: Callback | None, i: int, x, sigma, sigma_hat, denoised) -> None:
    if callback is not None:
        callback({"i": i, "x": x, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": denoised})


def _churn(x, sigma, n_steps, noise_sampler, s_churn, s_tmin, s_tmax, s_noise) -> tuple[Tensor, Tensor]:
    """Karras et al.'s "churn": raise the noise level from sigma to sigma_hat by adding fresh noise."""
    gamma = min(s_churn / n_steps, 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
    sigma_hat = sigma * (gamma + 1)
    if gamma > 0:
        x = x + noise_sampler(sigma, sigma_hat) * s_noise * (sigma_hat**2 - sigma**2) ** 0.5
    return x, sigma_hat


# ---------------------------------------------------------------------------------------------------
# Euler, Heun, LMS, DPM2 (Karras et al. 2022; Crowson's k-diffusion)


@torch.no_grad()
def sample_euler(
    model: Denoiser, x: Tensor, sigmas: Tensor, extra_args: dict | None = None,
    callback: Callback | None = None, noise_sampler: NoiseSampler | None = None,
    s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
) -> Tensor:
    """Euler's method on the probability-flow ODE (Karras et al. 2022, Algorithm 2 with churn)."""
    ones, extra_args, noise_sampler = _prepare(x, extra_args, noise_sampler)
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas[i], len(sigmas) - 1, noise_sampler, s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, sigma_hat * ones, **extra_args)
        x = x + to_d(x, sigma_hat, denoised) * (sigmas[i + 1] - sigma_hat)
        _report(callback, i, x, sigmas[i], sigma_hat, denoised)
    return x


@torch.no_grad()
def sample_euler_ancestral(
    model: Denoiser, x: Tensor, sigmas: Tensor, extra_args: dict | None = None,
    callback: Callback | None = None, noise_sampler: NoiseSampler | None = None,
    eta: float = 1.0, s_noise: float = 1.0,
) -> Tensor:
    """Euler steps down to sigma_down, then fresh noise back up to the next sigma (k-diffusion)."""
    ones, extra_args, noise_sampler = _prepare(x, extra_args, noise_sampler)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * ones, **extra_args)
        sigma_down, sigma_up = get_ancestral_step(sigma, sigma_next, eta)
        x = x + to_d(x, sigma, denoised) * (sigma_down - sigma)
        if sigma_next > 0:
            x = x + noise_sampler(sigma, sigma_next) * s_noise * sigma_up
        _report(callback, i, x, sigma, sigma, denoised)
    return x


@torch.no_grad()
def sample_heun(
    model: Denoiser, x: Tensor, sigmas: Tensor, extra_args: dict | None = None,
    callback: Callback | None = None, noise_sampler: NoiseSampler | None = None,
    s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
) -> Tensor:
    """Heun's second-order method (Karras et al. 2022, Algorithm 2); the last step to 0 is Euler."""
    ones, extra_args, noise_sampler = _prepare(x, extra_args, noise_sampler)
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas[i], len(sigmas) - 1, noise_sampler, s_churn, s_tmin, s_tmax, s_noise)
        sigma_next = sigmas[i + 1]
        denoised = model(x, sigma_hat * ones, **extra_args)
        d = to_d(x, sigma_hat, denoised)
        dt = sigma_next - sigma_hat
        if sigma_next == 0:
            x = x + d * dt
        else:
            x_euler = x + d * dt
            denoised = model(x_euler, sigma_next * ones, **extra_args)
            x = x + (d + to_d(x_euler, sigma_next, denoised)) / 2 * dt
        _report(callback, i, x, sigmas[i], sigma_hat, denoised)
    return x


def lms_coefficients(sigmas: np.ndarray, i: int, order: int) -> list[float]:
    """Weights of the last `order` derivatives (newest first) for the step sigmas[i] -> sigmas[i+1].

    Each is the integral over the step of the Lagrange basis polynomial through sigmas[i], ...,
    sigmas[i-order+1]. Those polynomials have degree order-1, so Gauss-Legendre quadrature with
    `order` nodes is exact (k-diffusion uses scipy's adaptive quad for the same integrals).
    """
    nodes, weights = np.polynomial.legendre.leggauss(order)
    start, end = float(sigmas[i]), float(sigmas[i + 1])
    taus = (end - start) / 2 * nodes + (start + end) / 2  # nodes mapped from [-1, 1] to the step
    past = [float(sigmas[i - k]) for k in range(order)]
    coefficients = []
    for j in range(order):
        basis = np.ones_like(taus)
        for k in range(order):
            if k != j:
                basis *= (taus - past[k]) / (past[j] - past[k])
        coefficients.append(float((end - start) / 2 * np.sum(weights * basis)))
    return coefficients


@torch.no_grad()
def sample_lms(
    model: Denoiser, x: Tensor, sigmas: Tensor, extra_args: dict | None = None,
    callback: Callback | None = None, noise_sampler: NoiseSampler | None = None,
    order: int = 4,
) -> Tensor:
    """Linear multistep (Adams-Bashforth in sigma) over the last `order` derivatives (k-diffusion)."""
    ones, extra_args, _ = _prepare(x, extra_args, noise_sampler)
    sigmas_np = sigmas.detach().cpu().double().numpy()
    derivatives: list[Tensor] = []  # newest last
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * ones, **extra_args)
        derivatives = [*derivatives, to_d(x, sigmas[i], denoised)][-order:]
        coefficients = lms_coefficients(sigmas_np, i, min(i + 1, order))
        x = x + sum(c * d for c, d in zip(coefficients, reversed(derivatives)))
        _report(callback, i, x, sigmas[i], sigmas[i], denoised)
    return x


def _log_midpoint(sigma_a: Tensor, sigma_b: Tensor) -> Tensor:
    return sigma_a.log().lerp(sigma_b.log(), 0.5).exp()


@torch.no_grad()
def sample_dpm_2(
    model: Denoiser, x: Tensor, sigmas: Tensor, extra_args: dict | None = None,
    callback: Callback | None = None, noise_sampler: NoiseSampler | None = None,
    s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
) -> Tensor:
    """DPM-Solver-2 in k-diffusion's form: the derivative at the log-midpoint of each step."""
    ones, extra_args, noise_sampler = _prepare(x, extra_args, noise_sampler)
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas[i], len(sigmas) - 1, noise_sampler, s_churn, s_tmin, s_tmax, s_noise)
        sigma_next = sigmas[i + 1]
        denoised = model(x, sigma_hat * ones, **extra_args)
        d = to_d(x, sigma_hat, denoised)
        if sigma_next == 0:
            x = x + d * (sigma_next - sigma_hat)
        else:
            sigma_mid = _log_midpoint(sigma_hat, sigma_next)
            x_mid = x + d * (sigma_mid - sigma_hat)
            denoised = model(x_mid, sigma_mid * ones, **extra_args)
            x = x + to_d(x_mid, sigma_mid, denoised) * (sigma_next - sigma_hat)
        _report(callback, i, x, sigmas[i], sigma_hat, denoised)
    return x


@torch.no_grad()
def sample_dpm_2_ancestral(
    model: Denoiser, x: Tensor, sigmas: Tensor, extra_args: dict | None = None,
    callback: Callback | None = None, noise_sampler: NoiseSampler | None = None,
    eta: float = 1.0, s_noise: float = 1.0,
) -> Tensor:
    """DPM-Solver-2 steps down to sigma_down, then fresh noise back up to the next sigma (k-diffusion)."""
    ones, extra_args, noise_sampler = _prepare(x, extra_args, noise_sampler)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * ones, **extra_args)
        sigma_down, sigma_up = get_ancestral_step(sigma, sigma_next, eta)
        d = to_d(x, sigma, denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigma)
        else:
            sigma_mid = _log_midpoint(sigma, sigma_down)
            x_mid = x + d * (sigma_mid - sigma)
            denoised = model(x_mid, sigma_mid * ones, **extra_args)
            x = x + to_d(x_mid, sigma_mid, denoised) * (sigma_down - sigma)
            x = x + noise_sampler(sigma, sigma_next) * s_noise * sigma_up
        _report(callback, i, x, sigma, sigma, denoised)
    return x


@torch.no_grad()
def sample_lcm(
    model: Denoiser, x: Tensor, sigmas: Tensor, extra_args: dict | None = None,
    callback: Callback | None = None, noise_sampler: NoiseSampler | None = None,
) -> Tensor:
    """Latent Consistency Model sampling: jump to the x0 estimate, re-noise to the next sigma (ComfyUI/A1111)."""
    ones, extra_args, noise_sampler = _prepare(x, extra_args, noise_sampler)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * ones, **extra_args)
        x = denoised
        if sigma_next > 0:
            x = x + noise_sampler(sigma, sigma_next) * sigma_next
        _report(callback, i, x, sigma, sigma, denoised)
    return x


# ---------------------------------------------------------------------------------------------------
# DPM-Solver++ (Lu et al. 2022) in k-diffusion's form: exponential integrators in t = -log(sigma)


def _t(sigma: Tensor) -> Tensor:
    return sigma.log().neg()


def _sigma(t: Tensor) -> Tensor:
    return t.neg().exp()


@torch.no_grad()
def sample_dpmpp_2s_ancestral(
    model: Denoiser, x: Tensor, sigmas: Tensor, extra_args: dict | None = None,
    callback: Callback | None = None, noise_sampler: NoiseSampler | None = None,
    eta: float = 1.0, s_noise: float = 1.0,
) -> Tensor:
    """DPM-Solver++(2S) single steps down to sigma_down, then fresh noise up to the next sigma."""
    ones, extra_args, noise_sampler = _prepare(x, extra_args, noise_sampler)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * ones, **extra_args)
        sigma_down, sigma_up = get_ancestral_step(sigma, sigma_next, eta)
        if sigma_down == 0:
            x = x + to_d(x, sigma, denoised) * (sigma_down - sigma)
        else:
            t, t_next = _t(sigma), _t(sigma_down)
            h = t_next - t
            s = t + h / 2
            x_mid = (_sigma(s) / sigma) * x - (-h / 2).expm1() * denoised
            denoised = model(x_mid, _sigma(s) * ones, **extra_args)
            x = (sigma_down / sigma) * x - (-h).expm1() * denoised
        if sigma_next > 0:
            x = x + noise_sampler(sigma, sigma_next) * s_noise * sigma_up
        _report(callback, i, x, sigma, sigma, denoised)
    return x


def _brownian_step(noise_first, noise_rest, sigma, sigma_s, sigma_next) -> Tensor:
    """The unit-variance Brownian increment over [sigma_next, sigma], given its part over [sigma_s, sigma]."""
    first, rest = sigma - sigma_s, sigma_s - sigma_next
    return (noise_first * first.sqrt() + noise_rest * rest.sqrt()) / (first + rest).sqrt()


@torch.no_grad()
def sample_dpmpp_sde(
    model: Denoiser, x: Tensor, sigmas: Tensor, extra_args: dict | None = None,
    callback: Callback | None = None, noise_sampler: NoiseSampler | None = None,
    eta: float = 1.0, s_noise: float = 1.0, r: float = 1 / 2,
) -> Tensor:
    """DPM-Solver++ stochastic, two model calls per step (k-diffusion's `sample_dpmpp_sde`).

    k-diffusion (and A1111) draw this noise from a Brownian tree over sigma: the step's second draw is
    the increment over [sigma_next, sigma], which contains the first draw's [sigma_s, sigma]. Here the
    noise comes from `noise_sampler` (the pipeline's per-image seeds), called for the two disjoint
    pieces [sigma_s, sigma] and [sigma_next, sigma_s], and the step's increment is assembled from both:
    the same joint distribution as the tree's (with two unrelated draws instead, the samples come out
    visibly too narrow: std 0.63 instead of 0.69 for N(0.5, 0.7^2) data at 30 Karras steps), but not
    A1111's pixels for a given seed.
    """
    ones, extra_args, noise_sampler = _prepare(x, extra_args, noise_sampler)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * ones, **extra_args)
        if sigma_next == 0:
            x = x + to_d(x, sigma, denoised) * (sigma_next - sigma)
        else:
            t, t_next = _t(sigma), _t(sigma_next)
            h = t_next - t
            sigma_s = _sigma(t + h * r)
            # Stage 1: an ancestral first-order step to the intermediate level sigma_s
            sigma_down, sigma_up = get_ancestral_step(sigma, sigma_s, eta)
            noise_first = noise_sampler(sigma, sigma_s)
            x_s = (sigma_down / sigma) * x - (t - _t(sigma_down)).expm1() * denoised
            x_s = x_s + noise_first * s_noise * sigma_up
            denoised_s = model(x_s, sigma_s * ones, **extra_args)
            # Stage 2: from x again, with x0 extrapolated from both estimates
            sigma_down, sigma_up = get_ancestral_step(sigma, sigma_next, eta)
            fac = 1 / (2 * r)
            denoised_d = (1 - fac) * denoised + fac * denoised_s
            x = (sigma_down / sigma) * x - (t - _t(sigma_down)).expm1() * denoised_d
            noise = _brownian_step(noise_first, noise_sampler(sigma_s, sigma_next), sigma, sigma_s, sigma_next)
            x = x + noise * s_noise * sigma_up
            denoised = denoised_s
        _report(callback, i, x, sigma, sigma, denoised)
    return x


@torch.no_grad()
def sample_dpmpp_2m(
    model: Denoiser, x: Tensor, sigmas: Tensor, extra_args: dict | None = None,
    callback: Callback | None = None, noise_sampler: NoiseSampler | None = None,
) -> Tensor:
    """DPM-Solver++(2M): second order from the previous step's x0 estimate, one model call per step."""
    ones, extra_args, _ = _prepare(x, extra_args, noise_sampler)
    old_denoised = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * ones, **extra_args)
        if sigma_next == 0:
            x = denoised
        else:
            h = _t(sigma_next) - _t(sigma)
            denoised_d = denoised
            if old_denoised is not None:
                r = (_t(sigma) - _t(sigmas[i - 1])) / h  # previous step size / this one
                denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (sigma_next / sigma) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
        _report(callback, i, x, sigma, sigma, denoised)
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(
    model: Denoiser, x: Tensor, sigmas: Tensor, extra_args: dict | None = None,
    callback: Callback | None = None, noise_sampler: NoiseSampler | None = None,
    eta: float = 1.0, s_noise: float = 1.0, solver_type: str = "midpoint",
) -> Tensor:
    """DPM-Solver++(2M) SDE (k-diffusion); solver_type "heun" is A1111's "DPM++ 2M SDE Heun".

    k-diffusion draws the noise from a Brownian tree; here it comes from `noise_sampler` (see
    `sample_dpmpp_sde`).
    """
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"solver_type must be 'midpoint' or 'heun', not {solver_type!r}")
    ones, extra_args, noise_sampler = _prepare(x, extra_args, noise_sampler)
    old_denoised, h_last = None, None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * ones, **extra_args)
        if sigma_next == 0:
            x = denoised
        else:
            h = _t(sigma_next) - _t(sigma)
            eta_h = eta * h
            decay = (-h - eta_h).expm1().neg()  # 1 - exp(-(1 + eta) h)
            x = (sigma_next / sigma) * (-eta_h).exp() * x + decay * denoised
            if old_denoised is not None:
                slope = (h / h_last) * (denoised - old_denoised)  # (x0 change per unit t) * h
                if solver_type == "heun":
                    x = x + (decay / (-h - eta_h) + 1) * slope
                else:
                    x = x + 0.5 * decay * slope
            if eta:
                x = x + noise_sampler(sigma, sigma_next) * sigma_next * (-2 * eta_h).expm1().neg().sqrt() * s_noise
            h_last = h
        old_denoised = denoised
        _report(callback, i, x, sigma, sigma, denoised)
    return x


@torch.no_grad()
def sample_dpmpp_3m_sde(
    model: Denoiser, x: Tensor, sigmas: Tensor, extra_args: dict | None = None,
    callback: Callback | None = None, noise_sampler: NoiseSampler | None = None,
    eta: float = 1.0, s_noise: float = 1.0,
) -> Tensor:
    """DPM-Solver++(3M) SDE (k-diffusion): third order from the two previous x0 estimates.

    With eta=0 it is the deterministic DPM-Solver++(3M). Noise: see `sample_dpmpp_sde`.
    """
    ones, extra_args, noise_sampler = _prepare(x, extra_args, noise_sampler)
    denoised_1, denoised_2 = None, None  # the previous two x0 estimates
    h_1, h_2 = None, None  # and the previous two step sizes in t
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * ones, **extra_args)
        h = None
        if sigma_next == 0:
            x = denoised
        else:
            h = _t(sigma_next) - _t(sigma)
            h_eta = h * (eta + 1)
            x = torch.exp(-h_eta) * x + (-h_eta).expm1().neg() * denoised
            phi_2 = (-h_eta).expm1() / h_eta + 1
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif h_1 is not None:
                x = x + phi_2 * (denoised - denoised_1) / (h_1 / h)
            if eta:
                x = x + noise_sampler(sigma, sigma_next) * sigma_next * (-2 * h * eta).expm1().neg().sqrt() * s_noise
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
        _report(callback, i, x, sigma, sigma, denoised)
    return x
