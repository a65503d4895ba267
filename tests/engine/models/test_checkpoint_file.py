"""Bad files: every one gets a clear error naming the file and the problem, and no code ever runs."""

import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from webui.engine.models.checkpoint_file import open_checkpoint
from webui.engine.models.loading import load_checkpoint
from webui.errors import ModelLoadError

from .tiny_checkpoints import Recipe, make_checkpoint


@pytest.fixture(scope="module")
def sd1():
    return make_checkpoint(Recipe("sd1"), seed=7)


@pytest.fixture(scope="module")
def good_file(sd1, tmp_path_factory):
    path = tmp_path_factory.mktemp("good") / "good.safetensors"
    save_file(sd1, str(path))
    return path


def refused(path: Path, match: str) -> ModelLoadError:
    with pytest.raises(ModelLoadError, match=match) as info:
        load_checkpoint(path)
    assert f"'{path.name}'" in str(info.value) and info.value.path == str(path)  # names the file (not its folders)
    return info.value


def test_missing_file(tmp_path):
    refused(tmp_path / "nope.safetensors", "file not found")


def test_zero_bytes(tmp_path):
    path = tmp_path / "empty.safetensors"
    path.write_bytes(b"")
    refused(path, r"empty \(0 bytes\)")


def test_truncated_safetensors(good_file, tmp_path):
    path = tmp_path / "truncated.safetensors"
    path.write_bytes(good_file.read_bytes()[: good_file.stat().st_size // 2])
    refused(path, "truncated")


def test_corrupt_header(good_file, tmp_path):
    data = bytearray(good_file.read_bytes())
    data[8:40] = b"\xff" * 32
    path = tmp_path / "corrupt.safetensors"
    path.write_bytes(bytes(data))
    refused(path, "not a valid .safetensors file")


def test_image_renamed_to_checkpoint(tmp_path):
    path = tmp_path / "cat.safetensors"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    refused(path, "not a valid .safetensors file")
    ckpt = tmp_path / "cat.ckpt"
    ckpt.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    refused(ckpt, "not a PyTorch checkpoint")


def test_truncated_ckpt(sd1, tmp_path):
    path = tmp_path / "model.ckpt"
    torch.save(sd1, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    refused(path, "damaged or truncated")


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"abc")
    refused(path, r"unsupported file type '.onnx' \(allowed: .bin, .ckpt")


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "random.safetensors"
    save_file({"foo.weight": torch.zeros(3, 3)}, str(path))
    refused(path, "not a Stable Diffusion checkpoint")


def test_unknown_architecture(sd1, tmp_path):
    odd = dict(sd1)
    odd["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(32, 6, 3, 3)
    path = tmp_path / "odd.safetensors"
    save_file(odd, str(path))
    refused(path, "unknown architecture")


def test_tensor_with_the_wrong_shape(sd1, tmp_path):
    odd = dict(sd1)
    odd["model.diffusion_model.middle_block.0.in_layers.2.weight"] = torch.zeros(64, 64, 1, 1)
    path = tmp_path / "odd.safetensors"
    save_file(odd, str(path))
    refused(path, "unexpected shapes")


def test_missing_tensor(sd1, tmp_path):
    odd = {k: v for k, v in sd1.items() if "middle_block.0.emb_layers" not in k}
    path = tmp_path / "odd.safetensors"
    save_file(odd, str(path))
    refused(path, "do not match the detected layout: missing")


@pytest.mark.parametrize(("kind", "match"), [("vae", "this is a VAE"), ("lora", "this is a LoRA")])
def test_vae_or_lora_chosen_as_checkpoint(sd1, tmp_path, kind, match):
    if kind == "vae":
        tensors = {k: v for k, v in sd1.items() if k.startswith("first_stage_model.")}
    else:
        tensors = {"lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32),
                   "lora_unet_mid_block_attentions_0_proj_in.lora_up.weight": torch.zeros(32, 4),
                   "lora_unet_mid_block_attentions_0_proj_in.alpha": torch.tensor(4.0)}
    path = tmp_path / f"{kind}.safetensors"
    save_file(tensors, str(path))
    refused(path, match)


class Canary:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


@pytest.mark.parametrize("container", ["torch.save", "legacy-pickle", "zip-with-a-second-data.pkl"])
def test_malicious_pickle_is_refused_and_runs_nothing(sd1, tmp_path, container):
    canary = tmp_path / "pwned"
    payload = {"state_dict": {"model.diffusion_model.out.2.weight": torch.zeros(4, 32, 3, 3)}, "x": Canary(canary)}
    path = tmp_path / "evil.ckpt"
    if container == "torch.save":
        torch.save(payload, path)
    elif container == "legacy-pickle":
        path.write_bytes(pickle.dumps(payload, protocol=2))
    else:
        torch.save({"model.diffusion_model.out.2.weight": torch.zeros(1)}, path)
        with zipfile.ZipFile(path, "a") as z:
            z.writestr("evil/data.pkl", pickle.dumps(Canary(canary)))  # same name: which one wins?
    with pytest.raises(ModelLoadError):
        load_checkpoint(path)
    assert not canary.exists()


def test_open_checkpoint_reads_shapes_without_data(good_file):
    with open_checkpoint(good_file) as f:
        assert f.shapes["model.diffusion_model.out.2.weight"] == (4, 32, 3, 3)
        t = f.read("model.diffusion_model.out.2.weight", torch.float16)
        assert t.dtype == torch.float16
        ids = f.read("cond_stage_model.transformer.text_model.embeddings.position_ids", torch.float16)
        assert ids.dtype == torch.int64  # only floating tensors are converted
