"""AUTOMATIC1111's API request shapes, with its API defaults, and their translation to our request values.

The models are strict (an integer field refuses `true`, `"20"` and `20.5`; floats refuse NaN and
infinities) and ignore fields they do not know, as A1111's do. Fields A1111 has and we do not support are
accepted at their "off" values (what its clients send by default) and refused with a `RequestError`
naming the field otherwise, so a request is never silently done differently from what it asked.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from webui.engine.request import GenerationRequest
from webui.errors import RequestError
from webui.outputs import infotext_to_fields, parse_infotext
from webui.uploads import decode_image

REQUEST_FIELDS = {f.name for f in fields(GenerationRequest)}
# Settings a request may override (`override_settings`) and what each becomes here.
OVERRIDES = ("sd_model_checkpoint", "sd_vae", "CLIP_stop_at_last_layers", "eta_noise_seed_delta")


def without_surrogates(value: Any) -> Any:
    """JSON may carry lone UTF-16 surrogates ("\\ud800"), which no encoder, tokenizer or PNG takes: each
    becomes "?" in every string of the request."""
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, dict):
        return {without_surrogates(k): without_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_surrogates(v) for v in value]
    return value


class StrictModel(BaseModel):
    """Strict types (no "20" for 20, no true for 1), no NaN or infinities, unknown fields ignored."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _clean_text(cls, data: Any) -> Any:
        return without_surrogates(data)


class Txt2ImgRequest(StrictModel):
    """/sdapi/v1/txt2img (A1111's StableDiffusionTxt2ImgProcessingAPI, with its API defaults)."""

    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] | None = None
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: str | None = None
    scheduler: str | None = None
    sampler_index: str = "Euler"
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    eta: float | None = None
    denoising_strength: float | None = None
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    disable_extra_networks: bool = False
    firstpass_image: str | None = None
    comments: dict[str, Any] | None = None
    enable_hr: bool = False
    firstphase_width: int = 0
    firstphase_height: int = 0
    hr_scale: float = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    force_task_id: str | None = None
    script_name: str | None = None
    script_args: list[Any] = Field(default_factory=list)
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict)
    infotext: str | None = None


class Img2ImgRequest(Txt2ImgRequest):
    """/sdapi/v1/img2img (A1111's StableDiffusionImg2ImgProcessingAPI, with its API defaults)."""

    init_images: list[str] | None = None
    resize_mode: int | str = 0
    image_cfg_scale: float | None = None
    mask: str | None = None
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_blur: int | None = None
    mask_round: bool = True
    inpainting_fill: int | str = 0
    inpaint_full_res: bool | int = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int | bool = 0
    initial_noise_multiplier: float | None = None
    latent_mask: str | None = None
    include_init_images: bool = False
    denoising_strength: float | None = 0.75


# A1111 fields we do not support: (field, the values that mean "off", what to say).
UNSUPPORTED = (
    ("restore_faces", (None, False), "false: face restoration is not part of this server"),
    ("tiling", (None, False), "false: tiling is not part of this server"),
    ("styles", (None, []), "[]: prompt styles are not part of this server; put their text in the prompt"),
    ("seed_resize_from_h", (-1, 0), "-1: resizing seeds is not supported"),
    ("seed_resize_from_w", (-1, 0), "-1: resizing seeds is not supported"),
    ("s_min_uncond", (None, 0, 0.0), "0: not supported"),
    ("s_churn", (None, 0, 0.0), "0: not supported"),
    ("s_tmin", (None, 0, 0.0), "0: not supported"),
    ("s_tmax", (None, 0, 0.0), "0: not supported"),
    ("firstphase_width", (0,), "0 (deprecated in A1111): give width and height"),
    ("firstphase_height", (0,), "0 (deprecated in A1111): give width and height"),
    ("firstpass_image", (None, ""), "none: not supported"),
    ("hr_checkpoint_name", (None, "", "Use same checkpoint"), "none: the hires pass uses the same checkpoint here"),
    ("hr_sampler_name", (None, "", "Use same sampler"), "none: the hires pass uses the same sampler here"),
    ("hr_scheduler", (None, "", "Use same scheduler"), "none: the hires pass uses the same scheduler here"),
    ("hr_prompt", ("",), "'': the hires pass uses the same prompt here"),
    ("hr_negative_prompt", ("",), "'': the hires pass uses the same negative prompt here"),
    ("script_name", (None, ""), "none: this server has no selectable scripts (extensions go in alwayson_scripts)"),
    ("initial_noise_multiplier", (None, 1, 1.0), "1: not supported"),
    ("latent_mask", (None, ""), "none: not supported"),
)


@dataclass(frozen=True)
class Translation:
    """What an A1111 request becomes: the model names, our request values, and how to answer."""

    checkpoint: str | None
    vae: str | None
    values: dict[str, Any]
    save: bool
    send: bool
    ignored: list[str]  # override settings that change nothing here


def translate(body: Txt2ImgRequest, *, checkpoint: str | None, vae: str | None, clip_skip: int,
              extensions: dict[str, str]) -> Translation:
    """`body` as our request values. `checkpoint`, `vae`, `clip_skip`: the API's current options (which
    `override_settings` may change for this request); `extensions`: lower-case name -> extension name, for
    `alwayson_scripts`."""
    given = body.model_fields_set
    same = {"hr_prompt": body.prompt, "hr_negative_prompt": body.negative_prompt}  # asking for nothing different
    for name, off, allowed in UNSUPPORTED:
        value = getattr(body, name, None)
        if name in type(body).model_fields and value not in off and value != same.get(name):
            raise RequestError(name, value, allowed)
    values: dict[str, Any] = {}
    if body.infotext:  # A1111: an infotext's values fill the fields the request leaves unset
        read = infotext_to_fields(parse_infotext(body.infotext))
        values.update({k: v for k, v in read.items() if k in REQUEST_FIELDS})
    own = {
        "prompt": body.prompt, "negative_prompt": body.negative_prompt, "seed": body.seed, "subseed": body.subseed,
        "subseed_strength": body.subseed_strength, "sampler_name": body.sampler_name or body.sampler_index,
        "scheduler": body.scheduler or "Automatic", "batch_size": body.batch_size, "batch_count": body.n_iter,
        "steps": body.steps, "cfg_scale": body.cfg_scale, "width": body.width, "height": body.height,
        "eta": body.eta, "s_noise": 1.0 if body.s_noise is None else body.s_noise,
        "refiner_checkpoint": body.refiner_checkpoint or "",
        "refiner_switch_at": 0.8 if body.refiner_switch_at is None else body.refiner_switch_at,
        "clip_skip": clip_skip,
    }
    if isinstance(body, Img2ImgRequest):
        own.update(image_values(body))
    else:
        own.update(enable_hr=body.enable_hr, hr_scale=body.hr_scale, hr_upscaler=body.hr_upscaler or "Latent",
                   hr_second_pass_steps=body.hr_second_pass_steps, hr_resize_x=body.hr_resize_x,
                   hr_resize_y=body.hr_resize_y,
                   hr_denoising_strength=0.75 if body.denoising_strength is None else body.denoising_strength)
    # Our name of each field the request set (A1111 names some differently).
    renamed = {"sampler_index": "sampler_name", "n_iter": "batch_count", "init_images": "init_image",
               "mask_blur_x": "mask_blur", "mask_blur_y": "mask_blur",
               "denoising_strength": "denoising_strength" if isinstance(body, Img2ImgRequest) else "hr_denoising_strength"}
    set_by_request = {renamed.get(name, name) for name in given}
    for name, value in own.items():  # the request's value, unless it left the field to the infotext
        if name in set_by_request or name not in values:
            values[name] = value
    overrides = dict(body.override_settings or {})
    ignored = sorted(set(overrides) - set(OVERRIDES))
    if overrides.get("eta_noise_seed_delta", 0) not in (0, None):
        raise RequestError("override_settings.eta_noise_seed_delta", overrides["eta_noise_seed_delta"], "0: not supported")
    if "CLIP_stop_at_last_layers" in overrides:
        values["clip_skip"] = overrides["CLIP_stop_at_last_layers"]
    checkpoint = overrides.get("sd_model_checkpoint") or checkpoint
    vae = overrides.get("sd_vae") or vae
    values.update(extension_values(body.alwayson_scripts, extensions))
    return Translation(checkpoint, vae, values, body.save_images, body.send_images, ignored)


def image_values(body: Img2ImgRequest) -> dict[str, Any]:
    """img2img / inpainting fields, with the images decoded."""
    images = body.init_images or []
    if len(images) != 1:
        raise RequestError("init_images", f"{len(images)} images", "exactly one base64 image")
    blur = body.mask_blur
    if blur is None:
        if body.mask_blur_x != body.mask_blur_y:
            raise RequestError("mask_blur_y", body.mask_blur_y, f"the same as mask_blur_x ({body.mask_blur_x}): "
                               "different blurs per axis are not supported")
        blur = body.mask_blur_x
    values = {
        "init_image": decode_image(images[0], "init_images[0]"),
        "mask": decode_image(body.mask, "mask") if body.mask else None,
        "resize_mode": body.resize_mode, "mask_blur": blur, "inpainting_fill": body.inpainting_fill,
        "inpaint_full_res": bool(body.inpaint_full_res), "inpaint_full_res_padding": body.inpaint_full_res_padding,
        "inpainting_mask_invert": bool(body.inpainting_mask_invert),
        "denoising_strength": 0.75 if body.denoising_strength is None else body.denoising_strength,
    }
    if values["mask"] is not None and values["mask"].size != values["init_image"].size:
        raise RequestError("mask", f"{values['mask'].width}x{values['mask'].height}",
                           f"the size of init_images[0] ({values['init_image'].width}x{values['init_image'].height})")
    return values


def extension_values(scripts: dict[str, Any], extensions: dict[str, str]) -> dict[str, Any]:
    """`alwayson_scripts` ({title: {"args": [...]}}) as `extensions` request values: each extension gets its
    args as `{"args": [...]}` (it knows what its AUTOMATIC1111 counterpart sends)."""
    found: dict[str, Any] = {}
    for title, script in scripts.items():
        name = extensions.get(str(title).lower())
        if name is None:
            raise RequestError(f"alwayson_scripts.{title}", title,
                               f"a script of this server ({', '.join(sorted(set(extensions.values()))) or 'none'})")
        args = script.get("args", []) if isinstance(script, dict) else None
        if not isinstance(args, list):
            raise RequestError(f"alwayson_scripts.{title}.args", args, "a list")
        if args:
            found[name] = {"args": args}
    return {"extensions": found} if found else {}
