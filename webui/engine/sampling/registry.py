"""Samplers by AUTOMATIC1111's display names: the function, its "Automatic" schedule, its options.

The table is data; `resolve_sampler` accepts display names, aliases (k_euler_a, ...) and the old
combined names ("DPM++ 2M Karras" = DPM++ 2M with the Karras schedule).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import import_module
from typing import Any, Callable

from webui.errors import RequestError

SCHEDULES = (
    "Automatic", "Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform", "KL Optimal",
    "Align Your Steps", "Simple", "Normal", "DDIM", "Beta",
)
SCHEDULE_ALIASES = {"sgmuniform": "SGM Uniform", "sgm_uniform": "SGM Uniform", "kl_optimal": "KL Optimal",
                    "align_your_steps": "Align Your Steps", "ddim_uniform": "DDIM"}


@dataclass(frozen=True)
class SamplerInfo:
    name: str
    function: str  # "module:function" inside webui.engine.sampling
    automatic_schedule: str | None = None  # what "Automatic" picks; None: no preference (the model's sigmas)
    aliases: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)  # fixed keyword arguments
    discard_penultimate: bool = False  # A1111 drops the second-to-last sigma for these
    uses_eta: bool = False  # ancestral / SDE samplers draw fresh noise each step (eta, s_noise)
    # DDIM, PLMS, UniPC: "module:function" giving their own timesteps' sigmas (the schedule type is ignored).
    # They start from noise * sqrt(1 + sigma_max^2) (pure noise in the network's space) and end at sigma_min.
    timesteps: str | None = None
    takes_sigma_range: bool = False  # DPM fast / adaptive: sigma_min..sigma_max, not a list

    @property
    def timestep_sampler(self) -> bool:
        return self.timesteps is not None

    def load(self) -> Callable[..., Any]:
        return _load(self.function)

    def load_timesteps(self) -> Callable[..., Any]:
        assert self.timesteps is not None
        return _load(self.timesteps)


def _load(reference: str) -> Callable[..., Any]:
    module, name = reference.split(":")
    return getattr(import_module(f"webui.engine.sampling.{module}"), name)


SAMPLERS: tuple[SamplerInfo, ...] = (  # A1111's UI order; the first is the UI default
    SamplerInfo("DPM++ 2M", "samplers:sample_dpmpp_2m", "Karras", ("k_dpmpp_2m",)),
    SamplerInfo("DPM++ SDE", "samplers:sample_dpmpp_sde", "Karras", ("k_dpmpp_sde",), uses_eta=True),
    SamplerInfo("DPM++ 2M SDE", "samplers:sample_dpmpp_2m_sde", "Exponential", ("k_dpmpp_2m_sde",), uses_eta=True),
    SamplerInfo("DPM++ 2M SDE Heun", "samplers:sample_dpmpp_2m_sde", "Exponential", ("k_dpmpp_2m_sde_heun",),
                {"solver_type": "heun"}, uses_eta=True),
    SamplerInfo("DPM++ 2S a", "samplers:sample_dpmpp_2s_ancestral", "Karras", ("k_dpmpp_2s_a",), uses_eta=True),
    SamplerInfo("DPM++ 3M SDE", "samplers:sample_dpmpp_3m_sde", "Exponential", ("k_dpmpp_3m_sde",),
                discard_penultimate=True, uses_eta=True),
    SamplerInfo("Euler a", "samplers:sample_euler_ancestral", None, ("k_euler_a", "k_euler_ancestral"), uses_eta=True),
    SamplerInfo("Euler", "samplers:sample_euler", None, ("k_euler",)),
    SamplerInfo("LMS", "samplers:sample_lms", None, ("k_lms",)),
    SamplerInfo("Heun", "samplers:sample_heun", None, ("k_heun",)),
    SamplerInfo("DPM2", "samplers:sample_dpm_2", "Karras", ("k_dpm_2",), discard_penultimate=True),
    SamplerInfo("DPM2 a", "samplers:sample_dpm_2_ancestral", "Karras", ("k_dpm_2_a",), discard_penultimate=True,
                uses_eta=True),
    SamplerInfo("DPM fast", "samplers_extra:sample_dpm_fast_sigmas", None, ("k_dpm_fast",), uses_eta=True,
                takes_sigma_range=True),
    SamplerInfo("DPM adaptive", "samplers_extra:sample_dpm_adaptive_sigmas", None, ("k_dpm_ad",), uses_eta=True,
                takes_sigma_range=True),
    SamplerInfo("Restart", "samplers_extra:sample_restart", "Karras", ("restart",)),
    # A1111's own timestep lists (its DDIM/PLMS stop at t=1: 20 steps make 19 network calls).
    SamplerInfo("DDIM", "samplers_timestep:sample_ddim", None, ("ddim",), uses_eta=True,
                timesteps="samplers_timestep:sigmas_a1111_timesteps"),
    SamplerInfo("PLMS", "samplers_timestep:sample_plms", None, ("plms",), timesteps="samplers_timestep:sigmas_a1111_timesteps"),
    SamplerInfo("UniPC", "samplers_timestep:sample_unipc", None, ("unipc",), timesteps="samplers_timestep:sigmas_unipc_timesteps"),
    SamplerInfo("LCM", "samplers:sample_lcm", None, ("k_lcm",)),
)
_BY_NAME = {key.lower(): s for s in SAMPLERS for key in (s.name, *s.aliases)}


def sampler_info(name: str) -> SamplerInfo:
    info = _BY_NAME.get(name.strip().lower())
    if info is None:
        raise RequestError("sampler_name", name, "one of " + ", ".join(s.name for s in SAMPLERS))
    return info


# Names from before A1111 1.9 that give a sampler and its schedule together.
COMBINED_ALIASES: dict[str, tuple[str, str]] = {
    "k_lms_ka": ("LMS", "Karras"), "k_dpm_2_ka": ("DPM2", "Karras"), "k_dpm_2_a_ka": ("DPM2 a", "Karras"),
    "k_dpmpp_2s_a_ka": ("DPM++ 2S a", "Karras"), "k_dpmpp_2m_ka": ("DPM++ 2M", "Karras"),
    "k_dpmpp_sde_ka": ("DPM++ SDE", "Karras"), "k_dpmpp_2m_sde_ka": ("DPM++ 2M SDE", "Karras"),
    "k_dpmpp_2m_sde_exp": ("DPM++ 2M SDE", "Exponential"),
    "k_dpmpp_2m_sde_heun_ka": ("DPM++ 2M SDE Heun", "Karras"),
    "k_dpmpp_2m_sde_heun_exp": ("DPM++ 2M SDE Heun", "Exponential"),
    "k_dpmpp_3m_sde_ka": ("DPM++ 3M SDE", "Karras"), "k_dpmpp_3m_sde_exp": ("DPM++ 3M SDE", "Exponential"),
}
_SCHEDULE_KEYS = {**{s.lower(): s for s in SCHEDULES}, **SCHEDULE_ALIASES}


def split_sampler(sampler: str, schedule: str | None = None) -> tuple[str, str]:
    """(sampler, schedule) as A1111's infotext reader resolves them, without validating.

    Aliases map to display names, old combined names ("DPM++ 2M Karras") split, and a schedule equal
    to the sampler's preferred one becomes "Automatic". Unknown names come back as given (stripped).
    """
    name = sampler.strip()
    found = _SCHEDULE_KEYS.get((schedule or "Automatic").strip().lower(), (schedule or "").strip())
    key = name.lower()
    if key in COMBINED_ALIASES:
        name, found = COMBINED_ALIASES[key]
    elif key in _BY_NAME:
        name = _BY_NAME[key].name
    else:
        for suffix, label in _SCHEDULE_KEYS.items():
            base = key[: -len(suffix) - 1].strip()
            if key.endswith(" " + suffix) and base in _BY_NAME:  # the suffix wins, as in A1111
                name, found = _BY_NAME[base].name, label
                break
    info = _BY_NAME.get(name.lower())
    if info is not None and found == info.automatic_schedule:
        found = "Automatic"
    return name, found


def resolve_sampler(sampler_name: str, scheduler: str | None = "Automatic") -> tuple[str, str]:
    """(display sampler name, schedule name) from user input, validated."""
    if not isinstance(sampler_name, str) or (scheduler is not None and not isinstance(scheduler, str)):
        bad = ("sampler_name", sampler_name) if not isinstance(sampler_name, str) else ("scheduler", scheduler)
        raise RequestError(bad[0], bad[1], "a name")
    name, schedule = split_sampler(sampler_name, scheduler)
    if schedule not in SCHEDULES:
        raise RequestError("scheduler", scheduler, "one of " + ", ".join(SCHEDULES))
    return sampler_info(name).name, schedule


def schedule_label(sampler: str, schedule: str) -> str:
    """What A1111 writes as "Schedule type": "Automatic" resolved to the sampler's preferred schedule."""
    info = _BY_NAME.get(sampler.strip().lower())
    preferred = info.automatic_schedule if info else None
    return preferred if schedule == "Automatic" and preferred else schedule


def effective_schedule(info: SamplerInfo, schedule: str) -> str:
    """The schedule a sampler really uses: "Automatic" resolved; timestep samplers always use DDIM's."""
    if info.timestep_sampler:
        return "DDIM"
    if schedule == "Automatic":
        return info.automatic_schedule or "Uniform"
    return schedule
