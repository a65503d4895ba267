"""Infotext write/read (A1111's "parameters" text), image saving, and output file names."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import ExifTags, Image, PngImagePlugin

from webui import outputs
from webui.outputs import (
    FIELD_NAMES, fields_to_infotext_params, format_infotext, infotext_to_fields, next_image_path,
    parse_infotext, read_infotext, save_jpeg, save_png, save_webp, split_sampler, unmapped_params,
)

# --------------------------------------------------------------------------------------------------
# Real A1111 infotexts

V110 = (
    "masterpiece, best quality, 1girl\nNegative prompt: lowres, bad anatomy\n"
    "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234567890, Size: 512x768, "
    "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.7, Clip skip: 2, "
    'Hires upscale: 2, Hires upscaler: Latent, Lora hashes: "add_detail: 7c6bad76eb54", Version: v1.10.1'
)


def test_parses_a_v1_10_infotext():
    info = parse_infotext(V110)
    assert info.prompt == "masterpiece, best quality, 1girl"
    assert info.negative_prompt == "lowres, bad anatomy"
    assert list(info.params)[:3] == ["Steps", "Sampler", "Schedule type"]
    assert info.params["Lora hashes"] == "add_detail: 7c6bad76eb54"
    assert info.params["Size"] == "512x768"
    assert unmapped_params(info) == {"Lora hashes": "add_detail: 7c6bad76eb54"}
    a1111 = info.a1111_params()
    assert (a1111["Size-1"], a1111["Size-2"], a1111["Prompt"]) == ("512", "768", info.prompt)
    assert "Size" not in a1111

    f = infotext_to_fields(info)
    assert f["steps"] == 20 and f["cfg_scale"] == 7.0 and f["seed"] == 1234567890
    assert (f["sampler_name"], f["scheduler"]) == ("DPM++ 2M", "Automatic")  # Karras is its preference
    assert (f["width"], f["height"]) == (512, 768)
    assert (f["model"], f["model_hash"], f["version"]) == ("v1-5-pruned-emaonly", "6ce0161689", "v1.10.1")
    assert f["denoising_strength"] == 0.7 and f["clip_skip"] == 2
    assert f["enable_hr"] is True and f["hr_scale"] == 2.0 and f["hr_upscaler"] == "Latent"
    assert (f["hr_resize_x"], f["hr_resize_y"], f["hr_second_pass_steps"]) == (0, 0, 0)
    assert f["rng"] == "GPU" and f["inpainting_fill"] == "original" and f["inpaint_full_res"] is False


def test_old_combined_sampler_names_split():
    old = ("a cat\nSteps: 30, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 42, Size: 512x512, "
           "Model hash: 45dee52b")
    f = infotext_to_fields(parse_infotext(old))
    assert (f["sampler_name"], f["scheduler"]) == ("DPM++ 2M", "Automatic")
    assert f["negative_prompt"] == "" and f["clip_skip"] == 1 and f["enable_hr"] is False
    assert "denoising_strength" not in f and f["model_hash"] == "45dee52b"
    assert split_sampler("DPM++ 2M SDE Karras") == ("DPM++ 2M SDE", "Karras")  # not its preference
    assert split_sampler("DPM++ 2M SDE Exponential") == ("DPM++ 2M SDE", "Automatic")
    assert split_sampler("DPM++ SDE Karras") == ("DPM++ SDE", "Automatic")
    assert split_sampler("Euler a SGMUniform") == ("Euler a", "SGM Uniform")
    assert split_sampler("k_euler_a") == ("Euler a", "Automatic")
    assert split_sampler("k_dpmpp_2m_ka") == ("DPM++ 2M", "Automatic")
    assert split_sampler("k_dpmpp_2m_sde_ka") == ("DPM++ 2M SDE", "Karras")
    assert split_sampler("Euler", "Karras") == ("Euler", "Karras")
    assert split_sampler("euler a", "karras") == ("Euler a", "Karras")
    assert split_sampler("My Sampler", "Nonsense") == ("My Sampler", "Nonsense")  # kept for the validator


def test_euler_a_and_a_multi_line_prompt():
    text = ("a castle on a hill,\n(masterpiece:1.2),\nsunset\nNegative prompt: lowres,\nblurry\n"
            "Steps: 25, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7.0, Seed: 3, Size: 768x512, "
            "Version: v1.9.4")
    info = parse_infotext(text)
    assert info.prompt == "a castle on a hill,\n(masterpiece:1.2),\nsunset"
    assert info.negative_prompt == "lowres,\nblurry"
    f = infotext_to_fields(info)
    assert (f["sampler_name"], f["scheduler"], f["width"], f["height"]) == ("Euler a", "Automatic", 768, 512)


def test_img2img_inpaint_infotext():
    text = ("portrait of a knight\nNegative prompt: ugly\nSteps: 30, Sampler: DPM++ SDE, Schedule type: Karras, "
            "CFG scale: 6, Seed: 99, Size: 512x512, Model hash: 3e1ffdc4bc, Model: sd-v1-5-inpainting, "
            "Denoising strength: 0.55, Conditional mask weight: 1.0, Mask blur: 8, Masked content: fill, "
            "Inpaint area: Only masked, Masked area padding: 48, Mask mode: Inpaint not masked, RNG: CPU, "
            "Version: v1.10.1")
    f = infotext_to_fields(parse_infotext(text))
    assert f["mask_blur"] == 8 and f["inpainting_fill"] == "fill"
    assert f["inpaint_full_res"] is True and f["inpaint_full_res_padding"] == 48
    assert f["inpainting_mask_invert"] is True and f["rng"] == "CPU"
    assert f["denoising_strength"] == 0.55 and f["inpainting_mask_weight"] == 1.0
    assert f["enable_hr"] is False  # img2img: a denoising strength, but no Hires keys
    defaults = infotext_to_fields(parse_infotext("x\nSteps: 1, Seed: 1, Mask blur: 4"))
    assert defaults["inpaint_full_res_padding"] == 32 and defaults["inpainting_mask_invert"] is False


def test_hires_resize_sampler_and_variation():
    text = ("x\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 5, Size: 512x512, Variation seed: 77, "
            "Variation seed strength: 0.3, Seed resize from: 640x448, Denoising strength: 0.5, "
            "Hires resize: 1024x1024, Hires steps: 10, Hires upscaler: Latent (nearest), "
            "Hires sampler: DPM++ 2M SDE Karras, Hires prompt: \"a, b\", Tiling: True")
    f = infotext_to_fields(parse_infotext(text))
    assert (f["subseed"], f["subseed_strength"]) == (77, 0.3)
    assert (f["seed_resize_from_w"], f["seed_resize_from_h"]) == (640, 448)
    assert (f["hr_resize_x"], f["hr_resize_y"], f["hr_second_pass_steps"]) == (1024, 1024, 10)
    assert (f["hr_sampler_name"], f["hr_scheduler"]) == ("DPM++ 2M SDE", "Karras")
    assert f["hr_prompt"] == "a, b" and f["tiling"] is True and f["enable_hr"] is True


def test_values_that_do_not_convert_are_left_out():
    info = parse_infotext("x\nSteps: many, CFG scale: high, Seed: 12345678901234567890, Size: big")
    f = infotext_to_fields(info)
    assert "steps" not in f and "cfg_scale" not in f and "width" not in f
    assert f["seed"] == 12345678901234567890  # exact, not through float
    assert info.params["Steps"] == "many"


def test_fewer_than_three_pairs_is_prompt_text():
    info = parse_infotext("a photo\nSteps: 20, Seed: 1")
    assert info.prompt == "a photo\nSteps: 20, Seed: 1" and info.params == {}
    info = parse_infotext("")
    assert (info.prompt, info.negative_prompt, info.params) == ("", "", {})


def test_a_long_prompt_line_parses_quickly():
    # A1111's findall is quadratic on a long run of words; ours must not be.
    info = parse_infotext("word " * 40_000)
    assert info.params == {} and info.prompt.startswith("word word")


@given(st.text(alphabet=st.sampled_from(list('ab :,"\\-/\t\u3000é_1')), max_size=60))
@settings(max_examples=400)
def test_linear_param_scan_matches_a1111_regex(line):
    assert outputs._find_params(line) == outputs._PARAM_RE.findall(line)


# --------------------------------------------------------------------------------------------------
# Writer

def test_writer_layout_and_quoting():
    text = format_infotext("a, b: c", "", {
        "Steps": 20, "Sampler": "Euler a", "CFG scale": 7.0, "Seed": None, "Tiling": "Tiling",
        "Lora hashes": "add_detail: 7c6bad76eb54", "Note": "line\nbreak", "Name": "日本語", "Q": 'say "hi"',
    })
    assert text == ('a, b: c\nSteps: 20, Sampler: Euler a, CFG scale: 7.0, Tiling, '
                    'Lora hashes: "add_detail: 7c6bad76eb54", Note: "line\\nbreak", Name: 日本語, Q: say "hi"')
    assert format_infotext("  p  ", "n", {}) == "p  \nNegative prompt: n"


def test_fields_to_params_order_and_omissions():
    params = fields_to_infotext_params({
        "version": "v0.1.0", "clip_skip": 1, "rng": "GPU", "seed": 7, "steps": 20, "width": 512, "height": 640,
        "sampler_name": "DPM++ 2M", "scheduler": "Automatic", "cfg_scale": 7.0, "subseed": 5, "subseed_strength": 0.0,
        "enable_hr": False, "hr_scale": 2.0, "denoising_strength": None, "mask_blur": 4, "inpainting_fill": "original",
        "inpaint_full_res": False, "inpaint_full_res_padding": 32,
    }, extra={"Lora hashes": "x: 1", "Seed": 8})
    assert params == {"Steps": 20, "Sampler": "DPM++ 2M", "Schedule type": "Karras", "CFG scale": 7.0, "Seed": 8,
                      "Size": "512x640", "Mask blur": 4, "Lora hashes": "x: 1", "Version": "v0.1.0"}
    with pytest.raises(ValueError, match="stepz"):
        fields_to_infotext_params({"stepz": 1})
    hires = fields_to_infotext_params({"hr_scale": 2.0, "hr_resize_x": 1024, "hr_resize_y": 768,
                                       "inpaint_full_res": True, "inpaint_full_res_padding": 32})
    assert hires == {"Hires resize": "1024x768", "Inpaint area": "Only masked", "Masked area padding": 32}


FULL_FIELDS = {
    "steps": 28, "sampler_name": "DPM++ 2M SDE", "scheduler": "Karras", "cfg_scale": 6.5, "image_cfg_scale": 1.5,
    "seed": 4294967295, "face_restoration": "CodeFormer", "width": 832, "height": 1216, "model_hash": "31e35c80fc",
    "model": "sd_xl_base_1.0", "vae_hash": "235745af8d", "vae": "sdxl_vae.safetensors", "subseed": 11,
    "subseed_strength": 0.25, "seed_resize_from_w": 512, "seed_resize_from_h": 512, "denoising_strength": 0.45,
    "inpainting_mask_weight": 0.8, "clip_skip": 2, "eta_noise_seed_delta": 31337, "token_merging_ratio": 0.3,
    "init_image_hash": "abcdef", "rng": "CPU", "tiling": True, "hr_scale": 1.5, "hr_second_pass_steps": 12,
    "hr_upscaler": "Latent (bicubic antialiased)", "hr_checkpoint_name": "other.safetensors",
    "hr_sampler_name": "Euler a", "hr_scheduler": "Uniform", "hr_prompt": "hires, detailed: yes",
    "hr_negative_prompt": "blur\nnoise", "hr_cfg_scale": 5.0, "refiner_checkpoint": "refiner [7440042bbd]",
    "refiner_switch_at": 0.8, "sdxl_original_width": 2048, "sdxl_original_height": 1536, "sdxl_crop_top": 16,
    "sdxl_crop_left": 8, "sdxl_target_width": 1024, "sdxl_target_height": 768, "sdxl_aesthetic_score": 7.5,
    "sdxl_negative_aesthetic_score": 2.0, "mask_blur": 0, "inpainting_mask_invert": True, "inpainting_fill": "latent noise",
    "inpaint_full_res": True, "inpaint_full_res_padding": 64, "initial_noise_multiplier": 0.9, "eta": 0.5,
    "s_noise": 0.95, "sigma_min": 0.03, "sigma_max": 14.6, "rho": 5.0, "version": "v0.1.0", "user": "ana",
}


def test_every_field_round_trips():
    # The whole table, but Hires resize, which A1111 writes instead of Hires upscale (tested above).
    assert set(FULL_FIELDS) | {"hr_resize_x", "hr_resize_y"} == set(FIELD_NAMES)
    text = format_infotext("a, b\nc: d", "neg, ✓", fields_to_infotext_params(FULL_FIELDS, {"Lora hashes": "a: 1"}))
    f = infotext_to_fields(parse_infotext(text))
    assert f.pop("prompt") == "a, b\nc: d" and f.pop("negative_prompt") == "neg, ✓"
    assert f.pop("enable_hr") is True
    assert f == {**FULL_FIELDS, "hr_resize_x": 0, "hr_resize_y": 0}
    assert text.endswith('Lora hashes: "a: 1", Version: v0.1.0, User: ana')


def test_absent_fields_come_back_as_the_reader_defaults():
    f = infotext_to_fields(parse_infotext(format_infotext("p", "", fields_to_infotext_params(
        {"steps": 20, "seed": 1, "cfg_scale": 7.0, "clip_skip": 1, "rng": "GPU", "subseed": 3, "subseed_strength": 0,
         "tiling": False, "inpaint_full_res": False, "hr_scheduler": "Use same scheduler"}))))
    assert (f["clip_skip"], f["rng"], f["subseed"], f["subseed_strength"], f["tiling"]) == (1, "GPU", -1, 0.0, False)
    assert f["hr_scheduler"] == "Use same scheduler" and f["inpaint_full_res"] is False


# --------------------------------------------------------------------------------------------------
# Properties

_printable = st.characters(blacklist_categories=("Cc", "Cs"))
_line = st.text(_printable, max_size=30).map(str.strip).filter(lambda s: s and not s.startswith("Negative prompt:"))
_block = st.lists(_line, max_size=4).map("\n".join)
_key = st.from_regex(r"\w[\w \-/]{1,15}", fullmatch=True)
_value = st.one_of(st.text(_printable, max_size=30), st.integers(), st.floats(allow_nan=False))


@given(st.text())
@settings(max_examples=300)
def test_no_text_makes_the_parser_raise(text):
    info = parse_infotext(text)
    infotext_to_fields(info)
    info.a1111_params()


@given(st.lists(st.sampled_from(list('ab :,"\\\nx5-') + ["Negative prompt:", "Size: 5x5", ", "])).map("".join))
def test_no_infotext_like_text_makes_the_parser_raise(text):
    infotext_to_fields(parse_infotext(text))


@given(_block, _block, st.dictionaries(_key, _value, min_size=3, max_size=6))
@settings(max_examples=300)
def test_written_text_parses_back(prompt, negative, params):
    params = {k: v for k, v in params.items() if k != str(v)}  # a value equal to its key is written bare
    if len(params) < 3:
        return
    info = parse_infotext(format_infotext(prompt, negative, params))
    assert (info.prompt, info.negative_prompt) == (prompt, negative)
    assert info.params == {k: str(v) for k, v in params.items()}


# --------------------------------------------------------------------------------------------------
# PNG, JPEG, WebP

def _png_chunks(path: Path) -> list[bytes]:
    data, pos, kinds = path.read_bytes(), 8, []
    while pos < len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kinds.append(data[pos + 4:pos + 8] + b":" + data[pos + 8:pos + 8 + length].split(b"\0")[0])
        pos += 12 + length
    return kinds


def test_png_latin1_is_text_and_unicode_is_itxt(tmp_path):
    image = Image.new("RGB", (8, 8), "red")
    latin = "café, 1girl\nSteps: 20, Sampler: Euler, Seed: 1"
    save_png(image, tmp_path / "a.png", latin)
    assert b"tEXt:parameters" in _png_chunks(tmp_path / "a.png")
    assert read_infotext(tmp_path / "a.png") == latin

    emoji = "猫 🐱, \"quoted\"\nNegative prompt: 悪い\nSteps: 20, Sampler: Euler, Seed: 1"
    save_png(image, tmp_path / "b.png", emoji)
    assert b"iTXt:parameters" in _png_chunks(tmp_path / "b.png")
    assert read_infotext(str(tmp_path / "b.png")) == emoji
    with Image.open(tmp_path / "b.png") as opened:
        assert read_infotext(opened) == emoji
        assert opened.getpixel((0, 0)) == (255, 0, 0)


def test_png_keeps_other_text_items_and_replaces_parameters(tmp_path):
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", "other tool")
    info.add_text("parameters", "old")
    info.add_itxt("Comment", "ünïcode ✓", lang="en")
    buffer = io.BytesIO()
    Image.new("RGBA", (4, 4)).save(buffer, "PNG", pnginfo=info)
    with Image.open(io.BytesIO(buffer.getvalue())) as source:
        save_png(source, tmp_path / "x.png", "new")
    with Image.open(tmp_path / "x.png") as saved:
        assert saved.text == {"Software": "other tool", "Comment": "ünïcode ✓", "parameters": "new"}
        assert saved.text["Comment"].lang == "en" and saved.mode == "RGBA"
    generated = Image.new("L", (4, 4))
    generated.info["Title"] = "kept"
    save_png(generated, tmp_path / "y.png", "")
    with Image.open(tmp_path / "y.png") as saved:
        assert saved.text == {"Title": "kept"}
    assert read_infotext(tmp_path / "y.png") is None


def test_save_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "sub" / "img.png"
    save_png(Image.new("RGB", (4, 4)), target, "first")
    assert sorted(p.name for p in target.parent.iterdir()) == ["img.png"]

    def broken_save(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_png(Image.new("RGB", (4, 4)), target, "second")
    monkeypatch.undo()
    assert sorted(p.name for p in target.parent.iterdir()) == ["img.png"]  # no temp file left
    assert read_infotext(target) == "first"  # the old file is untouched


@pytest.mark.parametrize("save, ext", [(save_jpeg, "jpg"), (save_webp, "webp")])
def test_jpeg_and_webp_user_comment(tmp_path, save, ext):
    text = "ねこ, cat 🐱\nNegative prompt: dog\nSteps: 20, Sampler: Euler a, Seed: 1, Size: 8x8"
    path = save(Image.new("RGBA", (8, 8), (0, 0, 255, 128)), tmp_path / f"a.{ext}", text)
    assert b"UNICODE\0" + text.encode("utf-16-be") in path.read_bytes()  # piexif's "unicode" bytes
    assert read_infotext(path) == text
    assert read_infotext(save(Image.new("RGB", (8, 8)), tmp_path / f"b.{ext}", "")) is None


def test_user_comment_encodings():
    decode = outputs._decode_user_comment
    assert decode(b"UNICODE\0" + "héllo ✓".encode("utf-16-le")) == "héllo ✓"  # writer that followed Intel order
    assert decode(b"UNICODE\0" + "héllo".encode("utf-16")) == "héllo"  # with a BOM
    assert decode(b"ASCII\0\0\0Steps: 20\0") == "Steps: 20"
    assert decode(b"plain utf-8 text") == "plain utf-8 text"
    assert decode(b"UNICODE\0") is None and decode(None) is None


def test_exif_from_another_writer(tmp_path):
    exif = Image.Exif()
    exif[ExifTags.IFD.Exif] = {ExifTags.Base.UserComment: b"ASCII\0\0\0a cat\nSteps: 1, Seed: 2, Size: 8x8"}
    Image.new("RGB", (8, 8)).save(tmp_path / "c.jpg", exif=exif.tobytes())
    assert read_infotext(tmp_path / "c.jpg") == "a cat\nSteps: 1, Seed: 2, Size: 8x8"


def test_sixteen_bit_images_are_scaled_for_jpeg(tmp_path):
    image = Image.new("I;16", (4, 4), 65535)
    with Image.open(save_jpeg(image, tmp_path / "g.jpg", "x")) as saved:
        assert saved.mode == "L" and saved.getpixel((0, 0)) >= 250


# --------------------------------------------------------------------------------------------------
# File names

def test_next_image_path_numbering(tmp_path):
    assert next_image_path(tmp_path / "missing", 1, "p") == tmp_path / "missing" / "00000-1.png"
    assert next_image_path(tmp_path, 123, "p") == tmp_path / "00000-123.png"
    for name in ("00003-1.png", "00011-2.jpg", "notes.txt", "abc-00099.png", ".00500-x.png.1234.tmp", "00007.png"):
        (tmp_path / name).write_bytes(b"")
    assert next_image_path(tmp_path, 1234567890, "p") == tmp_path / "00012-1234567890.png"
    assert next_image_path(tmp_path, 5, "p", ext=".WEBP").name == "00012-5.webp"
    (tmp_path / "99999-1.png").write_bytes(b"")
    assert next_image_path(tmp_path, 1, "p").name == "100000-1.png"
    with pytest.raises(ValueError):
        next_image_path(tmp_path, 1, "p", ext="png/../x")


def test_next_image_path_never_overwrites(tmp_path, monkeypatch):
    (tmp_path / "00000-1.png").write_bytes(b"")
    monkeypatch.setattr(outputs.os, "listdir", lambda folder: [])  # as if another writer raced us
    assert next_image_path(tmp_path, 1, "p").name == "00001-1.png"


@given(st.text(max_size=400))
@settings(max_examples=200)
def test_prompt_in_name_is_sanitised(prompt):
    folder = Path("/nonexistent-outputs")
    path = next_image_path(folder, 42, prompt, prompt_in_name=True)
    assert path.parent == folder and path.name.startswith("00000-42") and path.name.endswith(".png")
    assert ".." not in path.name and "/" not in path.name and "\\" not in path.name and "\0" not in path.name
    assert len(path.name.encode("utf-8")) <= 200


def test_prompt_in_name_examples(tmp_path):
    name = next_image_path(tmp_path, 7, "../../etc/passwd: a <cat>\n", prompt_in_name=True).name
    assert name == "00000-7-_._etc_passwd_ a _cat_.png"
    assert next_image_path(tmp_path, 7, " ... ", prompt_in_name=True).name == "00000-7.png"
    long_name = next_image_path(tmp_path, 7, "🐱" * 300, prompt_in_name=True).name
    assert long_name.startswith("00000-7-🐱") and len(long_name.encode()) <= 200


def test_module_does_not_import_torch_or_gradio():
    code = "import sys, webui.outputs; print(sorted({'torch', 'gradio'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(result.stdout.replace("'", '"')) == []
