"""The sampler table: A1111's names, aliases, Automatic schedules, and every entry loads."""

import inspect

import pytest

from webui.engine.sampling.registry import SAMPLERS, SCHEDULES, effective_schedule, resolve_sampler, sampler_info
from webui.errors import RequestError

A1111_SAMPLERS = ["DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 2S a", "DPM++ 3M SDE",
                  "Euler a", "Euler", "LMS", "Heun", "DPM2", "DPM2 a", "DPM fast", "DPM adaptive", "Restart",
                  "DDIM", "PLMS", "UniPC", "LCM"]


def test_names_in_a1111_order():
    assert [s.name for s in SAMPLERS] == A1111_SAMPLERS
    assert SCHEDULES[0] == "Automatic" and len(SCHEDULES) == 12


@pytest.mark.parametrize("info", SAMPLERS, ids=lambda s: s.name)
def test_every_sampler_loads_with_the_contract_signature(info):
    params = inspect.signature(info.load()).parameters
    assert list(params)[:3] == ["model", "x", "sigmas"]
    assert "callback" in params
    for option in info.options:
        assert option in params
    if info.uses_eta:
        assert {"eta", "s_noise", "noise_sampler"} <= set(params)


def test_automatic_schedules_follow_a1111():
    assert effective_schedule(sampler_info("DPM++ 2M"), "Automatic") == "Karras"
    assert effective_schedule(sampler_info("DPM++ 2M SDE"), "Automatic") == "Exponential"
    assert effective_schedule(sampler_info("Euler a"), "Automatic") == "Uniform"
    assert effective_schedule(sampler_info("Euler"), "Karras") == "Karras"
    assert effective_schedule(sampler_info("DDIM"), "Karras") == "DDIM"  # timestep samplers ignore it
    assert sampler_info("DPM2").discard_penultimate and sampler_info("DPM++ 3M SDE").discard_penultimate


@pytest.mark.parametrize(("given", "expected"), [
    (("DPM++ 2M Karras", "Automatic"), ("DPM++ 2M", "Automatic")),
    (("DPM++ 2M SDE Karras", "Automatic"), ("DPM++ 2M SDE", "Karras")),
    (("Euler a", "Automatic"), ("Euler a", "Automatic")),
    (("k_dpmpp_2m", "karras"), ("DPM++ 2M", "Automatic")),
    (("k_lms_ka", None), ("LMS", "Karras")),
    (("euler karras", None), ("Euler", "Karras")),
])
def test_resolve_names(given, expected):
    assert resolve_sampler(*given) == expected


def test_unknown_names():
    with pytest.raises(RequestError, match="sampler_name"):
        resolve_sampler("Magic")
    with pytest.raises(RequestError, match="scheduler"):
        resolve_sampler("Euler", "Magic")
