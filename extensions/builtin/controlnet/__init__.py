"""Built-in extension: ControlNet, through the public hooks only.

Units (`request.extensions["controlnet"]["units"]`, see `units.py`) name a ControlNet from
models/controlnet, a control image (in img2img and inpaint the input image when none is given), a
preprocessor and how strongly and when it acts. Per job: `check_request` validates the units before
the job is queued, `rewrite_request` makes each unit's control map (and turns a depth-tab job on a
checkpoint that is not a depth model into a depth-ControlNet unit), `wrap_model` loads the networks
and wraps the UNet (`control.ControlledModel`), `infotext_fields` writes `ControlNet N: "..."` as
AUTOMATIC1111's ControlNet does, and `read_infotext` reads it back into the tab's controls.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from webui.engine.memory.attention import set_attention
from webui.engine.models.checkpoint_file import file_sha256
from webui.engine.memory.offload import Placement
from webui.errors import ModelLoadError, RequestError
from webui.plugins import ControlsSpec, Route, hookimpl

from .control import ActiveUnit, ControlledModel, control_map, inpaint_crop
from .loading import inspect_controlnet, load_controlnet
from .preprocessors import PREPROCESSORS
from .units import NAME, ControlUnit, infotext_value, parse_units, read_infotext_value

TABS = ("txt2img", "img2img", "inpaint")
MODEL_KIND = "controlnet"


# --- models ---------------------------------------------------------------------------------------

def model_file(context, name: str, field: str = f"{NAME}.units[].model") -> Path:
    """The file of a listed ControlNet name (RequestError naming `field` for any other name)."""
    return context.services["model_path"](MODEL_KIND, name, field)


def _file_key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return str(path), stat.st_mtime_ns, stat.st_size


def describe(context, path: Path):
    """What the file holds (read from its header once per file version)."""
    cache = context.state.setdefault("described", {})
    key = _file_key(path)
    if key not in cache:
        cache[key] = inspect_controlnet(path)
    return cache[key]


def file_hash(context, path: Path) -> str:
    """SHA-256 of the file, computed once per file version (for the infotext)."""
    cache = context.state.setdefault("hashes", {})
    key = _file_key(path)
    if key not in cache:
        cache[key] = file_sha256(path)
    return cache[key]


def networks_for(context, paths: list[Path], bundle) -> list:
    """The loaded networks for `paths`, in the UNet's dtype, kept between jobs (networks no longer asked for
    are let go) and placed as the UNet is: with sequential offload layer by layer, otherwise on the device
    for the whole sampling (they run at every step beside the UNet). They use the UNet's attention backend."""
    cache: dict = context.state.setdefault("networks", {})
    dtype = bundle.unet.dtype
    keys = [(*_file_key(p), str(dtype), str(bundle.device)) for p in paths]
    for key in [k for k in cache if k not in keys]:
        del cache[key]
    sequential = bundle.placement is not None and bundle.placement.mode == "sequential"
    attention = next((m.attention_config for m in bundle.unet.modules() if hasattr(m, "attention_config")), None)
    for key, path in zip(keys, paths):
        if key not in cache:
            network = load_controlnet(path, dtype=dtype, device="cpu")
            cache[key] = (network, Placement({"controlnet": network}, bundle.device))
        network, placement = cache[key]
        placement.set_mode("sequential" if sequential else "none")
        if attention is not None:
            set_attention(network, attention)
    return [cache[key][0] for key in keys]


def depth_controlnet(context, family: str) -> str | None:
    """The first ControlNet in models/controlnet with "depth" in its name made for `family`."""
    for name in context.services["model_names"](MODEL_KIND):
        if "depth" not in name.lower():
            continue
        try:
            if describe(context, model_file(context, name)).config.family == family:
                return name
        except ModelLoadError as exc:
            context.log.warning("%s", exc)
    return None


# --- generation hooks -----------------------------------------------------------------------------

def _units(request, context, check_models: bool = False) -> list[ControlUnit]:
    params = request.extensions.get(NAME)
    if not params:
        return []
    find = (lambda name: model_file(context, name)) if check_models else None
    return parse_units(params, find)


def _unit_inputs(request, context) -> list[tuple[ControlUnit, Any]]:
    """The enabled units with each one's control image (the unit's own, or the input image), checked:
    a RequestError names the field of the first bad value."""
    inputs = []
    for i, unit in enumerate(_units(request, context, check_models=True)):
        image = unit.image if unit.image is not None else request.init_image
        if image is None:
            raise RequestError(f"{NAME}.units[{i}].image", None, "a control image (or turn the unit off)")
        if unit.module == "depth" and "estimate_depth" not in context.services:
            raise RequestError(f"{NAME}.units[{i}].module", "depth", "a preprocessor other than depth: this app "
                               "has no depth estimator")
        inputs.append((unit, image))
    return inputs


@hookimpl
def check_request(request, context):
    _unit_inputs(request, context)


@hookimpl
def rewrite_request(request, bundle, context):
    """The units checked, with their control maps made at the generation size (once per job)."""
    request = _depth_tab_as_unit(request, bundle, context)
    inputs = _unit_inputs(request, context)
    if not inputs:
        return None
    maps = []
    for unit, image in inputs:
        if request.mode == "inpaint" and request.inpaint_full_res:
            image = inpaint_crop(image, request)
        maps.append(control_map(unit, image, request.width, request.height, context.services.get("estimate_depth")))
    params = {"units": [unit.to_dict() for unit, _ in inputs], "maps": maps}
    return replace(request, extensions={**request.extensions, NAME: params})


def _depth_tab_as_unit(request, bundle, context):
    """A depth-tab job on a checkpoint that is not a depth model: a unit of this family's depth ControlNet
    (on the uploaded depth map as it is, or on the input image through the depth preprocessor)."""
    if request.mode != "depth" or bundle is None or bundle.spec.variant == "depth":
        return request
    name = depth_controlnet(context, bundle.spec.family)
    if name is None:
        return request  # the engine says what is needed
    by_map = request.depth_map is not None
    unit = {"model": name, "module": "none" if by_map else "depth",
            "image": request.depth_map if by_map else request.init_image,
            "resize_mode": {"Just resize": 0, "Crop and resize": 1, "Resize and fill": 2}[request.resize_mode]}
    params = dict(request.extensions.get(NAME) or {})
    params["units"] = [*(params.get("units") or []), unit]
    return replace(request, depth=False, depth_map=None, extensions={**request.extensions, NAME: params})


@hookimpl
def wrap_model(model, request, bundle, sampling, context):
    params = request.extensions.get(NAME) or {}
    units = parse_units(params)
    if not units:
        return None
    if bundle.spec.family == "sdxl_refiner":
        return None  # ControlNets guide the base model; the refiner only finishes its work
    paths = [model_file(context, unit.model) for unit in units]
    for i, (unit, path) in enumerate(zip(units, paths)):
        config = describe(context, path).config
        if config.family != bundle.spec.family or config.unet.context_dim != bundle.spec.unet.context_dim:
            raise RequestError(f"{NAME}.units[{i}].model", unit.model,
                               f"a ControlNet for {bundle.spec.label} models (this one is for {config.label} "
                               f"models, {config.unet.context_dim}-wide text features)")
    networks = networks_for(context, paths, bundle)
    active = [ActiveUnit(u, n, m) for u, n, m in zip(units, networks, params["maps"])]
    return ControlledModel(model, active, sampling, bundle.spec.vae.downscale)


@hookimpl
def infotext_fields(request, context):
    fields = {}
    for i, unit in enumerate(_units(request, context)):
        fields[f"ControlNet {i}"] = infotext_value(unit, file_hash(context, model_file(context, unit.model)))
    return fields or None


@hookimpl
def read_infotext(params, context):
    """The units as the tab's controls take them; a model name is given as it is listed when it is here."""
    listed = {Path(name).with_suffix("").as_posix(): name for name in context.services["model_names"](MODEL_KIND)}
    values: dict[str, Any] = {}
    for key, text in params.items():
        if key.startswith("ControlNet ") and key[len("ControlNet "):].isdigit():
            index = int(key[len("ControlNet "):])
            unit = read_infotext_value(text)
            unit["model"] = listed.get(unit.get("model", ""), unit.get("model", ""))
            values.update({f"unit{index}_{name}": value for name, value in unit.items()})
    return values or None


# --- UI and routes --------------------------------------------------------------------------------

@hookimpl
def ui_controls(tab, context):
    if tab not in TABS:
        return None
    from .ui import build_units

    return ControlsSpec("ControlNet", lambda: build_units(context, tab))


@hookimpl
def api_routes(context):
    def model_list() -> dict:
        return {"model_list": context.services["model_names"](MODEL_KIND)}

    def module_list() -> dict:
        return {"module_list": list(PREPROCESSORS)}

    return [Route("GET", "model_list", model_list), Route("GET", "module_list", module_list)]
