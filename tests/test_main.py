"""The command line: `python -m webui generate` and `python -m webui models`."""

from PIL import Image
from safetensors.torch import save_file

from webui.__main__ import main
from webui.outputs import read_infotext

from .engine.models.tiny_checkpoints import Recipe, make_checkpoint


def test_generate_txt2img_and_img2img(tmp_path, capsys):
    models = tmp_path / "models"
    (models / "checkpoints").mkdir(parents=True)
    save_file(make_checkpoint(Recipe("sd1"), seed=1), str(models / "checkpoints" / "tiny.safetensors"))
    out = tmp_path / "out"
    args = ["--models-dir", str(models), "generate", "--checkpoint", "tiny", "--prompt", "a red circle",
            "--steps", "2", "--width", "64", "--height", "64", "--seed", "5", "--batch-size", "2", "--out", str(out)]
    assert main(args) == 0
    files = sorted(out.glob("*.png"))
    assert [f.name for f in files] == ["00000-5.png", "00001-6.png"]
    assert "Seed: 6" in read_infotext(files[1])
    assert "(seed 6)" in capsys.readouterr().out

    Image.new("RGB", (80, 64), (200, 30, 30)).save(tmp_path / "in.png")
    args = ["--models-dir", str(models), "generate", "--checkpoint", "tiny", "--init-image", str(tmp_path / "in.png"),
            "--denoising-strength", "0.5", "--steps", "2", "--width", "64", "--height", "64", "--out", str(out)]
    assert main(args) == 0
    assert "Denoising strength: 0.5" in read_infotext(sorted(out.glob("*.png"))[-1])

    assert main(["--models-dir", str(models)]) == 0
    assert "tiny.safetensors: SD 1.x" in capsys.readouterr().out


def test_bad_values_are_reported_not_raised(tmp_path, capsys):
    models = tmp_path / "models"
    (models / "checkpoints").mkdir(parents=True)
    save_file(make_checkpoint(Recipe("sd1"), seed=1), str(models / "checkpoints" / "tiny.safetensors"))
    code = main(["--models-dir", str(models), "generate", "--checkpoint", "tiny", "--steps", "0"])
    assert code == 2
    assert "steps: 0 is not allowed; expected an integer from 1 to 150" in capsys.readouterr().err


def test_unknown_checkpoint_names_the_field_and_an_a1111_folder_works(tmp_path, capsys):
    models = tmp_path / "models"
    (models / "Stable-diffusion").mkdir(parents=True)  # AUTOMATIC1111's folder name
    save_file(make_checkpoint(Recipe("sd1"), seed=1), str(models / "Stable-diffusion" / "tiny.safetensors"))
    assert main(["--models-dir", str(models)]) == 0
    assert "tiny.safetensors: SD 1.x" in capsys.readouterr().out
    assert main(["--models-dir", str(models), "generate", "--checkpoint", "nope", "--steps", "2"]) == 2
    assert "checkpoint: 'nope' is not allowed; expected a name from the checkpoints list (tiny.safetensors)" in \
        capsys.readouterr().err


def test_generate_with_a_controlnet_unit_and_from_a_depth_map(tmp_path, capsys):
    from .extensions.builtin.controlnet.tiny import make_controlnet

    models = tmp_path / "models"
    (models / "checkpoints").mkdir(parents=True)
    (models / "controlnet").mkdir()
    save_file(make_checkpoint(Recipe("sd1"), seed=1), str(models / "checkpoints" / "tiny.safetensors"))
    save_file(make_checkpoint(Recipe("sd2", "depth"), seed=2), str(models / "checkpoints" / "depth.safetensors"))
    save_file(make_controlnet(Recipe("sd1"), seed=3), str(models / "controlnet" / "edges.safetensors"))
    Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / "control.png")
    Image.new("L", (64, 64), 90).save(tmp_path / "depth.png")
    out = tmp_path / "out"
    common = ["--steps", "2", "--width", "64", "--height", "64", "--seed", "5", "--out", str(out)]
    args = ["--models-dir", str(models), "generate", "--checkpoint", "tiny", "--prompt", "a circle",
            "--controlnet", f"edges:{tmp_path / 'control.png'}:canny:0.7", *common]
    assert main(args) == 0
    assert 'ControlNet 0: "Module: canny, Model: edges [' in read_infotext(sorted(out.glob("*.png"))[-1])
    args = ["--models-dir", str(models), "generate", "--checkpoint", "depth", "--depth-map", str(tmp_path / "depth.png"),
            *common]
    assert main(args) == 0
    assert "Depth map: uploaded" in read_infotext(sorted(out.glob("*.png"))[-1])
    assert main(["--models-dir", str(models), "generate", "--checkpoint", "tiny", "--controlnet", "edges"]) == 2
    assert "controlnet: 'edges' is not allowed; expected MODEL:IMAGE" in capsys.readouterr().err
