"""Saving images, and the AUTOMATIC1111 infotext ("parameters" text) written into them and read back.

The text layout is A1111's own (`create_infotext` writes it, `parse_generation_parameters` reads it), so
images move between the tools both ways:

    <prompt, verbatim, any number of lines>
    Negative prompt: <negative prompt, any number of lines>      (only when non-empty)
    Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 512x768, ...

`FIELDS` is the one declarative table between infotext keys and request field names; the writer and
the reader both walk it, so key names, key order and defaults live in one place.
"""

from __future__ import annotations

import io
import json
import os
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import ExifTags, Image, PngImagePlugin

# Sampler and schedule names live in one table, the engine's sampler registry (it imports no torch).
from webui.engine.sampling.registry import schedule_label, split_sampler

# ----------------------------------------------------------------------------------------------------
# The text layout

# A1111's reader pattern, unchanged, so we accept exactly what it accepts: a key is a word character
# then word characters, spaces, '-' or '/'; a value is a JSON string literal or runs to the next comma.
_PARAM_RE = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_KEY_RUN_RE = re.compile(r"\s*(?:\w[\w \-/]*)?")
_SIZE_RE = re.compile(r"^(\d+)x(\d+)$")
_NEGATIVE = "Negative prompt:"


def _quote(value: object) -> str:
    text = str(value)
    if "," in text or ":" in text or "\n" in text:  # A1111's rule
        return json.dumps(text, ensure_ascii=False)
    # Beyond A1111: values its reader would change if written raw (it eats surrounding spaces, unquotes
    # '"x"', drops an empty value). A1111's reader JSON-decodes these quoted forms, so it still reads ours.
    if not text or text != text.strip() or (len(text) >= 2 and text[0] == text[-1] == '"'):
        return json.dumps(text, ensure_ascii=False)
    return text


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] == '"':
        try:
            value = json.loads(text)
        except ValueError:
            return text
        return value if isinstance(value, str) else text
    return text


def _find_params(line: str) -> list[tuple[str, str]]:
    """`_PARAM_RE.findall(line)`, in linear time.

    findall retries at every position of a long run of words with no ':' after it, which is quadratic
    (a 40,000-character prompt line took 18 s). An attempt that fails there fails the same way for
    every start up to the run's end, so we jump to it.
    """
    found: list[tuple[str, str]] = []
    pos = 0
    while pos < len(line):
        m = _PARAM_RE.match(line, pos)
        if m:
            found.append((m.group(1), m.group(2)))
            pos = m.end()  # > pos: a key is never empty
        else:
            pos = max(_KEY_RUN_RE.match(line, pos).end(), pos + 1)
    return found


def format_infotext(prompt: str, negative_prompt: str, params: Mapping[str, object]) -> str:
    """A1111's `create_infotext` layout; `params` in the order given, None values left out."""
    pairs = ", ".join(k if k == v else f"{k}: {_quote(v)}" for k, v in params.items() if v is not None)
    negative = f"\n{_NEGATIVE} {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{pairs}".strip()


@dataclass
class Infotext:
    prompt: str = ""
    negative_prompt: str = ""
    params: dict[str, str] = field(default_factory=dict)  # raw text values, unquoted, in written order

    def a1111_params(self) -> dict[str, str]:
        """The dict A1111's reader builds (without its defaults): Prompt, Negative prompt, `WxH` split."""
        out = {"Prompt": self.prompt, "Negative prompt": self.negative_prompt}
        for key, value in self.params.items():
            m = _SIZE_RE.match(value)
            if m:
                out[f"{key}-1"], out[f"{key}-2"] = m.group(1), m.group(2)
            else:
                out[key] = value
        return out


def parse_infotext(text: str) -> Infotext:
    """A1111's `parse_generation_parameters`, quirks included; it never raises (worst case: all prompt)."""
    *lines, last = str(text).strip().split("\n")
    if len(_find_params(last)) < 3:  # A1111's test for "this line holds the parameters"
        lines.append(last)
        last = ""
    prompt = negative = ""
    in_negative = False
    for line in lines:
        line = line.strip()  # A1111 strips every line; CLIP ignores that whitespace anyway
        if line.startswith(_NEGATIVE):
            in_negative = True
            line = line[len(_NEGATIVE):].strip()
        # Not "\n".join: like A1111, empty lines before the first text of a section are dropped.
        if in_negative:
            negative += ("\n" if negative else "") + line
        else:
            prompt += ("\n" if prompt else "") + line
    params = {key: _unquote(value) for key, value in _find_params(last)}
    return Infotext(prompt, negative, params)


# ----------------------------------------------------------------------------------------------------
# The field table

_ABSENT = object()  # "no default" / "never omitted"


@dataclass(frozen=True)
class InfotextField:
    key: str  # infotext label
    name: str | tuple[str, str]  # request field; two for a `WxH` value
    kind: type | str  # int, float, str, bool, or "size"
    default: Any = _ABSENT  # the reader's value when the key is absent
    omit: Any = _ABSENT  # the writer leaves the key out for this value
    labels: tuple[str, str] = ("False", "True")  # bool as text


F = InfotextField
_USE_SAME = ("Use same checkpoint", "Use same sampler", "Use same scheduler")
# A1111's fixed keys, in its order; the ones a request has no field for still hold their place.
FIXED_KEYS = ("Steps", "Sampler", "Schedule type", "CFG scale", "Image CFG scale", "Seed", "Face restoration",
              "Size", "Model hash", "Model", "FP8 weight", "Cache FP16 weight for LoRA", "VAE hash", "VAE",
              "Variation seed", "Variation seed strength", "Seed resize from", "Denoising strength",
              "Conditional mask weight", "Clip skip", "ENSD", "Token merging ratio", "Token merging ratio hr",
              "Init image hash", "RNG", "Tiling")
TAIL_KEYS = ("Version", "User")
# Defaults are A1111's reader defaults, plus ours where A1111 writes a key only when it is not "off"
# (Variation seed strength 0, Seed resize from 0x0, Hires steps 0, Tiling off).
FIELDS: tuple[InfotextField, ...] = (
    F("Steps", "steps", int), F("Sampler", "sampler_name", str),
    F("Schedule type", "scheduler", str, "Automatic"), F("CFG scale", "cfg_scale", float),
    F("Image CFG scale", "image_cfg_scale", float), F("Seed", "seed", int),
    F("Face restoration", "face_restoration", str), F("Size", ("width", "height"), "size"),
    F("Model hash", "model_hash", str), F("Model", "model", str), F("VAE hash", "vae_hash", str),
    F("VAE", "vae", str), F("Variation seed", "subseed", int, -1),
    F("Variation seed strength", "subseed_strength", float, 0.0, 0.0),
    F("Seed resize from", ("seed_resize_from_w", "seed_resize_from_h"), "size", (0, 0)),
    F("Denoising strength", "denoising_strength", float),
    F("Conditional mask weight", "inpainting_mask_weight", float), F("Clip skip", "clip_skip", int, 1, 1),
    F("ENSD", "eta_noise_seed_delta", int), F("Token merging ratio", "token_merging_ratio", float),
    F("Init image hash", "init_image_hash", str), F("RNG", "rng", str, "GPU", "GPU"),
    F("Tiling", "tiling", bool, False, False),
    # A1111's extra_generation_params, in the order it adds them.
    F("Hires upscale", "hr_scale", float), F("Hires resize", ("hr_resize_x", "hr_resize_y"), "size", (0, 0)),
    F("Hires steps", "hr_second_pass_steps", int, 0, 0), F("Hires upscaler", "hr_upscaler", str),
    F("Hires checkpoint", "hr_checkpoint_name", str, _USE_SAME[0], _USE_SAME[0]),
    F("Hires sampler", "hr_sampler_name", str, _USE_SAME[1], _USE_SAME[1]),
    F("Hires schedule type", "hr_scheduler", str, _USE_SAME[2], _USE_SAME[2]),
    F("Hires prompt", "hr_prompt", str, "", ""), F("Hires negative prompt", "hr_negative_prompt", str, "", ""),
    F("Hires CFG Scale", "hr_cfg_scale", float),
    F("Refiner", "refiner_checkpoint", str), F("Refiner switch at", "refiner_switch_at", float),
    # Ours (A1111 has no such keys): SDXL conditioning, written only when not the default.
    F("SDXL original size", ("sdxl_original_width", "sdxl_original_height"), "size", (0, 0)),
    F("SDXL crop top", "sdxl_crop_top", int, 0, 0), F("SDXL crop left", "sdxl_crop_left", int, 0, 0),
    F("SDXL target size", ("sdxl_target_width", "sdxl_target_height"), "size", (0, 0)),
    F("SDXL aesthetic score", "sdxl_aesthetic_score", float, 6.0, 6.0),
    F("SDXL negative aesthetic score", "sdxl_negative_aesthetic_score", float, 2.5, 2.5),
    F("Mask blur", "mask_blur", int),
    F("Mask mode", "inpainting_mask_invert", bool, False, False, ("Inpaint masked", "Inpaint not masked")),
    F("Masked content", "inpainting_fill", str, "original", "original"),
    F("Inpaint area", "inpaint_full_res", bool, False, False, ("Whole picture", "Only masked")),
    F("Masked area padding", "inpaint_full_res_padding", int, 32),  # written with "Only masked" only
    F("Noise multiplier", "initial_noise_multiplier", float, _ABSENT, 1.0),
    F("Eta", "eta", float), F("Sigma noise", "s_noise", float, _ABSENT, 1.0),
    F("Schedule min sigma", "sigma_min", float, 0.0, 0.0), F("Schedule max sigma", "sigma_max", float, 0.0, 0.0),
    F("Schedule rho", "rho", float, 0.0, 0.0),
    F("Version", "version", str), F("User", "user", str),
)
del F
_HIRES_KEYS = {f.key for f in FIELDS if f.key.startswith("Hires ")}
# Every request-side name in the table (the writer also takes the switch `enable_hr`).
FIELD_NAMES: tuple[str, ...] = tuple(n for f in FIELDS for n in ((f.name,) if isinstance(f.name, str) else f.name))


def _from_text(f: InfotextField, text: str) -> Any:
    """Typed value of one raw infotext value; raises ValueError when it does not convert."""
    text = text.strip()
    if f.kind == "size":
        m = _SIZE_RE.match(text)
        if not m:
            raise ValueError(text)
        return int(m.group(1)), int(m.group(2))
    if f.kind is int:
        try:
            return int(text)
        except ValueError:
            return int(float(text))  # "20.0"; int() first keeps 64-bit seeds exact
    if f.kind is float:
        return float(text)
    if f.kind is bool:
        lowered = [label.lower() for label in f.labels]
        if text.lower() not in lowered:
            raise ValueError(text)
        return lowered.index(text.lower()) == 1
    return text


def infotext_to_fields(info: Infotext) -> dict[str, object]:
    """Typed request fields from an infotext; keys absent from it get the reader defaults or stay out.

    A value that does not convert is left out (it stays readable in `info.params`). Sampler names are
    resolved like A1111 (see `split_sampler`); `enable_hr` follows A1111's paste rule.
    """
    out: dict[str, object] = {"prompt": info.prompt, "negative_prompt": info.negative_prompt}
    for f in FIELDS:
        value = f.default
        if f.key in info.params:
            try:
                value = _from_text(f, info.params[f.key])
            except (ValueError, OverflowError):
                pass
        if value is _ABSENT:
            continue
        if isinstance(f.name, tuple):
            out[f.name[0]], out[f.name[1]] = value
        else:
            out[f.name] = value
    if "sampler_name" in out:
        out["sampler_name"], out["scheduler"] = split_sampler(str(out["sampler_name"]), str(out["scheduler"]))
    if out.get("hr_sampler_name") not in (None, _USE_SAME[1]):
        hr_schedule = out.get("hr_scheduler")
        hr_sampler, schedule = split_sampler(str(out["hr_sampler_name"]),
                                             None if hr_schedule == _USE_SAME[2] else str(hr_schedule))
        out["hr_sampler_name"] = hr_sampler
        if schedule != "Automatic" or hr_schedule != _USE_SAME[2]:
            out["hr_scheduler"] = schedule
    p = info.params
    out["enable_hr"] = "Denoising strength" in p and bool({"Hires upscale", "Hires upscaler", "Hires resize"} & set(p))
    return out


def unmapped_params(info: Infotext) -> dict[str, str]:
    """The infotext pairs the field table does not know (Lora hashes, ControlNet units, ...), in order."""
    known = {f.key for f in FIELDS}
    return {k: v for k, v in info.params.items() if k not in known}


def fields_to_infotext_params(fields: Mapping[str, object],
                              extra: Mapping[str, object] | None = None) -> dict[str, object]:
    """Ordered infotext params for `format_infotext`: fixed keys, table extras, `extra`, Version, User.

    `fields` uses the table's names (`FIELD_NAMES`); None means "not used here" and is left out, as are
    values A1111 only writes when not off (see `InfotextField.omit`). `enable_hr=False` drops the Hires
    keys. An `extra` key that is also a table key keeps the table's position and takes the new value.
    """
    unknown = sorted(set(fields) - set(FIELD_NAMES) - {"enable_hr"})
    if unknown:
        raise ValueError(f"unknown infotext field {unknown[0]!r}; known fields: {', '.join(FIELD_NAMES)}")
    values: dict[str, object] = {}
    for f in FIELDS:
        if isinstance(f.name, tuple):
            pair = fields.get(f.name[0]), fields.get(f.name[1])
            # A1111 writes a WxH value only when both sides are set (Seed resize from, Hires resize).
            w, h = (None, None) if None in pair else (int(pair[0]), int(pair[1]))  # type: ignore[arg-type]
            value = f"{w}x{h}" if w and h and w > 0 and h > 0 else None
        else:
            value = fields.get(f.name)
            if value is not None and f.omit is not _ABSENT and value == f.omit:
                value = None
            elif isinstance(value, bool):
                value = f.labels[int(value)]
        values[f.key] = value
    if values["Sampler"] is not None and values["Schedule type"] is not None:
        values["Schedule type"] = schedule_label(str(values["Sampler"]), str(values["Schedule type"]))
    if values["Variation seed strength"] is None:  # the variation seed means nothing without a strength
        values["Variation seed"] = None
    if values["Inpaint area"] is None:
        values["Masked area padding"] = None
    if values["Hires resize"] is not None:  # A1111 writes one of the two
        values["Hires upscale"] = None
    if fields.get("enable_hr") is False:
        values.update(dict.fromkeys(_HIRES_KEYS))
    params: dict[str, object] = dict.fromkeys(FIXED_KEYS)
    params.update((k, v) for k, v in values.items() if k not in TAIL_KEYS)
    params.update(extra or {})
    for key in TAIL_KEYS:
        params[key] = params.pop(key, None) if values[key] is None else values[key]
    return {k: v for k, v in params.items() if v is not None}


# ----------------------------------------------------------------------------------------------------
# Files

_UNICODE_PREFIX = b"UNICODE\0"  # EXIF UserComment character code, as piexif writes it (then UTF-16 BE)


def _write_atomic(path: Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Write through a temp file in the same folder, then rename: readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    # os.open with 0o666 (not mkstemp's 0o600) so the saved image gets the usual umask permissions.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())  # the data is on disk before the rename makes it visible
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def save_png(image: Image.Image, path: Path, infotext: str) -> Path:
    """Save a PNG with the infotext as its "parameters" text, keeping the image's other text items."""
    return _write_atomic(path, lambda f: write_png(image, f, infotext))


def png_bytes(image: Image.Image, infotext: str) -> bytes:
    """The PNG that `save_png` would write, as bytes (e.g. for an API response)."""
    buffer = io.BytesIO()
    write_png(image, buffer, infotext)
    return buffer.getvalue()


def write_png(image: Image.Image, file: IO[bytes], infotext: str) -> None:
    """A PNG with the infotext as its "parameters" text, keeping the image's other text items."""
    info = PngImagePlugin.PngInfo()
    text = getattr(image, "text", None)  # a PNG read from disk: also the chunks after the image data
    items = text if isinstance(text, dict) else image.info
    for key, value in items.items():
        # str values in `info` are text chunks; keys PNG cannot store (not Latin-1, > 79) are skipped.
        if isinstance(value, str) and key != "parameters" and 0 < len(key) < 80 and key.isascii():
            info.add_text(key, value)  # iTXt values keep their language tags
    if infotext:
        info.add_text("parameters", infotext)  # tEXt when Latin-1 encodable, else iTXt (UTF-8)
    # Pillow carries image.info["icc_profile"] over by itself.
    image.save(file, format="PNG", pnginfo=info)


def _exif_with_comment(infotext: str) -> bytes:
    exif = Image.Exif()
    exif[ExifTags.IFD.Exif] = {ExifTags.Base.UserComment: _UNICODE_PREFIX + infotext.encode("utf-16-be")}
    return exif.tobytes()


def _to_8bit(image: Image.Image, keep_alpha: bool) -> Image.Image:
    if image.mode == "I;16":  # A1111 scales 16-bit by 1/257; a plain convert would clip
        image = Image.fromarray((np.asarray(image, dtype=np.float64) / 257).round().astype(np.uint8), "L")
    has_alpha = "A" in image.mode or "transparency" in image.info
    wanted = "RGBA" if keep_alpha and has_alpha else ("L" if image.mode == "L" else "RGB")
    return image if image.mode == wanted else image.convert(wanted)


def save_jpeg(image: Image.Image, path: Path, infotext: str, quality: int = 80) -> Path:
    """JPEG with the infotext in EXIF UserComment (A1111's piexif "unicode" form). Alpha is dropped."""
    image = _to_8bit(image, keep_alpha=False)
    exif = _exif_with_comment(infotext) if infotext else b""
    return _write_atomic(path, lambda f: image.save(f, format="JPEG", quality=quality, exif=exif))


def save_webp(image: Image.Image, path: Path, infotext: str, quality: int = 80, lossless: bool = False) -> Path:
    """WebP with the infotext in EXIF UserComment, like A1111."""
    image = _to_8bit(image, keep_alpha=True)
    exif = _exif_with_comment(infotext) if infotext else b""
    return _write_atomic(path, lambda f: image.save(f, format="WEBP", quality=quality, lossless=lossless, exif=exif))


def _decode_user_comment(raw: object) -> str | None:
    if isinstance(raw, str):  # a writer that declared the tag ASCII
        text = raw
    elif isinstance(raw, bytes):
        prefix, body = raw[:8], raw[8:]
        if prefix == _UNICODE_PREFIX:
            if body[:2] in (b"\xff\xfe", b"\xfe\xff"):
                text = body.decode("utf-16", errors="replace")
            else:
                # piexif writes big-endian whatever the file's byte order; some writers follow the file.
                # In UTF-16 text the high bytes are mostly zero: pick the order that puts them there.
                big = body[0::2].count(0) >= body[1::2].count(0)
                text = body.decode("utf-16-be" if big else "utf-16-le", errors="replace")
        elif prefix in (b"ASCII\0\0\0", b"\0" * 8):
            text = body.decode("utf-8", errors="replace")
        else:  # no character code: A1111 falls back to UTF-8
            text = raw.decode("utf-8", errors="ignore")
    else:
        return None
    text = text.rstrip("\0")
    return text or None


def read_infotext(image_or_path: Image.Image | str | os.PathLike[str]) -> str | None:
    """The infotext of an image: PNG "parameters", else EXIF UserComment (JPEG/WebP/AVIF), else a GIF
    comment; None when there is none. A path that is not an image raises Pillow's error."""
    if isinstance(image_or_path, Image.Image):
        return _read_infotext(image_or_path)
    with Image.open(image_or_path) as image:
        return _read_infotext(image)


def _read_infotext(image: Image.Image) -> str | None:
    text = getattr(image, "text", None)  # PNG: loads the text chunks after the image data too
    for source in (text if isinstance(text, dict) else {}, image.info):
        if isinstance(source.get("parameters"), str):
            return str(source["parameters"])
    try:
        comment = image.getexif().get_ifd(ExifTags.IFD.Exif).get(ExifTags.Base.UserComment)
    except (OSError, ValueError, KeyError, SyntaxError, TypeError):  # damaged EXIF: treat as absent
        comment = None
    decoded = _decode_user_comment(comment)
    if decoded:
        return decoded
    gif_comment = image.info.get("comment")
    if isinstance(gif_comment, bytes) and gif_comment:
        return gif_comment.decode("utf-8", errors="replace")
    return None


# ----------------------------------------------------------------------------------------------------
# File names

_UNSAFE_CHARS = re.compile(r'[\x00-\x1f\x7f<>:"/\\|?*]')  # path separators, and what Windows forbids
_NUMBERED = re.compile(r"^([0-9]+)(?:-|\.|$)")
MAX_NAME_BYTES = 200  # well under the usual 255-byte limit, leaving room for the temp-file prefix


def _filename_part(text: str, max_bytes: int) -> str:
    text = _UNSAFE_CHARS.sub("_", " ".join(text.split()))  # newlines and tabs become single spaces
    while ".." in text:
        text = text.replace("..", ".")
    cut = text.encode("utf-8")[: max(max_bytes, 0)].decode("utf-8", errors="ignore")  # never half a char
    return cut.strip(" .")


def next_image_path(folder: Path, seed: int, prompt: str, ext: str = "png", *, prompt_in_name: bool = False) -> Path:
    """The next free A1111-style name, `00012-1234567890.png`: the counter goes on from the highest
    number in the folder (00000 when there is none). With `prompt_in_name` a sanitised prompt follows
    the seed. The whole name stays within MAX_NAME_BYTES; an existing file is never chosen."""
    folder = Path(folder)
    ext = ext.lstrip(".").lower()
    if not ext.isascii() or not ext.isalnum():
        raise ValueError(f"image extension {ext!r} must be letters and digits, e.g. 'png'")
    highest = -1
    if folder.is_dir():
        for name in os.listdir(folder):
            m = _NUMBERED.match(name)
            if m:
                highest = max(highest, int(m.group(1)))
    number = highest + 1
    while True:
        stem = f"{number:05}-{int(seed)}"
        if prompt_in_name:
            room = MAX_NAME_BYTES - len(stem) - len(ext) - 2
            part = _filename_part(prompt, room)
            stem = f"{stem}-{part}" if part else stem
        path = folder / f"{stem}.{ext}"
        if not path.exists():
            return path
        number += 1
