"""Denoisers: networks wrapped so that samplers see one interface, `denoise(x, sigma) -> x0 estimate`.

- `DiscreteSchedule`: the model's 1000 training noise levels, and sigma <-> fractional timestep.
- `EpsDenoiser` / `VDenoiser`: an eps- or v-predicting UNet as a denoiser (k-diffusion's
  CompVisDenoiser / CompVisVDenoiser formulas), with extra input channels for inpainting and depth.
- `CFGDenoiser`: classifier-free guidance, cond and uncond batched into one network call, with
  composable diffusion (several weighted prompts, "AND") and conditioning that changes over the steps.
- `SamplingState`: where sampling stands at each network call, for wrappers of the network (ControlNet).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

# (x, t, context) -> output; SDXL UNets also take the keyword y (B, adm_in_channels).
UNetFn = Callable[..., torch.Tensor]


class DiscreteSchedule:
    """The training noise levels sigma_t = sqrt((1 - abar_t) / abar_t), t = 0..999."""

    def __init__(self, alphas_cumprod: torch.Tensor) -> None:
        self.alphas_cumprod = alphas_cumprod.double()
        self.sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod).sqrt().float()  # ascending
        self.log_sigmas = self.sigmas.log()

    @classmethod
    def scaled_linear(cls, steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> DiscreteSchedule:
        """SD's schedule: betas = linspace(sqrt(beta_start), sqrt(beta_end), steps) ** 2."""
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float64) ** 2
        return cls(torch.cumprod(1.0 - betas, dim=0))

    @property
    def sigma_min(self) -> float:
        return self.sigmas[0].item()

    @property
    def sigma_max(self) -> float:
        return self.sigmas[-1].item()

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Fractional timestep of `sigma`, interpolating linearly in log-sigma between training levels."""
        log_sigmas = self.log_sigmas.to(sigma.device)
        log_sigma = sigma.float().log()
        dists = log_sigma - log_sigmas[:, None]
        low = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=log_sigmas.shape[0] - 2)
        w = ((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[low + 1])).clamp(0, 1)
        return ((1 - w) * low + w * (low + 1)).view(sigma.shape)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """sigma at a (fractional) timestep, interpolating in log-sigma."""
        log_sigmas = self.log_sigmas.to(t.device)
        t = t.float()
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * log_sigmas[low] + w * log_sigmas[high]).exp()


@dataclass
class Conditioning:
    """What the network is conditioned on, besides x and sigma."""

    context: torch.Tensor  # (B, tokens, width) text features
    concat: torch.Tensor | None = None  # (B, c, h, w) extra input channels (inpainting mask+image, depth)
    y: torch.Tensor | None = None  # (B, adm_in_channels) SDXL's vector: pooled text + size embeddings


class EpsDenoiser:
    """An eps-predicting UNet: x0 = x - sigma * eps(x / sqrt(sigma^2 + 1), t(sigma))."""

    prediction = "eps"

    def __init__(self, unet: UNetFn, schedule: DiscreteSchedule) -> None:
        self.unet = unet
        self.schedule = schedule

    def _run(self, x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        c_in = 1.0 / (sigma**2 + 1.0).sqrt()
        # Samplers keep their state in fp32; the network runs in its own dtype (e.g. bf16 or fp16).
        dtype = getattr(self.unet, "dtype", x.dtype)
        x_in = (x * c_in[:, None, None, None]).to(dtype)
        if cond.concat is not None:
            x_in = torch.cat([x_in, cond.concat.to(dtype)], dim=1)
        context = cond.context.to(dtype)
        if cond.y is not None:  # only then: SD 1/2 networks (and wrappers of them) take (x, t, context)
            return self.unet(x_in, self.schedule.sigma_to_t(sigma), context, y=cond.y.to(dtype))
        return self.unet(x_in, self.schedule.sigma_to_t(sigma), context)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        eps = self._run(x, sigma, cond)
        return x - eps.to(x.dtype) * sigma[:, None, None, None]


class VDenoiser(EpsDenoiser):
    """A v-predicting UNet: x0 = x / (sigma^2 + 1) - v * sigma / sqrt(sigma^2 + 1)."""

    prediction = "v"

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        v = self._run(x, sigma, cond).to(x.dtype)
        s = sigma[:, None, None, None]
        return x / (s**2 + 1.0) - v * s / (s**2 + 1.0).sqrt()


def make_denoiser(unet: UNetFn, schedule: DiscreteSchedule, prediction: str) -> EpsDenoiser:
    if prediction == "v":
        return VDenoiser(unet, schedule)
    if prediction == "eps":
        return EpsDenoiser(unet, schedule)
    raise ValueError(f"prediction must be 'eps' or 'v', not {prediction!r}")


@dataclass
class SamplingState:
    """Where the sampling stands at the current network call; the engine updates it before each call.

    Model wrappers (extensions' `wrap_model`) read it, e.g. to act only within a part of the steps, or
    only on the prompt's rows of a classifier-free-guidance batch.
    """

    step: int = 0  # 0-based index of the sampling step being computed, within this pass
    total_steps: int = 1  # the steps of this pass
    # One entry per row of the current network call: True where the row is the negative prompt's
    # (the unconditional half of CFG). All False when the call has no such rows (CFG scale 1).
    uncond: tuple[bool, ...] = ()

    def within(self, start: float, end: float) -> bool:
        """Whether the current step lies within [start, end] as fractions of the pass: step i covers
        [i / total, (i + 1) / total] (diffusers' `control_guidance_start/end`)."""
        return start <= self.step / self.total_steps and (self.step + 1) / self.total_steps <= end + 1e-9


@dataclass(frozen=True)
class ScheduledConditioning:
    """A conditioning that changes over the steps (prompt editing): `entries` are (end_at_step,
    conditioning), the first with step <= end_at_step is used. `weight`: its AND-weight."""

    entries: tuple[tuple[int, Conditioning], ...]
    weight: float = 1.0

    @classmethod
    def constant(cls, cond: Conditioning, weight: float = 1.0) -> ScheduledConditioning:
        return cls(((2**31, cond),), weight)

    def at(self, step: int) -> Conditioning:
        for end, cond in self.entries:
            if step <= end:
                return cond
        return self.entries[-1][1]


class CFGDenoiser:
    """Classifier-free guidance: uncond + scale * sum_i w_i (cond_i - uncond), all in ONE network call.

    One cond of weight 1 is plain CFG; several are AUTOMATIC1111's composable diffusion ("AND").
    Conditionings may change over the steps: the sampler reports each finished step with `set_step`.
    `cfg_rescale` (0..1) blends in the guided prediction rescaled to the conditional prediction's
    standard deviation (Lin et al. 2023, "Common Diffusion Noise Schedules ..."), computed in eps
    space as diffusers' `guidance_rescale`; it counters over-exposure at high scales.
    """

    def __init__(
        self,
        denoiser: Callable[[torch.Tensor, torch.Tensor, Conditioning], torch.Tensor],
        cond: Conditioning | Sequence[ScheduledConditioning],
        uncond: Conditioning | ScheduledConditioning,
        cfg_scale: float,
        cfg_rescale: float = 0.0,
        state: SamplingState | None = None,
    ) -> None:
        self.denoiser = denoiser
        self.state = state or SamplingState()
        self.conds = [ScheduledConditioning.constant(cond)] if isinstance(cond, Conditioning) else list(cond)
        self.uncond = ScheduledConditioning.constant(uncond) if isinstance(uncond, Conditioning) else uncond
        self.cfg_scale = cfg_scale
        self.cfg_rescale = cfg_rescale
        if not self.conds:
            raise ValueError("need at least one conditioning")
        every = [c for s in (*self.conds, self.uncond) for _, c in s.entries]
        # All halves must have the same token count to share a batch (A1111 pads with empty chunks).
        if len({c.context.shape[1] for c in every}) != 1:
            raise ValueError("cond and uncond must have the same number of tokens")
        if len({c.y is None for c in every}) != 1:
            raise ValueError("cond and uncond must both have a conditioning vector y, or neither")

    @property
    def step(self) -> int:
        return self.state.step

    def set_step(self, step: int, total_steps: int | None = None) -> None:
        """The 0-based index of the sampling step about to run (selects scheduled conditionings), and the
        pass's step count when it is known."""
        self.state.step = step
        if total_steps is not None:
            self.state.total_steps = total_steps

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        conds = [(s.weight, s.at(self.step)) for s in self.conds]
        if self.cfg_scale == 1.0 and len(conds) == 1 and conds[0][0] == 1.0:
            self.state.uncond = (False,) * x.shape[0]
            return self.denoiser(x, sigma, conds[0][1])  # the uncond half would be multiplied by zero
        halves = [c for _, c in conds] + [self.uncond.at(self.step)]
        self.state.uncond = (False,) * (x.shape[0] * len(conds)) + (True,) * x.shape[0]
        both = Conditioning(
            torch.cat([c.context for c in halves]),
            None if halves[0].concat is None else torch.cat([c.concat for c in halves]),
            None if halves[0].y is None else torch.cat([c.y for c in halves]),  # each its own pooled text
        )
        n = len(halves)
        denoised = self.denoiser(torch.cat([x] * n), torch.cat([sigma] * n), both).chunk(n)
        uncond = denoised[-1]
        if len(conds) == 1 and conds[0][0] == 1.0:
            cond = denoised[0]
            guided = uncond + (cond - uncond) * self.cfg_scale
        else:
            delta = sum(w * (d - uncond) for (w, _), d in zip(conds, denoised))
            cond = uncond + delta  # the combined conditional prediction (guidance scale 1)
            guided = uncond + delta * self.cfg_scale
        if self.cfg_rescale > 0:
            guided = self._rescale(x, sigma, cond, guided)
        return guided
    def _rescale(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor, guided: torch.Tensor) -> torch.Tensor:
        s = sigma[:, None, None, None]
        eps_cond, eps_guided = (x - cond) / s, (x - guided) / s
        dims = list(range(1, x.ndim))
        rescaled = eps_guided * (eps_cond.std(dim=dims, keepdim=True) / eps_guided.std(dim=dims, keepdim=True))
        eps = self.cfg_rescale * rescaled + (1 - self.cfg_rescale) * eps_guided
        return x - eps * s
