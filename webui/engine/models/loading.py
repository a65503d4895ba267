"""Load a single-file SD 1.x / 2.x / SDXL checkpoint into our networks: `load_checkpoint(path) -> ModelBundle`.

Example:
    bundle = load_checkpoint("models/checkpoints/v1-5-pruned-emaonly.safetensors")
    context = bundle.text_encoder.encode(["a red circle"])                 # (1, 77, 768)
    eps = bundle.unet(latents, torch.tensor([999.0]), context)             # (1, 4, 64, 64)
    image = bundle.vae.decode(latents / bundle.spec.vae.scale_factor)      # (1, 3, 512, 512)

SDXL bundles have an `SDXLTextEncoder` (context and pooled output) and a UNet that also takes the
conditioning vector y (see `pipelines/conditioning.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
import yaml
from torch import nn

from webui.errors import ModelLoadError

from ..memory.devices import ComponentDtypes
from ..memory.offload import Placement
from .checkpoint_file import CheckpointFile, file_sha256, open_checkpoint
from .detection import UNET_PREFIX, VAE_PREFIX, detect_model_spec, infer_vae_config, with_heads
from .specs import ModelSpec, Prediction, TextEncoderConfig
from .sdxl_text_encoder import SDXLTextEncoder
from .text_encoders import SDTextEncoder, text_encoder_from_state_dict
from .unet import UNetModel
from .vae import AutoencoderKL


@dataclass
class ModelBundle:
    """A loaded checkpoint: its networks and what it is."""

    spec: ModelSpec
    unet: UNetModel
    vae: AutoencoderKL
    text_encoder: SDTextEncoder | SDXLTextEncoder
    path: Path
    vae_path: Path | None
    dtype: torch.dtype  # the UNet's
    device: torch.device  # where the networks compute (with offloading, their weights wait on the CPU)
    # Where the networks' weights sit between uses; `memory.policy.apply_policy` sets it up.
    placement: Placement | None = field(default=None, repr=False)
    _hashes: dict[Path, str] = field(default_factory=dict, repr=False)

    def file_hash(self, which: str = "checkpoint") -> str | None:
        """SHA-256 of the checkpoint (or the separate VAE) file, computed once, on first use."""
        path = self.path if which == "checkpoint" else self.vae_path
        if path is None:
            return None
        if path not in self._hashes:
            self._hashes[path] = file_sha256(path)
        return self._hashes[path]


def inspect_checkpoint(path: str | Path, config_path: str | Path | None = None) -> ModelSpec:
    """What `path` holds, read from its header (safetensors) without loading the weights."""
    with open_checkpoint(path) as f:
        return _spec_for(f, _read_yaml_config(Path(path), config_path))


def load_checkpoint(
    path: str | Path,
    *,
    vae_path: str | Path | None = None,
    dtype: torch.dtype | ComponentDtypes = torch.float32,
    device: torch.device | str = "cpu",
    prediction: Prediction | None = None,
    use_ema: bool = False,
    config_path: str | Path | None = None,
) -> ModelBundle:
    """Load a checkpoint's UNet, VAE and text encoder in `dtype` (one for all, or one each) on `device`.

    `vae_path` replaces the checkpoint's VAE; `prediction` ("eps" or "v") overrides the detected
    prediction type; `use_ema` takes the UNet from the file's `model_ema.*` weights; `config_path` is
    an LDM config .yaml (by default a same-name .yaml beside the checkpoint is used when present).
    """
    path, device = Path(path), torch.device(device)
    dtypes = dtype if isinstance(dtype, ComponentDtypes) else ComponentDtypes.all(dtype)
    yaml_config = _read_yaml_config(path, config_path)
    with open_checkpoint(path) as f:
        spec = _spec_for(f, yaml_config)
        unet_names = _ema_unet_names(f) if use_ema else _component(f, UNET_PREFIX)
        unet = _build(UNetModel, spec.unet, f, unet_names, dtypes.unet, device)
        tokenizer_folder = path.with_name(path.stem + ".tokenizer")
        encoders = [
            _text_encoder(f, cfg, dtypes.text_encoder, device, tokenizer_folder if tokenizer_folder.is_dir() else None)
            for cfg in spec.text_encoders
        ]
        text_encoder = SDXLTextEncoder(encoders) if spec.is_sdxl else encoders[0]
        if vae_path is None:
            vae = _build(AutoencoderKL, spec.vae, f, _component(f, VAE_PREFIX), dtypes.vae, device)
    if vae_path is not None:
        vae = load_vae(vae_path, dtype=dtypes.vae, device=device)
        spec = replace(spec, vae=replace(vae.config, scale_factor=spec.vae.scale_factor))
        vae.config = spec.vae
    spec = _decide_prediction(spec, prediction, yaml_config, f.metadata, f.shapes, unet)
    return ModelBundle(spec, unet, vae, text_encoder, path, Path(vae_path) if vae_path else None, dtypes.unet, device)


def _text_encoder(
    f: CheckpointFile, cfg: TextEncoderConfig, dtype: torch.dtype, device: torch.device, tokenizer_folder: Path | None
) -> SDTextEncoder:
    text_sd = {k[len(cfg.prefix):]: f.read(k, dtype, device) for k in f.shapes if k.startswith(cfg.prefix)}
    try:
        return text_encoder_from_state_dict(cfg, text_sd, dtype, device, tokenizer_folder)
    except ValueError as exc:
        raise ModelLoadError(f.path, f"the text encoder weights ('{cfg.prefix}*') do not fit: {exc}") from exc


def load_vae(path: str | Path, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> AutoencoderKL:
    """A separate VAE file, in the checkpoint (`first_stage_model.*`) or bare (`encoder.*`) layout."""
    path = Path(path)
    with open_checkpoint(path) as f:
        if any(k.startswith(UNET_PREFIX) for k in f.shapes):
            raise ModelLoadError(path, "this is a full checkpoint, not a VAE: choose it as the checkpoint instead")
        prefix = VAE_PREFIX if any(k.startswith(VAE_PREFIX) for k in f.shapes) else ""
        if prefix + "encoder.conv_in.weight" not in f.shapes:
            raise ModelLoadError(path, "not a VAE: no 'encoder.*'/'decoder.*' weights found")
        try:
            cfg = infer_vae_config(f.shapes, prefix)
        except (KeyError, ValueError) as exc:
            raise ModelLoadError(path, f"incomplete or damaged VAE layout ({exc!r})") from exc
        # Training-only entries (e.g. `loss.*` discriminator weights) are not part of the autoencoder.
        names = _component(f, prefix, lambda name: name.startswith(_VAE_PARTS))
        return _build(AutoencoderKL, cfg, f, names, dtype, torch.device(device))


_VAE_PARTS = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")


def _spec_for(f: CheckpointFile, yaml_config: dict | None) -> ModelSpec:
    spec = detect_model_spec(f.shapes, f.path)
    unet_params = _dig(yaml_config, "model", "params", "unet_config", "params") or {}
    if "num_heads" in unet_params or "num_head_channels" in unet_params:
        heads = unet_params.get("num_heads", -1)
        head_channels = unet_params.get("num_head_channels", -1)
        spec = with_heads(spec, heads if heads and heads > 0 else None, head_channels if head_channels and head_channels > 0 else None)
    scale = _dig(yaml_config, "model", "params", "scale_factor")
    if isinstance(scale, (int, float)):
        spec = replace(spec, vae=replace(spec.vae, scale_factor=float(scale)))
    return spec


def _component(f: CheckpointFile, prefix: str, keep: Callable[[str], bool] = lambda name: True) -> dict[str, str]:
    """Network name -> file key, for the file's tensors under `prefix`."""
    return {k[len(prefix):]: k for k in f.shapes if k.startswith(prefix) and keep(k[len(prefix):])}


def _build(
    cls: Callable[..., nn.Module],
    cfg: object,
    f: CheckpointFile,
    names: dict[str, str],
    dtype: torch.dtype,
    device: torch.device,
) -> nn.Module:
    """Create the network on the meta device (no init, no memory) and fill it with the file's tensors.

    `names` maps the network's parameter names to file keys. Tensors are read one at a time straight
    into the target dtype and device, so no second full copy of the weights is ever held.
    """
    with torch.device("meta"):
        module = cls(cfg)
    expected = set(module.state_dict())
    missing, unexpected = expected - set(names), set(names) - expected
    if missing or unexpected:
        raise ModelLoadError(
            f.path,
            f"the {cls.__name__} weights do not match the detected layout: "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}",
        )
    state = {name: _fit(f.read(key, dtype, device), name) for name, key in names.items()}
    try:
        module.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:  # a tensor whose shape does not fit its place
        raise ModelLoadError(f.path, f"the {cls.__name__} weights have unexpected shapes ({exc})") from exc
    return module.eval().requires_grad_(False)


def _fit(t: torch.Tensor, name: str) -> torch.Tensor:
    # Some VAE files store the mid-block attention q/k/v/proj_out as Linear [C, C] instead of 1x1 conv.
    if t.ndim == 2 and ".attn_1." in name and name.endswith("weight"):
        return t[:, :, None, None]
    return t


def _ema_unet_names(f: CheckpointFile) -> dict[str, str]:
    """UNet name -> file key of its EMA copy: `model_ema.` + the name under `model.` without dots."""
    names = {}
    for name, key in _component(f, UNET_PREFIX).items():
        ema_key = "model_ema." + key[len("model."):].replace(".", "")
        if ema_key not in f.shapes:
            raise ModelLoadError(f.path, "use_ema was asked for but the file has no EMA weights ('model_ema.*')")
        names[name] = ema_key
    return names


def _read_yaml_config(path: Path, config_path: str | Path | None) -> dict | None:
    candidate = Path(config_path) if config_path else path.with_suffix(".yaml")
    if not candidate.is_file():
        if config_path:
            raise ModelLoadError(candidate, "config file not found")
        return None
    try:
        config = yaml.safe_load(candidate.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ModelLoadError(candidate, f"the config .yaml cannot be parsed ({exc})") from exc
    return config if isinstance(config, dict) else None


def _dig(tree: object, *path: str) -> object:
    for part in path:
        if not isinstance(tree, dict):
            return None
        tree = tree.get(part)
    return tree


V_NAMES, EPS_NAMES = {"v", "v_prediction", "v-prediction"}, {"eps", "epsilon"}


def _decide_prediction(
    spec: ModelSpec,
    override: Prediction | None,
    yaml_config: dict | None,
    metadata: dict[str, str],
    shapes: dict[str, tuple[int, ...]],
    unet: UNetModel,
) -> ModelSpec:
    """eps or v, and why. The file alone often cannot say, so the strongest available signal wins:

    1. the caller's explicit choice; 2. an LDM config .yaml (`model.params.parameterization`);
    3. safetensors metadata `modelspec.prediction_type`; 4. a `v_pred` marker key;
    5. SD 2 base only: AUTOMATIC1111's probe. SD 2.x 768-v and 512-base files have identical layouts,
       but a v-model's output at t=999 on a constant input is strongly negative relative to the input
       (mean(unet(x) - x) < -1 for x = 0.5), which an eps-model's is not; 6. otherwise eps.
    """
    if override is not None:
        if override not in ("eps", "v"):
            raise ValueError(f"prediction must be 'eps' or 'v', not {override!r}")
        return replace(spec, prediction=override, prediction_reason="chosen explicitly")
    parameterization = _dig(yaml_config, "model", "params", "parameterization")
    if yaml_config is not None:
        pred = "v" if parameterization == "v" else "eps"
        return replace(spec, prediction=pred, prediction_reason="from the config .yaml beside the checkpoint")
    meta = metadata.get("modelspec.prediction_type", "").strip().lower()
    if meta in V_NAMES | EPS_NAMES:
        pred = "v" if meta in V_NAMES else "eps"
        return replace(spec, prediction=pred, prediction_reason="from the file's modelspec.prediction_type metadata")
    if "v_pred" in shapes:
        return replace(spec, prediction="v", prediction_reason="the file has a 'v_pred' marker")
    if spec.family == "sd2" and spec.variant == "base":
        is_v = probe_v_prediction(unet)
        reason = "SD 2 probe: the UNet behaves like a v-prediction model" if is_v else "SD 2 probe: the UNet behaves like an eps model"
        return replace(spec, prediction="v" if is_v else "eps", prediction_reason=reason)
    return replace(spec, prediction="eps", prediction_reason=f"{spec.label} models predict noise (eps)")


@torch.inference_mode()
def probe_v_prediction(unet: Callable[..., torch.Tensor]) -> bool:
    """AUTOMATIC1111's SD 2 test: v if mean(unet(x) - x) < -1 for x = 0.5, t = 999, context = 0.5."""
    cfg = unet.config  # type: ignore[attr-defined]
    p = next(unet.parameters())  # type: ignore[attr-defined]
    x = torch.full((1, cfg.in_channels, 8, 8), 0.5, dtype=p.dtype, device=p.device)
    context = torch.full((1, 2, cfg.context_dim), 0.5, dtype=p.dtype, device=p.device)
    out = unet(x, torch.tensor([999.0], device=p.device), context)
    return (out.float() - x[:, : out.shape[1]].float()).mean().item() < -1.0
