"""The timestep samplers DDIM, PLMS and UniPC, rewritten in sigma space (the samplers' contract).

The originals step x_t = sqrt(abar) * x0 + sqrt(1 - abar) * eps between integer timesteps. Here
x = x_t / sqrt(abar) and sigma = sqrt((1 - abar) / abar), so x = x0 + sigma * eps and:
- deterministic DDIM is an Euler step in sigma, and DDIM with eta is an ancestral Euler step;
- PLMS is an Adams-Bashforth multistep on eps = (x - x0) / sigma, with that same Euler step;
- UniPC depends on the noise levels only through lambda = -log(sigma).
The samplers therefore take any decreasing sigma list; the functions below give the ones the
references use. Those end at the lowest training level sigma_min (abar[0]), not at 0: the returned
x is then x0 + sigma_min * eps, and the original and diffusers return x_t = x / sqrt(1 + sigma_min^2)
(0.04% smaller for SD), which is what to decode to reproduce them bit for bit. They also start from
x_T = noise, that is x = noise * sqrt(1 + sigma_max^2) here, where k-diffusion uses noise * sigma_max:
the caller scales the start.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from webui.engine.sampling.denoisers import DiscreteSchedule
from webui.engine.sampling.samplers import Callback, NoiseSampler, default_noise_sampler, get_ancestral_step


# ---- timesteps ---------------------------------------------------------------------------------


def sigmas_ddim_timesteps(n: int, schedule: DiscreteSchedule) -> torch.Tensor:
    """The original DDIM's n steps: t = 1 + k * (T // n), descending, then sigma_min (t = 0): n + 1 sigmas.

    For T = 1000 and n = 4: t = 751, 501, 251, 1 -> sigma_min, as the LDM DDIMSampler and diffusers'
    DDIMScheduler (timestep_spacing "leading", steps_offset 1, set_alpha_to_one False) do.
    """
    num_train = len(schedule.sigmas)
    if not 1 <= n <= num_train:
        raise ValueError(f"DDIM steps must be between 1 and {num_train}, not {n}")
    timesteps = (torch.arange(n - 1, -1, -1) * (num_train // n) + 1).clamp(max=num_train - 1)
    return torch.cat([schedule.sigmas[timesteps], schedule.sigmas[:1]])


def sigmas_a1111_timesteps(steps: int, schedule: DiscreteSchedule) -> torch.Tensor:
    """AUTOMATIC1111's DDIM and PLMS list: t = range(0, T, T // steps) + 1 (clipped to T - 1), descending.

    A1111 runs len(t) - 1 steps and ends at t = 1, not at sigma_min: ceil(T / (T // steps)) - 1
    model calls, so 20 steps give 19 calls (30 give 30, 300 give 333).
    """
    num_train = len(schedule.sigmas)
    if not 1 <= steps <= num_train:
        raise ValueError(f"steps must be between 1 and {num_train}, not {steps}")
    timesteps = (torch.arange(0, num_train, num_train // steps) + 1).clamp(max=num_train - 1)
    return schedule.sigmas[timesteps.flip(0)]


def sigmas_unipc_timesteps(n: int, schedule: DiscreteSchedule) -> torch.Tensor:
    """A1111's UniPC ("time_uniform"): t = linspace(T - 1, 0, n + 1), log(abar) linear between timesteps.

    A1111 passes n = len(range(0, T, T // steps)) (= steps when steps divides T). The list ends at
    sigma_min; the model is then called at fractional timesteps.
    """
    num_train = len(schedule.sigmas)
    t = torch.linspace(num_train - 1, 0, n + 1, dtype=torch.float64)
    low = t.floor().long().clamp(max=num_train - 2)
    w = t - low
    log_abar = schedule.alphas_cumprod.log()
    log_abar_t = (1 - w) * log_abar[low] + w * log_abar[low + 1]
    return torch.expm1(-log_abar_t).sqrt().float()  # sigma = sqrt(1 / abar - 1)


def _report(callback: Callback | None, i: int, x: torch.Tensor, sigma: float, denoised: torch.Tensor) -> None:
    """The contract's callback, after step i: x is the new latent, sigma the level the step left."""
    if callback is not None:
        callback({"i": i, "x": x, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})


# ---- DDIM and PLMS -----------------------------------------------------------------------------


@torch.no_grad()
def sample_ddim(
    model: Callable[..., torch.Tensor],
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    noise_sampler: NoiseSampler | None = None,
    eta: float = 0.0,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """DDIM (Song et al. 2020). eta = 0 (A1111's "Eta for DDIM" default) is deterministic.

    With eta > 0 each step ends with noise_sampler's noise times sigma_up = eta * sqrt(sigma_next^2 *
    (sigma^2 - sigma_next^2) / sigma^2): DDIM's variance written in sigma, which is k-diffusion's
    ancestral step. That draw is the one diffusers' DDIMScheduler takes as `variance_noise`.
    s_noise scales it, as in the ancestral samplers (the original and A1111 have none: keep 1).
    """
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or default_noise_sampler(x)
    s_in = x.new_ones(x.shape[0])
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = model(x, sigma * s_in, **extra_args)
        sigma_down, sigma_up = (float(s) for s in get_ancestral_step(sigmas[i].double(), sigmas[i + 1].double(), eta))
        x = denoised + (x - denoised) * (sigma_down / sigma)  # x0 + sigma_down * eps
        if sigma_up > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * (sigma_up * s_noise)
        _report(callback, i, x, sigma, denoised)
    return x


# Adams-Bashforth weights on eps, newest first, for 2, 3 and 4 known values (equal steps assumed,
# as PNDM does whatever the spacing).
_ADAMS_BASHFORTH = {2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12), 4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


@torch.no_grad()
def sample_plms(
    model: Callable[..., torch.Tensor],
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    noise_sampler: NoiseSampler | None = None,
) -> torch.Tensor:
    """PLMS, the pseudo linear multistep of PNDM (Liu et al. 2022) as LDM and A1111 run it.

    The first step is a pseudo improved Euler (two model calls); later steps combine the last up to
    four eps with Adams-Bashforth weights. This is diffusers' PNDMScheduler with skip_prk_steps.
    """
    extra_args = extra_args or {}
    s_in = x.new_ones(x.shape[0])
    old_eps: list[torch.Tensor] = []  # newest last
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        eps = (x - model(x, sigma * s_in, **extra_args)) / sigma
        if old_eps:
            weights = _ADAMS_BASHFORTH[len(old_eps) + 1]
            eps_step = sum(w * e for w, e in zip(weights, [eps, *reversed(old_eps)]))
        elif sigma_next > 0:
            x_euler = x + eps * (sigma_next - sigma)
            eps_next = (x_euler - model(x_euler, sigma_next * s_in, **extra_args)) / sigma_next
            eps_step = (eps + eps_next) / 2
        else:  # a single step straight to sigma 0: nothing to average with
            eps_step = eps
        denoised = x - eps_step * sigma
        x = denoised + eps_step * sigma_next
        old_eps = [*old_eps[-2:], eps]
        _report(callback, i, x, sigma, denoised)
    return x


# ---- UniPC -------------------------------------------------------------------------------------


def _unipc_coefficients(h: float, rks: list[float], variant: str) -> tuple[float, torch.Tensor, torch.Tensor]:
    """(B(h), R, b) of UniPC's order conditions R @ rho = b for K = len(rks) + 1 (Zhao et al. 2023, eq. 8).

    rks are the earlier points' (lambda_i - lambda_0) / h; b_k = h phi_{k+1}(h) k! / B(h) in the
    data-prediction form, with phi_k(h) from e^-h's expansion.
    """
    hh = -h  # data prediction integrates in -lambda
    if variant == "bh1":
        b_h = hh
    elif variant == "bh2":
        b_h = math.expm1(hh)
    else:
        raise ValueError(f"UniPC variant must be 'bh1' or 'bh2', not {variant!r}")
    nodes = torch.tensor([*rks, 1.0], dtype=torch.float64)
    h_phi_k = math.expm1(hh) / hh - 1
    factorial, b = 1, []
    for k in range(1, len(nodes) + 1):
        b.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    powers = torch.stack([nodes ** (k - 1) for k in range(1, len(nodes) + 1)])
    return b_h, powers, torch.tensor(b, dtype=torch.float64)


def _unipc_update(
    x: torch.Tensor,
    history: list[tuple[float, torch.Tensor]],
    lambda_next: float,
    order: int,
    variant: str,
    denoised_next: torch.Tensor | None = None,
) -> torch.Tensor:
    """UniP (denoised_next None) or UniC (denoised_next = model output at the predicted point) of `order`.

    history holds (lambda, denoised) of the latest points, the current one last; x is at its lambda.
    """
    lambda_0, m0 = history[-1]
    h = lambda_next - lambda_0
    rks, d1s = [], []
    for lambda_i, m_i in reversed(history[-order:-1]):  # the previous order - 1 points, newest first
        rk = (lambda_i - lambda_0) / h
        rks.append(rk)
        d1s.append((m_i - m0) / rk)
    b_h, powers, b = _unipc_coefficients(h, rks, variant)
    ratio = math.exp(-h)  # sigma_next / sigma
    x_next = x * ratio + m0 * (1 - ratio)  # the first-order (DDIM) step
    if denoised_next is None:  # predictor: K - 1 differences
        if not d1s:
            return x_next
        rhos = [0.5] if order == 2 else torch.linalg.solve(powers[:-1, :-1], b[:-1]).tolist()
        return x_next - b_h * sum(r * d for r, d in zip(rhos, d1s))
    # corrector: the K - 1 differences plus the new point's
    rhos = [0.5] if order == 1 else torch.linalg.solve(powers, b).tolist()
    correction = sum(r * d for r, d in zip(rhos[:-1], d1s)) + rhos[-1] * (denoised_next - m0)
    return x_next - b_h * correction


@torch.no_grad()
def sample_unipc(
    model: Callable[..., torch.Tensor],
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    noise_sampler: NoiseSampler | None = None,
    order: int = 3,
    variant: str = "bh1",
    lower_order_final: bool = True,
) -> torch.Tensor:
    """UniPC multistep (Zhao et al. 2023) in data prediction: UniP-K predicts, UniC-K corrects.

    A1111's defaults (its settings "UniPC variant/order/lower order final"): bh1, order 3, True;
    diffusers' UniPCMultistepScheduler defaults to bh2, order 2. The corrector reuses the model call
    made at the predicted point, so a step costs one call; the final step is not corrected. The
    first steps warm up with lower orders, and with lower_order_final so do the last ones. A step to
    sigma 0 is first order (it returns the x0 estimate).
    """
    extra_args = extra_args or {}
    s_in = x.new_ones(x.shape[0])
    steps = len(sigmas) - 1
    history: list[tuple[float, torch.Tensor]] = []  # (lambda, denoised), newest last
    x_start, step_order = x, 1  # the last step's start and order, for its corrector
    for i in range(steps):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        lambda_i = -math.log(sigma)
        denoised = model(x, sigma * s_in, **extra_args)
        if history:
            x = _unipc_update(x_start, history, lambda_i, step_order, variant, denoised_next=denoised)
        history = [*history, (lambda_i, denoised)][-order:]
        x_start = x
        if sigma_next == 0:
            x = denoised
        else:
            step_order = min(order, len(history), steps - i if lower_order_final else order)
            x = _unipc_update(x, history, -math.log(sigma_next), step_order, variant)
        _report(callback, i, x, sigma, denoised)
    return x
