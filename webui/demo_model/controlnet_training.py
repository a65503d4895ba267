"""The demo ControlNet: from the saved demo checkpoint, learn to draw the shape where a canny edge map of
it puts it (`controlnet/webui-demo-canny.safetensors`).

The ControlNet starts as a copy of the demo UNet's downward half (the usual initialisation) with zero
read-out convolutions, and learns with the UNet, VAE and text encoder frozen, all loaded by the app's
own loader. Its control maps are made by the same Canny edge detector (OpenCV) as the built-in
extension's "canny" preprocessor uses, from rendered scenes. Captions usually leave the position out, so
the edges are what places the shape. The file is written in the original layout (`control_model.*`),
as the ControlNet extension reads user files. The network class is the extension's own (run from the
repository root, where `extensions/` is importable).
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm import tqdm

from webui.engine.models.loading import load_checkpoint
from webui.engine.sampling.denoisers import DiscreteSchedule

from .scenes import caption, render, scenes

# The hint encoder narrower than the original's (16, 32, 96, 256): the demo UNet is 32 channels wide.
HINT_WIDTHS = (16, 32, 64, 128)
CANNY_THRESHOLDS = (100, 200)  # the extension's defaults
_POSITION = re.compile(r" (at the [a-z ]+?|in the centre)(?= on |$)")


def hint_convs(hint_channels: int, model_channels: int) -> tuple[tuple[int, int], ...]:
    convs = [(hint_channels, HINT_WIDTHS[0])]
    for c_in, c_out in zip(HINT_WIDTHS, HINT_WIDTHS[1:]):
        convs += [(c_in, c_in), (c_in, c_out)]
    return (*convs, (HINT_WIDTHS[-1], model_channels))


def canny_map(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 scene -> (H, W) uint8 edges, as the extension's canny preprocessor gives them."""
    import cv2

    return cv2.Canny(np.ascontiguousarray(image), *CANNY_THRESHOLDS)


def without_position(text: str) -> str:
    return _POSITION.sub("", text)


def new_controlnet(unet: torch.nn.Module):
    """A ControlNet copying `unet`'s downward half, its read-outs (and the hint's last layer) at zero."""
    from extensions.builtin.controlnet.network import ControlNet, ControlNetConfig

    cfg = replace(unet.config)
    network = ControlNet(ControlNetConfig(cfg, "sd1", hint_convs(3, cfg.model_channels)))
    copied = {k: v for k, v in unet.state_dict().items() if k.split(".")[0] in ("time_embed", "input_blocks",
                                                                                  "middle_block")}
    missing, unexpected = network.load_state_dict(copied, strict=False)
    assert not unexpected and all(k.split(".")[0] in ("input_hint_block", "zero_convs", "middle_block_out")
                                  for k in missing), (missing, unexpected)
    for conv in [*(z[0] for z in network.zero_convs), network.middle_block_out[0], network.input_hint_block[-1]]:
        torch.nn.init.zeros_(conv.weight)
        torch.nn.init.zeros_(conv.bias)
    return network


def train_controlnet(cfg, checkpoint: Path, out: Path) -> None:
    """Train and write the demo canny ControlNet for `checkpoint` (the config is train.TrainConfig)."""
    from .train import encode_pool, lr_at, training_noise, v_target  # the base model's own helpers

    torch.manual_seed(cfg.seed + 5)
    rng = np.random.default_rng(cfg.seed + 5)
    bundle = load_checkpoint(checkpoint)  # exactly what users load
    unet, text = bundle.unet, bundle.text_encoder
    network = new_controlnet(unet).train()
    params = list(network.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.controlnet_lr, weight_decay=0.0)

    pool = scenes(cfg.seed + 6, cfg.controlnet_pool)
    latents = encode_pool(bundle.vae, pool) * bundle.spec.vae.scale_factor
    hints = torch.from_numpy(np.stack([canny_map(render(s)) for s in pool]))[:, None]  # (N, 1, 128, 128) uint8
    alphas = DiscreteSchedule.scaled_linear().alphas_cumprod.float()
    snr = alphas / (1 - alphas)
    weight = torch.clamp(snr, min=cfg.snr_floor, max=cfg.min_snr) / (snr + 1)  # as the base model learnt
    batch = cfg.controlnet_batch
    bar = tqdm(range(cfg.controlnet_steps), desc="ControlNet (canny)", unit="step")
    for step in bar:
        idx = rng.integers(len(pool), size=batch)
        prompts = []
        for i in idx:
            text_i = caption(pool[i], rng)
            if rng.random() < cfg.controlnet_no_position:
                text_i = without_position(text_i)
            prompts.append("" if rng.random() < cfg.empty_caption else text_i)
        context = text.encode(prompts).clone()  # `encode` runs in inference mode
        x0 = latents[torch.from_numpy(idx)]
        hint = hints[torch.from_numpy(idx)].float().div(255).expand(-1, 3, -1, -1)
        t = torch.from_numpy(rng.integers(0, 1000, size=batch))
        noise = training_noise(x0, cfg.coarse_noise)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg.controlnet_steps, cfg.controlnet_lr, warmup=100)
        control = network(xt, t.float(), context, hint)
        pred = unet(xt, t.float(), context, control=control)
        loss = (weight[t] * (pred - v_target(x0, noise, a)).pow(2).mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")

    tensors = {"control_model." + k: v.detach().half().contiguous() for k, v in network.state_dict().items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out), metadata={"webui.control": "canny", "webui.base": checkpoint.name})
