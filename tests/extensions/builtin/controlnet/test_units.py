"""Units: validation with errors that name the field, both request forms, and the infotext round trip."""

import pytest
from PIL import Image

from extensions.builtin.controlnet.units import (
    ControlUnit, infotext_value, parse_units, raw_units, read_infotext_value,
)
from webui.errors import RequestError

IMAGE = Image.new("RGB", (8, 8))


def test_the_units_list_and_the_flat_ui_keys_give_the_same_units():
    listed = parse_units({"units": [{"model": "canny", "image": IMAGE, "module": "canny", "weight": 0.5}]})
    flat = parse_units({"unit0_model": "canny", "unit0_image": IMAGE, "unit0_module": "canny", "unit0_weight": 0.5,
                        "unit0_enabled": True, "unit1_model": "", "unit1_enabled": False})
    assert listed == flat == [ControlUnit(model="canny", image=IMAGE, module="canny", weight=0.5)]


def test_defaults_and_a1111_spellings():
    unit = parse_units({"units": [{"model": "control_v11p_sd15_canny [d14c016b]", "control_mode": 2,
                                   "resize_mode": "just resize"}]})[0]
    assert unit.model == "control_v11p_sd15_canny"  # the hash A1111 adds is dropped
    assert unit.control_mode == "ControlNet is more important" and unit.resize_mode == "Just Resize"
    assert (unit.weight, unit.guidance_start, unit.guidance_end, unit.module) == (1.0, 0.0, 1.0, "none")
    assert ControlUnit(model="m", module="canny").thresholds() == (100, 200)


@pytest.mark.parametrize("unit, field", [
    ({"model": "m", "weight": 3}, "controlnet.units[0].weight"),
    ({"model": "m", "weight": "strong"}, "controlnet.units[0].weight"),
    ({"model": "m", "guidance_start": 0.6, "guidance_end": 0.4}, "controlnet.units[0].guidance_end"),
    ({"model": "m", "module": "openpose"}, "controlnet.units[0].module"),
    ({"model": "m", "control_mode": "loud"}, "controlnet.units[0].control_mode"),
    ({"model": "m", "image": "photo.png"}, "controlnet.units[0].image"),
    ({"model": "m", "processor_res": 10}, "controlnet.units[0].processor_res"),
    ({"model": "m", "enabled": "yes"}, "controlnet.units[0].enabled"),
    ({"model": "m", "colour": 1}, "controlnet.units[0].colour"),
    ({"model": ""}, "controlnet.units[0].model"),
    ({"model": "None"}, "controlnet.units[0].model"),
])
def test_bad_values_name_their_field(unit, field):
    with pytest.raises(RequestError) as info:
        parse_units({"units": [unit]})
    assert info.value.field == field


def test_a_switched_off_unit_is_not_checked():
    assert parse_units({"units": [{"enabled": False, "model": "", "weight": "whatever"}]}) == []


def test_an_unknown_model_is_refused_by_the_finder():
    def find(name):
        raise RequestError("controlnet.units[].model", name, "a name from the controlnet list (canny)")

    with pytest.raises(RequestError, match="a name from the controlnet list"):
        parse_units({"units": [{"model": "nope"}]}, find)


def test_the_infotext_value_reads_back_into_the_unit():
    unit = ControlUnit(model="canny-sd15", module="canny", weight=0.75, guidance_start=0.1, guidance_end=0.9,
                       control_mode="My prompt is more important", resize_mode="Resize and Fill", threshold_a=80)
    text = infotext_value(unit, "0123456789abcdef")
    assert text.startswith("Module: canny, Model: canny-sd15 [01234567], Weight: 0.75, Resize Mode: Resize and Fill")
    back = read_infotext_value(text)
    assert parse_units({"units": [{**back, "image": IMAGE}]})[0] == ControlUnit(**{**unit.to_dict(), "image": IMAGE,
                                                                                   "threshold_b": 200})


def test_another_tool_s_values_read_back_as_ours_or_not_at_all():
    back = read_infotext_value("Module: openpose_full, Model: pose [aaaaaaaa], Weight: 1, Junk, Control Mode: balanced, "
                               "Resize Mode: Envelope")
    assert back["module"] == "none" and back["model"] == "pose" and back["control_mode"] == "Balanced"
    assert "resize_mode" not in back


def test_raw_units_keeps_the_order_of_the_flat_keys():
    units = raw_units({"unit10_model": "b", "unit2_model": "a"})
    assert [u["model"] for u in units] == ["a", "b"]


def b64(image) -> str:
    import base64
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_automatic1111_api_units_are_taken_as_its_clients_send_them():
    """webuiapi's ControlNetUnit.to_dict(), as sent in alwayson_scripts["ControlNet"]["args"]."""
    sent = {"image": b64(Image.new("RGB", (8, 8), "red")), "mask": None, "module": "depth_midas",
            "model": "control_v11f1p_sd15_depth [cfd03158]", "weight": 0.6, "resize_mode": "Scale to Fit (Inner Fit)",
            "low_vram": False, "processor_res": 512, "threshold_a": 64, "threshold_b": 64, "guidance_start": 0.0,
            "guidance_end": 1.0, "control_mode": 0, "pixel_perfect": False, "hr_option": "Both", "enabled": True}
    unit = parse_units({"args": [sent]})[0]
    assert (unit.model, unit.module, unit.resize_mode, unit.weight) == ("control_v11f1p_sd15_depth", "depth",
                                                                       "Crop and Resize", 0.6)
    assert unit.image.size == (8, 8) and unit.image.getpixel((0, 0)) == (255, 0, 0)
    assert parse_units({"args": []}) == []  # what webuiapi sends when no unit is used


@pytest.mark.parametrize("change, field", [
    ({"mask": "abc"}, "controlnet.units[0].mask"),
    ({"hr_option": "Low res only"}, "controlnet.units[0].hr_option"),
    ({"image": "%%% not base64"}, "controlnet.units[0].image"),
    ({"image": b64(Image.new("RGB", (8, 8)))[:20]}, "controlnet.units[0].image"),
])
def test_automatic1111_units_we_cannot_honour_are_refused_by_field(change, field):
    with pytest.raises(RequestError) as info:
        parse_units({"args": [{"model": "m", "image": "", **change}]})
    assert info.value.field == field
